"""Forged channel-header words (docs/shm.md, "Threat model"): the limits and the attach count.

A process of the same user maps the arena's segment 0 (tests/python/_forge.py) and rewrites one
word of a live channel's header:
- a limit (maxsize, maxbytes): a party opening the channel sees that the limits disagree with
  their digest and refuses it with CorruptionError, until a party that holds the true limits (a
  private copy, read when it opened the channel) makes its next call and puts them back;
- the attach count: its two halves no longer agree, so the count is given up ("pinned"): new
  parties attach, and nobody frees the channel under another (it is left when the last leaves).
"""

import subprocess
import sys
import textwrap

import pytest

import memchannel as mc
from _forge import CH_ATTACHED, CH_MAXBYTES, CH_MAXSIZE, Forger

OPEN_AND_SEND = textwrap.dedent(
    """
    import sys, memchannel as mc
    ch = mc.Channel.attach(bytes.fromhex(sys.argv[1]))
    ch.send(b"hi", timeout=5)
    print(ch.stats()["maxsize"], ch.stats()["maxbytes"], flush=True)
    """
)


def run(code, ch):
    return subprocess.run([sys.executable, "-c", code, ch.handle.hex()], capture_output=True, text=True, timeout=60)


def the_channel_header(f):
    found = f.channel_headers()
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("field,forged", [(CH_MAXSIZE, 1), (CH_MAXSIZE, 0), (CH_MAXBYTES, 3)])
def test_forged_limit_is_refused_then_restored(field, forged):
    ch = mc.Channel(backend="shm", maxsize=64, maxbytes=1 << 20)
    f = Forger(ch._arena.name)
    try:
        at = the_channel_header(f)
        true_value = f.u64(at + field)
        f.put64(at + field, forged)
        before = ch._arena.stats()["corruption_count"]
        r = run(OPEN_AND_SEND, ch)
        assert r.returncode != 0 and "CorruptionError" in r.stderr, r.stdout + r.stderr
        ch.send(b"x", timeout=5)  # a party with the true limits: its next call puts them back
        assert f.u64(at + field) == true_value
        assert ch._arena.stats()["corruption_count"] > before
        r = run(OPEN_AND_SEND, ch)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["64", str(1 << 20)]
        assert [bytes(ch.recv(timeout=5)) for _ in range(2)] == [b"x", b"hi"]
    finally:
        f.close()


HOLDER = textwrap.dedent(
    """
    import sys, memchannel as mc
    ch = mc.Channel.attach(bytes.fromhex(sys.argv[1]))
    print("attached", flush=True)
    sys.stdin.readline()
    ch.send(b"bye", timeout=5)
    """
)


@pytest.mark.parametrize("forged", [0, 1, 0xFFFFFFFF])
def test_forged_attach_count_neither_refuses_nor_frees_under_a_user(forged):
    ch = mc.Channel(backend="shm")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, ch.handle.hex()], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    f = Forger(ch._arena.name)
    try:
        assert holder.stdout.readline().strip() == "attached", holder.stderr.read()
        at = the_channel_header(f)
        f.put32(at + CH_ATTACHED, forged)  # two users; the count now says `forged`
        r = run(OPEN_AND_SEND, ch)  # a third party attaches (0 read as "being torn down" before)
        assert r.returncode == 0, r.stderr
        holder.stdin.write("go\n")
        holder.stdin.flush()
        _, err = holder.communicate(timeout=30)  # its exit gives back its attach (1 -> 0 freed it before)
        assert holder.returncode == 0, err
        assert [bytes(ch.recv(timeout=5)) for _ in range(2)] == [b"hi", b"bye"]
        ch.send(b"still here", timeout=5)
        assert bytes(ch.recv(timeout=5)) == b"still here"
        assert ch.stats()["queued"] == 0
    finally:
        f.close()
        if holder.poll() is None:
            holder.kill()
