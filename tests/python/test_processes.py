"""One channel across processes: pickling into spawn/fork/forkserver children, M:N with
subinterpreters inside processes, numpy arrays between processes."""

import multiprocessing as mp
import struct
import threading

import pytest

import memchannel as mc
from _workers import process_with_two_interpreters

MESSAGE = 64


def echo_child(inbox, outbox, count):
    for _ in range(count):
        with inbox.recv() as buf:
            outbox.send(buf)  # forwarded into the same arena: no copy


def test_spawn_child_exchanges_a_million_64_byte_messages():
    ctx = mp.get_context("spawn")
    arena = mc.Arena()
    to_child, from_child = arena.channel(maxsize=4096), arena.channel()
    count = 1_000_000
    child = ctx.Process(daemon=True, target=echo_child, args=(to_child, from_child, count))
    child.start()
    payload = bytearray(MESSAGE)

    def sender():
        for seq in range(count):
            struct.pack_into("<Q", payload, 0, seq)
            to_child.send(payload)

    t = threading.Thread(target=sender)
    t.start()
    for expected in range(count):
        with from_child.recv() as buf:
            assert buf.nbytes == MESSAGE
            (seq,) = struct.unpack_from("<Q", buf)
            assert seq == expected
    t.join()
    child.join(30)
    assert child.exitcode == 0
    assert to_child.stats()["blocks_in_use"] == 0


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_pickled_channel_reaches_every_start_method(method):
    ctx = mp.get_context(method)
    ch, back = mc.Channel(), mc.Channel()
    child = ctx.Process(daemon=True, target=echo_child, args=(ch, back, 3))
    child.start()
    for word in (b"alpha", b"beta", b"gamma"):
        ch.send(word)
    assert [bytes(back.recv(timeout=30)) for _ in range(3)] == [b"alpha", b"beta", b"gamma"]
    child.join(30)
    assert child.exitcode == 0


def test_channel_travels_through_another_channel():
    ctx = mp.get_context("spawn")
    control = mc.Channel()
    child = ctx.Process(daemon=True, target=_receive_channel_then_echo, args=(control,))
    child.start()
    data, back = mc.Channel(), mc.Channel()
    import pickle

    control.send(pickle.dumps((data, back)))
    data.send(b"through a channel")
    assert bytes(back.recv(timeout=30)) == b"through a channel"
    child.join(30)
    assert child.exitcode == 0


def _receive_channel_then_echo(control):
    import pickle

    data, back = pickle.loads(control.recv())
    back.send(data.recv())


def test_heap_channel_pickled_into_another_process_says_to_use_shm():
    import pickle

    ctx = mp.get_context("spawn")
    heap = mc.Channel(backend="heap")
    carrier, out = mc.Channel(), mc.Channel()
    child = ctx.Process(daemon=True, target=_unpickle_and_report, args=(carrier, out))
    child.start()
    carrier.send(pickle.dumps(heap))
    message = bytes(out.recv(timeout=30)).decode()
    child.join(30)
    assert "backend='shm'" in message and "another process" in message


def _unpickle_and_report(carrier, out):
    import pickle

    try:
        pickle.loads(carrier.recv())
    except mc.MemChannelError as exc:
        out.send(str(exc).encode())
    else:
        out.send(b"unpickled a heap channel in another process?!")


def test_heap_handle_from_another_process_is_refused():
    ctx = mp.get_context("spawn")
    heap = mc.Channel(backend="heap")
    out = mc.Channel()
    child = ctx.Process(daemon=True, target=_attach_handle, args=(heap.handle, out))
    child.start()
    child.join(30)
    message = bytes(out.recv(timeout=30)).decode()
    assert "backend='shm'" in message and "another process" in message


def _attach_handle(handle, out):
    try:
        mc.Channel.attach(handle)
    except mc.MemChannelError as exc:
        out.send(str(exc).encode())
    else:
        out.send(b"attached?!")


def test_four_processes_each_with_two_interpreters_send_into_one_channel():
    ctx = mp.get_context("spawn")
    ch = mc.Channel(maxsize=1024)  # bounded: senders block while the parent drains
    processes, per_sender = 4, 20_000
    children = [ctx.Process(daemon=True, target=process_with_two_interpreters, args=(ch, p, per_sender))
                for p in range(processes)]
    for c in children:
        c.start()
    senders = processes * 2
    next_seq = [0] * senders
    for _ in range(senders * per_sender):
        with ch.recv(timeout=60) as buf:
            sender, seq = struct.unpack("<II", buf)
            assert seq == next_seq[sender], (sender, seq)
            next_seq[sender] += 1
    for c in children:
        c.join(60)
        assert c.exitcode == 0
    assert next_seq == [per_sender] * senders
    with pytest.raises(mc.Empty):
        ch.recv_nowait()


np = pytest.importorskip("numpy")

ARRAYS = [
    ("uint8", (1080, 1920, 3)),
    ("<f8", (100, 7)),
    (">i4", (5, 4, 3, 2)),
    ("<c8", (33,)),
    ("bool", (10, 10)),
    ("<i2", ()),
]


def array_child(inbox, outbox):
    import numpy

    for _ in range(len(ARRAYS)):
        buf = inbox.recv()
        view = numpy.asarray(buf)
        zero_copy = view.ctypes.data == buf.address if view.size else True
        outbox.send(struct.pack("<?", zero_copy) + view.dtype.str.encode() + b"\n" +
                    repr(view.shape).encode() + b"\n" + str(int(view.real.astype("f8").sum())).encode())
        del view
        buf.release()


def test_numpy_arrays_cross_processes_with_dtype_shape_and_no_copy_on_receive():
    ctx = mp.get_context("spawn")
    inbox, outbox = mc.Channel(), mc.Channel()
    child = ctx.Process(daemon=True, target=array_child, args=(inbox, outbox))
    child.start()
    rng = np.random.default_rng(7)
    for dtype, shape in ARRAYS:
        arr = (rng.integers(0, 100, size=shape)).astype(dtype)
        inbox.send(arr)
        reply = bytes(outbox.recv(timeout=60))
        zero_copy = struct.unpack("<?", reply[:1])[0]
        dtype_str, shape_repr, total = reply[1:].decode().split("\n")
        assert zero_copy
        assert np.dtype(dtype_str) == arr.dtype
        assert shape_repr == repr(arr.shape)
        assert int(total) == int(arr.real.astype("f8").sum())
    child.join(30)
    assert child.exitcode == 0
