"""Another user's files at memchannel names (docs/shm.md, "Threat model").

A second uid is made with useradd and runs as itself with runuser; it plants files where
memchannel would look: at the growth-segment names an arena used to have (`<name>.1`, ...), and
segments of its own under the test prefix. Growth must go on past them, and neither teardown,
`python -m memchannel cleanup` nor the sweep a process runs when it creates its first arena may
remove one, even run by root. Skipped, with the reason, when not root.
"""

import os
import pwd
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

import memchannel as mc

OTHER_USER = "memchannel-other"
MiB = 1 << 20


def _other_uid():
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a second user with useradd and runs as it with runuser")
    if shutil.which("useradd") is None or shutil.which("runuser") is None:
        pytest.skip("useradd / runuser not installed")
    try:
        return pwd.getpwnam(OTHER_USER).pw_uid
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER],
                       check=True, capture_output=True)
        return pwd.getpwnam(OTHER_USER).pw_uid


@pytest.fixture
def other_uid():
    return _other_uid()


def as_other(code, *args):
    """Runs `code` (Python, no memchannel import) as the second user."""
    proc = subprocess.run(["runuser", "-u", OTHER_USER, "--", "/usr/bin/python3", "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


PLANT = """
import os, sys
for name in sys.argv[1:]:
    fd = os.open("/dev/shm/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.ftruncate(fd, 4096)
    os.close(fd)
    os.utime("/dev/shm/" + name, (0, 0))  # old: past any creation grace period
"""


def owned_by(uid, name):
    try:
        return os.lstat("/dev/shm/" + name).st_uid == uid
    except FileNotFoundError:
        return False


def remove_as_other(names):
    as_other("import os, sys\nfor n in sys.argv[1:]:\n    try: os.unlink('/dev/shm/' + n)\n    except FileNotFoundError: pass\n",
             *names)


def test_planted_growth_names_neither_stop_growth_nor_are_removed(other_uid):
    # The creator is a child process, so its teardown (last detach removes the segments) runs
    # for real, while the planted files are in place.
    script = textwrap.dedent(
        """
        import os, sys, memchannel as mc
        arena = mc.Arena(capacity=64 << 20, backend="shm")
        ch = arena.channel()
        print(arena.name, flush=True)
        sys.stdin.readline()  # the other user plants its files now
        held = ch.reserve(16 << 20, timeout=3)  # more than segment 0: needs growth segments
        st = arena.stats()
        print("segments", st["segments"], flush=True)
        print("names", " ".join(sorted(n for n in os.listdir("/dev/shm") if n.startswith(arena.name))), flush=True)
        held.release()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    name = proc.stdout.readline().strip()
    assert name.startswith("memchannel-"), proc.stderr.read()
    planted = [f"{name}.{i}" for i in range(1, 9)] + [f"{name}.1.{0:08x}"]
    as_other(PLANT, *planted)
    try:
        out, err = proc.communicate("go\n", timeout=60)
        assert proc.returncode == 0, err
        lines = dict(line.split(" ", 1) for line in out.splitlines())
        assert int(lines["segments"]) >= 2, out  # it grew, past every planted name
        ours = [n for n in lines["names"].split() if n not in planted and n != name]
        assert ours and all(n.startswith(name + ".") and len(n.rsplit(".", 1)[1]) == 8 for n in ours), ours
        for n in planted:
            assert owned_by(other_uid, n), f"teardown removed another user's file {n}"
        # ...while the arena's own segments are gone.
        assert not any(os.path.exists("/dev/shm/" + n) for n in ours + [name])
    finally:
        proc.kill()
        remove_as_other(planted)


def test_cleanup_and_sweep_leave_another_users_segments(other_uid, tmp_path):
    prefix = f"memchannel-test{os.urandom(8).hex()}-"
    theirs = [prefix + "a" * 32, prefix + "a" * 32 + ".1", prefix + "b" * 32 + ".3.0000000000000000"]
    as_other(PLANT, *theirs)
    # Our own stray growth segment (its base is gone): cleanup does remove that one, so the
    # runs below are real cleanups, not no-ops.
    mine = prefix + "c" * 32 + ".1.0123456789abcdef"
    env = dict(os.environ, MEMCHANNEL_SHM_PREFIX=prefix)
    try:
        for run in ("cli", "sweep"):
            fd = os.open("/dev/shm/" + mine, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            os.ftruncate(fd, 4096)
            os.close(fd)
            os.utime("/dev/shm/" + mine, (0, 0))
            if run == "cli":
                proc = subprocess.run([sys.executable, "-m", "memchannel", "cleanup", "--prefix", prefix],
                                      capture_output=True, text=True, timeout=60, env=env)
            else:  # the automatic sweep: a process creating its first shm arena
                proc = subprocess.run([sys.executable, "-c", "import memchannel as mc; mc.Channel(backend='shm')"],
                                      capture_output=True, text=True, timeout=60, env=env)
            assert proc.returncode == 0, proc.stderr
            assert not os.path.exists("/dev/shm/" + mine), f"{run}: our own stray was not removed: {proc.stdout}"
            for n in theirs:
                assert owned_by(other_uid, n), f"{run} removed another user's {n}: {proc.stdout}"
    finally:
        remove_as_other(theirs)
        if os.path.exists("/dev/shm/" + mine):
            os.unlink("/dev/shm/" + mine)


def test_another_users_file_at_a_segment_name_is_refused(other_uid):
    # Attach by handle to a name the other user owns: refused as another user's, not adopted.
    ch = mc.Channel(backend="shm")
    handle = ch.handle
    name = ch._arena.name
    fake = "memchannel-" + os.urandom(16).hex()
    as_other(PLANT, fake)
    try:
        forged = handle.replace(name.encode(), fake.encode()) if name.encode() in handle else None
        if forged is None:
            pytest.skip("the handle does not carry the segment name in the clear")
        with pytest.raises(mc.MemChannelError) as info:
            mc.Channel.attach(forged)
        assert "another user" in str(info.value) or "owner" in str(info.value), str(info.value)
        assert owned_by(other_uid, fake)
    finally:
        remove_as_other([fake])
