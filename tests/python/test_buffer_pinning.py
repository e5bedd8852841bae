"""No use after release, from any thread (docs/reliability.md item 21).

Buffer.write() of 256 KiB or more copies with the GIL released. While it copies, the Buffer is
pinned: release() and send() from another thread raise BufferError instead of freeing the
block (whose next owner the rest of the copy would overwrite) or queueing a message that keeps
changing after recv(). The other copies that run without the GIL read from a source pinned by
the buffer protocol (send() of a Buffer of another arena, send_object's out-of-band buffers,
write() from a Buffer), so release() of that source raises BufferError too.
"""

import threading

import pytest

import memchannel as mc

SIZE = 64 << 20  # the reproduction: a 64 MiB write
TRIALS = 4
TAIL = 4096


def racing_writer(buf, source):
    """Starts buf.write(source) in a thread; returns (thread, started event, errors list)."""
    started = threading.Event()
    errors = []

    def run():
        started.set()
        try:
            buf.write(source)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    return t, started, errors


@pytest.mark.parametrize("backend", ["heap", "shm"])
def test_release_during_a_large_write_never_frees_the_block_under_the_copy(backend):
    arena = mc.Arena(capacity=4 * SIZE, backend=backend)
    ch = arena.channel()
    source = b"\xaa" * SIZE
    marker = b"\x55" * TAIL
    refused = 0
    for trial in range(TRIALS):
        buf = ch.reserve(SIZE)
        writer, started, errors = racing_writer(buf, source)
        started.wait()
        # Release as soon as possible, while the copy runs: pinned, it must refuse until the
        # write has returned (the old code freed the block at once).
        while True:
            try:
                buf.release()
                break
            except BufferError as exc:
                assert "write()" in str(exc)
                refused += 1
        # The block's next owner (the free list hands back the same block) marks its tail;
        # a copy still running would overwrite the mark.
        nxt = ch.reserve(SIZE)
        nxt.write(marker, SIZE - TAIL)
        writer.join()
        assert errors == [], errors
        with memoryview(nxt) as view:
            tail = bytes(view[SIZE - TAIL:])
        assert tail == marker, f"trial {trial}: the write went on into the block's next owner"
        nxt.release()
    assert refused > 0, "release() never ran during a write: the race was not exercised"
    assert ch.stats()["blocks_in_use"] == 0


@pytest.mark.parametrize("backend", ["heap", "shm"])
def test_send_during_a_large_write_is_refused_and_the_message_never_changes(backend):
    arena = mc.Arena(capacity=4 * SIZE, backend=backend)
    ch = arena.channel()
    source = b"\xaa" * SIZE
    refused = 0
    for trial in range(TRIALS):
        buf = ch.reserve(SIZE)
        writer, started, errors = racing_writer(buf, source)
        started.wait()
        while True:
            try:
                ch.send(buf)
                break
            except BufferError as exc:
                assert "write()" in str(exc)
                refused += 1
        got = ch.recv()
        with memoryview(got) as view:
            first = bytes(view[SIZE - TAIL:])
            writer.join()
            assert errors == [], errors
            assert bytes(view[SIZE - TAIL:]) == first == b"\xaa" * TAIL, f"trial {trial}: the message changed"
        got.release()
    assert refused > 0, "send() never ran during a write: the race was not exercised"
    assert ch.stats()["blocks_in_use"] == 0


def test_pin_is_dropped_when_the_write_returns_or_fails(backend):
    ch = mc.Arena(capacity=64 << 20, backend=backend).channel()
    buf = ch.reserve(1 << 20)
    assert buf.write(b"\x01" * (1 << 20)) == 1 << 20  # a GIL-released copy
    with pytest.raises(ValueError, match="overruns"):
        buf.write(b"\x01" * (1 << 20), 1)
    with pytest.raises(TypeError):
        buf.write(object())
    buf.release()  # nothing pins it any more
    assert buf.released


def test_write_from_a_view_of_itself_is_a_memmove(backend):
    ch = mc.Channel(backend=backend)
    n = 1 << 20
    buf = ch.reserve(n)
    pattern = bytes(range(256)) * (n // 256)
    buf.write(pattern)
    with memoryview(buf) as view:
        buf.write(view[: n - 4096], 4096)  # overlapping, GIL released (>= 256 KiB)
    with memoryview(buf) as view:
        assert bytes(view[4096:]) == pattern[: n - 4096]
    buf.release()


@pytest.mark.parametrize("backend", ["heap", "shm"])
def test_the_source_of_a_gil_released_copy_cannot_be_released(backend):
    """send() of a Buffer of another arena copies it without the GIL: the source is exported
    for the copy, so its release() from another thread raises BufferError."""
    src_channel = mc.Arena(capacity=4 * SIZE, backend=backend).channel()
    dst_channel = mc.Arena(capacity=4 * SIZE, backend=backend).channel()
    refused = 0
    for _ in range(TRIALS):
        src = src_channel.reserve(SIZE)
        src.write(b"\xaa" * SIZE)
        started = threading.Event()
        outcome = []

        def release_loop():
            started.wait()
            while True:
                try:
                    src.release()
                    outcome.append("released")
                    return
                except BufferError:
                    outcome.append("refused")

        t = threading.Thread(target=release_loop)
        t.start()
        started.set()
        try:
            dst_channel.send(src)  # the copy into dst's arena
        except ValueError:  # the release won the race before the copy began: nothing to check
            t.join()
            continue
        t.join()
        refused += outcome.count("refused")
        with dst_channel.recv() as got, memoryview(got) as view:
            assert bytes(view[-TAIL:]) == b"\xaa" * TAIL and bytes(view[:TAIL]) == b"\xaa" * TAIL
        assert outcome[-1] == "released"
    assert refused > 0, "release() never ran during the copy: the race was not exercised"
    assert src_channel.stats()["blocks_in_use"] == 0
    assert dst_channel.stats()["blocks_in_use"] == 0
