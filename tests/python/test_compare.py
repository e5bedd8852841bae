"""memchannel.compare and ``python -m memchannel compare``: the same work run serially, in
threads, in subinterpreters and in processes gives the same results, or the comparison
fails loudly; the CLI prints a table and writes a PNG.  Tiny sizes, no timing asserts.

Module-level functions are the tasks (workers import this module by name; it imports
nothing that cannot load in an isolated subinterpreter).
"""

import os
import subprocess
import sys
import textwrap

import pytest

import memchannel as mc
from memchannel import workloads
from memchannel.compare import ResultsDiffer, main

pytestmark = pytest.mark.timeout(300)

ALL_KINDS = ("serial", "threads", "interpreters", "processes", "processes-pickle")


def square_plus(x):
    return x * x + 1


def where_it_ran(x):
    """Differs by kind: the process id and the interpreter id the task ran in."""
    from memchannel import interpreters
    return x, os.getpid(), interpreters.get_current().id


def test_compare_runs_every_kind_with_identical_results():
    report = mc.compare(square_plus, list(range(12)), workers=(1, 2), overhead_tasks=3)
    kinds = [(row.kind, row.workers) for row in report.rows]
    assert kinds == [("serial", 1), ("threads", 1), ("threads", 2), ("interpreters", 1),
                     ("interpreters", 2), ("processes", 1), ("processes", 2),
                     ("processes-pickle", 1), ("processes-pickle", 2)]
    expected = [x * x + 1 for x in range(12)]
    assert all(results == expected for results in report.results.values())
    for row in report.rows:
        assert row.tasks == 12
        assert row.wall_s > 0 and row.overhead_s > 0
        assert row.speedup is not None
        assert (row.startup_s is None) == (row.kind == "serial")
    assert report.row("serial", 1).speedup == pytest.approx(1.0)
    assert report.row("threads", 2).bytes_moved == 0
    assert report.row("interpreters", 2).bytes_moved > 0
    assert report.row("processes-pickle", 2).bytes_copied is None
    table = report.table()
    for kind in ALL_KINDS:
        assert kind in table


def test_repeat_times_several_runs_and_reports_their_median():
    report = mc.compare(square_plus, list(range(6)), kinds=("serial", "interpreters"),
                        workers=(2,), repeat=3, overhead_tasks=1)
    for row in report.rows:
        assert len(row.wall_runs) == 3
        assert row.wall_s == sorted(row.wall_runs)[1]
    assert "medians of 3 runs" in report.table()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the ideal control forks")
def test_ideal_control_times_forked_copies_and_returns_no_results():
    report = mc.compare(square_plus, list(range(6)), kinds=("serial", "ideal"),
                        workers=(1, 2), overhead_tasks=1, repeat=2)
    assert [(r.kind, r.workers) for r in report.rows] == [("serial", 1), ("ideal", 1),
                                                           ("ideal", 2)]
    assert all(r.wall_s > 0 and r.speedup is not None for r in report.rows)
    assert list(report.results) == [("serial", 1)]


@pytest.mark.parametrize("ideal_speedup, noted", [(1.05, True), (1.9, False)])
def test_table_says_when_the_ideal_control_shows_a_busy_machine(ideal_speedup, noted):
    from memchannel.compare import Comparison, Row
    rows = [Row("serial", 1, 4, None, 1.0, 1e-6, 0, None, speedup=1.0),
            Row("ideal", 2, 4, None, 1.0 / ideal_speedup, None, 0, None,
                speedup=ideal_speedup)]
    table = Comparison("w", "", rows, {}).table()
    assert ("the machine was busy" in table) == noted


def test_compare_raises_when_results_differ_by_kind():
    with pytest.raises(ResultsDiffer, match="results differ by kind"):
        mc.compare(where_it_ran, [1, 2, 3], kinds=("serial", "interpreters"), workers=(1,),
                   overhead_tasks=1)


def test_compare_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="unknown kind"):
        mc.compare(square_plus, [1], kinds=("serial", "fibers"))


def test_arrays_move_through_memchannel_without_copies():
    workload = workloads.get_workload("arrays", tasks=3, quick=True)
    report = mc.compare(workload.fn, workload.make_inputs,
                        kinds=("serial", "interpreters", "processes"), workers=(2,),
                        overhead_tasks=1)
    reference = report.results[("serial", 1)]
    assert len(reference) == 3 and all(r[0] == workload.bytes_per_task // 8 for r in reference)
    for kind in ("interpreters", "processes"):
        row = report.row(kind, 2)
        assert row.bytes_moved >= 3 * workload.bytes_per_task
        # Only the small task and result messages are copied; the arrays are moved.
        assert row.bytes_copied < workload.bytes_per_task
    # "processes" brings the stdlib pool, with its default pickling, as the baseline.
    baseline = report.row("processes-pickle", 2)
    assert baseline.bytes_moved >= 3 * workload.bytes_per_task
    assert baseline.bytes_copied is None
    assert report.results[("processes-pickle", 2)] == reference


def test_arrays_copied_into_channel_memory_when_asked():
    workload = workloads.get_workload("arrays", tasks=2, quick=True, copy_inputs=True)
    report = mc.compare(workload.fn, workload.make_inputs, kinds=("serial", "interpreters"),
                        workers=(1,), overhead_tasks=1)
    assert report.row("interpreters", 1).bytes_copied >= 2 * workload.bytes_per_task


def test_pipeline_workload_gives_the_same_replies_each_way():
    workload = workloads.get_workload("pipeline", tasks=12, quick=True)
    report = mc.compare(workload.fn, workload.make_inputs, kinds=ALL_KINDS, workers=(2,),
                        runner=workload.runner, overhead_tasks=1)
    replies = report.results[("serial", 1)]
    assert [int.from_bytes(r[:8], "little") for r in replies] == list(range(12))


def test_cli_prints_a_table_and_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "chart.png"
    status = main(["--workload", "cpu", "--quick", "--workers", "1,2",
                                  "--kinds", "serial,threads,interpreters", "--repeat", "2",
                                  "--png", str(png), "--json", str(tmp_path / "rows.json")])
    assert status == 0
    out = capsys.readouterr().out
    assert "workload: cpu" in out and "interpreters" in out and f"wrote {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "rows.json").stat().st_size > 0


def test_python_dash_m_memchannel_compare_runs_a_function_from_a_file(tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "mywork.py").write_text(textwrap.dedent("""\
        def make_inputs(tasks):
            return [(i, i + 1) for i in range(tasks)]

        def add(pair):
            return pair[0] + pair[1]
        """))
    png = tmp_path / "mywork.png"
    completed = subprocess.run(
        [sys.executable, "-m", "memchannel", "compare", "--workload",
         f"{tmp_path / 'mywork.py'}:add", "--quick", "--workers", "2", "--kinds",
         "serial,interpreters,processes", "--png", str(png)],
        cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr
    assert "mywork:add" in completed.stdout
    assert "processes-pickle" in completed.stdout
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_the_exported_function_carries_the_module_names():
    assert mc.compare.ResultsDiffer is ResultsDiffer and mc.compare.main is main


def test_cli_reports_unknown_workloads():
    with pytest.raises(SystemExit) as info:
        main(["--workload", "nonesuch"])
    assert info.value.code == 2


def test_startup_is_measured_for_pools_and_for_bare_workers():
    import multiprocessing
    methods = [m for m in ("fork", "spawn") if m in multiprocessing.get_all_start_methods()]
    startup = mc.compare.measure_startup(kinds=("threads", "interpreters", "processes"),
                                         repeat=1, start_methods=methods)
    expected = ["thread", "interpreter"] + [f"process ({m})" for m in methods]
    expected += ["bare interpreter (create+close)"]
    expected += [f"bare process, {m} (start+join)" for m in methods]
    assert list(startup) == expected
    assert all(seconds > 0 for seconds in startup.values())
    report = mc.compare(square_plus, [1, 2], kinds=("serial",), overhead_tasks=1)
    report.startup = startup
    table = report.table()
    assert "pool of 1 worker" in table and "the worker alone, no pool" in table
    assert "interpreter (create+close)" in table and "bare " not in table
