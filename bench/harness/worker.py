"""One measurement in a fresh interpreter: ``python -m bench.harness.worker '<job json>'``.

Sets up the transport's links, starts the scenario's parties in the transport's domain
(threads, isolated subinterpreters, or processes forked from here), drives warm-up and
repetitions through the control pipes, and prints one JSON line as its last output:

    {"status": "ok", "reps": [...], "warmup": [...], ...}
    {"status": "skipped" | "error" | "timeout", "reason": "..."}

A fresh interpreter per measurement keeps one transport's threads, segments, page cache
and allocator state from polluting the next one.
"""

import json
import os
import select
import sys
import threading
import time
import traceback

from . import party as party_mod
from . import scenarios, subinterp
from .transports import BY_NAME, PROCESS, SUBINTERP, THREAD, Skip

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Failure(Exception):
    def __init__(self, status, reason, scope="measurement"):
        super().__init__(reason)
        self.status, self.reason, self.scope = status, reason, scope


class _Party:
    def __init__(self, index, role, args, domain):
        self.index, self.role, self.domain = index, role, domain
        self.up_r, up_w = os.pipe()
        down_r, self.down_w = os.pipe()
        args = dict(args, ctl_up=up_w, ctl_down=down_r)
        self._child_fds = (up_w, down_r)
        self.buf = b""
        self.runner = None
        if domain == THREAD:
            self.runner = threading.Thread(target=party_mod.main, args=(args,), daemon=True)
        elif domain == SUBINTERP:
            code = ("import sys\n"
                    f"sys.path.insert(0, {ROOT!r})\n"
                    "from bench.harness import party\n"
                    f"party.main({args!r})\n")
            self.runner = subinterp.SubinterpreterThread(code)
        else:
            import multiprocessing
            self.runner = multiprocessing.get_context("fork").Process(
                target=party_mod.main, args=(args,), daemon=True)

    def start(self):
        self.runner.start()
        if self.domain == PROCESS:      # the child holds its ends; EOF now means it died
            for fd in self._child_fds:
                os.close(fd)

    def send(self, text):
        os.write(self.down_w, text.encode())

    def alive(self):
        return self.runner.is_alive()


def _read_line(party, deadline, what, everyone=()):
    while b"\n" not in party.buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Failure("timeout", f"timeout waiting for {party.role}#{party.index} {what}")
        ready, _, _ = select.select([party.up_r], [], [], min(left, 0.5))
        if not ready:
            for p in (party, *everyone):      # a dead peer leaves this one blocked
                if not p.alive():
                    extra = _pending_error(p)
                    raise Failure("error", f"{p.role}#{p.index} died during {what}"
                                  + (extra or _runner_error(p)))
            continue
        chunk = os.read(party.up_r, 1 << 16)
        if not chunk:
            raise Failure("error", f"{party.role}#{party.index} exited during {what}"
                          + _runner_error(party))
        party.buf += chunk
    line, party.buf = party.buf.split(b"\n", 1)
    line = line.decode()
    if line.startswith("E"):
        tb = json.loads(line[1:])
        raise Failure("error", f"{party.role}#{party.index} failed during {what}: "
                      + _last_line(tb), ) from None
    return line


def _pending_error(party):
    """The E line a party wrote before it ended, if any."""
    try:
        ready, _, _ = select.select([party.up_r], [], [], 0)
        if ready:
            party.buf += os.read(party.up_r, 1 << 16)
    except OSError:
        return ""
    for line in party.buf.split(b"\n"):
        if line.startswith(b"E"):
            return ": " + _last_line(json.loads(line[1:].decode()))
    return ""


def _runner_error(party):
    err = getattr(party.runner, "error", None)
    if err is not None:
        return f": {err}"
    code = getattr(party.runner, "exitcode", None)
    return f" (exit code {code})" if code is not None else ""


def _last_line(tb):
    lines = [ln for ln in tb.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else tb


def _expect(party, deadline, want, what, everyone=()):
    line = _read_line(party, deadline, what, everyone)
    if not line.startswith(want):
        raise Failure("error", f"{party.role}#{party.index}: unexpected {line[:80]!r}")
    return line


def run_transport_job(job, deadline):
    transport = BY_NAME[job["transport"]]()
    scenario = scenarios.SCENARIOS[job["scenario"]]
    param = job["param"]
    try:
        transport.check()
    except Skip as exc:     # the whole transport is unavailable, not just this scenario
        raise Failure("skipped", str(exc), scope="transport")
    reason = transport.skip_reason(scenario.key, param)
    if reason:
        raise Failure("skipped", reason)
    if scenario.kind == "memory":
        return run_memory_job(job, transport, scenario, deadline)
    links = scenario.links(param)
    count = scenario.count(param, job["mode"])
    specs = {name: transport.create_link(info) for name, info in links.items()}
    cores = sorted(os.sched_getaffinity(0))
    parties = []
    try:
        for index, (role, ends) in enumerate(scenario.parties(param)):
            args = {"transport": transport.name, "scenario": scenario.key, "role": role,
                    "param": param, "count": count, "ends": ends, "specs": specs,
                    "links": links, "domain": transport.domain,
                    "core": cores[index % len(cores)] if job.get("pin", True) else None}
            parties.append(_Party(index, role, args, transport.domain))
        for p in parties:
            p.start()
        total = job["warmup"] + job["reps"]
        for rep in range(total):
            for p in parties:
                _expect(p, deadline, "R", f"setup/rep {rep}", parties)
            for p in parties:
                p.send("G\n")
        for p in parties:
            _expect(p, deadline, "R", f"rep {total - 1}", parties)
        for p in parties:
            p.send("Q\n")
        timings = [json.loads(_expect(p, deadline, "J", "results", parties)[1:]) for p in parties]
    finally:
        for p in parties:
            if p.domain == PROCESS:
                p.runner.join(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
                if p.runner.is_alive():
                    p.runner.kill()
            else:
                p.runner.join(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
        for spec in specs.values():
            transport.destroy_link(spec)
        transport.teardown()
    reps = []
    for rep in range(total):
        rows = [(p.role, timings[i][rep]) for i, p in enumerate(parties)]
        summary = scenario.summarize(param, count, rows)
        messages = summary.get("messages", count)
        summary["cpu_us_per_msg"] = sum(t["cpu_ns"] for _r, t in rows) / 1e3 / messages
        summary["csw_per_msg"] = sum(t["csw"] for _r, t in rows) / messages
        summary["party_cpu_ms"] = {f"{r}#{i}": t["cpu_ns"] / 1e6 for i, (r, t) in enumerate(rows)}
        reps.append(summary)
    placement = [{"party": f"{p.role}#{p.index}", "cpus_allowed": timings[i][0].get("cpus_allowed"),
                  "ran_on_cpu": sorted({t.get("ran_on_cpu") for t in timings[i]} - {None})}
                 for i, p in enumerate(parties)]
    return {"status": "ok", "count": count, "warmup": reps[:job["warmup"]],
            "reps": reps[job["warmup"]:], "placement": placement,
            "pinned_apart": _pinned_apart(placement), "subinterpreters": (
                subinterp.backend_name() if transport.domain == SUBINTERP else None)}


def _pinned_apart(placement):
    """True when consecutive parties (sender/receiver, adjacent stages) have disjoint CPU sets."""
    sets = [set(p["cpus_allowed"] or ()) for p in placement]
    return all(a and b and not (a & b) for a, b in zip(sets, sets[1:]))


def run_memory_job(job, transport, scenario, deadline):
    """M1: each repetition queues the messages in a freshly forked process (memory.py)."""
    from . import memory
    count = scenario.count(job["param"], job["mode"])
    core = sorted(os.sched_getaffinity(0))[0] if job.get("pin", True) else None
    reps = []
    for rep in range(job["warmup"] + job["reps"]):
        try:
            reps.append(memory.run_repetition(transport.name, count, core, deadline))
        except TimeoutError as exc:
            raise Failure("timeout", f"rep {rep}: {exc}")
        except RuntimeError as exc:
            raise Failure("error", f"rep {rep}: {exc}")
    return {"status": "ok", "count": count, "measured_as": reps[-1]["measured_as"],
            "warmup": reps[:job["warmup"]], "reps": reps[job["warmup"]:]}


def run_memcpy_job(job, deadline):
    """Single-thread memcpy bandwidth, the ceiling for one copy per message."""
    size, mode = job["param"], job["mode"]
    try:
        import numpy as np
        src = np.full(size, 0x5A, dtype=np.uint8)
        dst = np.empty_like(src)

        def copy():
            np.copyto(dst, src)
        how = "numpy.copyto"
    except ImportError:
        src = b"\x5a" * size
        dst = bytearray(size)
        mv = memoryview(dst)

        def copy():
            mv[:] = src
        how = "memoryview slice assignment"
    n = scenarios.SCENARIOS["S1"].count(size, mode)
    if job.get("pin", True):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    reps = []
    for rep in range(job["warmup"] + job["reps"]):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            copy()
        secs = (time.perf_counter_ns() - t0) / 1e9
        reps.append({"value": n / secs, "bytes_per_s": n * size / secs, "messages": n})
        if time.monotonic() > deadline:
            raise Failure("timeout", "memcpy took too long")
    return {"status": "ok", "count": n, "how": how, "warmup": reps[:job["warmup"]],
            "reps": reps[job["warmup"]:]}


def main(argv):
    job = json.loads(argv[0])
    deadline = time.monotonic() + job["timeout"]
    try:
        if job["transport"] == "memcpy":
            result = run_memcpy_job(job, deadline)
        else:
            result = run_transport_job(job, deadline)
    except Failure as exc:
        result = {"status": exc.status, "reason": exc.reason, "scope": exc.scope}
    except Exception as exc:  # noqa: BLE001 - every failure becomes a stated reason
        result = {"status": "error", "reason": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()}
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)     # do not wait for stuck parties, feeder threads or interpreters


if __name__ == "__main__":
    main(sys.argv[1:])
