"""`python -m memchannel`: --version, info, list, cleanup --dry-run, bench. Run as a user
would, in a subprocess; this session's segment prefix (conftest.py) is inherited."""

import os
import pathlib
import platform
import signal
import subprocess
import sys

import pytest

import memchannel as mc
from conftest import SHM_PREFIX

ROOT = pathlib.Path(__file__).resolve().parents[2]

# A process that creates a shared-memory channel, says so, and waits to be killed.
HOLDER = """
import sys, time
import memchannel as mc
ch = mc.Channel()
ch.send(b"x")
print(ch._arena.name, flush=True)
time.sleep(3600)
"""


def run_cli(*args, cwd=None, check=True):
    completed = subprocess.run([sys.executable, "-m", "memchannel", *args], capture_output=True,
                               text=True, timeout=120, cwd=cwd, env=dict(os.environ))
    if check:
        assert completed.returncode == 0, f"--- stdout\n{completed.stdout}\n--- stderr\n{completed.stderr}"
    return completed


def shm_exists(name):
    return os.path.exists(f"/dev/shm/{name}")


@pytest.fixture
def killed_holder():
    """The arena name of a process that was SIGKILLed while attached: its segments remain."""
    child = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ))
    name = child.stdout.readline().strip()
    assert name.startswith(SHM_PREFIX), name
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert shm_exists(name)
    yield name
    mc._memchannel._cleanup(SHM_PREFIX)


def test_version_prints_the_package_version():
    out = run_cli("--version").stdout
    assert out.strip() == f"memchannel {mc.__version__}"


def test_info_shows_versions_backends_gil_and_dev_shm():
    out = run_cli("info").stdout
    assert f"memchannel {mc.__version__} (" in out
    assert f"Python {platform.python_version()} (CPython" in out
    assert "pybind11 3." in out and "(built against)" in out  # recorded by CMakeLists.txt
    assert "Boost 1." in out
    try:
        import numpy
    except ImportError:
        assert "numpy not installed" in out
    else:
        assert f"numpy {numpy.__version__}" in out
    assert "backends: shm" in out and "heap (this process only)" in out
    assert "per-interpreter GIL: yes" in out
    st = os.statvfs("/dev/shm")
    assert f"/dev/shm: size " in out and f"({st.f_blocks * st.f_frsize} and " in out
    assert " bytes)" in out.split("/dev/shm: size", 1)[1].splitlines()[0]


def test_info_and_list_show_segments_with_their_live_processes():
    ch = mc.Channel()
    ch.send(b"held")
    name = ch._arena.name
    for command in ("info", "list"):
        out = run_cli(command).stdout
        line = next((l for l in out.splitlines() if l.strip().startswith(name + "\t")), None)
        assert line is not None, out
        assert f"live processes: {os.getpid()} (" in line or f", {os.getpid()} (" in line, line
    ch.close()


def test_list_shows_no_live_process_for_a_killed_holder(killed_holder):
    out = run_cli("list").stdout
    line = next(l for l in out.splitlines() if l.startswith(killed_holder + "\t"))
    assert line.endswith("live processes: none"), line


def test_cleanup_dry_run_lists_what_cleanup_removes_and_removes_nothing(killed_holder):
    live = mc.Channel()
    live.send(b"keep me")
    out = run_cli("cleanup", "--dry-run").stdout
    assert f"would remove /dev/shm/{killed_holder}\t" in out
    assert live._arena.name not in out  # a live process (this one) maps it
    assert "nothing was removed (--dry-run)" in out
    assert shm_exists(killed_holder) and shm_exists(live._arena.name)
    # The real cleanup removes what the dry run listed, and keeps the live arena.
    would = {l.split()[2].removeprefix("/dev/shm/") for l in out.splitlines() if l.startswith("would remove")}
    removed = run_cli("cleanup").stdout
    gone = {l.split()[1].removeprefix("/dev/shm/") for l in removed.splitlines() if l.startswith("removed ")}
    assert would == gone, (out, removed)
    assert not shm_exists(killed_holder) and shm_exists(live._arena.name)
    assert bytes(live.recv(timeout=5)) == b"keep me"


def test_bench_names_the_harness_and_runs_nothing_even_inside_a_checkout():
    assert (ROOT / "bench" / "harness").is_dir()
    # From the checkout's top directory the old command found bench/harness and ran it.
    completed = run_cli("bench", "--help", cwd=ROOT, check=False)
    assert completed.returncode == 2, completed.stdout
    assert "python -m bench.harness" in completed.stderr
    assert completed.stdout == ""


def test_unknown_arguments_are_refused():
    completed = run_cli("list", "--bogus", check=False)
    assert completed.returncode == 2 and "unrecognized arguments: --bogus" in completed.stderr
