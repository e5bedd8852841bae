"""How the package builds for users: pip without the system's Boost, -Werror only in the
project's own builds, and the wheel's typing files.

The no-system-Boost build (tests/packaging/check_no_system_boost.sh) takes about 75 s: a fresh
venv, an isolated `pip wheel` from PyPI, and a shared-memory message through the result.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHECK_NO_BOOST = ROOT / "tests" / "packaging" / "check_no_system_boost.sh"


def _can_unshare_mounts() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    if os.geteuid() != 0:
        return "hiding /usr/include/boost needs root (unshare --mount)"
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare --mount is not permitted here: {probe.stderr.strip()}"
    if not (ROOT / ".git").exists():
        return "not a git checkout (the check copies `git ls-files`)"
    return None


@pytest.mark.packaging
def test_pip_wheel_builds_and_runs_without_system_boost():
    reason = _can_unshare_mounts()
    if reason:
        pytest.skip(reason)
    completed = subprocess.run(["bash", str(CHECK_NO_BOOST), sys.executable],
                               capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, f"--- stdout\n{completed.stdout}\n--- stderr\n{completed.stderr}"
    assert "headers from PyPI's boost-headers" in completed.stdout
    assert "shm send/recv ok" in completed.stdout


def _configure(tmp_path, *defines):
    """Configure the C++ libraries only (no Python module, tests or benchmarks): seconds."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    build = tmp_path / "build"
    completed = subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
         "-DMEMCHANNEL_BUILD_PYTHON=OFF", "-DMEMCHANNEL_BUILD_TESTS=OFF", "-DMEMCHANNEL_BUILD_BENCH=OFF",
         *defines], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    commands = json.loads((build / "compile_commands.json").read_text())
    assert commands, "no compile commands"
    return [c["command"] for c in commands]


def test_werror_is_off_by_default_as_in_a_pip_build(tmp_path):
    commands = _configure(tmp_path)
    assert all("-Wall" in c for c in commands)
    assert not [c for c in commands if "-Werror" in c.split()]


def test_werror_is_on_when_the_makefile_asks(tmp_path):
    commands = _configure(tmp_path, "-DMEMCHANNEL_WERROR=ON")
    assert all("-Werror" in c.split() for c in commands)


def test_makefile_builds_keep_werror():
    makefile = (ROOT / "Makefile").read_text()
    assert "cmake.define.MEMCHANNEL_WERROR=ON" in makefile  # make install (the Python module)
    assert makefile.count("-DMEMCHANNEL_WERROR=ON") >= 2     # make cpp, and the sanitizer builds
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'cmake.define.MEMCHANNEL_WERROR = "OFF"' in pyproject
    assert '"boost-headers' in pyproject


def test_installed_package_ships_its_typing_files():
    import memchannel

    package = pathlib.Path(memchannel.__file__).parent
    assert (package / "py.typed").is_file()
    for stub in ("_memchannel.pyi", "_channel.pyi", "queues.pyi", "executor.pyi", "compare.pyi", "_build_info.py"):
        assert (package / stub).is_file(), stub
