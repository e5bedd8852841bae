"""Scenario SYNC: memchannel's locks, semaphores and events against multiprocessing's (and,
between threads, threading.Lock), in the same run (docs/guide-sync.md, "Benchmarks").

    python -m bench.harness --only SYNC [--quick|--smoke] [--reps N] [--out DIR]

Rows:
  uncontended   acquire() + release() in one thread, ns per pair (lower is better):
                mc.Lock vs mp.Lock vs threading.Lock, mc.Semaphore vs mp.Semaphore
  contended     2 processes (fork) each take the lock, bump a shared counter, release, in a
                loop: acquire+release pairs per second over both (higher is better)
  contended_pinned  the same with each process on its own CPU (both always running)
  event_wake    Event.set() in one process to the waiter in another woken (ping-pong of two
                events, CLOCK_MONOTONIC on both sides): p50 and p99 in microseconds
Targets (the issue's): uncontended and contended memchannel >= multiprocessing (throughput),
event_wake p50 memchannel <= multiprocessing. Each rep runs every contender once, in turn.
"""

from __future__ import annotations

import json
import mmap
import multiprocessing as mp
import os
import statistics
import struct
import sys
import threading
import time

import memchannel as mc

COUNTS = {"full": (500_000, 100_000, 5_000), "quick": (200_000, 40_000, 2_000), "smoke": (2_000, 500, 50)}
REPS = {"full": 5, "quick": 3, "smoke": 1}


def _uncontended(lock, n):
    acquire, release = lock.acquire, lock.release
    t0 = time.perf_counter_ns()
    for _ in range(n):
        acquire()
        release()
    return (time.perf_counter_ns() - t0) / n


def _handoff_worker(lock, path, n, slot, cpu=None):
    """Waits for the start flag (offset 8), then n x (acquire, bump the counter at 0,
    release); writes its start and end times (CLOCK_MONOTONIC) at 16 + 16 * slot. With
    `cpu`, runs on that CPU only."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    with open(path, "r+b") as f:
        m = mmap.mmap(f.fileno(), 64)
        struct.pack_into("<Q", m, 48 + 8 * slot, 1)  # ready
        while struct.unpack_from("<Q", m, 8)[0] == 0:
            pass
        t0 = time.monotonic_ns()
        for _ in range(n):
            lock.acquire()
            struct.pack_into("<Q", m, 0, struct.unpack_from("<Q", m, 0)[0] + 1)
            lock.release()
        struct.pack_into("<QQ", m, 16 + 16 * slot, t0, time.monotonic_ns())
        m.close()


def _handoff(make_lock, n, tmp, cpus=None):
    """Both processes start together (a flag in shared memory), so they contend for the whole
    run; pairs per second over the span from the first start to the last end. `cpus`: one
    CPU for each process (both always running, so every contended acquire is a hand-off
    between CPUs); None: where the scheduler puts them (on a loaded machine the two often
    take turns on one CPU, which measures the scheduler more than the lock)."""
    lock = make_lock()
    path = os.path.join(tmp, "handoff")
    with open(path, "wb") as f:
        f.write(bytes(64))
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_handoff_worker, args=(lock, path, n, i, cpus[i] if cpus else None)) for i in range(2)]
    for p in procs:
        p.start()
    with open(path, "r+b") as f:
        m = mmap.mmap(f.fileno(), 64)
        while struct.unpack_from("<QQ", m, 48) != (1, 1):
            time.sleep(0.001)
        struct.pack_into("<Q", m, 8, 1)  # go
        for p in procs:
            p.join()
        total = struct.unpack_from("<Q", m, 0)[0]
        (s0, e0), (s1, e1) = struct.unpack_from("<QQ", m, 16), struct.unpack_from("<QQ", m, 32)
        m.close()
    assert total == 2 * n, f"lost updates: {total} != {2 * n}"
    return 2 * n / ((max(e0, e1) - min(s0, s1)) / 1e9)


def _echo(ping, pong, path, n):
    with open(path, "r+b") as f:
        m = mmap.mmap(f.fileno(), 16 + 8 * n)
        for i in range(n):
            ping.wait()
            woke = time.monotonic_ns()
            ping.clear()
            struct.pack_into("<Q", m, 16 + 8 * i, woke - struct.unpack_from("<Q", m, 0)[0])
            pong.set()
        m.close()


def _event_wake(make_event, n, tmp):
    ping, pong = make_event(), make_event()
    path = os.path.join(tmp, "wake")
    with open(path, "wb") as f:
        f.write(bytes(16 + 8 * n))
    proc = mp.get_context("fork").Process(target=_echo, args=(ping, pong, path, n))
    proc.start()
    with open(path, "r+b") as f:
        m = mmap.mmap(f.fileno(), 16 + 8 * n)
        for _ in range(n):
            time.sleep(0.0002)  # let the waiter fall asleep: this measures a wake-up, not a spin
            struct.pack_into("<Q", m, 0, time.monotonic_ns())
            ping.set()
            pong.wait()
            pong.clear()
        proc.join()
        lat = sorted(struct.unpack_from("<Q", m, 16 + 8 * i)[0] / 1000 for i in range(n))
        m.close()
    return lat[len(lat) // 2], lat[int(len(lat) * 0.99)]


def main(mode="full", out_dir="bench/results", reps=None):
    n_unc, n_hand, n_wake = COUNTS[mode]
    reps = reps or REPS[mode]
    import tempfile

    tmp = tempfile.mkdtemp(prefix="mc-sync-bench-")
    results = {}

    def record(row, name, values, unit, better):
        results.setdefault(row, {})[name] = {"median": statistics.median(values), "runs": values,
                                             "unit": unit, "better": better}

    # Each rep runs every contender once, in turn (mc, mp, mc, mp, ...), so a change in the
    # machine's load during the run falls on both sides; the medians are over the reps.
    runs = {}
    cpus = sorted(os.sched_getaffinity(0))
    pinned = cpus[:2] if len(cpus) >= 2 else None  # the contended_pinned row: one CPU each
    unc = [("mc.Lock", mc.Lock), ("mp.Lock", mp.Lock), ("threading.Lock", threading.Lock),
           ("mc.Semaphore", mc.Semaphore), ("mp.Semaphore", mp.Semaphore),
           ("mc.Semaphore(reclaim=False)", lambda: mc.Semaphore(reclaim=False))]
    locks = {}
    for name, make in unc:
        locks[name] = make()
        _uncontended(locks[name], n_unc // 10)  # warm-up
    for _ in range(reps):
        for name, _make in unc:
            runs.setdefault(("uncontended", name), []).append(_uncontended(locks[name], n_unc))
        for name, make in [("mc.Lock", mc.Lock), ("mp.Lock", mp.Lock)]:
            runs.setdefault(("contended", name), []).append(_handoff(make, n_hand, tmp))
            if pinned:
                runs.setdefault(("contended_pinned", name), []).append(_handoff(make, n_hand, tmp, pinned))
        for name, make in [("mc.Event", mc.Event), ("mp.Event", mp.Event)]:
            p50, p99 = _event_wake(make, n_wake, tmp)
            runs.setdefault(("event_wake_p50", name), []).append(p50)
            runs.setdefault(("event_wake_p99", name), []).append(p99)
    units = {"uncontended": ("ns/pair", "lower"), "contended": ("pairs/s", "higher"), "contended_pinned": ("pairs/s", "higher"),
             "event_wake_p50": ("us", "lower"), "event_wake_p99": ("us", "lower")}
    for (row, name), values in runs.items():
        record(row, name, values, *units[row])

    lines = [f"# SYNC ({mode}, {reps} reps, load {os.getloadavg()[0]:.2f})", "",
             "| row | primitive | median | unit |", "|---|---|---:|---|"]
    for row, cells in results.items():
        for name, v in cells.items():
            lines.append(f"| {row} | {name} | {v['median']:,.2f} | {v['unit']} |")
    targets = [
        ("uncontended mc.Lock <= mp.Lock ns", results["uncontended"]["mc.Lock"]["median"] <= results["uncontended"]["mp.Lock"]["median"]),
        ("uncontended mc.Semaphore <= mp.Semaphore ns", results["uncontended"]["mc.Semaphore"]["median"] <= results["uncontended"]["mp.Semaphore"]["median"]),
        ("contended 2 processes mc.Lock >= mp.Lock", results["contended"]["mc.Lock"]["median"] >= results["contended"]["mp.Lock"]["median"]),
    ]
    if "contended_pinned" in results:
        targets.append(("contended 2 processes on 2 CPUs mc.Lock >= mp.Lock",
                        results["contended_pinned"]["mc.Lock"]["median"] >= results["contended_pinned"]["mp.Lock"]["median"]))
    targets += [
        ("event_wake p50 mc <= mp", results["event_wake_p50"]["mc.Event"]["median"] <= results["event_wake_p50"]["mp.Event"]["median"]),
    ]
    lines += ["", "| target | met |", "|---|---|"] + [f"| {t} | {'yes' if ok else 'NO'} |" for t, ok in targets]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(out_dir, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d")
    suffix = "-smoke" if mode == "smoke" else ""
    with open(os.path.join(out_dir, f"{stamp}-sync{suffix}.json"), "w") as f:
        json.dump({"mode": mode, "reps": reps, "results": results,
                   "targets": dict(targets), "python": sys.version}, f, indent=1)
    with open(os.path.join(out_dir, f"{stamp}-sync{suffix}.md"), "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(*(sys.argv[1:2] or ["quick"])))
