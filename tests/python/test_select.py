"""memchannel.select / select_object / wait over channels of mixed arenas and backends, with
senders in threads, subinterpreters and processes (docs/guide-waiting.md)."""

import collections
import multiprocessing as mp
import os
import signal
import struct
import threading
import time

import pytest

import memchannel as mc
from memchannel import _memchannel, interpreters

import _wait_workers as w


def mixed_channels(n, maxsize=0):
    """n channels alternating heap and shm backends, some sharing an arena, some not."""
    shared_arena = mc.Arena(backend="shm")
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out.append(mc.Channel(maxsize, backend="heap"))
        elif kind == 1:
            out.append(mc.Channel(maxsize, backend="shm"))
        else:
            out.append(shared_arena.channel(maxsize))
    return out


@pytest.mark.parametrize("n", [2, 5, 16])
def test_select_receives_every_message_once_from_thread_senders(n):
    chans = mixed_channels(n)
    per = 300
    threads = [threading.Thread(target=w.send_numbered, args=(ch, i, per)) for i, ch in enumerate(chans)]
    for t in threads:
        t.start()
    seen = [0] * n
    for _ in range(n * per):
        ch, buf = mc.select(chans, timeout=30)
        tag, seq = struct.unpack("<II", buf)
        buf.release()
        assert ch is chans[tag]
        assert seq == seen[tag]  # per-sender order kept
        seen[tag] += 1
    for t in threads:
        t.join()
    assert seen == [per] * n
    with pytest.raises(mc.Empty):
        mc.select(chans, timeout=0)


def test_select_takes_exactly_one_message():
    a, b = mc.Channel(), mc.Channel(backend="heap")
    a.send(b"a")
    b.send(b"b")
    ch, buf = mc.select([a, b])
    assert bytes(buf) == (b"a" if ch is a else b"b")
    other = b if ch is a else a
    assert other.qsize() == 1 and ch.qsize() == 0


def test_select_is_fair_between_always_ready_channels():
    chans = mixed_channels(4)
    for ch in chans:
        for _ in range(200):
            ch.send(b"x")
    served = collections.Counter()
    for _ in range(400):
        ch, buf = mc.select(chans)
        buf.release()
        served[chans.index(ch)] += 1
    counts = [served[i] for i in range(4)]
    assert min(counts) > 0, counts
    assert max(counts) - min(counts) <= 4, counts  # rotated: near-equal turns


def test_closed_and_drained_channels_are_skipped_then_channel_closed():
    a, b, c = mc.Channel(), mc.Channel(backend="heap"), mc.Channel()
    a.close()
    b.send(b"left")
    b.close()
    ch, buf = mc.select([a, b, c], timeout=1)
    assert ch is b and bytes(buf) == b"left"
    with pytest.raises(mc.Empty):
        mc.select([a, b, c], timeout=0.05)
    c.close()
    with pytest.raises(mc.ChannelClosed):
        mc.select([a, b, c], timeout=5)


def test_select_times_out_with_empty_and_zero_means_one_look():
    chans = mixed_channels(3)
    t0 = time.monotonic()
    with pytest.raises(mc.Empty):
        mc.select(chans, timeout=0.1)
    assert time.monotonic() - t0 >= 0.09
    with pytest.raises(mc.Empty):
        mc.select(chans, timeout=0)


def test_close_while_blocked_in_select_wakes_it():
    chans = mixed_channels(4)
    got = []

    def selector():
        try:
            mc.select(chans, timeout=30)
        except mc.ChannelClosed as e:
            got.append(e)

    t = threading.Thread(target=selector)
    t.start()
    time.sleep(0.1)
    for ch in chans:
        ch.close()
    t.join(10)
    assert not t.is_alive() and len(got) == 1


def test_closing_races_with_sends_lose_nothing():
    for _ in range(20):
        chans = mixed_channels(3)
        counts = [0, 0, 0]

        def sender(i, ch):
            n = 0
            try:
                while True:
                    ch.send(struct.pack("<I", n))
                    n += 1
            except mc.ChannelClosed:
                counts[i] = n

        threads = [threading.Thread(target=sender, args=(i, ch)) for i, ch in enumerate(chans)]
        for t in threads:
            t.start()
        closers = [threading.Timer(0.005 * (i + 1), ch.close) for i, ch in enumerate(chans)]
        for c in closers:
            c.start()
        received = [0, 0, 0]
        try:
            while True:
                ch, buf = mc.select(chans, timeout=10)
                buf.release()
                received[chans.index(ch)] += 1
        except mc.ChannelClosed:
            pass
        for t in threads + closers:
            t.join()
        assert received == counts


def test_two_selects_on_shared_channels_split_the_messages():
    chans = mixed_channels(4)
    total = 2000
    results = [[], []]

    def receiver(k):
        try:
            while True:
                ch, buf = mc.select(chans, timeout=10)
                results[k].append(bytes(buf))
                buf.release()
        except mc.ChannelClosed:
            pass

    rs = [threading.Thread(target=receiver, args=(k,)) for k in range(2)]
    for r in rs:
        r.start()
    for i in range(total):
        chans[i % 4].send(struct.pack("<I", i))
    for ch in chans:
        ch.close()
    for r in rs:
        r.join(30)
    got = sorted(struct.unpack("<I", m)[0] for m in results[0] + results[1])
    assert got == list(range(total))


def test_select_with_subinterpreter_senders():
    chans = mixed_channels(6)
    per = 200
    workers = [interpreters.create() for _ in range(2)]
    threads = [wk.call_in_thread(w.send_each_numbered, chans[k::2], per) for k, wk in enumerate(workers)]
    n = 0
    for _ in range(6 * per):
        ch, buf = mc.select(chans, timeout=30)
        buf.release()
        n += 1
    for t in threads:
        t.join()
        assert t.result == per
    for wk in workers:
        wk.close()
    assert n == 6 * per


def test_select_with_a_sender_in_another_process_wakes_from_sleep():
    ctx = mp.get_context("spawn")
    chans = [mc.Channel() for _ in range(8)]
    chans.append(mc.Channel(backend="heap"))  # not shared with the child: must not matter
    p = ctx.Process(target=w.send_after, args=(chans[5], 0.5, b"from child"))
    p.start()
    try:
        ch, buf = mc.select(chans, timeout=30)
        assert ch is chans[5] and bytes(buf) == b"from child"
    finally:
        p.join(10)
    assert p.exitcode == 0


def test_select_over_processes_each_sending_many():
    ctx = mp.get_context("spawn")
    chans = [mc.Channel(maxsize=64) for _ in range(4)]
    per = 2000
    ps = [ctx.Process(target=w.send_numbered, args=(ch, i, per)) for i, ch in enumerate(chans)]
    for p in ps:
        p.start()
    seen = [0] * 4
    for _ in range(4 * per):
        ch, buf = mc.select(chans, timeout=60)
        tag, seq = struct.unpack("<II", buf)
        buf.release()
        assert seq == seen[tag]
        seen[tag] += 1
    for p in ps:
        p.join(30)
        assert p.exitcode == 0
    assert seen == [per] * 4


def test_select_object():
    a, b = mc.Channel(), mc.Channel(backend="heap")
    b.send_object({"k": [1, 2]})
    ch, obj = mc.select_object([a, b], timeout=1)
    assert ch is b and obj == {"k": [1, 2]}


def test_wait_is_level_triggered_and_takes_nothing():
    a, b, c = mixed_channels(3)
    assert mc.wait([a, b, c], timeout=0) == []
    assert mc.wait([a, b, c], timeout=0.05) == []
    c.send(b"1")
    a.send(b"2")
    assert mc.wait([a, b, c]) == [a, c]  # in the order given
    assert mc.wait([a, b, c]) == [a, c]  # still ready: nothing taken
    assert a.qsize() == 1 and c.qsize() == 1
    a.recv().release()
    assert mc.wait([a, b, c]) == [c]
    b.close()
    assert mc.wait([a, b, c]) == [b, c]  # closed counts as ready (as EOF does)


def test_wait_wakes_for_a_sender_in_another_process():
    ctx = mp.get_context("spawn")
    chans = [mc.Channel() for _ in range(3)]
    p = ctx.Process(target=w.send_after, args=(chans[2], 0.3, b"x"))
    p.start()
    assert mc.wait(chans, timeout=30) == [chans[2]]
    p.join(10)


@pytest.mark.parametrize("fn", [mc.select, mc.wait, mc.select_object])
def test_bad_arguments(fn):
    with pytest.raises(ValueError):
        fn([])
    with pytest.raises(TypeError):
        fn([mc.Channel(), object()])
    with pytest.raises(TypeError):
        fn(mc.Channel())
    with pytest.raises(ValueError):
        fn([mc.Channel()], timeout=-1)
    with pytest.raises(TypeError):
        fn([mc.Channel()], timeout="1")


def test_a_dead_listener_costs_one_send_then_its_slot_is_free():
    ch = mc.Channel()
    # A listener armed and then gone without unregistering (as a killed process leaves it).
    dead = _memchannel._Listener()
    slot = dead.register(ch)
    assert dead.arm(ch, slot) is False
    del dead  # its socket closes; its key stays in the wait-list
    ch.send(b"x")  # fires the dead key, gets ECONNREFUSED, frees the slot
    n = _memchannel._FD_SLOTS
    fresh = [_memchannel._Listener() for _ in range(n)]
    slots = [l.register(ch) for l in fresh]  # every slot is available again
    assert sorted(slots) == list(range(n))
    with pytest.raises(mc.MemChannelError, match="wait-list is full"):
        _memchannel._Listener().register(ch)
    # Unarmed dead listeners (never fired) are reclaimed by the next registration.
    del fresh[:10]
    extra = [_memchannel._Listener() for _ in range(10)]
    assert len({l.register(ch) for l in extra}) == 10


def test_a_killed_selecting_process_does_not_cost_senders_forever():
    ctx = mp.get_context("spawn")
    chans = [mc.Channel() for _ in range(3)]
    ready = mc.Channel()
    p = ctx.Process(target=w.select_forever, args=(chans, ready))
    p.start()
    ready.recv(timeout=30).release()
    time.sleep(0.3)  # asleep in select: registered and armed in every channel
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    for ch in chans:
        ch.send(b"x")  # each finds the dead listener once and frees its slot
    for ch in chans:
        n = _memchannel._FD_SLOTS
        slots = [l.register(ch) for l in [_memchannel._Listener() for _ in range(n)]]
        assert sorted(slots) == list(range(n))
