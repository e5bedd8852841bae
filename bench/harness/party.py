"""One party of a measurement: runs in a thread, an isolated subinterpreter or a process.

Control protocol with the measurement worker, over two os.pipe()s (file descriptors work
the same in threads, subinterpreters and forked processes):

    party -> worker   "R\\n"            ready for the next repetition
    worker -> party   "G\\n" | "Q\\n"   go | quit
    party -> worker   "J<json>\\n"      per-repetition timings, after the last repetition
    party -> worker   "E<text>\\n"      failure (traceback), instead of J

Between R and G the party does nothing, so all parties start a repetition together.
Timings use time.perf_counter_ns (CLOCK_MONOTONIC: comparable across processes).
CPU time (time.thread_time / time.process_time) and context switches (getrusage
ru_nvcsw + ru_nivcsw) are per thread for parties that share a process (threads,
subinterpreters) and per process for processes (so helper threads such as
multiprocessing.Queue's feeder are counted).

Imports nothing outside the standard library and this package: it runs inside isolated
subinterpreters.
"""

import json
import os
import resource
import time
import traceback

from . import scenarios
from .transports import BY_NAME


def _write(fd, text):
    data = text.encode()
    while data:
        data = data[os.write(fd, data):]


def _readline(fd):
    out = bytearray()
    while not out.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            return ""
        out += chunk
    return out.decode().strip()


def _usage(who):
    """(CPU ns, context switches): clocks for CPU (getrusage rounds thread times to ticks)."""
    ru = resource.getrusage(who)
    cpu_ns = time.process_time_ns() if who == resource.RUSAGE_SELF else time.thread_time_ns()
    return cpu_ns, ru.ru_nvcsw + ru.ru_nivcsw


def _last_cpu():
    """The CPU this thread last ran on (field 39 of /proc/thread-self/stat), or None."""
    try:
        with open("/proc/thread-self/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return None


def main(args):
    """Run one party; ``args`` is a dict (a literal when it crossed into a subinterpreter)."""
    up, down = args["ctl_up"], args["ctl_down"]
    who = resource.RUSAGE_SELF if args["domain"] == "processes" else resource.RUSAGE_THREAD
    endpoints = {}
    try:
        if args.get("core") is not None:
            os.sched_setaffinity(0, {args["core"]})     # pid 0: this thread only
        allowed = sorted(os.sched_getaffinity(0))
        transport = BY_NAME[args["transport"]]
        for link, side, index in args["ends"]:
            endpoints[(link, side)] = transport.open(args["specs"][link], side, index,
                                                     args["links"][link])
        role = scenarios.ROLES[(args["scenario"], args["role"])]
        eps = {link: ep for (link, _side), ep in endpoints.items()}
        state = role.prepare(args["param"], args["count"])
        reps = []
        while True:
            _write(up, "R\n")
            if _readline(down) != "G":
                break
            for ep in endpoints.values():
                ep.sync()
            cpu0, csw0 = _usage(who)
            timing = role.run(eps, state)
            cpu1, csw1 = _usage(who)
            timing["cpu_ns"] = cpu1 - cpu0
            timing["csw"] = csw1 - csw0
            timing["cpus_allowed"] = allowed
            timing["ran_on_cpu"] = _last_cpu()
            reps.append(timing)
        _write(up, "J" + json.dumps(reps) + "\n")
    except BaseException:  # noqa: BLE001 - report everything to the worker
        _write(up, "E" + json.dumps(traceback.format_exc()) + "\n")
    finally:
        for ep in endpoints.values():
            try:
                ep.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass


def now():
    return time.perf_counter_ns()
