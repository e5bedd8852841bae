"""A truncated segment makes both sides raise CorruptionError (docs/shm.md, "Truncation").

A peer of the same user truncates segment 0 of a live channel and grows it back (the red team's
truncate-and-regrow: the file has its size again, its pages and what they held are gone). On
main, send() went on succeeding into nowhere. Now each party's next sweep (at most one sweep
interval, 250 ms, after any call) finds the segment's pages gone, marks the arena corrupt for
every party, and every later send and recv raises CorruptionError.
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
