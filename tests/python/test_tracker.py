"""memchannel.Tracker: release notification of a sent message (Channel.send(..., track=True);
docs/guide-waiting.md, "Knowing when a message was released"). Done once every holder let the
message go, in any process: released, dropped with a closed channel, or reclaimed from a receiver
that died; a forwarded message is done at its last release. Sync and asyncio waits, no thread,
no polling."""

import asyncio
import gc
import multiprocessing as mp
import pickle
import threading
import time

import pytest

import memchannel as mc

import _tracker_workers as w


def test_done_when_the_receiver_releases_not_before(backend):
    ch = mc.Channel(backend=backend)
    t = ch.send(b"payload", track=True)
    assert isinstance(t, mc.Tracker)
    assert not t.done and "pending" in repr(t)
    assert t.wait(0.05) is False
    buf = ch.recv()
    assert not t.done  # held by the receiver
    threading.Timer(0.05, buf.release).start()
    t0 = time.monotonic()
    assert t.wait(10) is True
    assert time.monotonic() - t0 < 5
    assert t.done and "done" in repr(t)
    assert ch.send(b"untracked") is None  # track=False: nothing returned, nothing tracked


def test_a_reserved_buffer_sent_without_a_copy_is_tracked(backend):
    arena = mc.Arena(backend=backend)
    ch = arena.channel()
    buf = arena.reserve(1 << 20)
    with memoryview(buf) as m:
        m[:4] = b"data"
    t = ch.send(buf, track=True)
    with ch.recv() as got:
        assert bytes(memoryview(got)[:4]) == b"data"
        assert not t.done
    assert t.wait(5)


def test_a_forwarded_message_is_done_at_its_last_release(backend):
    arena = mc.Arena(backend=backend)
    a, b = arena.channel(), arena.channel()
    t = a.send(b"x" * 100, track=True)
    b.send(a.recv())  # the message moves on: not released
    assert not t.done
    last = b.recv()
    assert not t.done
    last.release()
    assert t.done


def test_a_closed_channel_dropping_its_messages_completes_them(backend):
    ch = mc.Channel(backend=backend)
    trackers = [ch.send(b"m%d" % i, track=True) for i in range(5)]
    ch.close()
    del ch
    gc.collect()
    assert all(t.done for t in trackers)


def test_a_failed_tracked_send_raises_and_keeps_nothing(backend):
    ch = mc.Channel(maxsize=1, backend=backend)
    ch.send(b"fills it")
    used = ch.stats()["blocks_in_use"]
    with pytest.raises(mc.Full):
        ch.send(b"no room", block=False, track=True)
    assert ch.stats()["blocks_in_use"] == used  # the copy went back to the arena
    arena = mc.Arena(backend=backend)
    other = arena.channel()
    buf = arena.reserve(10)
    with pytest.raises(TypeError):
        ch.send(b"x", track=True, bogus=1)
    t = other.send(buf, track=True)
    assert not t.done
    other.recv().release()
    assert t.done


def test_trackers_do_not_pickle():
    t = mc.Channel(backend="heap").send(b"x", track=True)
    with pytest.raises(TypeError, match="does not pickle"):
        pickle.dumps(t)
    with pytest.raises(TypeError):
        mc.Tracker()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_receiver_in_another_process(method):
    ch = mc.Channel()
    p = mp.get_context(method).Process(target=w.hold_then_release, args=(ch, 0.2))
    p.start()
    try:
        t = ch.send(b"to a process", track=True)
        assert t.wait(30) is True
        p.join(30)
        assert p.exitcode == 0
    finally:
        p.kill()


def test_a_receiver_killed_while_holding_it_completes_it():
    ctx = mp.get_context("spawn")
    ch = mc.Channel()
    ready = ctx.Event()
    p = ctx.Process(target=w.receive_then_die, args=(ch, ready))
    p.start()
    t = ch.send(b"to a doomed process", track=True)
    assert ready.wait(30)
    p.join(30)
    assert p.exitcode == -9
    t0 = time.monotonic()
    assert t.wait(10) is True  # the wait sweeps for dead holders: no explicit reap
    assert time.monotonic() - t0 < 5


def test_forwarded_through_another_process():
    arena = mc.Arena()
    inbox, outbox = arena.channel(), arena.channel()
    p = mp.get_context("spawn").Process(target=w.forward, args=(inbox, outbox))
    p.start()
    t = inbox.send(b"round the world", track=True)
    buf = outbox.recv(timeout=30)
    p.join(30)
    assert not t.done  # forwarded, and held here
    buf.release()
    assert t.done


def test_a_subinterpreter_receiver():
    from memchannel import interpreters

    ch = mc.Channel(backend="heap")
    interp = interpreters.create()
    try:
        t = ch.send(b"to an interpreter", track=True)
        interp.prepare_main(ch=ch)
        interp.exec("buf = ch.recv(timeout=10)")
        assert not t.done
        interp.exec("buf.release()")
        assert t.wait(5)
    finally:
        interp.close()


def test_wait_async_with_a_receiver_process():
    ch = mc.Channel()

    async def main():
        p = mp.get_context("spawn").Process(target=w.hold_then_release, args=(ch, 0.2))
        p.start()
        try:
            t = ch.send(b"async", track=True)
            assert await t.wait_async(0.01) is False
            assert await t.wait_async(30) is True
            assert await t.wait_async(0) is True  # done: at once
        finally:
            p.join(30)

    asyncio.run(main())


def test_many_trackers_awaited_on_one_loop_use_no_threads():
    ch = mc.Channel(backend="heap")

    async def main():
        trackers = [ch.send(b"%d" % i, track=True) for i in range(200)]
        threads = threading.active_count()
        waits = [asyncio.ensure_future(t.wait_async(30)) for t in trackers]
        await asyncio.sleep(0.01)
        assert not any(f.done() for f in waits)
        assert threading.active_count() == threads
        for _ in trackers:
            ch.recv().release()
        assert all(await asyncio.gather(*waits))

    asyncio.run(main())


def test_a_cancelled_wait_async_leaves_the_tracker_working():
    ch = mc.Channel(backend="heap")

    async def main():
        t = ch.send(b"x", track=True)
        fut = asyncio.ensure_future(t.wait_async())
        await asyncio.sleep(0.01)
        fut.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fut
        ch.recv().release()
        assert await t.wait_async(5) is True

    asyncio.run(main())
