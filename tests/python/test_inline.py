"""Small messages inline: up to 64 bytes of plain bytes travel in their queue node, with no data
block (docs/design.md, "Small messages inline"). What a user can see: the same Buffer as before
(bytes, memoryview, numpy, writable, release, with), no block held in the arena while queued or
received, forwarding and share() of such a Buffer, batches mixing small and large, and a
bytearray pinned while a send of it waits."""

import threading
import time

import pytest

import memchannel as mc

np = pytest.importorskip("numpy")

INLINE = 64


def blocks(ch):
    return ch.stats()["blocks_in_use"]


@pytest.fixture(params=["heap", "shm"])
def ch(request):
    c = mc.Channel(backend=request.param)
    yield c
    c.close()


@pytest.mark.parametrize("n", [0, 1, 7, 8, 63, 64])
def test_small_messages_hold_no_block_and_come_back_whole(ch, n):
    data = bytes(range(n))
    ch.send(data)
    assert blocks(ch) == 0 and ch.qsize() == 1 and ch.stats()["bytes_queued"] == n
    got = ch.recv()
    assert blocks(ch) == 0, "a received inline message holds nothing in the arena"
    assert bytes(got) == data and len(got) == n and got.nbytes == n
    assert got.format == "B" and tuple(got.shape) == (n,)
    with memoryview(got) as mv:
        assert mv.tobytes() == data and not mv.readonly
    got.release()
    with pytest.raises(ValueError, match="released"):
        memoryview(got)


def test_65_bytes_hold_a_block(ch):
    ch.send(b"x" * (INLINE + 1))
    assert blocks(ch) == 1
    assert bytes(ch.recv()) == b"x" * (INLINE + 1)


def test_an_inline_buffer_is_writable_and_numpy_views_it(ch):
    ch.send(bytes(16))
    got = ch.recv()
    arr = np.asarray(got)
    arr[:] = 7
    assert bytes(got) == b"\x07" * 16
    got.write(b"ab", 3)
    assert bytes(got)[:6] == b"\x07\x07\x07ab\x07"
    with pytest.raises(BufferError):
        got.release()  # an array still views it, as for a block
    del arr
    with got:
        pass
    assert got.released


def test_what_goes_inline_other_bytes_like_objects(ch):
    ch.send(bytearray(b"ba"))
    ch.send(memoryview(b"mv"))
    ch.send(np.frombuffer(b"np", dtype=np.uint8))
    assert blocks(ch) == 0
    # Typed, multi-dimensional or strided: a block, with its metadata.
    ch.send(np.arange(4, dtype=np.int16))
    ch.send(memoryview(b"abcd").cast("B", shape=[2, 2]))
    ch.send(memoryview(b"abcdef")[::2])
    assert blocks(ch) == 3
    assert [bytes(ch.recv()) for _ in range(3)] == [b"ba", b"mv", b"np"]
    typed = ch.recv()
    assert typed.format in ("h", "<h", "=h") and tuple(typed.shape) == (4,)
    assert tuple(ch.recv().shape) == (2, 2)
    assert bytes(ch.recv()) == b"ace"


def test_a_tracked_small_message_uses_a_block_and_completes(ch):
    t = ch.send(b"tracked", track=True)
    assert blocks(ch) == 1
    assert not t.done
    ch.recv().release()
    assert t.wait(5)


def test_forwarding_an_inline_buffer_sends_it_inline_again(ch):
    other = mc.Channel(arena=ch._arena)
    ch.send(b"hop")
    got = ch.recv()
    other.send(got)
    assert got.released, "a forwarded Buffer is used up, as a forwarded block is"
    assert blocks(ch) == 0
    assert bytes(other.recv()) == b"hop"
    other.close()


def test_forwarding_to_another_arena_copies(ch):
    elsewhere = mc.Channel(backend="heap")
    ch.send(b"far")
    got = ch.recv()
    elsewhere.send(got)
    assert bytes(got) == b"far", "a copy: the Buffer stays the sender's"
    assert bytes(elsewhere.recv()) == b"far"
    elsewhere.close()


def test_share_of_an_inline_buffer_gives_it_a_block(ch):
    readers = [mc.Channel(arena=ch._arena) for _ in range(2)]
    ch.send(b"shared")
    got = ch.recv()
    mc.share(got, readers)
    views = [r.recv() for r in readers]
    assert [bytes(v) for v in views] == [b"shared", b"shared"]
    assert all(v.readonly for v in views)
    assert blocks(ch) >= 1
    for v in views:
        v.release()
    for r in readers:
        r.close()
    assert blocks(ch) == 0


def test_batches_mix_small_and_large_in_order(ch):
    msgs = [bytes([i]) * (i % 3 * 50) for i in range(200)]  # 0, 50 and 100 bytes
    assert ch.send_many(msgs) == 200
    assert blocks(ch) == sum(1 for m in msgs if len(m) > INLINE)
    got = []
    while len(got) < 200:
        got += [bytes(b) for b in ch.recv_many(64)]
    assert got == msgs
    assert blocks(ch) == 0


def test_objects_that_pickle_small_round_trip(ch):
    for obj in [(1, 2, 3), "x", {"a": 1}, None, 7.5]:
        ch.send_object(obj)
        assert ch.recv_object() == obj
    ch.send_objects([(i, "s") for i in range(100)])
    out = []
    while len(out) < 100:
        out += ch.recv_objects(64)
    assert out == [(i, "s") for i in range(100)]
    assert blocks(ch) == 0


def test_a_bytearray_stays_pinned_while_its_send_waits():
    ch = mc.Channel(maxsize=1)
    ch.send(b"first")
    data = bytearray(b"second")
    errors = []

    def sender():
        try:
            ch.send(data, timeout=10)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=sender)
    t.start()
    time.sleep(0.2)
    with pytest.raises(BufferError):
        data.extend(b"!")  # exported while the send waits: cannot be resized under it
    assert bytes(ch.recv()) == b"first"
    t.join(10)
    assert not errors
    assert bytes(ch.recv()) == b"second"
    data.extend(b"!")  # released after the send


def test_a_million_small_messages_cost_128_bytes_each():
    ch = mc.Channel(backend="shm")
    before = ch.stats()["carved_bytes"]
    payload = b"m" * INLINE
    n = 100_000
    ch.send_many(payload for _ in range(n))
    carved = ch.stats()["carved_bytes"] - before
    assert carved == n * 128, carved
    assert blocks(ch) == 0
    got = 0
    while got < n:
        got += len(ch.recv_many(64))
    ch.close()
