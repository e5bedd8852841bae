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
    assert _blocks(chans[0]) == base + 1
    assert mc.share(buf, chans) is None
    assert _blocks(chans[0]) == base + 1  # sharing adds no data block (tokens count as nodes)
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


def test_share_object_pickles_once_and_every_receivers_arrays_view_one_block(backend):
    arena = mc.Arena(backend=backend)
    chans = [arena.channel() for _ in range(3)]
    base = _blocks(chans[0])
    frame = np.arange(100_000, dtype=np.float32).reshape(100, 1000)
    copied = chans[0].stats()["bytes_copied"]
    t = mc.share_object({"frame": frame, "id": 7}, chans, track=True)
    assert chans[0].stats()["bytes_copied"] - copied < frame.nbytes + 1024  # one copy in, not three
    objs = [c.recv_object() for c in chans]
    assert all(o["id"] == 7 and np.array_equal(o["frame"], frame) for o in objs)
    assert not any(o["frame"].flags.writeable for o in objs)
    assert len({o["frame"].__array_interface__["data"][0] for o in objs}) == 1
    assert not t.done
    del objs
    gc.collect()
    assert t.wait(5)
    assert _blocks(chans[0]) == base


def test_share_object_without_arrays_and_its_refusals(backend):
    arena = mc.Arena(backend=backend)
    a, b = arena.channel(), arena.channel()
    base = _blocks(a)
    mc.share_object(("small", 1), [a, b])
    assert a.recv_object() == ("small", 1) and b.recv_object() == ("small", 1)
    with pytest.raises(ValueError, match="at least one channel"):
        mc.share_object(1, [])
    with pytest.raises(ValueError, match="of the Buffer's arena"):
        mc.share_object(np.zeros(10), [a, mc.Channel(backend=backend)])
    assert _blocks(a) == base  # the refused frame went back to the arena


def _frame(pub, value):
    buf = pub.reserve(8)
    buf.write(bytes([value]) * 8)
    return buf


def test_publisher_block_policy_loses_nothing_and_times_out_when_a_reader_stalls():
    pub = mc.Publisher(mc.Arena(backend="heap"), policy="block")
    fast, slow = pub.subscribe(maxsize=2), pub.subscribe(maxsize=2)
    for i in range(2):
        pub.publish(_frame(pub, i))
    with pytest.raises(mc.Full) as info:
        pub.publish(_frame(pub, 9), timeout=0.05)  # both full: nobody got it
    assert info.value.sent == 0
    got = [bytes(memoryview(fast.recv()))[0] for _ in range(2)]
    assert got == [0, 1] and slow.qsize() == 2


def test_publisher_drop_oldest_keeps_the_newest_and_skip_leaves_the_slow_one_out():
    pub = mc.Publisher(mc.Arena(backend="heap"), policy="drop_oldest")
    slow = pub.subscribe(maxsize=2)
    for i in range(5):
        pub.publish(_frame(pub, i))
    assert pub.dropped == 3
    assert [bytes(memoryview(slow.recv()))[0] for _ in range(2)] == [3, 4]

    skip = mc.Publisher(mc.Arena(backend="heap"), policy="skip")
    lagging, keeping_up = skip.subscribe(maxsize=1), skip.subscribe(maxsize=8)
    for i in range(3):
        skip.publish(_frame(skip, i))
    assert skip.skipped == 2
    assert bytes(memoryview(lagging.recv()))[0] == 0
    assert [bytes(memoryview(keeping_up.recv()))[0] for _ in range(3)] == [0, 1, 2]


def test_publisher_forgets_closed_subscribers_and_refuses_unknown_policies():
    with pytest.raises(ValueError, match="policy must be one of"):
        mc.Publisher(policy="newest")
    pub = mc.Publisher(mc.Arena(backend="heap"))
    a, b = pub.subscribe(), pub.subscribe()
    base = _blocks(a)
    b.close()
    t = pub.publish(_frame(pub, 1), track=True)
    assert pub.subscribers == [a]
    a.recv().release()
    assert t.done and _blocks(a) == base


def test_four_readers_threads_an_interpreter_and_a_process_see_one_block():
    """Two threads and a subinterpreter (one process: the same address) and another process
    (the same bytes), all of one share() call; blocks_in_use is unchanged by sharing."""
    import hashlib
    import queue
    import threading

    from memchannel import interpreters

    arena = mc.Arena()
    chans = [arena.channel() for _ in range(4)]
    base = _blocks(chans[0])
    buf = _filled(arena, 100_000)
    with memoryview(buf) as m:
        digest = hashlib.sha256(m).hexdigest()
    before = _blocks(chans[0])
    t = mc.share(buf, chans, track=True)
    assert _blocks(chans[0]) == before  # sharing made no data block

    seen = queue.Queue()

    def reader(ch):
        with ch.recv(timeout=30) as b:
            with memoryview(b) as m:
                seen.put((b.address, b.readonly, m.readonly, hashlib.sha256(m).hexdigest()))

    threads = [threading.Thread(target=reader, args=(c,)) for c in chans[:2]]
    for th in threads:
        th.start()
    interp = interpreters.create()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    p = ctx.Process(target=w.share_digest, args=(chans[3], results))
    p.start()
    try:
        back = mc.Channel(backend="heap")
        interp.prepare_main(ch=chans[2], back=back)
        interp.exec(
            "import hashlib\n"
            "b = ch.recv(timeout=30)\n"
            "m = memoryview(b)\n"
            "address, ro, mro, digest = b.address, b.readonly, m.readonly, hashlib.sha256(m).hexdigest()\n"
            "m.release()\n"
            "b.release()\n"
            "back.send_object((address, ro, mro, digest))\n")
        for th in threads:
            th.join(30)
        in_process = [seen.get(timeout=5) for _ in threads] + [back.recv_object(timeout=5)]
        addresses = {a for a, _, _, _ in in_process}
        assert len(addresses) == 1  # two threads and a subinterpreter: one address
        assert all((ro, mro, d) == (True, True, digest) for _, ro, mro, d in in_process)
        assert results.get(timeout=30) == (True, True, digest)  # another process: the same bytes
        assert t.wait(30)
    finally:
        interp.close()
        p.join(30)
        p.kill()
    assert _blocks(chans[0]) == base
