"""Forged queue links and header words on a live shm channel (docs/shm.md, "Threat model").

A second process of the same user maps the arena's segment 0 (tests/python/_forge.py) and
forges one word while an honest sender (another process) and receiver (this one) use the
channel. A forged link is caught, not followed: the node it names must be the expected successor
(its seq one past the node linking to it). The repair loses only the messages past the forged
link and counts them (stats()["messages_lost"]); each side's next call raises CorruptionError
once; messages sent after the repair arrive; a closed channel reports drained.
"""

import subprocess
import sys
import textwrap

import pytest

import memchannel as mc
from _forge import NODE_NEXT, Forger

SENDER = textwrap.dedent(
    """
    import sys, memchannel as mc
    ch = mc.Channel.attach(bytes.fromhex(sys.argv[1]))
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        try:
            if cmd == "send":
                for i in range(int(arg.split(":")[0]), int(arg.split(":")[1])):
                    ch.send(b"msg%06d" % i)
            elif cmd == "close":
                ch.close()
            print("ok", flush=True)
        except mc.CorruptionError as e:
            print("corruption", e, flush=True)
    """
)


class Sender:
    def __init__(self, ch):
        self.p = subprocess.Popen([sys.executable, "-c", SENDER, ch.handle.hex()], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def __call__(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        out = self.p.stdout.readline().strip()
        assert out, self.p.stderr.read()
        return out

    def stop(self):
        self.p.stdin.close()
        self.p.wait(timeout=30)


def drain(ch):
    """Every message now receivable; CorruptionErrors counted. Stops at Empty or closed."""
    got, errors = [], 0
    while True:
        try:
            got.append(bytes(ch.recv(timeout=2)))
        except mc.CorruptionError:
            errors += 1
        except (mc.Empty, mc.ChannelClosed):
            return got, errors


@pytest.mark.parametrize("target", ["same-channel skip", "backwards", "own node", "outside"])
def test_one_forged_link_is_caught_counted_and_reported(target):
    ch = mc.Arena(capacity=4 << 20, backend="shm").channel()
    sender = Sender(ch)
    forger = Forger(ch._arena.name)
    try:
        assert sender("send 0:20") == "ok"
        _, by_seq = forger.channel_nodes()
        assert sorted(by_seq) == list(range(1, 21))
        at = by_seq[5]  # message 5 (seq 5) links to message 6 (seq 6)
        if target == "same-channel skip":
            forger.link(at, by_seq[12])  # the undetected case on main: a Linked node of this queue
        elif target == "backwards":
            forger.link(at, by_seq[2])
        elif target == "own node":
            forger.link(at, at)
        else:
            forger.put64(at + NODE_NEXT, (1 << 32) | 0x7FFFFFFF)
        got, errors = drain(ch)
        assert got == [b"msg%06d" % i for i in range(5)], got  # everything before the link
        assert errors == 1, "the receiver is told once"
        assert ch.stats()["messages_lost"] == 15, ch.stats()  # messages 5..19: past the link
        assert ch.stats()["queued"] == 0
        # The sender's next call is told too (nothing is sent by it), then traffic resumes:
        # every message sent after the repair arrives.
        assert sender("send 100:101").startswith("corruption")
        assert sender("send 100:150") == "ok"
        got, errors = drain(ch)
        assert got == [b"msg%06d" % i for i in range(100, 150)] and errors == 0
        assert ch.stats()["messages_lost"] == 15
        # The blocks of the messages cut off were given back (on main they stayed queued).
        assert ch._arena.stats()["blocks_in_use"] == 0, ch._arena.stats()
        # A closed channel reports drained: a recv with no timeout returns.
        assert sender("close") == "ok"
        with pytest.raises(mc.ChannelClosed):
            ch.recv()
    finally:
        forger.close()
        sender.stop()


def test_forged_link_on_a_closed_channel_still_drains():
    ch = mc.Arena(capacity=4 << 20, backend="shm").channel()
    forger = Forger(ch._arena.name)
    try:
        for i in range(10):
            ch.send(b"m%d" % i)
        ch.close()
        _, by_seq = forger.channel_nodes()
        forger.link(by_seq[3], by_seq[8])
        got, errors = drain(ch)
        assert got == [b"m%d" % i for i in range(3)] and errors == 1
        assert ch.stats()["messages_lost"] == 7
        with pytest.raises(mc.ChannelClosed):
            ch.recv()  # no timeout: must not hang
    finally:
        forger.close()


# ---- Header words (docs/shm.md, "Threat model"): repaired from private copies and the cells ----

ATTACH_AND_USE = textwrap.dedent(
    """
    import sys, memchannel as mc
    ch = mc.Channel.attach(bytes.fromhex(sys.argv[1]))
    held = ch.reserve(100000, timeout=3)  # a fresh size class: carved
    ch.send(b"from the new process", timeout=3)
    print("ok", ch.stats()["attached_processes"], flush=True)
    """
)


def attach_and_use(ch):
    proc = subprocess.run([sys.executable, "-c", ATTACH_AND_USE, ch.handle.hex()], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def sweep(ch):
    """Long enough for this process's next sweep (every 250 ms) to run."""
    import time
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.4:
        ch.stats()
        time.sleep(0.05)


@pytest.mark.parametrize("forgery", ["attach count 0", "carve cursor", "first 64 bytes zeroed", "segment count"])
def test_header_forgery_is_repaired_not_permanent(forgery):
    from _forge import ATTACHED_HOLDERS_OFFSET, CARVE_OFFSET, SEGMENT_COUNT_OFFSET

    ch = mc.Arena(capacity=64 << 20, backend="shm").channel()
    name = ch._arena.name
    forger = Forger(name)
    try:
        ch.send(b"before")
        before = ch._arena.stats()["corruption_count"]
        if forgery == "attach count 0":
            forger.put32(ATTACHED_HOLDERS_OFFSET, 0)  # on main: every new attach "being torn down"
        elif forgery == "carve cursor":
            forger.put64(CARVE_OFFSET, 0xDEADBEEF)  # on main: CorruptionError on allocation, for good
        elif forgery == "first 64 bytes zeroed":
            for off in range(0, 64, 8):
                forger.put64(off, 0)
        else:
            forger.put32(SEGMENT_COUNT_OFFSET, 0)
        sweep(ch)
        assert ch._arena.stats()["corruption_count"] > before, "the forgery was not noticed"
        words = attach_and_use(ch)  # a new process: attaches, carves, sends
        assert words[0] == "ok", words
        assert bytes(ch.recv(timeout=5)) == b"before"
        assert bytes(ch.recv(timeout=5)) == b"from the new process"
        big = ch.reserve(300000, timeout=3)  # and this process carves too
        big.release()
        # The new process has gone: the count is this process's alone again, not 0 or less.
        sweep(ch)
        assert ch.stats()["attached_processes"] == 1, ch.stats()
    finally:
        forger.close()
