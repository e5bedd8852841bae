"""Python objects over channels: send_object / recv_object (pickle protocol 5, out-of-band
buffers in channel memory, one message per object).

numpy is imported lazily (the ``np`` fixture): subinterpreters import this module by name to
find the functions passed to ``call()``, and numpy cannot load in an isolated subinterpreter.
"""

import collections
import gc
import multiprocessing as mp
import pickle
import struct
import threading

import pytest

import memchannel as mc
from memchannel import _objects


@pytest.fixture
def np():
    return pytest.importorskip("numpy")


# --- objects and functions used in other processes and interpreters -------------------------

class Point:
    def __init__(self, x, y, tags=()):
        self.x, self.y, self.tags = x, y, list(tags)

    def __eq__(self, other):
        return type(other) is Point and (self.x, self.y, self.tags) == (other.x, other.y, other.tags)


Pair = collections.namedtuple("Pair", "left right")


class RefusesToPickle:
    def __reduce__(self):
        raise pickle.PicklingError("RefusesToPickle does not pickle")


def sample_objects():
    return [
        {"int": 1, "float": 2.5, "str": "héllo", "bytes": b"\x00\xff", "none": None, "bool": True},
        [1, [2, [3, [4]]], (5, 6), {7, 8}, frozenset({9})],
        (1, "two", 3.0, b"four", None),
        Point(1, 2, tags=["a", "b"]),
        Pair(Point(0, 0), {"nested": [Pair(1, 2)]}),
        bytearray(b"mutable bytes"),
        10**40,
        complex(1, -1),
        "x" * 100_000,
    ]


def echo_objects(inbox, outbox, count):
    """Receive ``count`` objects and send back (type name, object) for each."""
    for _ in range(count):
        obj = inbox.recv_object(timeout=60)
        if isinstance(obj, memoryview):  # a PickleBuffer arrives as a view of channel memory
            obj = ("memoryview", bytes(obj), obj.readonly, type(obj.obj).__name__)
        outbox.send_object((type(obj).__name__, obj))


def check_arrays_in_child(inbox, outbox):
    """Receive an object holding arrays; report what the child saw (values and zero-copy)."""
    obj = inbox.recv_object(timeout=60)
    views = {name: owner_buffer(arr) is not None for name, arr in obj["arrays"].items()}
    sums = {name: int(arr.astype("i8").sum()) for name, arr in obj["arrays"].items()}
    outbox.send_object({"views": views, "sums": sums, "meta": obj["meta"]})


# --- helpers ----------------------------------------------------------------------------------

def owner_buffer(arr):
    """The memchannel Buffer whose memory ``arr`` views (walking ``.base``), or None."""
    base = arr
    while base is not None:
        if isinstance(base, mc.Buffer):
            return base
        if isinstance(base, memoryview):
            return base.obj if isinstance(base.obj, mc.Buffer) else None
        base = getattr(base, "base", None)
    return None


def views_channel_memory(arr):
    buf = owner_buffer(arr)
    if buf is None:
        return False
    start = arr.__array_interface__["data"][0]
    return buf.address <= start and start + arr.nbytes <= buf.address + buf.nbytes


def blocks_in_use(ch):
    gc.collect()
    return ch.stats()["blocks_in_use"]


# --- round trips ------------------------------------------------------------------------------

def test_builtin_containers_and_custom_classes_round_trip(backend):
    ch = mc.Channel(backend=backend)
    objects = sample_objects()
    for obj in objects:
        ch.send_object(obj)
    assert ch.qsize() == len(objects)  # one message per object
    for obj in objects:
        got = ch.recv_object()
        assert type(got) is type(obj) and got == obj
    assert blocks_in_use(ch) == 0


def test_channel_methods_and_module_functions_agree(backend):
    ch = mc.Channel(backend=backend)
    ch.send_object({"via": "method"})
    _objects.send_object(ch, {"via": "function"})
    assert _objects.recv_object(ch) == {"via": "method"}
    assert ch.recv_object() == {"via": "function"}


def test_numpy_array_in_a_dict_arrives_viewing_channel_memory(backend, np):
    ch = mc.Channel(backend=backend)
    ch.send_object({"a": np.arange(10**7), "b": [1, 2, 3]})
    got = ch.recv_object()
    arr = got["a"]
    assert got["b"] == [1, 2, 3]
    assert arr.dtype == np.arange(1).dtype and arr.shape == (10**7,)
    assert arr[0] == 0 and arr[-1] == 10**7 - 1 and int(arr[::1000].sum()) == sum(range(0, 10**7, 1000))
    assert views_channel_memory(arr)  # .base chain ends in a memchannel Buffer, data inside it
    assert arr.flags.writeable  # the receiver owns the block
    assert blocks_in_use(ch) == 1
    del got, arr
    assert blocks_in_use(ch) == 0  # the block went back when the array died


def test_block_is_freed_when_the_last_array_dies(backend, np):
    ch = mc.Channel(backend=backend)
    ch.send_object((np.ones(1000), np.zeros(7, dtype="u1"), "meta"))
    first, second, meta = ch.recv_object()
    assert meta == "meta"
    assert owner_buffer(first) is owner_buffer(second)  # one object, one block
    del first
    assert blocks_in_use(ch) == 1
    second[:] = 5  # still valid memory
    assert second.tolist() == [5] * 7
    del second
    assert blocks_in_use(ch) == 0


def test_out_of_band_buffers_are_64_byte_aligned(backend, np):
    ch = mc.Channel(backend=backend)
    arrays = [np.full(n, n % 256, dtype="u1") for n in (1, 7, 63, 64, 65, 1000)]
    ch.send_object(arrays)
    got = ch.recv_object()
    for sent, arr in zip(arrays, got):
        assert np.array_equal(sent, arr)
        assert views_channel_memory(arr)
        assert arr.__array_interface__["data"][0] % 64 == 0


@pytest.mark.parametrize("dtype", [
    [("x", "<i4"), ("y", ">f8"), ("name", "S5")],          # structured, mixed byte order
    {"names": ["a", "b"], "formats": ["u1", "<i8"], "aligned": True},  # aligned struct, padding
    ">i8", ">f4", "<c8", ">u2", "?", "<U3",
])
def test_structured_and_non_native_dtypes_arrive_intact_without_copy(backend, np, dtype):
    ch = mc.Channel(backend=backend)
    dt = np.dtype(dtype)
    arr = np.zeros((3, 4), dtype=dt)
    raw = arr.view(np.uint8)
    raw[...] = (np.arange(raw.size) % 251).reshape(raw.shape).astype(np.uint8)  # every byte distinct-ish
    ch.send_object(arr)
    got = ch.recv_object()
    assert got.dtype == dt and got.shape == (3, 4)
    assert got.tobytes() == arr.tobytes()
    assert views_channel_memory(got)


def test_fortran_order_zero_d_empty_strided_and_datetime_arrays(backend, np):
    ch = mc.Channel(backend=backend)
    fortran = np.asfortranarray(np.arange(12, dtype="<f4").reshape(3, 4))
    dates = np.arange("2024-01-01", "2024-01-08", dtype="M8[D]")
    objects = [fortran, np.array(3.5), np.empty((0, 5)), np.arange(20)[::3], dates]
    ch.send_object(objects)
    got = ch.recv_object()
    assert got[0].flags.f_contiguous and np.array_equal(got[0], fortran) and views_channel_memory(got[0])
    assert got[1].shape == () and got[1] == 3.5
    assert got[2].shape == (0, 5)
    # numpy pickles non-contiguous and datetime arrays in-band: they arrive as copies
    assert np.array_equal(got[3], np.arange(20)[::3])
    assert got[4].dtype == dates.dtype and np.array_equal(got[4], dates)
    del got
    assert blocks_in_use(ch) == 0


def test_picklebuffer_of_a_bytearray_arrives_as_a_writable_view_of_channel_memory(backend):
    ch = mc.Channel(backend=backend)
    payload = bytearray(range(256)) * 100
    ch.send_object({"blob": pickle.PickleBuffer(payload)})
    view = ch.recv_object()["blob"]
    assert isinstance(view, memoryview) and isinstance(view.obj, mc.Buffer)
    assert not view.readonly and bytes(view) == bytes(payload)
    view[0] = 255  # writable channel memory
    assert blocks_in_use(ch) == 1
    del view
    assert blocks_in_use(ch) == 0


def test_the_callers_picklebuffer_stays_usable_and_unexported(backend):
    ch = mc.Channel(backend=backend)
    payload = bytearray(b"abc" * 100)
    pb = pickle.PickleBuffer(payload)
    ch.send_object(pb)
    ch.send_object(pb)  # sending did not release the caller's PickleBuffer
    assert bytes(ch.recv_object()) == bytes(ch.recv_object()) == bytes(payload)
    del pb
    payload.extend(b"d")  # BufferError if send_object had left a view of it behind


def test_readonly_picklebuffer_arrives_readonly(backend):
    ch = mc.Channel(backend=backend)
    ch.send_object(pickle.PickleBuffer(b"read only" * 100))
    view = ch.recv_object()
    assert isinstance(view.obj, mc.Buffer) and view.readonly
    assert bytes(view) == b"read only" * 100


def test_plain_bytearray_round_trips_in_band(backend):
    # pickle always writes bytes and bytearray in-band; the object still arrives whole, as a
    # bytearray that owns its memory, and the block is freed at once.
    ch = mc.Channel(backend=backend)
    ch.send_object(bytearray(b"\x01" * 10_000))
    got = ch.recv_object()
    assert type(got) is bytearray and got == bytearray(b"\x01" * 10_000)
    assert blocks_in_use(ch) == 0


def test_a_memchannel_buffer_in_an_array_is_sent_by_copy(backend, np):
    ch = mc.Channel(backend=backend)
    buf = ch.reserve(shape=(8,), format="<i4")
    arr = np.asarray(buf)
    arr[:] = np.arange(8)
    ch.send_object({"frame": arr})
    got = ch.recv_object()["frame"]
    assert np.array_equal(got, np.arange(8)) and views_channel_memory(got)
    assert owner_buffer(got).address != buf.address  # copied into the object's own block
    arr[0] = 99  # the sender's buffer is still the sender's
    assert got[0] == 0


# --- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, error, message", [
    (threading.Lock(), TypeError, "cannot pickle '_thread.lock' object"),
    (RefusesToPickle(), pickle.PicklingError, "RefusesToPickle does not pickle"),
    (lambda: None, (pickle.PicklingError, AttributeError), "lambda"),
])
def test_pickling_errors_raise_the_original_exception_and_leak_nothing(backend, np, bad, error, message):
    ch = mc.Channel(backend=backend)
    before = ch.stats()
    big = np.arange(100_000)
    with pytest.raises(error, match=message):
        ch.send_object({"array": big, "bad": bad})
    with pytest.raises(error, match=message):
        ch.send_object([bad])
    after = ch.stats()
    assert ch.qsize() == 0
    assert blocks_in_use(ch) == before["blocks_in_use"] == 0
    assert after["bytes_in_use"] == before["bytes_in_use"]
    ch.send_object("still works")
    assert ch.recv_object() == "still works"


def test_full_channel_returns_the_reserved_block(backend, np):
    ch = mc.Channel(1, backend=backend)
    ch.send_object("first")
    with pytest.raises(mc.Full):
        ch.send_object({"array": np.ones(10_000)}, block=False)
    with pytest.raises(mc.Full):
        ch.send_object({"array": np.ones(10_000)}, timeout=0.05)
    with pytest.raises(mc.Full):
        ch.send_object("small", timeout=0.05)
    # Only "first" is queued, inline in its node (a frame of at most 64 bytes): no block is held.
    assert ch.qsize() == 1 and blocks_in_use(ch) == 0
    assert ch.recv_object() == "first"
    with pytest.raises(mc.Empty):
        ch.recv_object(timeout=0.05)
    with pytest.raises(mc.Empty):
        ch.recv_object(block=False)


def test_closed_channel_raises_channel_closed(backend, np):
    ch = mc.Channel(backend=backend)
    ch.send_object([1])
    ch.close()
    with pytest.raises(mc.ChannelClosed):
        ch.send_object({"array": np.ones(100)})
    assert ch.recv_object() == [1]
    with pytest.raises(mc.ChannelClosed):
        ch.recv_object()
    assert blocks_in_use(ch) == 0


def test_an_object_with_many_arrays_is_one_message(backend, np):
    ch = mc.Channel(1, backend=backend)
    ch.send_object({str(i): np.full(100, i) for i in range(50)})
    assert ch.qsize() == 1 and ch.full()
    got = ch.recv_object()
    assert all(int(got[str(i)][0]) == i for i in range(50))


def test_messages_that_are_not_object_messages_raise_corruption_error(backend):
    ch = mc.Channel(backend=backend)
    ch.send(b"plain bytes, not an object message")
    with pytest.raises(mc.CorruptionError, match="not an object message"):
        ch.recv_object()
    ch.send(b"short")
    with pytest.raises(mc.CorruptionError, match="not an object message"):
        ch.recv_object()
    # A forged frame whose buffer table points outside the message.
    forged = ch.reserve(64)
    with memoryview(forged) as mv:
        struct.pack_into("<4sIQQQ", mv, 0, b"MCO1", 1, 4, 60, 1000)
    ch.send(forged)
    with pytest.raises(mc.CorruptionError, match="outside"):
        ch.recv_object()
    forged = ch.reserve(32)
    with memoryview(forged) as mv:
        struct.pack_into("<4sIQ", mv, 0, b"MCO1", 1 << 30, 8)
    ch.send(forged)
    with pytest.raises(mc.CorruptionError, match="out of bounds"):
        ch.recv_object()
    assert blocks_in_use(ch) == 0
    ch.send_object("the channel keeps serving")
    assert ch.recv_object() == "the channel keeps serving"


# --- many senders and receivers ---------------------------------------------------------------

def test_threads_many_to_many_objects_arrive_whole_exactly_once_in_order(backend, np):
    ch = mc.Channel(4, backend=backend)
    senders, receivers, per_sender = 3, 3, 300
    results = [[] for _ in range(receivers)]

    def send(sid):
        for seq in range(per_sender):
            ch.send_object({"sid": sid, "seq": seq, "data": np.full(seq % 17 + 1, seq, dtype="i8"),
                            "tail": [sid] * (seq % 5)})

    def recv(rid):
        while True:
            try:
                obj = ch.recv_object()
            except mc.ChannelClosed:
                return
            data = obj["data"]
            assert data.shape == (obj["seq"] % 17 + 1,) and bool((data == obj["seq"]).all())
            assert obj["tail"] == [obj["sid"]] * (obj["seq"] % 5)
            results[rid].append((obj["sid"], obj["seq"]))

    rs = [threading.Thread(target=recv, args=(r,)) for r in range(receivers)]
    ss = [threading.Thread(target=send, args=(s,)) for s in range(senders)]
    for t in rs + ss:
        t.start()
    for t in ss:
        t.join()
    ch.close()
    for t in rs:
        t.join()
    every = sorted(m for r in results for m in r)
    assert every == [(s, q) for s in range(senders) for q in range(per_sender)]
    for r in results:
        for s in range(senders):
            seqs = [q for sid, q in r if sid == s]
            assert seqs == sorted(seqs)
    assert blocks_in_use(ch) == 0


# --- across processes and interpreters --------------------------------------------------------

def test_objects_between_processes_spawn(np):
    ctx = mp.get_context("spawn")
    arena = mc.Arena()
    to_child, from_child = arena.channel(), arena.channel()
    child = ctx.Process(target=check_arrays_in_child, args=(to_child, from_child))
    child.start()
    arrays = {"ints": np.arange(1_000_000, dtype="<i4"),
              "struct": np.ones(1000, dtype=[("a", ">i2"), ("b", "<f8")])["a"].copy(),
              "big_endian": np.arange(5000, dtype=">u2")}
    to_child.send_object({"arrays": arrays, "meta": Point(3, 4, ["spawned"])})
    report = from_child.recv_object(timeout=60)
    child.join(60)
    assert child.exitcode == 0
    assert report["meta"] == Point(3, 4, ["spawned"])
    assert report["views"] == {name: True for name in arrays}  # zero-copy in the child
    assert report["sums"] == {name: int(a.astype("i8").sum()) for name, a in arrays.items()}
    assert blocks_in_use(to_child) == 0  # the child's arrays died with it, blocks came back


def test_objects_between_processes_spawn_round_trip_without_numpy():
    ctx = mp.get_context("spawn")
    to_child, from_child = mc.Channel(), mc.Channel()
    objects = sample_objects() + [pickle.PickleBuffer(bytearray(b"oob" * 50))]
    child = ctx.Process(target=echo_objects, args=(to_child, from_child, len(objects)))
    child.start()
    for obj in objects:
        to_child.send_object(obj)
    replies = [from_child.recv_object(timeout=60) for _ in objects]
    child.join(60)
    assert child.exitcode == 0
    for obj, (type_name, got) in zip(objects[:-1], replies):
        assert type_name == type(obj).__name__ and got == obj
    assert replies[-1][1] == ("memoryview", b"oob" * 50, False, "Buffer")


def test_objects_between_subinterpreters(backend):
    interpreters = pytest.importorskip("memchannel.interpreters")
    to_sub, from_sub = mc.Channel(backend=backend), mc.Channel(backend=backend)
    objects = sample_objects() + [pickle.PickleBuffer(bytearray(b"sub" * 50))]
    with interpreters.create() as interp:
        thread = interp.call_in_thread(echo_objects, to_sub, from_sub, len(objects))
        for obj in objects:
            to_sub.send_object(obj)
        replies = [from_sub.recv_object(timeout=60) for _ in objects]
        thread.join()
        assert thread.exception is None
    for obj, (type_name, got) in zip(objects[:-1], replies):
        assert type_name == type(obj).__name__ and got == obj
    assert replies[-1][1] == ("memoryview", b"sub" * 50, False, "Buffer")


def test_send_object_copy_of_out_of_band_buffers_is_counted():
    np = pytest.importorskip("numpy")
    ch = mc.Channel()
    arr = np.arange(100_000, dtype=np.int64)
    before = ch.stats()["bytes_copied"]
    ch.send_object({"a": arr})
    after = ch.stats()["bytes_copied"]
    assert after - before >= arr.nbytes
    out = ch.recv_object()["a"]
    assert ch.stats()["bytes_copied"] == after  # receiving copies nothing
    assert np.array_equal(out, arr)
