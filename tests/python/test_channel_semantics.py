"""queue.Queue behaviour of Channel: bounds, timeouts, close, drain, iteration, M:N."""

import queue
import struct
import threading
import time

import pytest

import memchannel as mc


def test_send_recv_fifo(backend):
    ch = mc.Channel(backend=backend)
    for i in range(100):
        ch.send(struct.pack("<I", i))
    assert ch.qsize() == 100
    assert [struct.unpack("<I", ch.recv())[0] for _ in range(100)] == list(range(100))
    assert ch.empty()


def test_exceptions_subclass_queue_ones():
    assert issubclass(mc.Empty, queue.Empty) and issubclass(mc.Empty, mc.MemChannelError)
    assert issubclass(mc.Full, queue.Full) and issubclass(mc.Full, mc.MemChannelError)
    assert issubclass(mc.ChannelClosed, mc.MemChannelError)


def test_maxsize_blocks_sender_and_times_out(backend):
    ch = mc.Channel(2, backend=backend)
    ch.send(b"a")
    ch.send(b"b")
    assert ch.full()
    with pytest.raises(mc.Full):
        ch.send_nowait(b"c")
    t0 = time.monotonic()
    with pytest.raises(mc.Full):
        ch.send(b"c", timeout=0.05)
    elapsed = time.monotonic() - t0
    assert 0.03 <= elapsed <= 0.07, elapsed
    assert ch.qsize() == 2


def test_recv_timeout_raises_empty(backend):
    ch = mc.Channel(backend=backend)
    with pytest.raises(mc.Empty):
        ch.recv_nowait()
    t0 = time.monotonic()
    with pytest.raises(mc.Empty):
        ch.recv(timeout=0.05)
    elapsed = time.monotonic() - t0
    assert 0.03 <= elapsed <= 0.07, elapsed


def test_blocked_sender_resumes_when_receiver_drains(backend):
    ch = mc.Channel(1, backend=backend)
    ch.send(b"first")
    done = threading.Event()

    def sender():
        ch.send(b"second")  # blocks until the main thread receives
        done.set()

    t = threading.Thread(target=sender)
    t.start()
    assert not done.wait(0.1)  # still blocked: the channel is full
    assert bytes(ch.recv()) == b"first"
    t.join(5)
    assert done.is_set()
    assert bytes(ch.recv()) == b"second"


def test_blocked_sender_of_a_large_channel_takes_one_freed_slot(backend):
    # A sender blocked on a full channel waits for its low water (a quarter free), but a slot
    # freed short of it is still taken: by the sender's own re-check, not at its deadline.
    ch = mc.Channel(100, backend=backend)
    for i in range(100):
        ch.send(struct.pack("<I", i))
    result = {}

    def sender():
        t0 = time.monotonic()
        try:
            ch.send(b"late", timeout=10)
            result["ok"] = time.monotonic() - t0
        except mc.Full:
            result["full"] = time.monotonic() - t0

    t = threading.Thread(target=sender)
    t.start()
    time.sleep(0.05)  # asleep by now
    assert struct.unpack("<I", ch.recv())[0] == 0
    freed = time.monotonic()
    t.join(10)
    assert "ok" in result, result
    assert time.monotonic() - freed < 1.0  # re-checks back off to at most 64 ms
    assert ch.qsize() == 100
    # Non-blocking and timed sends take a single free slot at once.
    ch.recv().release()
    ch.send_nowait(b"x")
    ch.recv().release()
    t0 = time.monotonic()
    ch.send(b"y", timeout=5)
    assert time.monotonic() - t0 < 0.5


def test_bounded_stream_with_a_slow_receiver_keeps_order(backend):
    # The sender sleeps and wakes at the low water over and over; nothing is lost or reordered.
    ch = mc.Channel(64, backend=backend)
    n = 5000

    def sender():
        for i in range(n):
            ch.send(struct.pack("<I", i))

    t = threading.Thread(target=sender)
    t.start()
    got = []
    for i in range(n):
        got.append(struct.unpack("<I", ch.recv(timeout=10))[0])
        if i % 100 == 0:
            time.sleep(0.001)
    t.join(10)
    assert got == list(range(n))


def test_maxbytes_bounds_queued_payload(backend):
    ch = mc.Channel(maxbytes=100, backend=backend)
    ch.send(b"x" * 60)
    with pytest.raises(mc.Full):
        ch.send_nowait(b"y" * 60)
    ch.send(b"z" * 40)
    assert ch.stats()["bytes_queued"] == 100
    ch.recv().release()
    ch.send(b"y" * 60)


def test_close_wakes_blocked_receivers(backend):
    ch = mc.Channel(backend=backend)
    errors = []

    def receiver():
        try:
            ch.recv()
        except mc.ChannelClosed as exc:
            errors.append(exc)

    threads = [threading.Thread(target=receiver) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    ch.close()
    for t in threads:
        t.join(5)
        assert not t.is_alive()
    assert len(errors) == 3


def test_close_wakes_blocked_senders(backend):
    ch = mc.Channel(1, backend=backend)
    ch.send(b"fill")
    errors = []

    def sender():
        try:
            ch.send(b"more")
        except mc.ChannelClosed as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sender) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    ch.close()
    for t in threads:
        t.join(5)
        assert not t.is_alive()
    assert len(errors) == 2
    assert bytes(ch.recv()) == b"fill"  # queued message survives close


def test_drain_after_close_then_closed(backend):
    ch = mc.Channel(backend=backend)
    for i in range(5):
        ch.send(bytes([i]))
    ch.close()
    assert ch.closed
    with pytest.raises(mc.ChannelClosed):
        ch.send(b"late")
    assert [bytes(ch.recv())[0] for _ in range(5)] == list(range(5))
    with pytest.raises(mc.ChannelClosed):
        ch.recv()
    with pytest.raises(mc.ChannelClosed):
        ch.recv(timeout=0.01)


def test_iteration_ends_at_closed_and_drained(backend):
    ch = mc.Channel(backend=backend)

    def producer():
        for i in range(1000):
            ch.send(struct.pack("<I", i))
        ch.close()

    t = threading.Thread(target=producer)
    t.start()
    got = [struct.unpack("<I", buf)[0] for buf in ch]
    t.join()
    assert got == list(range(1000))


def test_threads_many_to_many_exactly_once_in_order(backend):
    ch = mc.Channel(8, backend=backend)  # small bound: blocked-full and blocked-empty both run
    senders, receivers, per_sender = 3, 3, 5000
    results = [[] for _ in range(receivers)]

    def send(sid):
        for seq in range(per_sender):
            ch.send(struct.pack("<II", sid, seq))

    def recv(rid):
        for buf in ch:
            results[rid].append(struct.unpack("<II", buf))

    rs = [threading.Thread(target=recv, args=(r,)) for r in range(receivers)]
    ss = [threading.Thread(target=send, args=(s,)) for s in range(senders)]
    for t in rs + ss:
        t.start()
    for t in ss:
        t.join()
    ch.close()
    for t in rs:
        t.join()
    every = [m for r in results for m in r]
    assert sorted(every) == [(s, q) for s in range(senders) for q in range(per_sender)]
    for r in results:  # FIFO per sender, as seen by each receiver
        for s in range(senders):
            seqs = [q for sid, q in r if sid == s]
            assert seqs == sorted(seqs)
    assert ch.stats()["blocks_in_use"] == 0


def test_stats_report_the_documented_fields(backend):
    ch = mc.Channel(backend=backend)
    ch.send(b"abc")
    s = ch.stats()
    for key in ("queued", "bytes_queued", "blocks_in_use", "capacity", "bytes_in_use", "bytes_copied"):
        assert key in s
    # 3 bytes travel inline in the queue node: no data block.
    assert s["queued"] == 1 and s["bytes_queued"] == 3 and s["blocks_in_use"] == 0
    assert s["bytes_copied"] == 3
    ch.send(b"x" * 100)  # past the 64 inline bytes: a block
    s = ch.stats()
    assert s["queued"] == 2 and s["bytes_queued"] == 103 and s["blocks_in_use"] == 1
    assert s["bytes_copied"] == 103


def test_ctrl_c_interrupts_a_blocked_recv_in_the_main_thread(tmp_path):
    import signal
    import subprocess
    import sys

    script = tmp_path / "blocked.py"
    script.write_text(
        "import sys, memchannel as mc\n"
        "ch = mc.Channel()\n"
        "print('ready', flush=True)\n"
        "try:\n"
        "    ch.recv()\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "    sys.exit(3)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)  # let it block in recv()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 3 and "interrupted" in out


def test_timeouts_are_float_seconds_not_rounded(backend):
    ch = mc.Channel(backend=backend)
    t0 = time.monotonic()
    with pytest.raises(mc.Empty):
        ch.recv(timeout=0.004)
    elapsed = time.monotonic() - t0
    assert 0.003 <= elapsed < 0.5, elapsed  # not rounded up to a whole second, nor down to 0


def test_channels_of_one_arena_stay_distinct_through_handles(backend):
    arena = mc.Arena(backend=backend)
    channels = [arena.channel() for _ in range(16)]
    assert len({ch.handle for ch in channels}) == 16
    for i, ch in enumerate(channels):
        ch.send(bytes([i]))
    for i, ch in enumerate(channels):
        assert bytes(mc.Channel.attach(ch.handle).recv_nowait()) == bytes([i])
