"""The benchmark harness runs end to end: every (transport, scenario) cell is a number
or a skip with a stated reason. Checks completeness, not timings."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

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
        elif not (r["status"] in ("skipped", "error", "timeout")
                  and isinstance(r.get("reason"), str) and r["reason"].strip()):
            bad.append((cell, f"status {r['status']!r} without a reason"))
    assert not bad, bad


@pytest.mark.timeout(1800)
def test_peers_that_import_produce_numbers(smoke_run):
    """A peer installed here must measure, not skip: a broken adapter shows up as a skip."""
    run, _out = smoke_run
    broken = [(r["transport"], r["scenario"], r["param"], r["reason"])
              for r in run["results"]
              if r["status"] == "error" and not r["transport"].startswith("memchannel")]
    assert not broken, broken


@pytest.mark.timeout(1800)
def test_report_has_targets_and_markdown(smoke_run):
    run, out = smoke_run
    assert run["targets"] and all(t["status"] in ("pass", "miss", "n/a") for t in run["targets"])
    assert all(t["status"] != "n/a" or t["why"] for t in run["targets"])
    (md,) = [p for p in out.iterdir() if p.suffix == ".md"]
    text = md.read_text()
    assert "## Targets" in text and "## S1" in text
