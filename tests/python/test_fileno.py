"""Channel.fileno(): readable while the channel may have a message or is closed, with
selectors, select.poll/epoll, multiprocessing.connection.wait and loop.add_reader, also when
the sender is another process (docs/guide-waiting.md)."""

import asyncio
import multiprocessing as mp
import multiprocessing.connection
import select
import selectors
import time

import pytest

import memchannel as mc

import _wait_workers as w


def readable(fd, timeout=0.0):
    return bool(select.select([fd], [], [], timeout)[0])


def test_fd_follows_the_channel(backend):
    ch = mc.Channel(backend=backend)
    fd = ch.fileno()
    assert not readable(fd)
    ch.send(b"a")
    ch.send(b"b")
    assert readable(fd, 5)
    ch.recv().release()
    assert readable(fd)  # one message left
    ch.recv().release()
    assert readable(fd)  # may have a message: not looked at yet
    with pytest.raises(mc.Empty):
        ch.recv(block=False)  # a receive that finds it empty turns it off
    assert not readable(fd)
    ch.send(b"c")
    assert readable(fd, 5)
    assert ch.fileno() == fd  # one fd per channel object


def test_fileno_call_rechecks_the_level():
    ch = mc.Channel()
    fd = ch.fileno()
    ch.send(b"x")
    assert readable(fd, 5)
    other = mc.Channel.attach(ch.handle)  # another object takes the message
    other.recv().release()
    assert ch.fileno() == fd and not readable(fd)


def test_closed_channel_stays_readable():
    ch = mc.Channel()
    fd = ch.fileno()
    ch.close()
    assert readable(fd, 5)
    with pytest.raises(mc.ChannelClosed):
        ch.recv(block=False)
    assert readable(fd) and readable(ch.fileno())


def test_selectors_and_epoll_with_a_sender_process():
    ctx = mp.get_context("spawn")
    chans = [mc.Channel() for _ in range(3)]
    sel = selectors.DefaultSelector()
    for i, ch in enumerate(chans):
        sel.register(ch, selectors.EVENT_READ, i)  # selectors take objects with fileno()
    assert sel.select(0) == []
    p = ctx.Process(target=w.send_after, args=(chans[1], 0.3, b"hi"))
    p.start()
    events = sel.select(30)
    assert [key.data for key, _ in events] == [1]
    assert bytes(chans[1].recv(timeout=1)) == b"hi"
    p.join(10)
    ep = select.epoll()
    ep.register(chans[2].fileno(), select.EPOLLIN)
    assert ep.poll(0) == []
    p = ctx.Process(target=w.send_after, args=(chans[2], 0.2, b"again"))
    p.start()
    assert len(ep.poll(30)) == 1
    p.join(10)
    ep.close()
    sel.close()


def test_poll_sees_close_from_another_process():
    ctx = mp.get_context("spawn")
    ch = mc.Channel()
    po = select.poll()
    po.register(ch.fileno(), select.POLLIN)
    p = ctx.Process(target=w.close_after, args=(ch, 0.2))
    p.start()
    assert len(po.poll(30_000)) == 1
    assert ch.closed
    p.join(10)


def test_multiprocessing_connection_wait_mixes_channels_and_pipes():
    ctx = mp.get_context("spawn")
    chans = [mc.Channel() for _ in range(4)]
    r, wpipe = ctx.Pipe(duplex=False)
    assert multiprocessing.connection.wait(chans + [r], timeout=0) == []
    p = ctx.Process(target=w.send_after, args=(chans[3], 0.2, b"x"))
    p.start()
    assert multiprocessing.connection.wait(chans + [r], timeout=30) == [chans[3]]
    chans[3].recv().release()
    wpipe.send("pipe")
    assert multiprocessing.connection.wait(chans + [r], timeout=30) == [r]
    p.join(10)


def test_loop_add_reader_with_a_sender_process():
    ctx = mp.get_context("spawn")
    ch = mc.Channel()
    n = 50

    async def main():
        loop = asyncio.get_running_loop()
        got = []
        done = loop.create_future()

        def on_readable():
            while True:
                try:
                    buf = ch.recv(block=False)
                except mc.Empty:
                    return  # turns the fd off until the next message
                got.append(bytes(buf))
                buf.release()
                if len(got) == n and not done.done():
                    done.set_result(None)

        loop.add_reader(ch.fileno(), on_readable)
        p = ctx.Process(target=w.send_numbered, args=(ch, 7, n))
        p.start()
        await asyncio.wait_for(done, 30)
        loop.remove_reader(ch.fileno())
        p.join(10)
        return got

    got = asyncio.run(main())
    assert len(got) == n


def test_idle_add_reader_does_not_spin():
    ch = mc.Channel()

    async def main():
        loop = asyncio.get_running_loop()
        calls = []
        loop.add_reader(ch.fileno(), lambda: calls.append(1))
        ch.send(b"x")
        ch.recv().release()
        with pytest.raises(mc.Empty):
            ch.recv(block=False)
        await asyncio.sleep(0.3)
        loop.remove_reader(ch.fileno())
        return len(calls)

    assert asyncio.run(main()) <= 1  # at most the one wake-up for the message, no busy loop
