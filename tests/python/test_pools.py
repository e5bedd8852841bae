"""Buffer pools: Channel.pool / Arena.pool preallocate blocks that come back to the pool
wherever they are released, in any process (docs/guide-arrays.md, "Reusing frames: pools";
design: docs/design.md, "Buffer pools")."""

import multiprocessing as mp
import threading
import time

import numpy as np
import pytest

import memchannel as mc

import _tracker_workers as w


def test_frames_come_back_to_the_pool_not_the_arena(backend):
    arena = mc.Arena(backend=backend)
    ch = arena.channel()
    base = ch.stats()["blocks_in_use"]
    with ch.pool(shape=(480, 640), format="B", count=3) as pool:
        assert pool.count == 3 and pool.idle == 3
        assert ch.stats()["blocks_in_use"] == base + 3  # the pool's blocks are held for it
        addresses = set()
        for i in range(10):
            buf = pool.reserve(timeout=5)
            assert buf.shape == (480, 640) and buf.format == "B" and not buf.readonly
            addresses.add(buf.address)
            np.asarray(buf)[:] = i
            ch.send(buf)
            got = ch.recv()
            assert np.asarray(got)[0, 0] == i
            got.release()  # back to the pool
        assert len(addresses) <= 3  # only the pool's blocks were used
        assert pool.idle == 3
        assert ch.stats()["blocks_in_use"] == base + 3
    assert pool.closed
    assert ch.stats()["blocks_in_use"] == base  # closed: back to the arena


def test_reserve_waits_while_all_are_out_then_gets_one_back(backend):
    ch = mc.Channel(backend=backend)
    pool = ch.pool(64, count=2)
    held = [pool.reserve(), pool.reserve()]
    assert pool.idle == 0
    t0 = time.monotonic()
    with pytest.raises(mc.Empty, match="every block of the pool is out"):
        pool.reserve(timeout=0.1)
    assert 0.08 < time.monotonic() - t0 < 2
    threading.Timer(0.05, held[0].release).start()
    again = pool.reserve(timeout=10)
    assert again.nbytes == 64
    again.release()
    held[1].release()
    pool.close()
    with pytest.raises(ValueError, match="closed"):
        pool.reserve()


def test_close_while_blocks_are_out_returns_them_as_they_come_back(backend):
    ch = mc.Channel(backend=backend)
    base = ch.stats()["blocks_in_use"]
    pool = ch.pool(1024, count=4)
    out = [pool.reserve() for _ in range(2)]
    pool.close()
    assert ch.stats()["blocks_in_use"] == base + 2  # the idle two went back at once
    for b in out:
        b.release()
    assert ch.stats()["blocks_in_use"] == base


def test_bad_arguments():
    ch = mc.Channel(backend="heap")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="count must be a positive int"):
            ch.pool(64, count=bad)
    with pytest.raises(TypeError):
        ch.pool(64)  # count is required
    with pytest.raises(TypeError, match="needs nbytes or shape"):
        ch.pool(count=2)
    with pytest.raises(TypeError, match="does not pickle"):
        import pickle
        pickle.dumps(ch.pool(8, count=1))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_frames_released_in_another_process_come_back(method):
    ch = mc.Channel()
    base = ch.stats()["blocks_in_use"]
    pool = ch.pool(shape=(1000,), format="d", count=2)
    p = mp.get_context(method).Process(target=w.release_frames, args=(ch, 6))
    p.start()
    try:
        for i in range(6):
            buf = pool.reserve(timeout=30)  # only comes back once the child released one
            np.asarray(buf)[:] = i
            ch.send(buf)
        p.join(30)
        assert p.exitcode == 0
        deadline = time.monotonic() + 5
        while pool.idle != 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.idle == 2
        assert ch.stats()["blocks_in_use"] == base + 2
    finally:
        p.kill()
        pool.close()


def test_a_frame_held_by_a_killed_process_comes_back_to_the_pool():
    ctx = mp.get_context("spawn")
    ch = mc.Channel()
    pool = ch.pool(4096, count=1)
    ready = ctx.Event()
    p = ctx.Process(target=w.hold_frame_then_die, args=(ch, ready))
    p.start()
    ch.send(pool.reserve(timeout=5))
    assert ready.wait(30)
    p.join(30)
    assert p.exitcode == -9
    buf = pool.reserve(timeout=10)  # the wait reaps the dead holder: its frame is back
    assert buf.nbytes == 4096
    buf.release()
    pool.close()


def test_arena_pool_and_shares_of_pool_frames():
    arena = mc.Arena(backend="heap")
    chans = [arena.channel() for _ in range(3)]
    pool = arena.pool(256, count=2)
    buf = pool.reserve()
    buf.write(b"x" * 256)
    t = mc.share(buf, chans, track=True)
    got = [c.recv() for c in chans]
    assert pool.idle == 1
    for g in got:
        g.release()
    assert t.done and pool.idle == 2  # the shared block went back to the pool
    pool.close()
