"""asyncio over channels: recv/send/select awaitables, async for, Queue.get_async/put_async;
cancellation at every await point, many waiters, timeouts, a sender in another process, no
CPU while idle; on the default loop and on uvloop (docs/guide-waiting.md)."""

import asyncio
import multiprocessing as mp
import struct
import threading
import time

import pytest

import memchannel as mc

import _wait_workers as w


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed (make venv installs it)")
        return lambda coro: uvloop.run(coro)
    return asyncio.run


def test_recv_async_waits_for_a_thread_sender(run, backend):
    ch = mc.Channel(backend=backend)

    async def main():
        threading.Timer(0.05, ch.send, args=(b"hello",)).start()
        buf = await ch.recv_async(timeout=10)
        return bytes(buf)

    assert run(main()) == b"hello"


def test_timeouts(run):
    ch = mc.Channel(maxsize=1)

    async def main():
        t0 = time.monotonic()
        with pytest.raises(mc.Empty):
            await ch.recv_async(timeout=0.1)
        assert time.monotonic() - t0 >= 0.09
        with pytest.raises(mc.Empty):
            await mc.select_async([ch, mc.Channel()], timeout=0.05)
        ch.send(b"1")
        with pytest.raises(mc.Full):
            await ch.send_async(b"2", timeout=0.05)
        with pytest.raises(mc.Full):
            await ch.send_async(b"2", timeout=0)
        with pytest.raises(ValueError):
            await ch.recv_async(timeout=-1)
        assert await mc.wait_async([mc.Channel()], timeout=0.05) == []

    run(main())


def test_cancelled_recv_takes_nothing_at_every_await_point(run):
    """Two receivers wait; the first is cancelled after 0..7 loop turns, before or after the
    message was sent: exactly one of them ends with the message, and the other has nothing."""
    async def main():
        for ticks in range(8):
            for send_first in (False, True):
                ch = mc.Channel()
                t1 = asyncio.create_task(ch.recv_async())
                t2 = asyncio.create_task(ch.recv_async())
                await asyncio.sleep(0)
                if send_first:
                    ch.send(b"m")
                for _ in range(ticks):
                    await asyncio.sleep(0)
                t1.cancel()
                if not send_first:
                    ch.send(b"m")
                try:
                    r1 = await t1
                except asyncio.CancelledError:
                    r1 = None
                if r1 is None:  # cancelled in time: the message is the next receiver's
                    assert bytes(await asyncio.wait_for(t2, 10)) == b"m"
                else:  # it completed before the cancel landed: it has the message
                    assert bytes(r1) == b"m"
                    await asyncio.sleep(0.02)
                    assert not t2.done()
                    t2.cancel()
                assert ch.qsize() == 0

    run(main())


def test_cancelled_recv_leaves_the_message_for_a_plain_recv(run):
    async def main():
        for ticks in range(6):
            ch = mc.Channel(backend="heap")
            t = asyncio.create_task(ch.recv_async())
            await asyncio.sleep(0)
            ch.send(b"x")
            for _ in range(ticks):
                await asyncio.sleep(0)
            t.cancel()
            try:
                buf = await t
                assert bytes(buf) == b"x"  # it completed before the cancel: it has it
            except asyncio.CancelledError:
                assert bytes(ch.recv(block=False)) == b"x"  # it did not: the message stayed

    run(main())


def test_cancelled_send_queues_nothing(run):
    async def main():
        ch = mc.Channel(maxsize=1)
        ch.send(b"first")
        t = asyncio.create_task(ch.send_async(b"second"))
        await asyncio.sleep(0.05)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert ch.qsize() == 1
        buf = ch.reserve(8)
        buf.write(b"reserved", 0)
        t = asyncio.create_task(ch.send_async(buf))
        await asyncio.sleep(0.05)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert not buf.released and bytes(buf) == b"reserved"  # still the caller's
        assert bytes(ch.recv()) == b"first"
        await ch.send_async(buf, timeout=5)  # a reserved Buffer moves without a copy
        assert bytes(ch.recv()) == b"reserved"

    run(main())


def test_send_async_waits_for_room_freed_by_a_thread(run):
    ch = mc.Channel(maxsize=2, backend="heap")

    async def main():
        ch.send(b"1")
        ch.send(b"2")
        threading.Timer(0.05, lambda: ch.recv().release()).start()
        await ch.send_async(b"3", timeout=10)
        assert ch.qsize() == 2

    run(main())


def test_a_thousand_awaits_on_a_thousand_channels_use_no_threads(run):
    chans = [mc.Channel(backend="heap" if i % 2 else "shm") for i in range(1000)]

    async def main():
        before = threading.active_count()
        tasks = [asyncio.create_task(ch.recv_async(timeout=60)) for ch in chans]
        await asyncio.sleep(0.1)
        during = threading.active_count()
        assert not any(t.done() for t in tasks)

        def sender():
            for i, ch in enumerate(chans):
                ch.send(struct.pack("<I", i))

        th = threading.Thread(target=sender)
        th.start()
        got = await asyncio.gather(*tasks)
        th.join()
        assert [struct.unpack("<I", g)[0] for g in got] == list(range(1000))
        return before, during

    before, during = run(main())
    assert during == before


def test_many_waiters_on_one_channel_each_get_one(run):
    ch = mc.Channel()

    async def main():
        tasks = [asyncio.create_task(ch.recv_async(timeout=30)) for _ in range(200)]
        await asyncio.sleep(0.05)
        for i in range(200):
            ch.send(struct.pack("<I", i))
        got = await asyncio.gather(*tasks)
        return sorted(struct.unpack("<I", g)[0] for g in got)

    assert run(main()) == list(range(200))


def test_round_trips_with_a_process(run):
    ctx = mp.get_context("spawn")
    inbox, outbox = mc.Channel(), mc.Channel()
    n = 300
    p = ctx.Process(target=w.echo, args=(inbox, outbox, n))
    p.start()

    async def main():
        for i in range(n):
            await inbox.send_async(struct.pack("<I", i))
            buf = await outbox.recv_async(timeout=30)
            assert struct.unpack("<I", buf)[0] == i

    run(main())
    p.join(10)
    assert p.exitcode == 0


def test_select_async_with_a_sender_process(run):
    ctx = mp.get_context("spawn")
    chans = [mc.Channel() for _ in range(5)] + [mc.Channel(backend="heap")]
    p = ctx.Process(target=w.send_after, args=(chans[3], 0.2, b"p"))
    p.start()

    async def main():
        return await mc.select_async(chans, timeout=30)

    ch, buf = run(main())
    assert ch is chans[3] and bytes(buf) == b"p"
    p.join(10)


def test_select_async_fair_closed_and_cancelled(run):
    async def main():
        chans = [mc.Channel() for _ in range(3)]
        for ch in chans:
            for _ in range(30):
                ch.send(b"x")
        served = [0, 0, 0]
        for _ in range(90):
            ch, buf = await mc.select_async(chans)
            served[chans.index(ch)] += 1
        assert min(served) >= 25
        t = asyncio.create_task(mc.select_async(chans))
        await asyncio.sleep(0.02)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        chans[0].send(b"after")
        assert chans[0].qsize() == 1  # the cancelled select took nothing
        ch, buf = await mc.select_async(chans, timeout=1)
        assert ch is chans[0]
        for ch in chans:
            ch.close()
        with pytest.raises(mc.ChannelClosed):
            await mc.select_async(chans, timeout=5)

    run(main())


def test_async_for_ends_at_closed_and_drained(run):
    ch = mc.Channel()

    async def main():
        def feed():
            for i in range(5):
                ch.send(bytes([i]))
                time.sleep(0.01)
            ch.close()

        threading.Thread(target=feed).start()
        return [bytes(b) async for b in ch]

    assert run(main()) == [bytes([i]) for i in range(5)]


def test_objects_and_queues(run):
    async def main():
        ch = mc.Channel(maxsize=1)
        await ch.send_object_async({"a": 1})
        assert await ch.recv_object_async(timeout=1) == {"a": 1}
        q = mc.Queue(maxsize=1)
        await q.put_async([1, 2])
        with pytest.raises(mc.Full):
            await q.put_async("more", timeout=0.05)
        assert await q.get_async(timeout=1) == [1, 2]
        with pytest.raises(mc.Empty):
            await q.get_async(timeout=0.05)
        jq = mc.JoinableQueue()
        await jq.put_async("task")
        assert await jq.get_async() == "task"
        jq.task_done()
        jq.join()

    run(main())


def test_an_idle_await_uses_no_cpu(run):
    ch = mc.Channel()

    async def main():
        t = asyncio.create_task(ch.recv_async())
        await asyncio.sleep(0.05)
        c0 = time.process_time()
        await asyncio.sleep(1.0)
        used = time.process_time() - c0
        ch.send(b"x")
        await t
        return used

    assert run(main()) < 0.2  # a poller would burn the whole second; a sleeper uses ~0


def test_spin_recv_takes_a_message_sent_while_it_spins(backend):
    """The asyncio layer's spin (docs/guide-waiting.md, "A short spin before the loop sleeps"):
    a message sent by another thread during the spin is returned, with the GIL released so that
    the thread can run; a spin that finds nothing returns None after about its window."""
    ch = mc.Channel(backend=backend)
    assert ch._spin_recv(1000) is None
    ch.send(b"there")
    assert bytes(ch._spin_recv(1000)) == b"there"
    hits = 0
    for _ in range(20):
        go = threading.Event()
        t = threading.Thread(target=lambda: (go.wait(), ch.send(b"meanwhile")))
        t.start()
        go.set()
        buf = ch._spin_recv(1_000_000)  # 1 ms
        t.join()
        if buf is not None:
            assert bytes(buf) == b"meanwhile"
            hits += 1
        else:
            assert bytes(ch.recv(timeout=5)) == b"meanwhile"  # nothing lost on a miss
    assert hits > 0
    t0 = time.monotonic()
    assert ch._spin_recv(1_000_000) is None
    assert time.monotonic() - t0 < 0.5
    for bad in (0, -1, 1_000_001):
        with pytest.raises(ValueError, match="ns must be in 1..1000000"):
            ch._spin_recv(bad)
    ch.close()
    with pytest.raises(mc.ChannelClosed):
        ch._spin_recv(1000)


def test_recv_async_stops_spinning_on_an_idle_channel_and_resumes_with_traffic():
    from memchannel import _aio

    ch = mc.Channel()

    async def main():
        d = _aio._dispatcher()
        assert d.can_spin  # asyncio's own loop
        for _ in range(_aio._SPIN_GIVE_UP + 3):
            with pytest.raises(mc.Empty):
                await ch.recv_async(timeout=0.002)
        gave_up = d.spin_misses
        # A message that comes right after the await went to sleep turns spinning back on
        # (a wake-up slower than _SPIN_RESUME_S on a loaded machine does not: a few tries).
        for _ in range(10):
            t = asyncio.create_task(ch.recv_async())
            await asyncio.sleep(0)
            ch.send(b"soon")
            assert bytes(await t) == b"soon"
            if d.spin_misses == 0:
                break
        return gave_up, d.spin_misses

    gave_up, after = asyncio.run(main())
    assert gave_up == _aio._SPIN_GIVE_UP  # it stopped counting: no more spins
    assert after == 0


def test_uvloop_never_spins():
    uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed (make venv installs it)")
    from memchannel import _aio

    async def main():
        return _aio._dispatcher().can_spin

    assert uvloop.run(main()) is False
