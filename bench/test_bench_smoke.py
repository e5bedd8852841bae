"""The benchmark harness runs end to end: every (transport, scenario) cell is a number
or a skip with a stated reason, the memory scenario M1 measured memchannel, and the
targets are the issue's. Checks completeness, not timings."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.harness import report  # noqa: E402
from bench.harness.scenarios import SCENARIOS  # noqa: E402
from bench.harness.transports import TRANSPORTS  # noqa: E402


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-smoke")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.harness", "--smoke", "--no-plots", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = [p for p in out.iterdir() if p.suffix == ".json"
               and p.name != "peer-install.json"]
    with open(path) as f:
        return json.load(f), out


@pytest.mark.timeout(1800)
def test_every_cell_is_a_number_or_a_stated_skip(smoke_run):
    run, _out = smoke_run
    cells = {(r["transport"], r["scenario"], r["param"]): r for r in run["results"]}
    expected = [(t.name, key, param) for key, scen in SCENARIOS.items()
                for param in scen.params("smoke") for t in TRANSPORTS]
    missing = [cell for cell in expected if cell not in cells]
    assert not missing, f"cells without a row: {missing}"
    bad = []
    for cell in expected:
        r = cells[cell]
        if r["status"] == "ok":
            value = r["summary"]["value"]["median"]
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                bad.append((cell, f"not a positive number: {value!r}"))
        elif not (r["status"] in ("skipped", "error", "timeout", "crashed")
                  and isinstance(r.get("reason"), str) and r["reason"].strip()):
            bad.append((cell, f"status {r['status']!r} without a reason"))
    assert not bad, bad


@pytest.mark.timeout(1800)
def test_peers_that_import_produce_numbers(smoke_run):
    """A peer installed here must measure: an adapter error or a timeout is a broken adapter.
    A worker killed by a signal inside a peer's native code is that peer's crash, reported
    as 'crashed' (CPython's interpreter queues have crashed this way on large memoryviews)."""
    run, _out = smoke_run
    broken = [(r["transport"], r["scenario"], r["param"], r["reason"])
              for r in run["results"]
              if r["status"] in ("error", "timeout") and not r["transport"].startswith("memchannel")]
    assert not broken, broken


@pytest.mark.timeout(1800)
def test_memchannel_measures_every_cell_it_supports(smoke_run):
    """memchannel never errors, times out or crashes: each of its cells is a number or a
    stated 'not supported' skip."""
    run, _out = smoke_run
    bad = [(r["transport"], r["scenario"], r["param"], r["status"], r.get("reason"))
           for r in run["results"]
           if r["transport"].startswith("memchannel") and r["status"] not in ("ok", "skipped")]
    assert not bad, bad


@pytest.mark.timeout(1800)
def test_report_has_targets_and_markdown(smoke_run):
    run, out = smoke_run
    assert run["targets"] and all(t["status"] in ("pass", "miss", "n/a") for t in run["targets"])
    assert all(t["status"] != "n/a" or t["why"] for t in run["targets"])
    (md,) = [p for p in out.iterdir() if p.suffix == ".md"]
    text = md.read_text()
    assert "## Targets" in text and "## S1" in text


@pytest.mark.timeout(1800)
def test_memory_scenario_measured_memchannel(smoke_run):
    """M1 produced a measured row for the shm arena (arena counters and RSS both read)."""
    run, out = smoke_run
    rows = {r["transport"]: r for r in run["results"] if r["scenario"] == "M1"}
    shm = rows["memchannel-shm-processes"]
    assert shm["status"] == "ok", shm.get("reason")
    s = shm["summary"]
    for field in ("arena_carved_bytes", "arena_data_bytes", "arena_mapped_bytes",
                  "rss_delta_bytes", "primary_bytes"):
        assert field in s, field
    # 64 B of payload per message at least, and the arena counted every message (carved: the
    # 64 B messages travel inline in their 128 B queue nodes, so no data block holds them)
    assert s["arena_carved_bytes"]["median"] >= 64 * shm["count"]
    assert s["primary_bytes"]["median"] == s["arena_carved_bytes"]["median"]
    assert all(rep["messages"] == shm["count"] for rep in shm["reps"])
    for name, r in rows.items():
        assert r["status"] == "ok" or r["reason"].strip(), name
    (md,) = [p for p in out.iterdir() if p.suffix == ".md"]
    assert "## M1" in md.read_text()


def test_targets_are_the_issues():
    """report.TARGETS are exactly the issue's targets (same run, medians)."""
    goals = {t["target"]: (t["kind"], t["goal"]) for t in report.TARGETS}
    assert goals == {
        "S1 64 B processes vs multiprocessing.Queue": ("ratio", 10.0),
        "S1 64 B processes vs multiprocessing.Pipe": ("ratio", 3.0),
        "S1 64 B processes vs faster-fifo": ("ratio", 2.0),
        "S1 64 B subinterpreters (blocking receives) vs interpreter queue (bytes)": ("ratio", 2.0),
        "S1 16 MiB processes, copy-in GB/s vs multiprocessing.Pipe": ("ratio", 3.0),
        "S1 16 MiB processes, copy-in GB/s vs single-thread memcpy": ("ratio", 0.7),
        "S2 16 MiB zero-copy processes, msg/s vs multiprocessing.Queue": ("ratio", 100.0),
        "S2 zero-copy per-message cost, 16 MiB vs 64 B (pages untouched), processes":
            ("cost_ratio", 2.0),
        "S3 64 B round-trip p50, processes": ("max", 10.0),
        "S3 64 B round-trip p50, subinterpreters": ("max", 10.0),
        "S4 1080p frames/s processes vs multiprocessing.Queue": ("ratio", 10.0),
        "S5 5-tuple processes vs interpreter queue (subinterpreters)": ("ratio", 1.5),
        "S5 5-tuple processes vs multiprocessing.Queue": ("ratio", 5.0),
        "S5 small dict processes vs interpreter queue (subinterpreters)": ("ratio", 1.3),
        "S5 small dict processes vs multiprocessing.Queue": ("ratio", 4.0),
        "S5 5-tuple memchannel.Queue put/get processes vs multiprocessing.Queue": ("ratio", 5.0),
        "O1 one thread send_object+recv_object 5-tuple / pickle+send+recv floor": ("max", 1.4),
        "S7 batches of 64 x 64 B processes: per-message cost vs single send": ("cost_ratio", 1 / 3),
        "S7 batches of 64 x 64 B processes: msg/s": ("min", 8e6),
        "S6 1->2 receivers vs S1 1->1, 64 B processes": ("scenario_ratio", 0.5),
        "M1 1,000,000 queued 64 B messages: shm arena bytes": ("max", 128e6),
        "Q1 64 B interpreter-queue echo p50 vs 3.13 queue (blocking gets)": ("ratio", 100.0),
        "Q1 64 B interpreter-queue echo round trips/s vs 3.13 queue (blocking gets)":
            ("ratio", 2.0),
        "A1 asyncio 64 B round-trip p50, processes, vs pyzmq zmq.asyncio (1/3)": ("ratio", 3.0),
        "A1 asyncio 64 B round-trip p50, processes, vs mp.Queue+executor (1/5)": ("ratio", 5.0),
        "W1 select over 8 channels msg/s vs recv on one (0.5x)": ("ratio", 0.5),
    }
    fanout_goals = {t["target"]: (t["kind"], t["goal"]) for t in report.FANOUT_TARGETS}
    assert fanout_goals == {
        "F1 8 MiB frame to 4 reader processes, frames/s vs iceoryx2 pub/sub x4": ("ratio", 1.0),
        "F1 8 MiB frame to 4 reader processes, frames/s vs multiprocessing.Queue x4": ("ratio", 100.0),
        "F1 CPU per share, 16 MiB vs 64 B frames, 4 reader processes": ("cost_ratio", 2.0),
    }


def test_target_rows_show_goal_measure_and_result():
    """Each target row: goal, measured figure and pass/miss, from medians of the run."""
    def row(transport, scenario, param, **summary):
        return {"transport": transport, "scenario": scenario, "param": param, "status": "ok",
                "count": 1_000_000,
                "summary": {k: {"median": v, "min": v, "max": v} for k, v in summary.items()}}
    results = [
        row("memchannel-shm-processes", "S1", 64, value=1_000_000.0),
        row("mp.Queue", "S1", 64, value=50_000.0),
        row("mp.Pipe", "S1", 64, value=500_000.0),
        row("memchannel-shm-processes", "S2", "16MiB-untouched", us_per_msg=3.0),
        row("memchannel-shm-processes", "S2", "64B-untouched", us_per_msg=2.0),
        row("memchannel-shm-processes", "S3", 64, p50_us=4.0, p99_us=9.0),
        row("memchannel-shm-processes", "M1", 64, arena_carved_bytes=192e6,
            arena_data_bytes=128e6, arena_mapped_bytes=264e6, rss_delta_bytes=264e6),
        row("memchannel-shm-processes", "S6", "1to2", value=600_000.0),
        row("memchannel-shm-processes", "S7", "batch64", value=9e6, us_per_msg=0.11),
        row("memchannel-shm-processes", "S7", "single", value=2e6, us_per_msg=0.5),
        row("memchannel-heap-threads", "O1", "tuple", floor_ratio=1.5),
    ]
    rows = {t["target"]: t for t in report.compute_targets(results)}
    q = rows["S1 64 B processes vs multiprocessing.Queue"]
    assert (q["status"], round(q["ratio"], 2), q["goal"]) == ("pass", 20.0, ">= 10x")
    p = rows["S1 64 B processes vs multiprocessing.Pipe"]
    assert (p["status"], round(p["ratio"], 2)) == ("miss", 2.0)
    c = rows["S2 zero-copy per-message cost, 16 MiB vs 64 B (pages untouched), processes"]
    assert (c["status"], round(c["ratio"], 2), c["goal"]) == ("pass", 1.5, "<= 2x")
    lat = rows["S3 64 B round-trip p50, processes"]
    assert (lat["status"], lat["goal"]) == ("pass", "<= 10 us")
    mem = rows["M1 1,000,000 queued 64 B messages: shm arena bytes"]
    assert (mem["status"], mem["goal"], mem["measured_text"]) == ("miss", "<= 128 MB", "192 MB")
    fan = rows["S6 1->2 receivers vs S1 1->1, 64 B processes"]
    assert (fan["status"], round(fan["ratio"], 2), fan["goal"]) == ("pass", 0.6, ">= 0.5x")
    batch = rows["S7 batches of 64 x 64 B processes: msg/s"]
    assert (batch["status"], batch["goal"]) == ("pass", ">= 8M msg/s")
    cost = rows["S7 batches of 64 x 64 B processes: per-message cost vs single send"]
    assert (cost["status"], round(cost["ratio"], 2)) == ("pass", 0.22)
    floor = rows["O1 one thread send_object+recv_object 5-tuple / pickle+send+recv floor"]
    assert (floor["status"], floor["goal"], floor["measured_text"]) == ("miss", "<= 1.4x", "1.50x")
    assert "264.0 MB" in mem["detail"]
    ff = rows["S1 64 B processes vs faster-fifo"]
    assert ff["status"] == "n/a" and "not run" in ff["why"]
