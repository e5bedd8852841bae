"""memchannel.dask on a real LocalCluster (worker processes on 127.0.0.1, no mocks): the
plugin gives every worker an interpreter pool; annotated tasks run in its isolated
subinterpreters (without importing Dask there), unannotated ones in the worker's threads;
errors keep their type and traceback text; a worker killed mid-task is replaced and the
task rescheduled with nothing left behind; the worker's memory limit covers its
subinterpreters.  No timings are asserted."""

import glob
import os
import signal
import sys
import time

import dask
import pytest
from dask.sizeof import sizeof
from distributed import Client, KilledWorker, LocalCluster

import _dask_tasks as tasks
from conftest import SHM_PREFIX
from memchannel.dask import InterpreterExecutorPlugin, interpreter_stats, profiler_off

pytestmark = pytest.mark.timeout(300)


def _cluster(profiler=False, **kwargs):
    """A LocalCluster of worker processes on 127.0.0.1, Dask's profiler off unless asked
    (it cannot run beside subinterpreters: docs/guide-cluster.md)."""
    options = dict(n_workers=2, threads_per_worker=2, processes=True, host="127.0.0.1",
                   dashboard_address=":0")
    options.update(kwargs)
    with dask.config.set({} if profiler else profiler_off()):
        return LocalCluster(**options)


def _segments():
    return sorted(glob.glob(f"/dev/shm/{SHM_PREFIX}*"))


@pytest.fixture(scope="module")
def client():
    with _cluster() as cluster, Client(cluster) as client:
        client.register_plugin(InterpreterExecutorPlugin())
        yield client


def _executor_type(dask_worker, name="interpreters"):
    executor = dask_worker.executors.get(name)
    return None if executor is None else type(executor).__name__


def _thread_names(dask_worker):
    import threading

    return sorted(thread.name for thread in threading.enumerate())


def test_the_plugin_gives_every_worker_an_interpreter_pool_sized_by_its_threads(client):
    assert set(client.run(_executor_type).values()) == {"WorkerInterpreterExecutor"}
    # profiler_off() reached the worker processes: no profiler thread in them
    assert not [names for names in client.run(_thread_names).values() if "Profile" in names]
    futures = client.map(tasks.square, range(8), pure=False)
    with dask.annotate(executor="interpreters"):
        futures += client.map(tasks.square, range(8, 16), pure=False)
    assert client.gather(futures) == [x * x for x in range(16)]
    for stats in client.run(interpreter_stats).values():
        assert 0 < stats["workers"] <= 2  # at most the worker's 2 threads
        assert stats["arena"]["blocks_in_use"] == 0


def test_annotated_tasks_run_in_subinterpreters_without_dask_unannotated_in_threads(client):
    plain = client.submit(tasks.where, pure=False).result()
    with dask.annotate(executor="interpreters"):
        inside = client.submit(tasks.where, pure=False).result()
    pid, interp, has_distributed, has_dask = plain
    assert interp == 0 and has_distributed and has_dask  # the worker's main interpreter
    pid, interp, has_distributed, has_dask = inside
    assert interp != 0
    assert not has_distributed and not has_dask  # nothing of Dask's imported there


def test_two_annotated_tasks_run_at_once_in_two_interpreters_of_one_worker(client, tmp_path):
    worker = sorted(client.scheduler_info()["workers"])[0]
    with dask.annotate(executor="interpreters"):
        a = client.submit(tasks.rendezvous, str(tmp_path), "a", ["b"], pure=False,
                          workers=[worker])
        b = client.submit(tasks.rendezvous, str(tmp_path), "b", ["a"], pure=False,
                          workers=[worker])
    (met_a, interp_a), (met_b, interp_b) = a.result(), b.result()
    assert met_a and met_b
    assert interp_a != interp_b and 0 not in (interp_a, interp_b)


def test_dependencies_nested_tasks_and_keywords_reach_the_subinterpreter(client):
    with dask.annotate(executor="interpreters"):
        x = dask.delayed(tasks.add)(1, b=2)
        y = dask.delayed(tasks.add)(x, b=dask.delayed(tasks.square)(x))
        z = dask.delayed(sorted)([x, y, 0])
        mapping = dask.delayed(dict)(a=x, b=[y, {"k": x}])
        three = client.submit(tasks.add, 1, 2, pure=False)
        nine = client.submit(tasks.square, three, pure=False)
        assert client.compute([y, z, mapping], sync=True) == [12, [0, 3, 12],
                                                              {"a": 3, "b": [12, {"k": 3}]}]
        assert nine.result() == 9


def test_an_error_keeps_its_type_and_the_subinterpreters_traceback(client):
    with dask.annotate(executor="interpreters"):
        future = client.submit(tasks.fail, 7, pure=False)
    with pytest.raises(tasks.TaskFailed, match="task failed on 7") as info:
        future.result()
    note = "\n".join(getattr(info.value, "__notes__", []))
    assert "traceback in the worker's subinterpreter" in note
    assert "_dask_tasks.py" in note and "in fail" in note
    assert isinstance(future.exception(), tasks.TaskFailed)


def test_numpy_cannot_be_imported_in_the_subinterpreter_but_can_in_the_threads(client):
    pytest.importorskip("numpy")
    assert client.submit(tasks.import_numpy, pure=False).result()
    with dask.annotate(executor="interpreters"):
        future = client.submit(tasks.import_numpy, pure=False)
    with pytest.raises(ImportError) as info:
        future.result()
    assert "numpy" in str(info.value) + "\n".join(getattr(info.value, "__notes__", []))


def test_results_are_kept_and_sized_in_the_workers_main_interpreter(client):
    with dask.annotate(executor="interpreters"):
        future = client.submit(tasks.make_bytes, 3 << 20, pure=False)
    assert future.result() == b"y" * (3 << 20)
    key = future.key
    recorded = client.run(lambda dask_worker: dask_worker.state.tasks[key].nbytes
                          if key in dask_worker.state.tasks else None)
    assert sizeof(b"y" * (3 << 20)) in recorded.values()


def _plain_submit(dask_worker):
    import _dask_tasks

    return dask_worker.executors["interpreters"].submit(_dask_tasks.where).result()


def test_a_plain_submit_to_the_workers_executor_runs_in_a_subinterpreter(client):
    # Not distributed's task call: submitted to the pool as it is.  (Run in a worker: an
    # executor makes its process refuse sys._current_frames(), see the last test.)
    for pid, interp, has_distributed, has_dask in client.run(_plain_submit).values():
        assert interp != 0 and not has_distributed


def test_bad_plugin_arguments_are_refused():
    with pytest.raises(ValueError, match="max_workers"):
        InterpreterExecutorPlugin(max_workers=0)
    with pytest.raises(ValueError, match="name"):
        InterpreterExecutorPlugin(name="")


def test_unregistering_the_plugin_shuts_the_pool_down_and_frees_the_name():
    with _cluster(n_workers=1, threads_per_worker=1) as cluster, Client(cluster) as client:
        plugin = InterpreterExecutorPlugin(max_workers=1, name="subinterpreters")
        client.register_plugin(plugin)
        with dask.annotate(executor="subinterpreters"):
            assert client.submit(tasks.square, 5, pure=False).result() == 25
        client.unregister_worker_plugin(plugin.name)
        assert set(client.run(_executor_type, name="subinterpreters").values()) == {None}
        with dask.annotate(executor="subinterpreters"):
            future = client.submit(tasks.square, 6, pure=False)
        with pytest.raises(ValueError, match="Invalid executor 'subinterpreters'"):
            future.result()


def test_a_worker_killed_mid_task_is_replaced_and_the_task_rescheduled(tmp_path):
    before = _segments()
    with _cluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
        client.register_plugin(InterpreterExecutorPlugin())
        with dask.annotate(executor="interpreters"):
            future = client.submit(tasks.slow_square_once, 12, str(tmp_path), pure=False)
        deadline = time.monotonic() + 60
        while not os.listdir(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        (first,) = os.listdir(tmp_path)
        victim = int(first.split("-")[1])
        assert victim in client.run(os.getpid).values()  # the task ran in a worker process
        os.kill(victim, signal.SIGKILL)
        assert future.result(timeout=120) == 144
        attempts = sorted(os.listdir(tmp_path), key=lambda name: name.split("-")[2])
        assert len(attempts) == 2 and int(attempts[1].split("-")[1]) != victim
        client.wait_for_workers(2, timeout=60)  # the nanny has replaced the killed one
        pids = client.run(os.getpid)
        assert victim not in pids.values()
        stats = client.run(interpreter_stats)
        assert all(s is not None for s in stats.values())  # the new worker has the plugin
        for s in stats.values():
            assert s["arena"]["blocks_in_use"] == 0 and s["arena"]["bytes_in_use"] == 0
    assert _segments() == before


def test_the_workers_memory_limit_covers_its_subinterpreters():
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with _cluster(n_workers=1, threads_per_worker=1, memory_limit="400MiB") as cluster, \
                Client(cluster) as client:
            client.register_plugin(InterpreterExecutorPlugin())
            with dask.annotate(executor="interpreters"):
                future = client.submit(tasks.hold_memory, 800 << 20, 60, pure=False)
            # The nanny restarts the worker past 95% of its limit; with no retries
            # allowed the task fails with KilledWorker instead of finishing.
            with pytest.raises(KilledWorker):
                future.result(timeout=120)


def _frames_or_error(dask_worker):
    try:
        return len(sys._current_frames())
    except RuntimeError as exc:
        return str(exc)


def _profiler_callbacks(dask_worker):
    return sorted(name for name in dask_worker.periodic_callbacks if "profile" in name)


def test_current_frames_is_refused_in_a_worker_instead_of_aborting_it():
    # CPython's sys._current_frames() walks every interpreter's threads and builds their
    # frame objects with the caller's allocator: with a subinterpreter running a task, the
    # process would abort later.  The plugin refuses the call instead.
    with _cluster(n_workers=1, threads_per_worker=2, profiler=True) as cluster, \
            Client(cluster) as client:
        assert client.run(_profiler_callbacks).popitem()[1] == ["profile", "profile-cycle"]
        assert isinstance(client.run(_frames_or_error).popitem()[1], int)  # no plugin yet
        client.register_plugin(InterpreterExecutorPlugin())
        assert client.run(_profiler_callbacks).popitem()[1] == []  # stopped by the plugin
        with dask.annotate(executor="interpreters"):
            busy = client.submit(tasks.hold_memory, 1, 3, pure=False)
            time.sleep(0.5)
            refused = client.run(_frames_or_error).popitem()[1]
            assert busy.result() == 1
        assert "sys._current_frames() is refused" in refused
        pid = client.run(os.getpid).popitem()[1]
        assert client.submit(tasks.square, 4, pure=False).result() == 16
        assert client.run(os.getpid).popitem()[1] == pid  # the same process, alive


def test_workers_close_cleanly_after_idling_beside_their_interpreters(caplog):
    # With the profiler left on (the plugin stops it), a worker that ran interpreter tasks
    # and then idled for over a profiler cycle used to abort at close ("free(): invalid
    # pointer"); the nanny logs how each worker process ended.
    caplog.set_level("INFO", logger="distributed.nanny")
    with _cluster(n_workers=2, threads_per_worker=2, profiler=True, silence_logs=False) \
            as cluster, Client(cluster) as client:
        client.register_plugin(InterpreterExecutorPlugin())
        with dask.annotate(executor="interpreters"):
            assert client.gather(client.map(tasks.square, range(8), pure=False)) == [
                x * x for x in range(8)]
        time.sleep(2.5)
        assert client.gather(client.map(tasks.square, range(4), pure=False)) == [0, 1, 4, 9]
    ended = [r.getMessage() for r in caplog.records if "Worker process" in r.getMessage()]
    assert not [m for m in ended if "killed by signal" in m], ended


def test_tasks_become_plain_calls_without_dask_in_them():
    from dask._task_spec import Alias, DataNode, Dict, List, Task, TaskRef

    from memchannel import _dask_call
    from memchannel.dask import task_to_call

    data = {"x": 3, "y": [1, 2]}
    node = Task("k", tasks.add, TaskRef("x"),
                b=Task("inner", tasks.square, Alias("a", "x")))
    call = task_to_call(node, data)
    assert type(call) is _dask_call.Call and call.func is tasks.add
    assert _dask_call.evaluate(call) == node(data) == 12
    nested = Task("n", sorted, List([TaskRef("x"), DataNode(None, 1)]))
    assert _dask_call.evaluate(task_to_call(nested, data)) == [1, 3]
    mapping = Task("m", dict, Dict({"a": TaskRef("y"), "b": 5}))
    assert _dask_call.evaluate(task_to_call(mapping, data)) == {"a": [1, 2], "b": 5}
    assert task_to_call(Alias("z", "y"), data) == [1, 2]  # no call at all
    # only memchannel's own functions and the user's are left to pickle by name
    def functions(c):
        yield c.func
        for a in (*c.args, *c.kwargs.values()):
            if type(a) is _dask_call.Call:
                yield from functions(a)
    for built in (call, task_to_call(nested, data), task_to_call(mapping, data)):
        assert not [f for f in functions(built)
                    if getattr(f, "__module__", "").startswith(("dask", "distributed"))]
