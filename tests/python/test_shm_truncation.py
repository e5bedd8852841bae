"""A truncated segment makes both sides raise CorruptionError (docs/shm.md, "Truncated segments").

A peer of the same user truncates segment 0 of a live channel (and in some tests grows it back:
the red team's truncate-and-regrow, where the file has its size again but its pages and what
they held are gone). On the main of before, send() went on succeeding into nowhere. Now every
segment file ends in a sentinel tail that the data path reads: the first send or recv of each
side after the cut raises CorruptionError (a call already waiting learns it within one sweep
interval), every later one too, and stats()["messages_lost"] counts what was queued: exactly
when the channel's own memory survived, else an upper bound.
"""

import os
import subprocess
import sys
import textwrap
import time

import pytest

import memchannel as mc

SENDER = textwrap.dedent(
    """
    import sys, time, memchannel as mc
    ch = mc.Channel.attach(bytes.fromhex(sys.argv[1]))
    print("ready", flush=True)
    sent, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < 10:
        try:
            ch.send(b"x" * 64, timeout=1)
            sent += 1
        except mc.Full:
            time.sleep(0.01)
        except mc.CorruptionError as e:
            # Within one sweep interval every call fails from then on: try a few more.
            t1 = time.monotonic()
            while time.monotonic() - t1 < 0.6:
                try:
                    ch.send(b"y", timeout=0.1)
                except (mc.CorruptionError, mc.Full):
                    pass
            more = 0
            for _ in range(20):
                try:
                    ch.send(b"y", timeout=1)
                except mc.CorruptionError:
                    more += 1
            print("corruption", sent, more, flush=True)
            sys.exit(0)
    print("never told", sent, flush=True)
    """
)


@pytest.mark.parametrize("regrow", [True, False])
def test_truncated_segment_is_corruption_for_both_sides(regrow):
    ch = mc.Channel(backend="shm", maxsize=1000)
    name = ch._arena.name
    sender = subprocess.Popen([sys.executable, "-c", SENDER, ch.handle.hex()], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert sender.stdout.readline().strip() == "ready", sender.stderr.read()
        for _ in range(50):
            bytes(ch.recv(timeout=5))
        size = os.path.getsize("/dev/shm/" + name)
        fd = os.open("/dev/shm/" + name, os.O_RDWR)
        try:
            os.ftruncate(fd, 4096)  # the peer: keeps the first page (the header's start)
            if regrow:
                os.ftruncate(fd, size)
        finally:
            os.close(fd)
        told = False
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                bytes(ch.recv(timeout=0.2))
            except mc.Empty:
                pass
            except mc.CorruptionError:
                told = True
                break
        assert told, "the receiver was never told its segment was truncated"
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.6:  # the sweep that finds it: within its interval
            try:
                ch.recv(timeout=0.1)
            except (mc.Empty, mc.CorruptionError):
                pass
        for _ in range(5):  # from now on, every call
            with pytest.raises(mc.CorruptionError):
                ch.recv(timeout=0.1)
        out, err = sender.communicate(timeout=30)
        words = out.split()
        assert words[0] == "corruption", out + err
        assert int(words[2]) == 20, "a send succeeded after the truncation was found"
    finally:
        if sender.poll() is None:
            sender.kill()


# Exact counting: a sender that has queued its messages waits for a word from the test, then
# makes one send, which must fail at once (no sweep interval), and a few more.
QUEUED_SENDER = textwrap.dedent(
    """
    import sys, memchannel as mc
    ch = mc.Channel.attach(bytes.fromhex(sys.argv[1]))
    for i in range(int(sys.argv[2])):
        ch.send(b"%08d" % i + b"." * 56, timeout=5)
    print("sent", int(sys.argv[2]), flush=True)
    sys.stdin.readline()
    first = "sent"
    try:
        ch.send(b"z" * 64, timeout=1)
    except mc.CorruptionError:
        first = "corruption"
    later = 0
    for _ in range(5):
        try:
            ch.send(b"z" * 64, timeout=1)
        except mc.CorruptionError:
            later += 1
    print(first, later, ch.stats()["messages_lost"], flush=True)
    """
)


def _cut(name, keep, regrow):
    path = "/dev/shm/" + name
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, keep(size))
        if regrow:
            os.ftruncate(fd, size)
    finally:
        os.close(fd)


@pytest.mark.parametrize("cut", ["sentinel page", "segment 0 to one page, regrown"])
def test_first_call_after_truncation_raises_and_losses_are_counted(cut):
    """Both sides raise CorruptionError on their first call after the cut, not one sweep later;
    messages_lost counts what was queued: exactly when the channel's own memory survives (only
    the segment's last page, with its sentinel, was cut), else an upper bound."""
    queued = 500
    ch = mc.Channel(backend="shm", maxsize=1000)
    name = ch._arena.name
    sender = subprocess.Popen([sys.executable, "-c", QUEUED_SENDER, ch.handle.hex(), str(queued)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert sender.stdout.readline().split() == ["sent", str(queued)], sender.stderr.read()
        received = 0
        for _ in range(50):
            bytes(ch.recv(timeout=5))
            received += 1
        if cut == "sentinel page":
            _cut(name, lambda size: size - size % 4096 if size % 4096 else size - 4096, regrow=False)
        else:
            _cut(name, lambda size: 4096, regrow=True)
        with pytest.raises(mc.CorruptionError):  # the very next call (main delivered 448 more)
            ch.recv(timeout=0.1)
        sender.stdin.write("go\n")
        sender.stdin.flush()
        out, err = sender.communicate(timeout=30)
        first, later, sender_counted = out.split()
        assert first == "corruption", out + err
        assert int(later) == 5, out + err
        for _ in range(3):
            with pytest.raises(mc.CorruptionError):
                ch.recv(timeout=0.1)
        lost = queued - received
        counted = ch.stats()["messages_lost"]
        if cut == "sentinel page":
            assert counted == lost == int(sender_counted), (counted, lost, out)
        else:
            assert counted >= lost and int(sender_counted) >= lost, (counted, lost, out)
    finally:
        if sender.poll() is None:
            sender.kill()


RACING_SENDER = textwrap.dedent(
    """
    import sys, time, memchannel as mc
    ch = mc.Channel.attach(bytes.fromhex(sys.argv[1]))
    print("ready", flush=True)
    sent, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < 20:
        try:
            ch.send(b"x" * 64, timeout=1)
            sent += 1
        except mc.Full:
            pass
        except mc.CorruptionError:
            break
    print("sent", sent, flush=True)
    """
)


@pytest.mark.parametrize("maxsize", [0, 64])
def test_truncation_in_full_flow_counts_every_loss(maxsize):
    """A sender and a receiver at full speed when the sentinel page is cut: every message the
    sender was told was sent is received or counted in messages_lost, exactly."""
    ch = mc.Channel(backend="shm", maxsize=maxsize)
    name = ch._arena.name
    sender = subprocess.Popen([sys.executable, "-c", RACING_SENDER, ch.handle.hex()], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert sender.stdout.readline().strip() == "ready", sender.stderr.read()
        received, cut_at = 0, None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if cut_at is None and received >= 3000:
                _cut(name, lambda size: size - size % 4096 if size % 4096 else size - 4096, regrow=False)
                cut_at = received
            try:
                bytes(ch.recv(timeout=0.2))
                received += 1
            except mc.Empty:
                pass
            except mc.CorruptionError:
                assert cut_at is not None, "corruption before the cut"
                break
        out, err = sender.communicate(timeout=30)
        sent = int(out.split()[1])
        assert cut_at is not None and sent > received, (out, err, received)
        assert ch.stats()["messages_lost"] == sent - received, (sent, received)
    finally:
        if sender.poll() is None:
            sender.kill()


def test_batches_are_told_at_once_and_counted():
    """send_many and recv_many see a cut at their first call too; what was queued is counted."""
    ch = mc.Channel(backend="shm")
    assert ch.send_many([b"%08d" % i for i in range(300)], timeout=5) == 300
    assert len(ch.recv_many(100, timeout=5)) == 100
    _cut(ch._arena.name, lambda size: size - size % 4096 if size % 4096 else size - 4096, regrow=False)
    with pytest.raises(mc.CorruptionError):
        ch.recv_many(50, timeout=0.1)
    with pytest.raises(mc.CorruptionError):
        ch.send_many([b"late"] * 10, timeout=0.1)
    with pytest.raises(mc.CorruptionError):
        ch.recv_many(50, timeout=0.1)
    assert ch.stats()["messages_lost"] == 200
