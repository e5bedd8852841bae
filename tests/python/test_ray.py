"""memchannel.ray: Ray tasks as a concurrent.futures Executor, and compare's "ray" kind,
against a local ray.init().  Skipped, saying so, where Ray is not installed (make test does
not install it; make bench does)."""

import pytest

ray = pytest.importorskip(
    "ray", reason="Ray is not installed: pip install 'memchannel[ray]' (make bench does)")

import _dask_tasks as tasks  # noqa: E402 - after the skip
import memchannel as mc  # noqa: E402
from memchannel.ray import RayExecutor  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def test_ray_tasks_as_an_executor_results_and_errors():
    with RayExecutor(2) as pool:
        assert pool.workers == 2 and pool.cluster == "local Ray: 1 node, 2 CPUs"
        assert list(pool.map(tasks.square, range(6))) == [0, 1, 4, 9, 16, 25]
        assert pool.submit(tasks.add, 1, b=2).result() == 3
        with pytest.raises(tasks.TaskFailed, match="task failed on 3"):
            pool.submit(tasks.fail, 3).result()
    assert not ray.is_initialized()  # it started Ray, so it stopped it
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(tasks.square, 1)


def test_compare_runs_the_ray_kind_with_the_same_results():
    report = mc.compare(tasks.square, list(range(8)), kinds=("serial", "ray"), workers=(2,),
                        ray="local", overhead_tasks=2)
    assert report.results[("ray", 2)] == [x * x for x in range(8)]
    assert report.row("ray", 2).cluster == "local Ray: 1 node, 2 CPUs"
