"""memchannel.compare and ``python -m memchannel compare`` on Dask clusters: a LocalCluster
per worker count (dask="local") and an existing cluster (a Client or its address), real
worker processes on 127.0.0.1; results are checked equal every way and every row states
its cluster.  No timings are asserted."""

import dask
import pytest
from distributed import Client, LocalCluster

import _dask_tasks as tasks
import memchannel as mc
from memchannel.compare import ResultsDiffer, main
from memchannel.dask import profiler_off

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def client():
    with dask.config.set(profiler_off()):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=":0")
    with cluster, Client(cluster) as client:
        yield client


def _executor_names(dask_worker):
    return sorted(dask_worker.executors)


def test_the_cli_adds_the_dask_kinds_with_dask_local(capsys):
    # spawn: other tests may have left Dask's threads in this process, and fork with
    # threads running is unsafe.
    status = main(["--workload", "cpu", "--quick", "--workers", "1", "--dask", "local",
                   "--startup", "no", "--start-method", "spawn"])
    assert status == 0
    out = capsys.readouterr().out
    for text in ("LocalCluster: 1 worker process x 1 thread",
                 "LocalCluster: 1 worker process x 1 interpreter", "dask-processes",
                 "dask-interpreters", "interpreters", "processes-pickle"):
        assert text in out


def test_a_local_cluster_per_kind_shaped_by_the_worker_count(tmp_path):
    pytest.importorskip("matplotlib")
    report = mc.compare(tasks.square, list(range(10)),
                        kinds=("serial", "dask", "dask-processes", "dask-interpreters"),
                        workers=(2,), dask="local", overhead_tasks=2)
    assert [(r.kind, r.workers) for r in report.rows] == [
        ("serial", 1), ("dask", 2), ("dask-processes", 2), ("dask-interpreters", 2)]
    assert all(results == [x * x for x in range(10)] for results in report.results.values())
    clusters = {r.kind: r.cluster for r in report.rows}
    assert clusters == {"serial": None,
                        "dask": "LocalCluster: 1 worker process x 2 threads",
                        "dask-processes": "LocalCluster: 2 worker processes x 1 thread",
                        "dask-interpreters": "LocalCluster: 1 worker process x 2 interpreters"}
    for row in report.rows[1:]:
        assert row.startup_s > 0 and row.overhead_s > 0 and row.bytes_moved is None
    table = report.table()
    assert "cluster" in table.splitlines()[3]
    assert "LocalCluster: 1 worker process x 2 interpreters" in table
    png = report.plot(tmp_path / "cluster.png")
    assert open(png, "rb").read(4) == b"\x89PNG"


@pytest.mark.parametrize("how", ["client", "address"])
def test_an_existing_cluster_is_used_as_it_is(client, how):
    target = client if how == "client" else client.scheduler.address
    report = mc.compare(tasks.add, [1, 2, 3], kinds=("serial", "dask", "dask-interpreters"),
                        workers=(1, 5), dask=target, overhead_tasks=2)
    # one row per cluster kind, sized by the cluster (2 workers x 1 thread), not `workers`
    assert [(r.kind, r.workers) for r in report.rows] == [
        ("serial", 1), ("dask", 2), ("dask-interpreters", 2)]
    address = client.scheduler.address
    assert report.row("dask", 2).cluster == f"{address}: 2 worker processes x 1 thread"
    assert report.row("dask-interpreters", 2).cluster == (
        f"{address}: 2 worker processes x 1 interpreter")
    assert report.results[("dask-interpreters", 2)] == [1, 2, 3]
    # compare's plugin is gone again: the workers have their own executors only
    assert set(map(tuple, client.run(_executor_names).values())) == {
        ("actor", "default", "offload")}


def test_results_that_differ_on_the_cluster_are_reported(client):
    with pytest.raises(ResultsDiffer, match="results differ by kind"):
        mc.compare(tasks.where, [()] * 2, kinds=("serial", "dask-interpreters"),
                   workers=(1,), dask=client, overhead_tasks=1,
                   runner=lambda pool, fn, inputs: [pool.submit(fn).result() for _ in inputs])


def test_cluster_kinds_need_to_be_told_where_to_run(client):
    with pytest.raises(ValueError, match="needs dask='local'"):
        mc.compare(tasks.square, [1], kinds=("serial", "dask"), workers=(1,))
    with pytest.raises(ValueError, match="'dask-processes' kind shapes its own cluster"):
        mc.compare(tasks.square, [1], kinds=("dask-processes",), workers=(1,),
                   dask=client.scheduler.address)
    with pytest.raises(ValueError, match="needs ray='local'"):
        mc.compare(tasks.square, [1], kinds=("ray",), workers=(1,))


def test_the_cli_runs_on_a_scheduler_address(client, capsys):
    address = client.scheduler.address
    status = main(["--workload", "cpu", "--quick", "--kinds", "serial,dask,dask-interpreters",
                   "--dask", address, "--startup", "no"])
    assert status == 0
    out = capsys.readouterr().out
    assert f"{address}: 2 worker processes x 1 interpreter" in out


def test_the_cli_refuses_a_cluster_kind_without_its_cluster(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--workload", "cpu", "--quick", "--kinds", "serial,dask-interpreters"])
    assert info.value.code == 2
    assert "needs --dask ADDRESS or --dask local" in capsys.readouterr().err
