"""Liveness across PID namespaces sharing /dev/shm (containers with --ipc=host; docs/shm.md,
"Liveness").

Each party runs under `unshare --pid --fork --mount-proc`: its own PID namespace and its own
/proc, the same /dev/shm. A pid means nothing from the other namespace, so a party that judged
by pid would find the creator "dead", reap its reserved block and slot, and unlink the segments
on exit under it. Liveness locks on segment 0 hold across namespaces: the live creator is left
alone, and a creator that really died is still reaped. Skipped when unshare cannot make a PID
namespace (not root).
"""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import memchannel as mc

CREATOR = textwrap.dedent(
    """
    import sys, memchannel as mc
    ch = mc.Channel(backend="shm")
    held = ch.reserve(4096, timeout=5)
    memoryview(held)[:5] = b"alive"
    for i in range(10):
        ch.send(b"m%d" % i)
    print(ch.handle.hex(), flush=True)
    if sys.stdin.readline().strip() != "check":
        sys.exit(0)  # told to stay: killed from outside
    st = ch.stats()
    print("attached", st["attached_processes"], "reclaimed", st["reclaimed_blocks"],
          "held", bytes(memoryview(held)[:5]).decode(), flush=True)
    sys.stdin.readline()
    """
)

VISITOR = textwrap.dedent(
    """
    import sys, time, memchannel as mc
    ch = mc.Channel.attach(bytes.fromhex(sys.argv[1]))
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:  # several sweeps for dead holders (every 250 ms)
        st = ch.stats()
        time.sleep(0.05)
    print("attached", st["attached_processes"], "reclaimed", st["reclaimed_blocks"], flush=True)
    """
)


def in_new_pid_namespace(args, **kw):
    # --kill-child: killing unshare kills the namespace's init (and with it the namespace).
    return ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable, *args]


@pytest.fixture
def unshare_ok():
    if shutil.which("unshare") is None:
        pytest.skip("unshare not installed")
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a PID namespace here: {probe.stderr.decode().strip()}")


def fields(line):
    words = line.split()
    return dict(zip(words[::2], words[1::2]))


def test_live_creator_in_another_pid_namespace_is_not_reaped(unshare_ok):
    creator = subprocess.Popen(in_new_pid_namespace(["-c", CREATOR]), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        handle = creator.stdout.readline().strip()
        assert handle, creator.stderr.read()
        visitor = subprocess.run(in_new_pid_namespace(["-c", VISITOR, handle]), capture_output=True, text=True,
                                 timeout=60)
        assert visitor.returncode == 0, visitor.stderr
        seen = fields(visitor.stdout)
        assert seen["attached"] == "2", f"the visitor judged the live creator dead: {visitor.stdout}"
        assert seen["reclaimed"] == "0", visitor.stdout
        # The visitor has left: the segments must still be there for a third process, which gets
        # every message the creator sent.
        third = mc.Channel.attach(bytes.fromhex(handle))
        got = [bytes(third.recv(timeout=5)) for _ in range(10)]
        assert got == [b"m%d" % i for i in range(10)]
        creator.stdin.write("check\n")
        creator.stdin.flush()
        mine = fields(creator.stdout.readline())
        assert mine["reclaimed"] == "0" and mine["held"] == "alive", mine
        del third
    finally:
        creator.kill()
        creator.wait(timeout=30)


def test_dead_creator_in_another_pid_namespace_is_reaped(unshare_ok):
    # The other half: liveness is not "always alive". The creator's namespace is killed whole
    # (unshare's child is its init); a party in a second namespace reclaims its block and slot.
    creator = subprocess.Popen(in_new_pid_namespace(["-c", CREATOR]), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        handle = creator.stdout.readline().strip()
        assert handle, creator.stderr.read()
        keeper = mc.Channel.attach(bytes.fromhex(handle))  # keeps the arena alive meanwhile
        creator.kill()  # SIGKILL to unshare; --kill-child takes the namespace's init with it
        creator.wait(timeout=30)
        deadline_ok = False
        for _ in range(10):
            visitor = subprocess.run(in_new_pid_namespace(["-c", VISITOR, handle]), capture_output=True, text=True,
                                     timeout=60)
            assert visitor.returncode == 0, visitor.stderr
            seen = fields(visitor.stdout)
            if seen["attached"] == "2" and int(seen["reclaimed"]) >= 1:  # the visitor and the keeper
                deadline_ok = True
                break
        assert deadline_ok, visitor.stdout
        del keeper
    finally:
        if creator.poll() is None:
            creator.kill()
