"""Batches (send_many / recv_many, send_objects / recv_objects, Queue.put_many / get_many) and
the C object path's frames (pybind/objects.cc): semantics, not speed (that is bench/)."""

import multiprocessing as mp
import pickle
import struct
import threading
import time

import pytest

import memchannel as mc


def blocks_in_use(ch):
    return ch.stats()["blocks_in_use"]


# --- send_many / recv_many ----------------------------------------------------------------------


def test_send_many_then_recv_many_in_order(backend):
    ch = mc.Channel(backend=backend)
    assert ch.send_many(b"%03d" % i for i in range(100)) == 100
    assert ch.qsize() == 100
    got = ch.recv_many(64)
    assert [bytes(b) for b in got] == [b"%03d" % i for i in range(64)]
    rest = ch.recv_many(1000)
    assert [bytes(b) for b in rest] == [b"%03d" % i for i in range(64, 100)]
    for b in got + rest:
        b.release()
    assert blocks_in_use(ch) == 0


def test_send_many_takes_any_bytes_like_and_moves_reserved_buffers(backend):
    ch = mc.Channel(backend=backend)
    buf = ch.reserve(3)
    memoryview(buf)[:] = b"abc"
    address = buf.address
    copied = ch.stats()["bytes_copied"]
    assert ch.send_many([b"x", bytearray(b"yy"), memoryview(b"zzz"), buf]) == 4
    assert buf.released
    out = ch.recv_many(4)
    assert [bytes(b) for b in out] == [b"x", b"yy", b"zzz", b"abc"]
    assert out[3].address == address  # the reserved block moved, no copy
    assert ch.stats()["bytes_copied"] - copied == 1 + 2 + 3


def test_recv_many_returns_what_is_there_without_waiting_for_more(backend):
    ch = mc.Channel(backend=backend)
    ch.send(b"only")
    start = time.monotonic()
    got = ch.recv_many(10, timeout=5)
    assert [bytes(b) for b in got] == [b"only"]
    assert time.monotonic() - start < 2.5  # it did not wait out the timeout for the other nine


def test_recv_many_waits_for_the_first_message(backend):
    ch = mc.Channel(backend=backend)
    threading.Timer(0.2, lambda: ch.send_many([b"a", b"b"])).start()
    got = ch.recv_many(10, timeout=10)
    assert 1 <= len(got) <= 2 and bytes(got[0]) == b"a"


def test_recv_many_timeouts_and_nonblocking(backend):
    ch = mc.Channel(backend=backend)
    with pytest.raises(mc.Empty):
        ch.recv_many(5, block=False)
    start = time.monotonic()
    with pytest.raises(mc.Empty):
        ch.recv_many(5, timeout=0.2)
    assert time.monotonic() - start >= 0.19


def test_recv_many_argument_errors(backend):
    ch = mc.Channel(backend=backend)
    with pytest.raises(ValueError, match="at least 1"):
        ch.recv_many(0)
    with pytest.raises(ValueError, match=">= 0"):
        ch.recv_many(-3)
    with pytest.raises(TypeError, match="int"):
        ch.recv_many(2.5)
    with pytest.raises(TypeError, match="missing required argument 'max_messages'"):
        ch.recv_many()
    with pytest.raises(ValueError, match="timeout"):
        ch.recv_many(1, timeout=-1)


def test_bounded_send_many_queues_what_fits_then_waits(backend):
    ch = mc.Channel(4, backend=backend)
    received = []

    def drain():
        time.sleep(0.2)
        while len(received) < 10:
            for b in ch.recv_many(3, timeout=10):
                received.append(bytes(b))
                b.release()

    t = threading.Thread(target=drain)
    t.start()
    assert ch.send_many([b"%d" % i for i in range(10)], timeout=10) == 10
    t.join(10)
    assert received == [b"%d" % i for i in range(10)]


def test_bounded_send_many_times_out_with_the_count_queued(backend):
    ch = mc.Channel(3, backend=backend)
    with pytest.raises(mc.Full) as info:
        ch.send_many([b"a", b"b", b"c", b"d", b"e"], timeout=0.1)
    assert info.value.queued == 3
    assert any("3 message(s) of this batch were queued" in n for n in getattr(info.value, "__notes__", []))
    assert [bytes(b) for b in ch.recv_many(10)] == [b"a", b"b", b"c"]  # nothing lost, nothing doubled
    with pytest.raises(mc.Full) as info:
        ch.send_many([b"1", b"2", b"3", b"4"], block=False)
    assert info.value.queued == 3


def test_send_many_stops_at_a_bad_item_keeping_what_went_before(backend):
    ch = mc.Channel(backend=backend)
    with pytest.raises(TypeError, match="bytes-like") as info:
        ch.send_many([b"ok", b"fine", 42, b"never"])
    assert info.value.queued == 2
    assert [bytes(b) for b in ch.recv_many(10)] == [b"ok", b"fine"]

    def failing():
        yield b"first"
        raise RuntimeError("the iterable broke")

    with pytest.raises(RuntimeError, match="the iterable broke") as info:
        ch.send_many(failing())
    assert info.value.queued == 1
    assert bytes(ch.recv()) == b"first"


def test_close_mid_batch(backend):
    ch = mc.Channel(2, backend=backend)
    threading.Timer(0.2, ch.close).start()
    with pytest.raises(mc.ChannelClosed) as info:
        ch.send_many([b"a", b"b", b"c", b"d"], timeout=10)
    assert info.value.queued == 2
    got = ch.recv_many(10)  # a closed channel still drains
    assert [bytes(b) for b in got] == [b"a", b"b"]
    with pytest.raises(mc.ChannelClosed):
        ch.recv_many(10)


def test_batches_longer_than_a_chain_through_a_bounded_channel(backend):
    # Chains are at most 64 messages; a bound of 10 takes part of one, then the batch waits.
    ch = mc.Channel(10, backend=backend)
    n = 300
    received = []

    def drain():
        while len(received) < n:
            for b in ch.recv_many(150, timeout=10):
                received.append(bytes(b))
                b.release()

    t = threading.Thread(target=drain)
    t.start()
    assert ch.send_many((b"%04d" % i for i in range(n)), timeout=10) == n
    t.join(10)
    assert received == [b"%04d" % i for i in range(n)]
    assert blocks_in_use(ch) == 0


def test_recv_many_takes_more_than_a_chain_in_order(backend):
    ch = mc.Channel(backend=backend)
    assert ch.send_many(b"%03d" % i for i in range(200)) == 200
    got = ch.recv_many(150)
    assert [bytes(b) for b in got] == [b"%03d" % i for i in range(150)]
    rest = ch.recv_many(150)
    assert [bytes(b) for b in rest] == [b"%03d" % i for i in range(150, 200)]


def test_buffers_a_batch_did_not_queue_stay_the_callers(backend):
    ch = mc.Channel(2, backend=backend)
    bufs = []
    for i in range(4):
        b = ch.reserve(4)
        memoryview(b)[:] = b"buf%d" % i
        bufs.append(b)
    with pytest.raises(mc.Full) as info:
        ch.send_many(bufs + [b"copy"], timeout=0.1)
    assert info.value.queued == 2
    assert bufs[0].released and bufs[1].released  # sent: ownership moved
    assert not bufs[2].released and not bufs[3].released
    assert bytes(bufs[2]) == b"buf2"  # still usable, and sendable later
    assert [bytes(b) for b in ch.recv_many(10)] == [b"buf0", b"buf1"]
    assert ch.send_many(bufs[2:]) == 2
    assert [bytes(b) for b in ch.recv_many(10)] == [b"buf2", b"buf3"]
    assert blocks_in_use(ch) == 0
    # The same Buffer twice in one batch: the second is a Buffer already sent.
    b = ch.reserve(1)
    with pytest.raises(ValueError, match="was sent") as info:
        ch.send_many([b, b])
    assert info.value.queued == 1
    assert len(ch.recv_many(10)) == 1


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_send_many_larger_than_the_arena_waits_for_room_without_deadlock(backend, kind):
    # The arena holds far fewer messages than one chain: a batch must queue what it has copied
    # before it waits for arena space, or it would wait for blocks it holds itself.
    arena = mc.Arena(capacity=1 << 20, backend=backend)
    ch = arena.channel()
    size = 32 << 10  # about 30 fit in the arena
    n = 100
    received = []

    def drain():
        while len(received) < n:
            for b in ch.recv_many(7, timeout=10):
                received.append(bytes(memoryview(b)[:4]))
                b.release()

    t = threading.Thread(target=drain)
    t.start()
    sent = ch.send_many((kind(b"%04d" % i + b"\0" * (size - 4)) for i in range(n)), timeout=20)
    t.join(20)
    assert sent == n
    assert received == [b"%04d" % i for i in range(n)]
    assert blocks_in_use(ch) == 0


def test_send_many_to_a_full_arena_without_blocking_raises_full_with_the_count(backend):
    arena = mc.Arena(capacity=1 << 20, backend=backend)
    ch = arena.channel()
    with pytest.raises(mc.Full) as info:
        ch.send_many([b"x" * (32 << 10)] * 100, block=False)
    assert 0 < info.value.queued < 100
    assert ch.qsize() == info.value.queued
    got = ch.recv_many(200)
    assert len(got) == info.value.queued


def test_a_corrupt_message_after_the_first_is_raised_by_the_next_batch(backend):
    ch = mc.Channel(backend=backend)
    ch.send(b"good")
    forged = ch.reserve(shape=(2,), format="<d")
    address = forged.address
    ch.send(forged)
    ch.send(b"after")
    # Forge the queued block's format to 'O' (pointers) through its metadata, as a peer could.
    from test_formats import forge  # the same forging helper the format tests use

    forge(address - 64, fmt=b"O")
    first = ch.recv_many(10)
    # The good messages on either side are returned, not lost; the forged one is dropped.
    assert [bytes(b) for b in first] == [b"good", b"after"]
    with pytest.raises(mc.CorruptionError, match="format metadata is corrupt"):
        ch.recv_many(10)
    with pytest.raises(mc.Empty):
        ch.recv_many(10, block=False)
    assert ch.stats()["corruption_count"] == 1
    assert ch.stats()["messages_lost"] == 1


def test_a_corrupt_message_alone_is_raised_at_once(backend):
    ch = mc.Channel(backend=backend)
    forged = ch.reserve(shape=(2,), format="<d")
    address = forged.address
    ch.send(forged)
    from test_formats import forge

    forge(address - 64, fmt=b"O")
    with pytest.raises(mc.CorruptionError, match="format metadata is corrupt"):
        ch.recv_many(10)
    ch.send(b"next")
    got = ch.recv_many(10)
    assert [bytes(b) for b in got] == [b"next"]
    assert blocks_in_use(ch) == 0  # the forged block went back ("next" came inline: no block)


# --- objects ------------------------------------------------------------------------------------


def test_send_objects_recv_objects(backend):
    ch = mc.Channel(backend=backend)
    objs = [(i, "x" * i, {"k": [i]}) for i in range(50)]
    assert ch.send_objects(objs) == 50
    got = ch.recv_objects(30) + ch.recv_objects(30)
    assert got == objs
    assert blocks_in_use(ch) == 0


def test_send_objects_with_arrays_and_large_pickles(backend):
    np = pytest.importorskip("numpy")
    ch = mc.Channel(backend=backend)
    big = "y" * 200_000  # an in-band pickle above the copy-out limit: unpickled from the block
    ch.send_objects([{"a": np.arange(1000)}, big, (1, 2)])
    got = ch.recv_objects(3)
    assert got[0]["a"].sum() == np.arange(1000).sum()
    assert got[1] == big and got[2] == (1, 2)
    del got
    assert blocks_in_use(ch) == 0


def test_an_unpicklable_object_stops_send_objects(backend):
    ch = mc.Channel(backend=backend)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)) as info:
        ch.send_objects([1, 2, lambda: 3, 4])
    assert info.value.queued == 2
    assert ch.recv_objects(10) == [1, 2]
    assert blocks_in_use(ch) == 0


class _FailsToLoad:
    def __reduce__(self):
        return (_boom, ())


def _boom():
    raise ValueError("cannot rebuild")


def test_an_object_that_fails_to_unpickle_mid_batch_is_raised_next(backend):
    ch = mc.Channel(backend=backend)
    ch.send_object("before")
    ch.send_object(_FailsToLoad())
    ch.send_object("after")
    assert ch.recv_objects(10) == ["before"]
    with pytest.raises(ValueError, match="cannot rebuild"):
        ch.recv_objects(10)
    assert ch.recv_objects(10) == ["after"]
    assert blocks_in_use(ch) == 0


def test_malformed_frames_in_a_batch(backend):
    ch = mc.Channel(backend=backend)
    with pytest.raises(mc.CorruptionError, match="not an object message"):
        ch.send(b"raw")
        ch.recv_objects(5)
    forged = ch.reserve(40)
    with memoryview(forged) as mv:
        struct.pack_into("<4sIQ", mv, 0, b"MCO1", 0, 1 << 40)  # pickle longer than the message
    ch.send(forged)
    with pytest.raises(mc.CorruptionError, match="out of bounds"):
        ch.recv_object()
    forged = ch.reserve(16)
    with memoryview(forged) as mv:
        struct.pack_into("<4sIQ", mv, 0, b"XXXX", 0, 0)
    ch.send(forged)
    with pytest.raises(mc.CorruptionError, match="bad magic"):
        ch.recv_object()
    ch.send(b"")  # zero bytes
    with pytest.raises(mc.CorruptionError, match="0-byte message"):
        ch.recv_object()
    assert blocks_in_use(ch) == 0
    ch.send_object("still serving")
    assert ch.recv_objects(1) == ["still serving"]


# --- Queue batches --------------------------------------------------------------------------------


def test_queue_put_many_get_many():
    q = mc.Queue(backend="heap")
    assert q.put_many([(1, "a"), (2, "b"), (3, "c")]) == 3
    assert q.get_many(2) == [(1, "a"), (2, "b")]
    assert q.get_many(10) == [(3, "c")]
    with pytest.raises(mc.Empty):
        q.get_many(10, timeout=0.05)


def test_bounded_queue_put_many_counts_what_it_queued():
    q = mc.Queue(2, backend="heap")
    with pytest.raises(mc.Full) as info:
        q.put_many(range(5), timeout=0.05)
    assert info.value.queued == 2
    assert q.get_many(5) == [0, 1]


def test_joinable_queue_put_many_counts_tasks():
    q = mc.JoinableQueue(2, backend="heap")
    with pytest.raises(mc.Full):
        q.put_many(range(5), timeout=0.05)
    assert q.get_many(5) == [0, 1]
    q.task_done()
    q.task_done()
    with pytest.raises(ValueError, match="too many"):
        q.task_done()  # the three that never went in left no task behind
    q.join()


def test_queue_batches_after_shutdown():
    q = mc.Queue(backend="heap")
    q.put_many([1, 2])
    q.shutdown()
    with pytest.raises(mc.ShutDown):
        q.put_many([3])
    assert q.get_many(10) == [1, 2]
    with pytest.raises(mc.ShutDown):
        q.get_many(10)


def _produce_batches(q, n, batch):
    for start in range(0, n, batch):
        q.put_many([(i, str(i)) for i in range(start, min(n, start + batch))])


def test_batches_between_processes():
    ctx = mp.get_context("spawn")
    q = mc.Queue(64)
    p = ctx.Process(target=_produce_batches, args=(q, 5000, 37))
    p.start()
    got = []
    while len(got) < 5000:
        got.extend(q.get_many(100, timeout=60))
    p.join(60)
    assert p.exitcode == 0
    assert got == [(i, str(i)) for i in range(5000)]
