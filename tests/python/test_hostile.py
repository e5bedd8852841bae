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
