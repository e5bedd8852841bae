"""The layout is checked before it is trusted (docs/shm.md, "Layout"; core/arena_layout.h).

An arena of another layout version (or with another magic) is refused on attach with an error
that says so, and cleanup leaves it alone even when no process holds it; the same arena with
this build's version is removed by the same cleanup, so the runs are real cleanups.
"""

import mmap
import os
import signal
import struct
import subprocess
import sys
import textwrap

import pytest

import memchannel as mc

MAGIC_OFFSET, VERSION_OFFSET = 0, 8

DEAD_CREATOR = textwrap.dedent(
    """
    import os, signal, memchannel as mc
    chs = [mc.Channel(backend="shm") for _ in range(2)]  # one process: one automatic sweep, first
    for ch in chs:
        ch.send(b"x")
        print(ch._arena.name, ch.handle.hex(), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def dead_arenas(env):
    proc = subprocess.run([sys.executable, "-c", DEAD_CREATOR], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return [(name, bytes.fromhex(handle)) for name, handle in (line.split() for line in proc.stdout.splitlines())]


def poke(name, offset, fmt, value):
    fd = os.open("/dev/shm/" + name, os.O_RDWR)
    try:
        with mmap.mmap(fd, 4096) as m:
            struct.pack_into(fmt, m, offset, value)
    finally:
        os.close(fd)
    os.utime("/dev/shm/" + name, (0, 0))  # past the creation grace period


@pytest.fixture
def prefix_env():
    prefix = f"memchannel-test{os.urandom(8).hex()}-"
    yield prefix, dict(os.environ, MEMCHANNEL_SHM_PREFIX=prefix)
    for n in os.listdir("/dev/shm"):
        if n.startswith(prefix):
            os.unlink("/dev/shm/" + n)


@pytest.mark.parametrize("field", ["version", "magic"])
def test_other_layout_is_refused_and_left_alone_by_cleanup(prefix_env, field):
    prefix, env = prefix_env
    (foreign, foreign_handle), (ours, _) = dead_arenas(env)
    if field == "version":
        poke(foreign, VERSION_OFFSET, "<I", 5)  # the previous layout: holder table checks differ
    else:
        poke(foreign, MAGIC_OFFSET, "<Q", 0x0123456789ABCDEF)
    poke(ours, VERSION_OFFSET, "<I", struct.unpack_from("<I", open("/dev/shm/" + ours, "rb").read(16), 8)[0])
    with pytest.raises(mc.MemChannelError) as info:
        mc.Channel.attach(foreign_handle)
    text = str(info.value).lower()
    assert ("layout version" in text) if field == "version" else ("magic" in text), str(info.value)
    proc = subprocess.run([sys.executable, "-m", "memchannel", "cleanup", "--prefix", prefix], capture_output=True,
                          text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert os.path.exists("/dev/shm/" + foreign), f"cleanup removed an arena of another layout: {proc.stdout}"
    assert not os.path.exists("/dev/shm/" + ours), f"cleanup kept an abandoned arena of ours: {proc.stdout}"
