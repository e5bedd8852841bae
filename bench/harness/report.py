"""Turn a run's results into the targets table, markdown tables and PNG plots."""

import os

from . import fanout
from .scenarios import FRAME_BYTES, SCENARIOS, param_label

# The targets, exactly, each computed from medians of the same run:
#   ratio      memchannel `field` / peer `field` >= goal               (throughput)
#   max        memchannel `field` <= goal                                (latency, memory)
#   cost_ratio memchannel `field` at `param` / at `base_param` <= goal   (per-message cost)
MC_PROC, MC_SUB = "memchannel-shm-processes", "memchannel-heap-subinterp"
MB = 1e6
TARGETS = [
    dict(target="S1 64 B processes vs multiprocessing.Queue", kind="ratio", scenario="S1",
         param=64, mine=MC_PROC, peer="mp.Queue", field="value", goal=10.0),
    dict(target="S1 64 B processes vs multiprocessing.Pipe", kind="ratio", scenario="S1",
         param=64, mine=MC_PROC, peer="mp.Pipe", field="value", goal=3.0),
    dict(target="S1 64 B processes vs faster-fifo", kind="ratio", scenario="S1",
         param=64, mine=MC_PROC, peer="faster-fifo", field="value", goal=2.0),
    dict(target="S1 64 B subinterpreters (blocking receives) vs interpreter queue (bytes)",
         kind="ratio", scenario="S1", param=64, mine=MC_SUB, peer="interpqueue-bytes",
         field="value", goal=2.0),
    dict(target="S1 16 MiB processes, copy-in GB/s vs multiprocessing.Pipe", kind="ratio",
         scenario="S1", param=16 << 20, mine=MC_PROC, peer="mp.Pipe", field="bytes_per_s",
         goal=3.0),
    dict(target="S1 16 MiB processes, copy-in GB/s vs single-thread memcpy", kind="ratio",
         scenario="S1", param=16 << 20, mine=MC_PROC, peer="memcpy", field="bytes_per_s",
         goal=0.7),
    dict(target="S2 16 MiB zero-copy processes, msg/s vs multiprocessing.Queue", kind="ratio",
         scenario="S2", param=16 << 20, mine=MC_PROC, peer="mp.Queue", field="value",
         goal=100.0),
    dict(target="S2 zero-copy per-message cost, 16 MiB vs 64 B (pages untouched), processes",
         kind="cost_ratio", scenario="S2", param="16MiB-untouched", base_param="64B-untouched",
         mine=MC_PROC, field="us_per_msg", goal=2.0),
    dict(target="S3 64 B round-trip p50, processes", kind="max", scenario="S3", param=64,
         mine=MC_PROC, field="p50_us", goal=10.0, unit="us"),
    dict(target="S3 64 B round-trip p50, subinterpreters", kind="max", scenario="S3",
         param=64, mine=MC_SUB, field="p50_us", goal=10.0, unit="us"),
    dict(target="S4 1080p frames/s processes vs multiprocessing.Queue", kind="ratio",
         scenario="S4", param="1080p", mine=MC_PROC, peer="mp.Queue", field="value",
         goal=10.0),
    dict(target="S5 5-tuple processes vs interpreter queue (subinterpreters)", kind="ratio",
         scenario="S5", param="tuple", mine=MC_PROC, peer="interpqueue-bytes", field="value",
         goal=1.5),
    dict(target="S5 5-tuple processes vs multiprocessing.Queue", kind="ratio", scenario="S5",
         param="tuple", mine=MC_PROC, peer="mp.Queue", field="value", goal=5.0),
    dict(target="S5 small dict processes vs interpreter queue (subinterpreters)", kind="ratio",
         scenario="S5", param="dict", mine=MC_PROC, peer="interpqueue-bytes", field="value",
         goal=1.3),
    dict(target="S5 small dict processes vs multiprocessing.Queue", kind="ratio", scenario="S5",
         param="dict", mine=MC_PROC, peer="mp.Queue", field="value", goal=4.0),
    dict(target="S5 5-tuple memchannel.Queue put/get processes vs multiprocessing.Queue",
         kind="ratio", scenario="S5", param="tuple", mine="memchannel-queue-processes",
         peer="mp.Queue", field="value", goal=5.0),
    dict(target="O1 one thread send_object+recv_object 5-tuple / pickle+send+recv floor",
         kind="max", scenario="O1", param="tuple", mine="memchannel-heap-threads",
         field="floor_ratio", goal=1.4, unit="x"),
    dict(target="S7 batches of 64 x 64 B processes: per-message cost vs single send",
         kind="cost_ratio", scenario="S7", param="batch64", base_param="single", mine=MC_PROC,
         field="us_per_msg", goal=1 / 3),
    dict(target="S7 batches of 64 x 64 B processes: msg/s", kind="min", scenario="S7",
         param="batch64", mine=MC_PROC, field="value", goal=8e6, unit="msg/s"),
    dict(target="S6 1->2 receivers vs S1 1->1, 64 B processes", kind="scenario_ratio",
         scenario="S6", param="1to2", base_scenario="S1", base_param=64, mine=MC_PROC,
         field="value", goal=0.5),
    dict(target="M1 1,000,000 queued 64 B messages: shm arena bytes", kind="max",
         scenario="M1", param=64, mine=MC_PROC, field="arena_carved_bytes", goal=128 * MB,
         unit="MB", min_count=1_000_000),
    # Q1 (interp_echo.py): memchannel.interpreters Queue vs 3.13's interpreter queue
    dict(target="Q1 64 B interpreter-queue echo p50 vs 3.13 queue (blocking gets)",
         kind="ratio", scenario="Q1", param=64, mine="mc.interpreters.Queue",
         peer="interpqueue-blocking", field="p50_us", goal=100.0),
    dict(target="Q1 64 B interpreter-queue echo round trips/s vs 3.13 queue (blocking gets)",
         kind="ratio", scenario="Q1", param=64, mine="mc.interpreters.Queue",
         peer="interpqueue-blocking", field="value", goal=2.0),
]
# Waiting on several channels and asyncio (bench/harness/waiting.py, docs/guide-waiting.md).
TARGETS += [
    dict(target="A1 asyncio 64 B round-trip p50, processes, vs pyzmq zmq.asyncio (1/3)", kind="ratio",
         scenario="A1", param=64, mine="memchannel-asyncio", peer="pyzmq-asyncio-ipc", field="p50_us", goal=3.0),
    dict(target="A1 asyncio 64 B round-trip p50, processes, vs mp.Queue+executor (1/5)", kind="ratio",
         scenario="A1", param=64, mine="memchannel-asyncio", peer="mp.Queue+run_in_executor", field="p50_us",
         goal=5.0),
    dict(target="W1 select over 8 channels msg/s vs recv on one (0.5x)", kind="ratio", scenario="W1", param=64,
         mine="memchannel-select8", peer="memchannel-recv1", field="value", goal=0.5),
]
# F1, one frame to 4 reader processes (bench/harness/fanout.py, docs/guide-arrays.md "One
# array, many readers"): kept apart from TARGETS, which test_bench_smoke.py pins exactly.
F1_MC = "memchannel-share"
FANOUT_TARGETS = [
    dict(target="F1 8 MiB frame to 4 reader processes, frames/s vs iceoryx2 pub/sub x4",
         kind="ratio", scenario="F1", param=fanout.FRAME, mine=F1_MC, peer="iceoryx2-pubsub4",
         field="value", goal=1.0),
    dict(target="F1 8 MiB frame to 4 reader processes, frames/s vs multiprocessing.Queue x4",
         kind="ratio", scenario="F1", param=fanout.FRAME, mine=F1_MC, peer="mp.Queue-x4",
         field="value", goal=100.0),
    dict(target="F1 CPU per share, 16 MiB vs 64 B frames, 4 reader processes",
         kind="cost_ratio", scenario="F1", param=16 << 20, base_param=64, mine=F1_MC,
         field="cpu_us_per_share", goal=2.0),
]
LOWER_IS_BETTER = {"p50_us", "p99_us", "us_per_msg"}


def _find(results, transport, scenario, param):
    for r in results:
        if r["transport"] == transport and r["scenario"] == scenario and r["param"] == param:
            return r
    return None


def _short(reason):
    return reason if len(reason) <= 90 else reason[:87] + "..."


def _goal_text(t):
    if t["kind"] in ("ratio", "scenario_ratio"):
        return f">= {t['goal']:g}x"
    if t["kind"] == "cost_ratio":
        return f"<= {t['goal']:.3g}x"
    if t["kind"] == "min":
        return f">= {_si(t['goal'])} {t['unit']}"
    if t.get("unit") == "x":
        return f"<= {t['goal']:g}x"
    if t.get("unit") == "MB":
        return f"<= {t['goal'] / MB:g} MB"
    return f"<= {t['goal']:g} {t['unit']}"


def _field_text(field, v, scenario=None):
    if field == "bytes_per_s":
        return _bytes_rate(v)
    if field in ("p50_us", "p99_us", "us_per_msg"):
        return _us(v)
    if field.endswith("_bytes"):
        return f"{v / MB:.4g} MB"
    unit = (SCENARIOS[scenario].unit if scenario in SCENARIOS else
            fanout.SCENARIOS[scenario].unit if scenario in fanout.SCENARIOS else "")
    return f"{_si(v)} {unit}".strip()


def compute_targets(results):
    rows = []
    for t in TARGETS + FANOUT_TARGETS:
        row = {"target": t["target"], "kind": t["kind"], "scenario": t["scenario"],
               "param": t["param"], "memchannel": t["mine"], "peer": t.get("peer"),
               "field": t["field"], "goal": _goal_text(t), "threshold": t["goal"],
               "ratio": None, "value": None, "measured_text": "-", "detail": "",
               "status": "n/a", "why": ""}
        needed = [(t["mine"], t["scenario"], t["param"])]
        if t["kind"] == "ratio":
            needed.append((t["peer"], t["scenario"], t["param"]))
        elif t["kind"] == "cost_ratio":
            needed.append((t["mine"], t["scenario"], t["base_param"]))
        elif t["kind"] == "scenario_ratio":
            needed.append((t["mine"], t["base_scenario"], t["base_param"]))
        found = [(name, p, _find(results, name, scen, p)) for name, scen, p in needed]
        missing = [(name, p, r) for name, p, r in found if r is None or r["status"] != "ok"
                   or t["field"] not in r.get("summary", {})]
        if missing:
            name, p, r = missing[0]
            reason = (r.get("reason") or f"no {t['field']}") if r else "not run"
            row["why"] = f"{name} {param_label(p)}: " + _short(reason)
            rows.append(row)
            continue
        vals = [r["summary"][t["field"]]["median"] for _n, _p, r in found]
        if t["kind"] == "ratio":
            mine, peer = vals
            ratio = peer / mine if t["field"] in LOWER_IS_BETTER else mine / peer
            row.update(ratio=ratio, measured_text=f"{ratio:.2f}x",
                       detail=f"{_field_text(t['field'], mine, t['scenario'])} vs "
                              f"{_field_text(t['field'], peer, t['scenario'])}",
                       status="pass" if ratio >= t["goal"] else "miss")
        elif t["kind"] == "scenario_ratio":
            mine, base = vals
            ratio = mine / base
            row.update(ratio=ratio, measured_text=f"{ratio:.2f}x",
                       detail=f"{_field_text(t['field'], mine, t['scenario'])} vs "
                              f"{_field_text(t['field'], base, t['base_scenario'])} "
                              f"({t['base_scenario']} {param_label(t['base_param'])})",
                       status="pass" if ratio >= t["goal"] else "miss")
        elif t["kind"] == "cost_ratio":
            big, base = vals
            ratio = big / base
            row.update(ratio=ratio, measured_text=f"{ratio:.2f}x",
                       detail=f"{_us(big)} vs {_us(base)} "
                              f"{'per share' if t['field'].endswith('_share') else 'per message'} "
                              f"({param_label(t['param'])} vs {param_label(t['base_param'])})",
                       status="pass" if ratio <= t["goal"] else "miss")
        else:
            (value,) = vals
            r = found[0][2]
            row["value"] = value
            row["measured_text"] = (f"{value:.2f}x" if t.get("unit") == "x"
                                    else _field_text(t["field"], value, t["scenario"]))
            if t["scenario"] == "S3":
                row["detail"] = f"p99 {_us(r['summary']['p99_us']['median'])}"
            if t["scenario"] == "M1":
                s = r["summary"]
                row["detail"] = "; ".join(
                    f"{label} {s[k]['median'] / MB:.1f} MB" for label, k in (
                        ("arena data blocks", "arena_data_bytes"),
                        ("arena segments mapped", "arena_mapped_bytes"),
                        ("process RSS growth", "rss_delta_bytes")) if k in s)
            if r.get("count", 0) < t.get("min_count", 0):
                row["why"] = (f"{r['count']:,} messages in this mode, not "
                              f"{t['min_count']:,} (run without --smoke)")
            elif t["kind"] == "min":
                row["status"] = "pass" if value >= t["goal"] else "miss"
            else:
                row["status"] = "pass" if value <= t["goal"] else "miss"
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- formatting

def _si(x):
    if x is None:
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def _bytes_rate(x):
    if x is None:
        return "-"
    if x >= 1e9:
        return f"{x / 1e9:.3g} GB/s"
    return f"{x / 1e6:.3g} MB/s"


def _us(x):
    if x is None:
        return "-"
    return f"{x / 1e3:.3g} ms" if x >= 1000 else f"{x:.3g} us"


def row_label(t):
    return f"{t['label']} ({t['domain']})" if t["domain"] else t["label"]


class _Notes:
    """Footnotes for skipped cells: identical reasons share one number."""

    def __init__(self):
        self.reasons = []

    def mark(self, reason):
        if reason not in self.reasons:
            self.reasons.append(reason)
        return f"skipped [{self.reasons.index(reason) + 1}]"

    def lines(self):
        return [f"[{i}] {reason}" for i, reason in enumerate(self.reasons, 1)]


def _cell(r, notes, fmt):
    if r is None:
        return "-"
    if r["status"] != "ok":
        return notes.mark(f"{r['status']}: {r['reason']}")
    return fmt(r) + (" \\*" if r.get("busy") else "")


def _table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def _range(s, conv):
    return f"{conv(s['median'])} ({conv(s['min'])}-{conv(s['max'])})"


def _memory_section(run, notes):
    """M1: one row per transport, every measured figure in its own column."""
    results, transports = run["results"], run["transports"]
    params = run["scenarios"]["M1"]["params"]
    rows, how = [], []
    for t in transports:
        for p in params:
            r = _find(results, t["name"], "M1", p)
            if r is None:
                continue
            if r["status"] != "ok":
                rows.append([row_label(t), _cell(r, notes, None)] + ["-"] * 6)
                continue
            s = r["summary"]

            def mb(key, s=s):
                return _range(s[key], lambda v: f"{v / MB:.1f}") if key in s else "-"
            rss = mb("rss_delta_bytes")
            if "rss_anon_delta_bytes" in s and "rss_shmem_delta_bytes" in s:
                rss += (f" (anon {s['rss_anon_delta_bytes']['median'] / MB:.1f}, "
                        f"shmem {s['rss_shmem_delta_bytes']['median'] / MB:.1f})")
            rows.append([row_label(t), f"{r['count']:,}",
                         _range(s["value"], lambda v: f"{v:.1f}"), rss,
                         mb("arena_carved_bytes"), mb("arena_data_bytes"),
                         mb("arena_mapped_bytes"),
                         f"{s['fill_s']['median']:.3g} s" if "fill_s" in s else "-"])
            how.append(f"- **{row_label(t)}**: {r.get('measured_as', '')}")
    if not rows:
        return []
    lines = [f"## M1: {SCENARIOS['M1'].title}", "",
             "Lower is better. Each repetition queues the messages (a new 64-byte `bytes` "
             "per message, distinct contents) into a fresh queue in a freshly forked process "
             "with nobody receiving, then checks the queue holds them all and the first ones "
             "come out intact (memchannel: drained completely, arena back to its start). "
             "MB = 10^6 bytes; median (min-max).", ""]
    lines += _table(["transport", "messages", "bytes/msg (what is measured: below)",
                     "process RSS growth, MB", "arena carved, MB",
                     "arena data blocks, MB", "arena mapped (total), MB", "time to queue"],
                    rows)
    lines += ["", "What bytes/msg measures:", ""] + how + [
        "", "Arena carved = `Channel.stats()['carved_bytes']` growth (data blocks and queue "
        "nodes); data blocks = `bytes_in_use` growth; mapped = the arena's segments after "
        "filling, whole (the process's RSS includes them as they are mapped). RSS = "
        "`/proc/self/status` VmRSS growth from before the queue was created.", ""]
    return lines


def markdown(run, image_dir=None):
    """The run as markdown; ``image_dir``: path of the plots relative to where it is written."""
    results, transports = run["results"], run["transports"]
    m = run["machine"]
    ok = [r for r in results if r["status"] == "ok"]
    busy_n = sum(1 for r in results if r.get("busy"))
    lines = [f"# memchannel benchmarks: {run['date']} on {m['host']}", ""]
    lines += [
        f"- machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs "
        f"(parties pinned to {m['usable_cpus']}), {m['ram_bytes'] / 2**30:.1f} GiB RAM, "
        f"kernel {m['kernel']}" + (f", {m.get('arch')}" if m.get("arch") else "")
        + (f", governor {m['cpu_governor']}" if m.get("cpu_governor") else ""),
        f"- Python {m['python']} ({m['python_executable']}); mode `{run['mode']}` "
        f"({run['method']['warmup']} warm-up + {run['method']['reps']} repetitions, "
        "median (min-max))",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in run["versions"].items() if v),
        f"- pinning: {run['method']['pinning']}"
        + ("" if run["method"].get("pinned_apart", True)
           else "; **some measurements had consecutive parties on one core**"),
        f"- load average before {run['load']['before']}, after {run['load']['after']}; "
        f"{busy_n} of {len(results)} measurements saw other processes use more than "
        f"{run['load'].get('foreign_threshold', 0.25)} CPU"
        + ("; **machine was busy: numbers are suspect**" if run["load"]["busy"] else ""),
        "- \\* after a figure: other processes used more than "
        f"{run['load'].get('foreign_threshold', 0.25)} CPU while it was measured (suspect)",
        f"- subinterpreters via {run['subinterpreters']}; processes forked from a fresh "
        "interpreter per measurement",
        f"- {len(ok)} of {len(results)} measurements produced numbers; the others are "
        "skips, errors or timeouts with their reason in the tables",
        "",
    ]
    # targets
    lines += ["## Targets", "",
              "The issue's targets; ratios are memchannel / peer, medians of this run.", ""]
    trows = []
    for t in run["targets"]:
        status = t["status"] if t["status"] != "n/a" else f"n/a ({t['why']})"
        trows.append([t["target"], t["goal"], t["measured_text"], t.get("detail", ""), status])
    lines += _table(["target", "goal", "measured", "from", "result"], trows)
    lines += [""]

    for key, scen in SCENARIOS.items():
        if key not in run["scenarios"]:
            continue
        notes = _Notes()
        if key == "M1":
            section = _memory_section(run, notes)
            if section:
                lines += section
                if notes.reasons:
                    lines += [f"{ln}  " for ln in notes.lines()] + [""]
            continue
        params = run["scenarios"][key]["params"]
        rows = []
        for t in transports + run.get("baselines", []):
            rs = [_find(results, t["name"], key, p) for p in params]
            if all(r is None for r in rs):
                continue
            if key == "S3":
                fmt = (lambda r: f"{_us(r['summary']['p50_us']['median'])} / "
                       f"{_us(r['summary']['p99_us']['median'])}")
            else:
                fmt = (lambda r: _range(r["summary"]["value"], _si))
            rows.append([row_label(t)] + [_cell(r, notes, fmt) for r in rs])
        if not rows:
            continue
        unit = "p50 / p99" if key == "S3" else scen.unit
        lines += [f"## {key}: {scen.title}", "", f"{unit}, higher is better"
                  if key != "S3" else "p50 / p99 round trip, lower is better", ""]
        lines += _table(["transport"] + [param_label(p) for p in params], rows)
        if key in ("S1", "S2", "S4"):
            lines += ["", "bytes per second (median):", ""]
            brows = []
            for t in transports + run.get("baselines", []):
                rs = [_find(results, t["name"], key, p) for p in params]
                if all(r is None for r in rs):
                    continue
                brows.append([row_label(t)] + [
                    _bytes_rate(r["summary"]["bytes_per_s"]["median"])
                    if r and r["status"] == "ok" and "bytes_per_s" in r["summary"] else "-"
                    for r in rs])
            lines += _table(["transport"] + [param_label(p) for p in params], brows)
        if key == "S2":
            lines += ["", "time per message (median; the 'untouched' columns are the "
                      "per-message cost of a zero-copy hand-over without the data):", ""]
            urows = []
            for t in transports:
                rs = [_find(results, t["name"], key, p) for p in params]
                if all(r is None for r in rs):
                    continue
                urows.append([row_label(t)] + [
                    _us(r["summary"]["us_per_msg"]["median"])
                    if r and r["status"] == "ok" and "us_per_msg" in r["summary"] else "-"
                    for r in rs])
            lines += _table(["transport"] + [param_label(p) for p in params], urows)
        if notes.reasons:
            lines += [""] + [f"{ln}  " for ln in notes.lines()]
        lines += [""]

    # cost per message
    lines += ["## Cost per message", "",
              "CPU time of all parties and their voluntary + involuntary context switches "
              "(getrusage), per message; median over repetitions.", ""]
    cost_cols = [("S1", 64), ("S1", 1 << 20), ("S2", 16 << 20), ("S3", 64), ("S5", "tuple")]
    crows = []
    for t in transports:
        cells = []
        for key, p in cost_cols:
            r = _find(results, t["name"], key, p)
            if r and r["status"] == "ok" and "cpu_us_per_msg" in r["summary"]:
                cells.append(f"{r['summary']['cpu_us_per_msg']['median']:.3g} us, "
                             f"{r['summary']['csw_per_msg']['median']:.3g} csw")
            else:
                cells.append("-")
        crows.append([row_label(t)] + cells)
    lines += _table(["transport"] + [f"{k} {param_label(p)}" for k, p in cost_cols], crows)
    if image_dir is not None and run.get("plots"):
        lines += [""] + [f"![{os.path.basename(p)}]({image_dir}{os.path.basename(p)})"
                         for p in run["plots"]]
    lines += ["", "## How each transport is used", ""]
    for t in transports:
        lines.append(f"- **{row_label(t)}**: {t['notes']}")
    lines += ["", "What these numbers do not include: channel and party setup, the first "
              "(warm-up) repetition, and any work on the data beyond what each scenario "
              "states (S2 and S4 write and read one byte per 4 KiB page; S2 'untouched' "
              "none).", ""]
    return "\n".join(lines)


DOCS_MARKER = "<!-- generated by bench/harness (--docs): everything below is replaced by each run -->"


def write_docs(run, path, out_dir):
    """Write the run's markdown into ``path`` below DOCS_MARKER, keeping the text above it.

    Without the marker, the text before the first generated heading ("# memchannel
    benchmarks:") is kept and the marker inserted there; a new file gets only the tables.
    """
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    if DOCS_MARKER in old:
        keep = old[:old.index(DOCS_MARKER)]
    else:
        idx = old.find("# memchannel benchmarks:")
        keep = old[:idx] if idx >= 0 else old
    keep = keep.rstrip() + "\n\n" if keep.strip() else ""
    rel = os.path.relpath(out_dir, os.path.dirname(os.path.abspath(path)))
    text = keep + DOCS_MARKER + "\n\n" + markdown(run, image_dir=rel + "/")
    with open(path, "w") as f:
        f.write(text)
    return path


# --------------------------------------------------------------------------- plots

def plots(run, out_dir, stem):
    """Write PNGs; returns their paths (empty when matplotlib is missing)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - plots are optional
        return []
    paths = []
    if "S1" in run["scenarios"]:
        paths.append(_plot_s1(plt, run, out_dir, stem))
    if "S3" in run["scenarios"]:
        paths.append(_plot_s3(plt, run, out_dir, stem))
    if "S4" in run["scenarios"]:
        paths.append(_plot_s4(plt, run, out_dir, stem))
    if "M1" in run["scenarios"]:
        paths.append(_plot_m1(plt, run, out_dir, stem))
    return [p for p in paths if p]


def _plot_m1(plt, run, out_dir, stem):
    rows = []
    for t in run["transports"]:
        r = _find(run["results"], t["name"], "M1", scenarios_m1_param(run))
        if r and r["status"] == "ok":
            s = r["summary"]
            rows.append((row_label(t), s["value"]["median"],
                         s["rss_delta_bytes"]["median"] / r["count"]))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(9, 5))
    ys = range(len(rows))
    ax.barh([y + 0.2 for y in ys], [r[1] for r in rows], height=0.4,
            label="measured (arena carved / RSS growth / buffer bytes: see table)")
    ax.barh([y - 0.2 for y in ys], [r[2] for r in rows], height=0.4,
            label="process RSS growth")
    ax.axvline(200, color="red", linestyle="--", label="target: 200 MB per 1,000,000")
    ax.set_yticks(list(ys), [r[0] for r in rows], fontsize=8)
    ax.set_xlabel("bytes per queued 64 B message (= MB per 1,000,000 messages)")
    ax.set_title("M1 memory of queued messages (lower is better)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, f"{stem}-m1-memory.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scenarios_m1_param(run):
    return run["scenarios"]["M1"]["params"][0]


def _plot_s1(plt, run, out_dir, stem):
    results, transports = run["results"], run["transports"] + run.get("baselines", [])
    fig, ax = plt.subplots(figsize=(9, 6))
    colors = plt.cm.tab20.colors
    for i, t in enumerate(transports):
        pts = [(r["param"], r["summary"]["bytes_per_s"]["median"])
               for r in results if r["transport"] == t["name"] and r["scenario"] == "S1"
               and r["status"] == "ok"]
        if not pts:
            continue
        pts.sort()
        style = "--" if t["name"] == "memcpy" else ("-" if "memchannel" in t["name"] else ":")
        ax.plot([p for p, _ in pts], [v / 1e6 for _, v in pts], style, marker="o",
                label=row_label(t), color=colors[(2 * i) % 20 + (2 * i) // 20 % 2], linewidth=2.2 if "memchannel" in t["name"] else 1.2)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("payload (bytes)")
    ax.set_ylabel("throughput (MB/s)")
    ax.set_title(f"S1 one-way throughput 1->1 ({run['date']}, {run['machine']['host']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = os.path.join(out_dir, f"{stem}-s1-throughput.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_s3(plt, run, out_dir, stem):
    results, transports = run["results"], run["transports"] + run.get("baselines", [])
    params = run["scenarios"]["S3"]["params"]
    fig, axes = plt.subplots(1, len(params), figsize=(6 * len(params), 6), squeeze=False)
    for ax, p in zip(axes[0], params):
        rows = [(row_label(t), r["summary"]["p50_us"]["median"], r["summary"]["p99_us"]["median"])
                for t in transports
                for r in [_find(results, t["name"], "S3", p)] if r and r["status"] == "ok"]
        ys = range(len(rows))
        ax.barh([y + 0.2 for y in ys], [r[1] for r in rows], height=0.4, label="p50")
        ax.barh([y - 0.2 for y in ys], [r[2] for r in rows], height=0.4, label="p99")
        ax.set_yticks(list(ys), [r[0] for r in rows], fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("round trip (us)")
        ax.set_title(f"S3 round-trip latency, {param_label(p)}")
        ax.grid(True, axis="x", which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, f"{stem}-s3-latency.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_s4(plt, run, out_dir, stem):
    results, transports = run["results"], run["transports"] + run.get("baselines", [])
    rows = [(row_label(t), r["summary"]["value"]["median"], r["summary"]["value"]["min"],
             r["summary"]["value"]["max"])
            for t in transports for r in [_find(results, t["name"], "S4", "1080p")]
            if r and r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(9, 5))
    ys = range(len(rows))
    ax.barh(list(ys), [r[1] for r in rows],
            xerr=[[r[1] - r[2] for r in rows], [r[3] - r[1] for r in rows]])
    ax.set_yticks(list(ys), [r[0] for r in rows], fontsize=8)
    ax.set_xlabel("frames per second (1920x1080x3 uint8, 3 hops)")
    ax.set_title(f"S4 frame pipeline ({FRAME_BYTES / 1e6:.1f} MB frames)")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    path = os.path.join(out_dir, f"{stem}-s4-frames.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
