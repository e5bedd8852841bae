"""What machine and software a run measured: CPU, cores, RAM, kernel, Python, library versions,
load, and how much CPU other processes used while a measurement ran."""

import datetime
import os
import platform
import socket
import sys
from importlib import metadata

LIBRARIES = ["memchannel", "numpy", "pyzmq", "faster-fifo", "iceoryx2", "interpreters-pep-734",
             "backports-interpreters", "matplotlib",
             # how memchannel was built
             "pybind11", "scikit-build-core"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def library_versions():
    versions = {"python": platform.python_version()}
    for dist in LIBRARIES:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    versions["checkout_commit"] = _git_describe()   # the harness checkout (the build may differ)
    try:
        from .transports import interp_queues_module
        mod = interp_queues_module()
        versions["interpreter_queues_module"] = mod.__name__ if mod else None
    except Exception:  # noqa: BLE001 - informative only
        pass
    libc = platform.libc_ver()
    versions["libc"] = " ".join(libc) if libc[0] else None
    if versions.get("pyzmq"):
        try:
            import zmq
            versions["libzmq"] = zmq.zmq_version()
        except Exception:  # noqa: BLE001 - informative only
            pass
    return versions


def _git_describe():
    """Commit of the checkout the harness runs from (+ '-dirty' with local changes)."""
    import subprocess
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain",
                                "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("-dirty" if dirty else "")) if head else None


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def machine():
    cpus = sorted(os.sched_getaffinity(0))
    return {
        "host": socket.gethostname(),
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": cpus,
        "ram_bytes": _mem_total_bytes(),
        "kernel": platform.release(),
        "kernel_build": platform.version(),
        "arch": platform.machine(),
        "cpu_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "gil_disabled": bool(getattr(sys, "_is_gil_enabled", lambda: True)() is False),
    }


def loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def today():
    return datetime.date.today().isoformat()


def now_iso():
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


class CpuMeter:
    """System-wide busy CPU time from /proc/stat, to tell our load from other processes'."""

    _tick_ns = 1e9 / os.sysconf("SC_CLK_TCK")

    @classmethod
    def busy_ns(cls):
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()[1:]
        except OSError:
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        return (user + nice + system + irq + softirq + steal) * cls._tick_ns
