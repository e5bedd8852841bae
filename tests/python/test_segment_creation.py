"""Arena growth and deadlines: a segment whose creator died is replaced, and every call honours
its timeout (block=False returns at once) however the arena is stuck.

A creator killed inside segment creation leaves its entry of the segment table "creating"; the
C++ tests (tests/cpp/test_shm_growth.cc) kill one at the exact step. Here the entry such a
creator leaves is written into the arena's header directly (the table sits at a fixed offset of
segment 0; see core/arena.h), which is deterministic.
"""

import fcntl
import mmap
import os
import struct
import subprocess
import sys
import textwrap
import time

import pytest

import memchannel as mc

SEGMENT_BYTES_OFFSET = 80  # ArenaHeader::segment_bytes (carve at 64, segment_count at 72)
SEGMENT_CREATING_UNKNOWN = 0xFFFFFFFFFFFFFFFF  # kSegmentCreating: a creating word of no live holder
HOLDERS_OFFSET = 1792  # ArenaHeader::holders (64-byte HolderSlots), core/arena.h
ATTACHED_HOLDERS_OFFSET = 1736
MAX_HOLDERS = 128
PAYLOAD = 256 * 1024
TOLERANCE = 0.05  # the bound: every timeout within 50 ms


def forge_segment_entry(arena, index, value):
    fd = os.open("/dev/shm/" + arena.name, os.O_RDWR)
    try:
        with mmap.mmap(fd, 4096) as m:
            m[SEGMENT_BYTES_OFFSET + 8 * index:SEGMENT_BYTES_OFFSET + 8 * index + 8] = struct.pack("<Q", value)
    finally:
        os.close(fd)


def timed(fn):
    t0 = time.monotonic()
    try:
        fn()
    except (mc.Full, mc.Empty) as e:
        return time.monotonic() - t0, e
    return time.monotonic() - t0, None


def test_entry_left_by_a_dead_creator_is_replaced():
    arena = mc.Arena(capacity=64 << 20, backend="shm")
    ch = arena.channel()
    forge_segment_entry(arena, 1, SEGMENT_CREATING_UNKNOWN)
    held = []
    t0 = time.monotonic()
    for _ in range(24):  # 6 MiB: more than segment 0 holds
        held.append(ch.reserve(PAYLOAD, timeout=2))
    took = time.monotonic() - t0
    assert arena.stats()["segments"] >= 2
    assert took < 1.0, "growth waited %.2f s for a dead creator" % took
    for b in held:
        memoryview(b)[:] = b"\x5a" * PAYLOAD
        ch.send(b)
    for _ in held:
        got = ch.recv(timeout=1)
        assert bytes(got) == b"\x5a" * PAYLOAD
        got.release()
    assert arena.stats()["blocks_in_use"] == 0
    assert arena.stats()["corruption_count"] == 0


def full_arena():
    # Capacity 1 MiB: segment 0 is the whole arena, so nothing can grow.
    arena = mc.Arena(capacity=1 << 20, backend="shm")
    ch = arena.channel()
    held = []
    while True:
        try:
            held.append(ch.reserve(4096, timeout=0))
        except mc.Full:
            break
    return arena, ch, held


def live_creator_word(arena):
    # The creating word of this process's own holder (slot 0, the arena's creator): a creator
    # that is alive and (as far as anyone can tell) still creating segment 1.
    fd = os.open("/dev/shm/" + arena.name, os.O_RDONLY)
    try:
        with mmap.mmap(fd, 16384, prot=mmap.PROT_READ) as m:
            state, incarnation = struct.unpack_from("<II", m, HOLDERS_OFFSET)
    finally:
        os.close(fd)
    assert state == 2
    return (0xFFFFFFFF << 32) | ((incarnation & 0xFFFFFF) << 8) | 1


def arena_waiting_for_a_live_creator():
    # Room to grow (64 MiB), but segment 1 is being created by a live holder that never
    # finishes: segment 0 fills up and every further allocation has to wait for it.
    arena = mc.Arena(capacity=64 << 20, backend="shm")
    ch = arena.channel()
    forge_segment_entry(arena, 1, live_creator_word(arena))
    held = []
    while True:
        try:
            held.append(ch.reserve(4096, timeout=0))
        except mc.Full:
            break
    assert arena.stats()["segments"] == 1
    return arena, ch, held


@pytest.mark.parametrize("case", ["full", "dead-creator", "live-creator"])
def test_calls_honour_their_timeouts_when_the_arena_is_full(case):
    if case == "live-creator":
        arena, ch, held = arena_waiting_for_a_live_creator()
    else:
        arena, ch, held = full_arena()
    if case == "dead-creator":
        forge_segment_entry(arena, 1, SEGMENT_CREATING_UNKNOWN)
    empty = arena.channel()
    calls = {
        "send(block=False)": (lambda: ch.send(b"x" * 4096, block=False), 0.0),
        "send_nowait": (lambda: ch.send_nowait(b"x" * 4096), 0.0),
        "reserve(timeout=0)": (lambda: ch.reserve(4096, timeout=0), 0.0),
        "recv(block=False)": (lambda: empty.recv(block=False), 0.0),
        "send(timeout=0.5)": (lambda: ch.send(b"x" * 4096, timeout=0.5), 0.5),
        "reserve(timeout=0.5)": (lambda: ch.reserve(4096, timeout=0.5), 0.5),
        "recv(timeout=0.5)": (lambda: empty.recv(timeout=0.5), 0.5),
    }
    figures = {}
    for name, (call, timeout) in calls.items():
        took, err = timed(call)
        figures[name] = took
        assert err is not None, name + " succeeded on a full arena"
        if timeout == 0:
            assert took < TOLERANCE, "%s took %.3f s" % (name, took)
        else:
            assert timeout - 0.005 <= took <= timeout + TOLERANCE, "%s took %.3f s" % (name, took)
    print("timings:", {k: round(v, 4) for k, v in figures.items()})
    if case == "live-creator":
        forge_segment_entry(arena, 1, 0)  # the "creator" gives up: growth works again
        extra = ch.reserve(4096, timeout=1)
        assert arena.stats()["segments"] == 2
        extra.release()
    for b in held:
        b.release()
    assert arena.stats()["blocks_in_use"] == 0


def test_block_false_does_not_hold_the_gil_while_stuck():
    # A thread spinning in Python keeps running while the main thread's calls fail: none of
    # them waits with the GIL held (each returns within the bound, so the thread gets turns).
    import threading

    arena, ch, held = full_arena()
    forge_segment_entry(arena, 1, SEGMENT_CREATING_UNKNOWN)
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.001)

    t = threading.Thread(target=ticker)
    t.start()
    try:
        t0 = time.monotonic()
        for _ in range(20):
            with pytest.raises(mc.Full):
                ch.send(b"x" * 4096, block=False)
        took = time.monotonic() - t0
    finally:
        stop.set()
        t.join()
    assert took < 20 * TOLERANCE, took
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert not gaps or max(gaps) < 0.5, max(gaps)
    for b in held:
        b.release()


def test_too_many_open_files_is_named():
    script = textwrap.dedent(
        """
        import os, resource
        import memchannel as mc
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        fds = []
        try:
            while True:
                fds.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        try:
            mc.Channel(backend="shm")
        except mc.MemChannelError as e:
            print("MESSAGE", e)
        else:
            print("MESSAGE none")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    msg = proc.stdout
    assert "too many open files" in msg.lower(), msg
    assert "EMFILE" in msg or "errno 24" in msg, msg


def test_all_holder_slots_taken_is_named():
    # Every slot made to look taken by this (live) process: the next process cannot attach,
    # and the message says why and what to do (not "arena out of capacity").
    ch = mc.Channel(backend="shm")
    name = ch._arena.name
    fd = os.open("/dev/shm/" + name, os.O_RDWR)
    try:
        with mmap.mmap(fd, 16384) as m:
            ours = m[HOLDERS_OFFSET:HOLDERS_OFFSET + 64]
            assert struct.unpack_from("<I", ours)[0] == 2  # kSlotActive: the creator's slot
            saved = m[HOLDERS_OFFSET:HOLDERS_OFFSET + 64 * MAX_HOLDERS]
            saved_count = m[ATTACHED_HOLDERS_OFFSET:ATTACHED_HOLDERS_OFFSET + 4]
            for i in range(1, MAX_HOLDERS):
                m[HOLDERS_OFFSET + 64 * i:HOLDERS_OFFSET + 64 * (i + 1)] = ours
            m[ATTACHED_HOLDERS_OFFSET:ATTACHED_HOLDERS_OFFSET + 4] = struct.pack("<I", MAX_HOLDERS)
            # A live occupant holds its slot's liveness lock (docs/shm.md, "Liveness"): this
            # descriptor's open file description holds those of the forged slots.
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhxxxxqqixxxx", fcntl.F_WRLCK, 0, 1, MAX_HOLDERS - 1, 0))
            try:
                script = textwrap.dedent(
                    """
                    import sys
                    import memchannel as mc
                    try:
                        mc.Channel.attach(bytes.fromhex(sys.argv[1]))
                    except mc.MemChannelError as e:
                        print("MESSAGE", type(e).__name__, e)
                    else:
                        print("MESSAGE attached")
                    """
                )
                proc = subprocess.run([sys.executable, "-c", script, ch.handle.hex()], capture_output=True,
                                      text=True, timeout=60)
            finally:
                m[HOLDERS_OFFSET:HOLDERS_OFFSET + 64 * MAX_HOLDERS] = saved
                m[ATTACHED_HOLDERS_OFFSET:ATTACHED_HOLDERS_OFFSET + 4] = saved_count
    finally:
        os.close(fd)
    assert proc.returncode == 0, proc.stderr
    msg = proc.stdout
    assert "all 128 process slots" in msg, msg
    assert "out of capacity" not in msg, msg
    assert ch.stats()["attached_processes"] == 1
    ch.send(b"still works")
    assert bytes(ch.recv(timeout=1)) == b"still works"
