"""Turn a run's results into the targets table, markdown tables and PNG plots."""

import os

from .scenarios import FRAME_BYTES, SCENARIOS, param_label

# Target ratios, computed from the same run. ``better`` says which way the ratio goes:
# "higher" -> memchannel value / peer value (throughput), "lower" -> peer / memchannel
# (latency). Thresholds are provisional engineering goals derived from DESIGN.md section 8.
MC_PROC, MC_SUB = "memchannel-shm-processes", "memchannel-heap-subinterp"
TARGETS = [
    # (id, scenario, param, memchannel row, peer row, field, threshold)
    ("S1 64 B processes vs multiprocessing.Queue", "S1", 64, MC_PROC, "mp.Queue", "value", 3.0),
    ("S1 64 B processes vs multiprocessing.Pipe", "S1", 64, MC_PROC, "mp.Pipe", "value", 1.5),
    ("S1 64 B processes vs faster-fifo", "S1", 64, MC_PROC, "faster-fifo", "value", 2.0),
    ("S1 64 B subinterpreters vs interpreter queue (bytes)", "S1", 64, MC_SUB,
     "interpqueue-bytes", "value", 1.5),
    ("S1 16 MiB processes vs multiprocessing.Pipe", "S1", 16 << 20, MC_PROC, "mp.Pipe",
     "value", 2.0),
    ("S1 16 MiB processes vs single-thread memcpy", "S1", 16 << 20, MC_PROC, "memcpy",
     "value", 0.5),
    ("S2 16 MiB processes vs multiprocessing.Queue", "S2", 16 << 20, MC_PROC, "mp.Queue",
     "value", 10.0),
    ("S3 64 B p50 processes vs multiprocessing.Queue", "S3", 64, MC_PROC, "mp.Queue",
     "p50_us", 2.0),
    ("S3 64 B p50 processes vs multiprocessing.Pipe", "S3", 64, MC_PROC, "mp.Pipe",
     "p50_us", 1.2),
    ("S3 1 MiB p50 processes vs multiprocessing.Queue", "S3", 1 << 20, MC_PROC, "mp.Queue",
     "p50_us", 3.0),
    ("S3 64 B p50 subinterpreters vs interpreter queue (bytes)", "S3", 64, MC_SUB,
     "interpqueue-bytes", "p50_us", 1.5),
    ("S4 1080p frames/s processes vs multiprocessing.Queue", "S4", "1080p", MC_PROC,
     "mp.Queue", "value", 5.0),
]
LOWER_IS_BETTER = {"p50_us", "p99_us"}


def _find(results, transport, scenario, param):
    for r in results:
        if r["transport"] == transport and r["scenario"] == scenario and r["param"] == param:
            return r
    return None


def compute_targets(results):
    rows = []
    for tid, scen, param, mine, peer, field, threshold in TARGETS:
        a, b = _find(results, mine, scen, param), _find(results, peer, scen, param)
        row = {"target": tid, "scenario": scen, "param": param, "memchannel": mine,
               "peer": peer, "field": field, "threshold": threshold,
               "ratio": None, "status": "n/a", "why": ""}
        missing = [(name, r) for name, r in ((mine, a), (peer, b))
                   if r is None or r["status"] != "ok"]
        if missing:
            name, r = missing[0]
            reason = r["reason"] if r else "not run"
            row["why"] = f"{name}: " + (reason if len(reason) <= 90 else reason[:87] + "...")
        else:
            va, vb = a["summary"][field]["median"], b["summary"][field]["median"]
            ratio = vb / va if field in LOWER_IS_BETTER else va / vb
            row["ratio"] = ratio
            row["status"] = "pass" if ratio >= threshold else "miss"
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
    return fmt(r)


def _table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def _range(s, conv):
    return f"{conv(s['median'])} ({conv(s['min'])}-{conv(s['max'])})"


def markdown(run):
    results, transports = run["results"], run["transports"]
    m = run["machine"]
    lines = [f"# memchannel benchmarks: {run['date']} on {m['host']}", ""]
    lines += [
        f"- machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs "
        f"(parties pinned to {m['usable_cpus']}), {m['ram_bytes'] / 2**30:.1f} GiB RAM, "
        f"kernel {m['kernel']}",
        f"- Python {m['python']} ({m['python_executable']}); mode `{run['mode']}` "
        f"({run['method']['warmup']} warm-up + {run['method']['reps']} repetitions, "
        "median (min-max))",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in run["versions"].items() if v),
        f"- load average before {run['load']['before']}, after {run['load']['after']}"
        + ("; **machine was busy: numbers are suspect**" if run["load"]["busy"] else ""),
        f"- subinterpreters via {run['subinterpreters']}; processes forked from a fresh "
        "interpreter per measurement",
        "",
    ]
    # targets
    lines += ["## Targets", ""]
    trows = []
    for t in run["targets"]:
        ratio = f"{t['ratio']:.2f}x" if t["ratio"] is not None else "-"
        status = t["status"] if t["status"] != "n/a" else f"n/a ({t['why']})"
        trows.append([t["target"], f">= {t['threshold']:g}x", ratio, status])
    lines += _table(["target", "goal", "measured", "result"], trows)
    lines += ["", "Ratios are memchannel / peer for throughput and peer / memchannel for "
              "latency, from the same run.", ""]

    for key, scen in SCENARIOS.items():
        if key not in run["scenarios"]:
            continue
        params = run["scenarios"][key]["params"]
        notes = _Notes()
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
        if notes.reasons:
            lines += [""] + [f"{ln}  " for ln in notes.lines()]
        lines += [""]

    # cost per message
    lines += ["## Cost per message", "",
              "CPU time of all parties (getrusage) and voluntary + involuntary context "
              "switches, per message; median over repetitions.", ""]
    cost_cols = [("S1", 64), ("S1", 1 << 20), ("S3", 64), ("S5", "tuple")]
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
    lines += ["", "## How each transport is used", ""]
    for t in transports:
        lines.append(f"- **{row_label(t)}**: {t['notes']}")
    lines += ["", "What these numbers do not include: channel and party setup, the first "
              "(warm-up) repetition, and any work on the data beyond what each scenario "
              "states (S2/S4 write and read one byte per 4 KiB page).", ""]
    return "\n".join(lines)


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
    return paths


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
