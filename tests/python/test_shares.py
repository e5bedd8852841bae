"""memchannel.share: one block, many read-only holders, with no copy; the block returns to the
arena when the last share is released, wherever (docs/guide-arrays.md, "One array, many
readers: share()"; design: docs/design.md, "Shares")."""

import gc
import multiprocessing as mp
import time

import numpy as np
import pytest

import memchannel as mc

import _tracker_workers as w


def _blocks(arena_channel):
    return arena_channel.stats()["blocks_in_use"]


def _filled(arena, n=1000):
    buf = arena.reserve(shape=(n,), format="d")
    a = np.asarray(buf)
    a[:] = np.arange(n)
    del a
    return buf


def test_every_receiver_sees_the_same_read_only_memory(backend):
    arena = mc.Arena(backend=backend)
    chans = [arena.channel() for _ in range(4)]
    base = _blocks(chans[0])
    buf = _filled(arena)
    assert mc.share(buf, chans) is None
    with pytest.raises(ValueError, match="sent"):
        memoryview(buf)  # consumed, as by send()
    got = [c.recv() for c in chans]
    arrays = [np.asarray(g) for g in got]
    assert all(g.readonly for g in got)
    assert not any(a.flags.writeable for a in arrays)
    assert len({a.__array_interface__["data"][0] for a in arrays}) == 1  # one memory, no copy
    assert all(a.sum() == sum(range(1000)) for a in arrays)
    with pytest.raises(TypeError):
        memoryview(got[0])[0:1] = b"x"
    with pytest.raises(TypeError, match="read-only share"):
        got[0].write(b"x")
    with pytest.raises(ValueError):
        arrays[0][0] = 1.0
    del arrays
    for g in got[:3]:
        g.release()
    assert _blocks(chans[0]) > base  # one share still out
    got[3].release()
    assert _blocks(chans[0]) == base


def test_the_tracker_completes_at_the_last_release(backend):
    arena = mc.Arena(backend=backend)
    chans = [arena.channel() for _ in range(3)]
    t = mc.share(_filled(arena), chans, track=True)
    got = [c.recv() for c in chans]
    for g in got[:2]:
        g.release()
        assert not t.done
    got[2].release()
    assert t.wait(5) and t.done


def test_forwarding_moves_a_share_and_sharing_again_splits_it(backend):
    arena = mc.Arena(backend=backend)
    a, b, c = arena.channel(), arena.channel(), arena.channel()
    base = _blocks(a)
    t = mc.share(_filled(arena), [a], track=True)
    one = a.recv()
    b.send(one)  # forwarded: the share moves
    moved = b.recv()
    assert moved.readonly and np.asarray(moved)[999] == 999
    mc.share(moved, [a, b, c])  # shared again: three shares replace this one
    assert moved.released or "sent" in repr(moved)
    three = [a.recv(), b.recv(), c.recv()]
    assert all(np.asarray(x)[5] == 5 for x in three)
    with pytest.raises(ValueError, match="only the first sharer"):
        mc.share(three[0], [a], track=True)
    for x in three:
        assert not t.done
        x.release()
    assert t.done
    assert _blocks(a) == base


def test_share_indices_run_out_with_a_clear_error():
    arena = mc.Arena(backend="heap")
    ch = arena.channel()
    mc.share(_filled(arena, 4), [ch] * 40)
    held = [ch.recv() for _ in range(40)]
    mc.share(held.pop(), [ch, ch])  # indices 40 and 41
    held += [ch.recv(), ch.recv()]
    with pytest.raises(ValueError, match="share indices are used up; copy it"):
        mc.share(held[-1], [ch])
    assert held[-1].readonly and not held[-1].released  # nothing consumed by the refusal
    for h in held:
        h.release()


def test_bad_input_is_refused_and_consumes_nothing(backend):
    arena = mc.Arena(backend=backend)
    other = mc.Arena(backend=backend)
    ch = arena.channel()
    buf = _filled(arena, 10)
    with pytest.raises(TypeError, match="needs a memchannel.Buffer"):
        mc.share(b"bytes", [ch])
    with pytest.raises(ValueError, match="at least one channel"):
        mc.share(buf, [])
    with pytest.raises(ValueError, match="of the Buffer's arena"):
        mc.share(buf, [ch, other.channel()])
    with pytest.raises(ValueError, match="at most 42 channels"):
        mc.share(buf, [ch] * 43)
    view = memoryview(buf)
    with pytest.raises(BufferError):
        mc.share(buf, [ch])
    view.release()
    assert ch.qsize() == 0
    mc.share(buf, [ch])  # still the caller's: it can be shared now
    assert ch.recv().readonly


def test_a_closed_channel_refuses_its_share_and_the_others_keep_theirs(backend):
    arena = mc.Arena(backend=backend)
    chans = [arena.channel() for _ in range(3)]
    base = _blocks(chans[0])
    chans[1].close()
    with pytest.raises(mc.ChannelClosed) as info:
        mc.share(_filled(arena), chans)
    assert info.value.sent == 2
    got = [chans[0].recv(), chans[2].recv()]
    for g in got:
        g.release()
    assert _blocks(chans[0]) == base


def test_shares_queued_in_a_dropped_channel_are_released(backend):
    arena = mc.Arena(backend=backend)
    keep, drop = arena.channel(), arena.channel()
    base = _blocks(keep)
    t = mc.share(_filled(arena), [keep, drop], track=True)
    drop.close()
    del drop
    gc.collect()
    keep.recv().release()
    assert t.done
    assert _blocks(keep) == base


def test_readers_in_other_processes():
    ctx = mp.get_context("spawn")
    arena = mc.Arena()
    chans = [arena.channel() for _ in range(3)]
    results = ctx.Queue()
    procs = [ctx.Process(target=w.check_share_and_release, args=(c, results, float(sum(range(1000))))) for c in chans]
    for p in procs:
        p.start()
    try:
        t = mc.share(_filled(arena), chans, track=True)
        assert t.wait(60)
        outcomes = [results.get(timeout=30) for _ in procs]
        assert outcomes == [(True, False, True)] * 3  # read-only, not writeable, right data
    finally:
        for p in procs:
            p.join(30)
            p.kill()


def test_a_reader_killed_holding_its_share_gives_it_back():
    ctx = mp.get_context("spawn")
    arena = mc.Arena()
    mine, doomed = arena.channel(), arena.channel()
    base = _blocks(mine)
    ready = ctx.Event()
    p = ctx.Process(target=w.hold_share_then_die, args=(doomed, ready))
    p.start()
    t = mc.share(_filled(arena), [mine, doomed], track=True)
    assert ready.wait(30)
    p.join(30)
    assert p.exitcode == -9
    mine.recv().release()
    assert t.wait(10)  # the wait reaps the dead reader, whose share was the last
    deadline = time.monotonic() + 5
    while _blocks(mine) != base and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _blocks(mine) == base


def test_readers_in_subinterpreters():
    from memchannel import interpreters

    arena = mc.Arena(backend="heap")
    chans = [arena.channel() for _ in range(2)]
    interps = [interpreters.create() for _ in chans]
    try:
        t = mc.share(_filled(arena), chans, track=True)
        for interp, ch in zip(interps, chans):
            interp.prepare_main(ch=ch)
            interp.exec(
                "buf = ch.recv(timeout=10)\n"
                "m = memoryview(buf)\n"  # numpy does not load in subinterpreters
                "assert buf.readonly and m.readonly and m[999] == 999.0\n"
                "m.release()\n"
                "buf.release()\n")
        assert t.wait(5)
    finally:
        for interp in interps:
            interp.close()
