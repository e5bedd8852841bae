"""``python -m bench.harness``: run every scenario over every transport, one fresh
interpreter per measurement, and write JSON, markdown and plots.

    python -m bench.harness [--quick|--smoke] [--only NAME[,NAME]] [--out DIR] [--docs FILE]
    python -m bench.harness --install-peers
    python -m bench.harness --list

Scenarios S1-S7 (throughput, zero-copy, latency, frames, objects, M:N, batches), O1 (one-thread
object cost against its pickle floor) and M1 (memory of
1,000,000 queued 64 B messages); the targets table is the issue's (report.TARGETS).
A1, W1 (waiting.py) and F1 (fanout.py: one frame to 4 reader processes) run after them.
"""

import argparse
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time

from . import env, fanout, peers, report, subinterp, waiting
from .scenarios import SCENARIOS, param_label
from .transports import TRANSPORTS

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_OUT = os.path.join(ROOT, "bench", "results")

MODES = {
    #        warm-up, repetitions, per-measurement timeout (s)
    "full": (1, 5, 300),
    "quick": (1, 3, 120),
    "smoke": (0, 1, 60),
}
BUSY_LOADAVG_PER_CPU = 0.25     # 1-min load per usable CPU before the run that flags it busy
BUSY_FOREIGN_CORES = 0.25       # CPU used by other processes during one measurement

MEMCPY = {"name": "memcpy", "label": "memcpy, 1 thread", "domain": "", "library": "numpy",
          "notes": "single-thread copy of the payload between two preallocated buffers "
                   "(numpy.copyto): the ceiling for one copy per message"}

SUMMARY_FIELDS = ["value", "bytes_per_s", "us_per_msg", "p50_us", "p99_us", "cpu_us_per_msg",
                  "csw_per_msg", "floor_us", "floor_ratio",
                  # M1 (memory.py)
                  "primary_bytes", "rss_delta_bytes", "rss_anon_delta_bytes",
                  "rss_shmem_delta_bytes", "arena_carved_bytes", "arena_data_bytes",
                  "arena_mapped_bytes", "held_bytes", "fill_s"]


def _transport_info(t):
    return {"name": t.name, "label": t.label, "domain": t.domain, "library": t.library,
            "notes": t.notes}


def select(only):
    """--only: names are scenario keys (S1..S6, M1) or transport names / name prefixes."""
    own = {**waiting.SCENARIOS, **fanout.SCENARIOS}    # A1, W1 (waiting.py), F1 (fanout.py)
    scenarios, transports = list(SCENARIOS) + list(own), list(TRANSPORTS)
    with_memcpy = True
    if only:
        names = [n.strip() for n in only.split(",") if n.strip()]
        keys = [n.upper() for n in names if n.upper() in SCENARIOS or n.upper() in own]
        tnames = [n for n in names if n.upper() not in SCENARIOS and n.upper() not in own]
        unknown = [n for n in tnames if n != "memcpy"
                   and not any(t.name == n or t.name.startswith(n) for t in TRANSPORTS)]
        if unknown:
            raise SystemExit(f"--only: unknown name(s) {unknown}; see --list")
        if keys:
            scenarios = keys
        elif tnames:  # transports named, no scenario: the waiting scenarios have their own
            scenarios = list(SCENARIOS)
        if tnames:
            transports = [t for t in TRANSPORTS
                          if any(t.name == n or t.name.startswith(n) for n in tnames)]
            with_memcpy = "memcpy" in tnames
    return scenarios, transports, with_memcpy and "S1" in scenarios


def summarize(reps, fields=None):
    """Median, min and max over the reps of each of ``fields`` (default SUMMARY_FIELDS) a rep has."""
    out = {}
    for field in SUMMARY_FIELDS if fields is None else fields:
        vals = [r[field] for r in reps if field in r]
        if vals:
            out[field] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    return out


def run_job(job, timeout):
    """Run one measurement in a fresh interpreter; always returns a result dict."""
    job = dict(job, timeout=max(5, timeout - 5))
    cmd = [sys.executable, "-m", "bench.harness.worker", json.dumps(job)]
    load = env.loadavg()
    busy0, own0 = env.CpuMeter.busy_ns(), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)          # the worker's own session: it and its parties
        out, err = proc.communicate()
        result = {"status": "timeout", "reason": f"no result within {timeout} s (killed)"}
    else:
        lines = [ln for ln in out.strip().splitlines() if ln.startswith("{")]
        try:
            result = json.loads(lines[-1])
        except (IndexError, ValueError):
            tail = (err or out).strip().splitlines()[-1:] or ["no output"]
            if proc.returncode is not None and proc.returncode < 0:
                # Killed by a signal (SIGSEGV, SIGABRT...): a crash inside the measured
                # library's native code, reported as such rather than as a broken adapter.
                try:
                    sig = signal.Signals(-proc.returncode).name
                except ValueError:
                    sig = f"signal {-proc.returncode}"
                result = {"status": "crashed",
                          "reason": f"worker killed by {sig} (a crash in the library's native "
                                    f"code): {tail[0][:300]}"}
            else:
                result = {"status": "error",
                          "reason": f"worker exited {proc.returncode}: {tail[0][:300]}"}
    elapsed = time.monotonic() - t0
    own1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1 = env.CpuMeter.busy_ns()
    own_ns = ((own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)) * 1e9
    if busy0 is not None and busy1 is not None:
        foreign = max(0.0, (busy1 - busy0 - own_ns) / (elapsed * 1e9))
        result["foreign_cpu_cores"] = round(foreign, 3)
        result["busy"] = foreign > BUSY_FOREIGN_CORES
    result["elapsed_s"] = round(elapsed, 2)
    result["loadavg_before"] = load
    if err and result["status"] != "ok":
        result["stderr_tail"] = err.strip().splitlines()[-5:]
    return result


def _progress(i, total, scen, param, label, result):
    if result["status"] == "ok":
        s = result["summary"]
        if scen == "S3":
            what = (f"p50 {s['p50_us']['median']:.1f} us  p99 {s['p99_us']['median']:.1f} us")
        elif scen == "M1":
            what = (f"{s['value']['median']:,.1f} bytes/msg ({s['primary_bytes']['median'] / 1e6:,.1f}"
                    f" MB for {result['count']:,})")
            if "rss_delta_bytes" in s:
                what += f"  RSS +{s['rss_delta_bytes']['median'] / 1e6:,.1f} MB"
        else:
            v = s["value"]
            what = (f"{v['median']:,.0f} {SCENARIOS[scen].unit} "
                    f"[{v['min']:,.0f}-{v['max']:,.0f}]")
            if "bytes_per_s" in s:
                what += f"  {s['bytes_per_s']['median'] / 1e6:,.0f} MB/s"
        if "cpu_us_per_msg" in s:
            what += (f"  cpu {s['cpu_us_per_msg']['median']:.2f} us/msg"
                     f"  csw {s['csw_per_msg']['median']:.3f}/msg")
        if result.get("busy"):
            what += "  (BUSY)"
    else:
        what = f"{result['status']}: {result['reason']}"
    print(f"[{i}/{total}] {scen} {param_label(param):>7}  {label:<44} {what}",
          file=sys.stderr, flush=True)


def run(mode="full", only=None, out_dir=DEFAULT_OUT, plots=True, docs=None, reps=None):
    warmup, mode_reps, timeout = MODES[mode]
    reps = reps or mode_reps
    scenario_keys, transports, with_memcpy = select(only)
    waiting_keys = [k for k in scenario_keys if k in waiting.SCENARIOS]  # A1, W1: waiting.py
    fanout_keys = [k for k in scenario_keys if k in fanout.SCENARIOS]    # F1: fanout.py
    scenario_keys = [k for k in scenario_keys
                     if k not in waiting.SCENARIOS and k not in fanout.SCENARIOS]
    install_failures = peers.install_failures(out_dir)
    date, host = env.today(), socket.gethostname()
    run_info = {
        "schema": 1, "date": date, "started": env.now_iso(), "mode": mode,
        "machine": env.machine(), "versions": env.library_versions(),
        "method": {"warmup": warmup, "reps": reps, "timeout_s": timeout,
                   "statistic": "median (min-max) over repetitions",
                   "pinning": "party i pinned to usable CPU i mod N (os.sched_setaffinity of "
                              "its thread or process): consecutive parties on different cores"
                              + ("" if len(os.sched_getaffinity(0)) > 1 else
                                 "; ONLY ONE USABLE CPU: parties share it"),
                   "cpu_and_csw": "CPU time (thread clock for threads and subinterpreters, "
                                  "process clock for processes) and getrusage voluntary + "
                                  "involuntary context switches of every party, per message",
                   "memory": "M1: fresh forked process per repetition; /proc/self/status "
                             "VmRSS/RssAnon/RssShmem before creating the queue and after "
                             "queueing; memchannel: Channel.stats() arena counters",
                   "isolation": "fresh interpreter per measurement; processes forked from it"},
        "subinterpreters": subinterp.backend_name(),
        "transports": [_transport_info(t) for t in transports],
        "baselines": [MEMCPY] if with_memcpy else [],
        "scenarios": {k: {"title": s.title, "unit": s.unit, "params": s.params(mode),
                          "counts": {param_label(p): s.count(p, mode) for p in s.params(mode)}}
                      for k, s in SCENARIOS.items() if k in scenario_keys},
        "results": [],
    }
    cpus = len(run_info["machine"]["usable_cpus"])
    load_before = env.loadavg()
    busy = bool(load_before and load_before[0] > BUSY_LOADAVG_PER_CPU * cpus)
    if busy:
        print(f"warning: machine busy before the run (load average {load_before})",
              file=sys.stderr)

    jobs = []
    for key in scenario_keys:
        for param in SCENARIOS[key].params(mode):
            if key == "S1" and with_memcpy:
                jobs.append((key, param, None))
            for t in transports:
                jobs.append((key, param, t))
    transport_skips = {}
    for i, (key, param, t) in enumerate(jobs, 1):
        name = t.name if t else "memcpy"
        label = report.row_label(_transport_info(t)) if t else MEMCPY["label"]
        static_skip = t().skip_reason(key, param) if t else None
        if name in transport_skips:
            result = dict(transport_skips[name])
        elif static_skip:       # known without starting a worker
            result = {"status": "skipped", "reason": static_skip}
        else:
            job = {"transport": name, "scenario": key, "param": param, "mode": mode,
                   "warmup": warmup, "reps": reps}
            result = run_job(job, timeout)
            if result["status"] == "skipped" and result.get("scope") == "transport":
                if t and t.library in install_failures:
                    result["reason"] += f"; {install_failures[t.library]}"
                transport_skips[name] = {"status": "skipped", "reason": result["reason"],
                                         "scope": "transport"}
        if result["status"] == "ok":
            result["summary"] = summarize(result["reps"])
        elif "reason" not in result or not result["reason"]:
            result["reason"] = "no reason given"
        result.update(transport=name, scenario=key, param=param,
                      param_label=param_label(param))
        run_info["results"].append(result)
        _progress(i, len(jobs), key, param, label, result)

    run_info["results"] += waiting.run(waiting_keys, mode, reps, timeout)
    run_info["results"] += fanout.run(fanout_keys, mode, reps, timeout)
    load_after = env.loadavg()
    run_info["load"] = {"before": load_before, "after": load_after, "busy": busy or any(
        r.get("busy") for r in run_info["results"]),
        "foreign_threshold": BUSY_FOREIGN_CORES, "loadavg_threshold_per_cpu": BUSY_LOADAVG_PER_CPU,
        "note": "after includes this run's own load; busy = load before the run above "
                f"{BUSY_LOADAVG_PER_CPU}/CPU or another process using more than "
                f"{BUSY_FOREIGN_CORES} CPU during a measurement"}
    run_info["method"]["pinned_apart"] = all(
        r.get("pinned_apart", True) for r in run_info["results"] if r["status"] == "ok")
    run_info["finished"] = env.now_iso()
    run_info["targets"] = report.compute_targets(run_info["results"])

    os.makedirs(out_dir, exist_ok=True)
    stem = f"{date}-{host}" + ("-smoke" if mode == "smoke" else "")   # quick and full: the same name
    paths = {"json": os.path.join(out_dir, stem + ".json"),
             "markdown": os.path.join(out_dir, stem + ".md")}
    run_info["plots"] = report.plots(run_info, out_dir, stem) if plots else []
    with open(paths["markdown"], "w") as f:
        f.write(report.markdown(run_info, image_dir=""))
        f.write(waiting.markdown(run_info["results"]))
        f.write(fanout.markdown(run_info["results"]))
    with open(paths["json"], "w") as f:
        json.dump(run_info, f, indent=1)
        f.write("\n")
    if docs:
        paths["docs"] = report.write_docs(run_info, docs, out_dir)
    _print_targets(run_info["targets"])
    print(f"wrote {paths['json']}\n      {paths['markdown']}", file=sys.stderr)
    if "docs" in paths:
        print(f"      {paths['docs']}", file=sys.stderr)
    for p in run_info["plots"]:
        print(f"      {p}", file=sys.stderr)
    return run_info, paths


def _print_targets(targets):
    print("\ntargets (the issue's, from this run):", file=sys.stderr)
    for t in targets:
        extra = f"  ({t['why']})" if t["why"] else ""
        print(f"  {t['target']:<62} goal {t['goal']:<9} measured {t['measured_text']:>10}  "
              f"{t['status']}{extra}", file=sys.stderr)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.harness", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="fewer messages and repetitions")
    g.add_argument("--smoke", action="store_true",
                   help="tiny counts, 1 repetition: checks every cell runs, not timings")
    ap.add_argument("--only", metavar="NAME[,NAME]",
                    help="scenario keys (S1..S6, M1) and/or transport names or prefixes")
    ap.add_argument("--out", metavar="DIR", default=DEFAULT_OUT,
                    help="output directory (default bench/results)")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    ap.add_argument("--docs", metavar="FILE",
                    help="also write the tables into FILE (e.g. docs/benchmarks.md): text "
                         f"above the line {report.DOCS_MARKER!r} is kept, the rest replaced")
    ap.add_argument("--reps", type=int, metavar="N",
                    help="repetitions per cell (default: 5 full, 3 quick, 1 smoke); e.g. "
                         "--quick --reps 5 keeps the quick message counts with 5 repetitions")
    ap.add_argument("--install-peers", action="store_true",
                    help="pip-install the peer libraries into this interpreter and exit")
    ap.add_argument("--list", action="store_true", help="list transports and scenarios")
    args = ap.parse_args(argv)
    if args.install_peers:
        failures = {k: v for k, v in peers.install_peers(args.out).items() if v}
        for dist, reason in failures.items():
            print(f"{dist}: {reason}", file=sys.stderr)
        return 0
    if args.list:
        for t in TRANSPORTS:
            print(f"{t.name:<28} {t.domain:<16} {t.label}")
        print(f"{'memcpy':<28} {'':<16} {MEMCPY['label']} (S1 baseline)")
        for k, s in SCENARIOS.items():
            print(f"{k:<28} {s.title}")
        from . import fanout, waiting  # run after the main scenarios, by the same CLI
        for k, s in list(waiting.SCENARIOS.items()) + list(fanout.SCENARIOS.items()):
            print(f"{k:<28} {s.title}")
        return 0
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.reps is not None and args.reps < 1:
        ap.error("--reps must be >= 1")
    if args.only and args.only.strip().upper() == "SYNC":  # locks, semaphores, events: sync_bench.py
        from . import sync_bench
        return sync_bench.main(mode, os.path.abspath(args.out), args.reps)
    run(mode=mode, only=args.only, out_dir=os.path.abspath(args.out), plots=not args.no_plots,
        docs=os.path.abspath(args.docs) if args.docs else None, reps=args.reps)
    return 0
