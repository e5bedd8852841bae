"""Dask distributed workers whose tasks run in memchannel subinterpreters.

    from dask.distributed import Client
    from memchannel.dask import InterpreterExecutorPlugin

    client = Client("tcp://scheduler:8786")
    client.register_plugin(InterpreterExecutorPlugin())   # every worker, present and future
    with dask.annotate(executor="interpreters"):
        futures = client.map(count_primes, ranges, pure=False)

``pip install memchannel[dask]`` installs ``distributed``.  docs/guide-cluster.md is the
guide.

What a worker does with an annotated task
-----------------------------------------
A Dask worker runs a task in the executor named by its ``executor`` annotation.  For any
executor that is not a ``ThreadPoolExecutor`` it calls
``loop.run_in_executor(executor, distributed.worker._run_task_simple, run_spec, data,
scheduler_delay)``: distributed's own wrapper, which would have to be imported (with
tornado, psutil and the rest of distributed) wherever it runs.  The executor this plugin
installs, ``WorkerInterpreterExecutor``, recognises that call and does the wrapper's work
itself, in the worker's main interpreter:

* the task (a ``dask._task_spec`` node: a ``Task`` and any tasks nested in its arguments)
  becomes plain ``memchannel._dask_call.Call`` objects, with the dependencies' values from
  ``data`` in place of their references, and only those run in a subinterpreter: the
  task's function, its arguments and its result travel through memchannel (pickled, buffers
  out of band), and nothing of Dask's is imported there;
* the reply is the message the wrapper would have returned (status, result, its size by
  ``dask.sizeof``, start and stop times; on failure ``distributed.core.error_message``),
  so the worker stores, spills and reports the result as for any task.

A task that raises fails with its own exception type; the subinterpreter's traceback text
is the message's ``traceback_text`` and a note on the exception (``__notes__``, shown
wherever the exception is printed, on the client too).  Memory: subinterpreters live in the
worker process, so the worker's memory limit (spilling, pausing, the nanny's restart) sees
all they use; results are kept in the worker's main interpreter and counted by size like
any other result.  Concurrency: the worker never runs more tasks at once than its thread
count, so ``max_workers=None`` gives each worker that many interpreters.

Dask's profiler: CPython's ``sys._current_frames()``, called from the worker's main
interpreter while a subinterpreter runs, builds frame objects for the subinterpreter's
threads with the wrong interpreter's memory allocator, and the process later aborts
("free(): invalid pointer").  Dask's statistical profiler calls it every 10 ms (1 s for
the event loop's).  So the plugin stops the worker's profiler callbacks and makes
``sys._current_frames()`` raise RuntimeError in that process from then on (an audit
hook); start such workers with the profiler off (``distributed.worker.profile.enabled:
false``, or ``DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False``; ``profiler_off()``
sets it for a LocalCluster), so that its event-loop watcher thread does not end with
that RuntimeError.  docs/guide-cluster.md says more.

Only pure-Python work can run in an isolated subinterpreter: numpy cannot be imported there
(numpy#24755), nor pandas or anything built on them; numpy arrays given to such a task
arrive as memoryviews (see ``memchannel.executor``).  Leave those tasks unannotated: they
run in the worker's threads as usual.
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import Executor, Future, InvalidStateError

try:
    from distributed import WorkerPlugin
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("memchannel.dask needs Dask distributed: pip install "
                      "'memchannel[dask]' (or pip install distributed)") from exc

from . import _dask_call
from .executor import InterpreterPoolExecutor

__all__ = ["InterpreterExecutorPlugin", "WorkerInterpreterExecutor", "interpreter_stats",
           "profiler_off", "ClusterExecutor"]

DEFAULT_NAME = "interpreters"


class WorkerInterpreterExecutor(Executor):
    """The executor a worker gets from ``InterpreterExecutorPlugin``: a memchannel
    ``InterpreterPoolExecutor`` that also understands distributed's task-running call (see
    the module docstring).  Any other call is submitted to the pool as it is.

    (Its class name must not contain "ThreadPoolExecutor": the worker picks its
    thread-only path by that text.)
    """

    def __init__(self, max_workers=None):
        _refuse_current_frames()
        self.pool = InterpreterPoolExecutor(max_workers)

    def submit(self, fn, /, *args, **kwargs):
        """A worker's ``_run_task_simple(task, data, delay)`` (or ``_run_task``, with the
        task first, data second and the delay last): run the task in a subinterpreter,
        and return a Future of the message the worker expects.  Anything else:
        ``pool.submit(fn, *args, **kwargs)``."""
        import distributed.worker as dw

        if fn is getattr(dw, "_run_task_simple", None) or fn is getattr(dw, "_run_task", None):
            return self._run_task(args[0], args[1], args[-1])
        return self.pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait=True, *, cancel_futures=False):
        self.pool.shutdown(wait, cancel_futures=cancel_futures)

    def stats(self):
        """The pool's counters (``InterpreterPoolExecutor.stats()``)."""
        return self.pool.stats()

    def _run_task(self, task, data, time_delay):
        call = task_to_call(task, data)
        out = Future()
        start = time.time()
        if type(call) is not _dask_call.Call:  # an alias or a data node: nothing to run
            inner = Future()
            inner.set_result(call)
        elif any(type(a) is _dask_call.Call for a in (*call.args, *call.kwargs.values())):
            inner = self.pool.submit(_dask_call.evaluate, call)
        else:  # the common case: one function, its arguments
            inner = self.pool.submit(call.func, *call.args, **call.kwargs)
        out.add_done_callback(lambda f: f.cancelled() and inner.cancel())
        inner.add_done_callback(lambda f: _reply(out, f, start, time_delay))
        return out


def _reply(out, inner, start, time_delay):
    """Complete ``out`` with the message ``_run_task_simple`` would have returned."""
    from dask.sizeof import sizeof
    from distributed.core import error_message

    stop = time.time()
    if inner.cancelled():
        msg = _error(RuntimeError("the task was cancelled in the interpreter pool"),
                     error_message, None)
    elif (exc := inner.exception()) is not None:
        msg = _error(exc, error_message, _remote_text(exc))
    else:
        result = inner.result()
        msg = {"op": "task-finished", "status": "OK", "result": result,
               "nbytes": sizeof(result), "type": type(result) if result is not None else None}
    msg["start"] = start + time_delay
    msg["stop"] = stop + time_delay
    msg["thread"] = threading.get_ident()
    try:
        out.set_result(msg)
    except InvalidStateError:  # cancelled meanwhile (the worker is closing)
        pass


def _remote_text(exc):
    """The subinterpreter's traceback text of ``exc``: the pool chains it as the cause (an
    ``ExecutionFailed``, or a ``RemoteTraceback``); it becomes a note, and the cause is dropped so that a client
    without memchannel can still unpickle the exception."""
    cause = exc.__cause__
    if cause is None:
        return None
    if type(cause).__name__ == "ExecutionFailed":  # the interpreter pool's (3.14's) chaining
        excinfo = getattr(cause, "excinfo", None)
        text = (getattr(excinfo, "formatted", None) or getattr(excinfo, "errdisplay", None)
                or str(cause)).strip()
    elif type(cause).__name__ == "RemoteTraceback":
        text = str(getattr(cause, "tb", cause)).strip().strip('"').strip()
    else:
        return None
    exc.__cause__ = None
    exc.__suppress_context__ = True
    exc.add_note("traceback in the worker's subinterpreter:\n" + text)
    return text + "\n"


def _error(exc, error_message, remote_text):
    try:
        raise exc
    except BaseException as caught:  # error_message reads the exception being handled
        msg = error_message(caught)
    msg["op"] = "task-erred"
    msg["actual_exception"] = exc
    if remote_text:
        msg["traceback_text"] = remote_text
    return msg


def _refuse_current_frames():
    """sys._current_frames() raises RuntimeError in this process from now on, rather than
    aborting it (memchannel._crossinterp.refuse_current_frames; test_dask.py,
    test_current_frames_is_refused_in_a_worker_instead_of_aborting_it)."""
    from . import _crossinterp

    _crossinterp.refuse_current_frames()


def profiler_off():
    """The Dask config that turns the workers' statistical profiler off, for
    ``dask.config.set(profiler_off())`` around ``LocalCluster(...)`` (its worker
    processes inherit the config)."""
    return {"distributed.worker.profile.enabled": False}


def task_to_call(node, data):
    """A ``dask._task_spec`` node as a ``_dask_call.Call`` tree, the values of the
    dependencies (``data``, by key) in place of their references.  TypeError for a node
    this does not know."""
    from dask import _task_spec as ts

    if isinstance(node, ts.TaskRef):
        return data[node.key]
    if isinstance(node, ts.Alias):
        return data[node.target]
    if isinstance(node, ts.DataNode):
        return node.value
    if isinstance(node, ts.Task):
        args = tuple(_argument(a, data, ts) for a in node.args)
        kwargs = {k: _argument(v, data, ts) for k, v in node.kwargs.items()}
        if isinstance(node, ts.Dict):
            return _dask_call.Call(_dask_call.pairs_to_dict, args)
        if isinstance(node, ts.NestedContainer):
            return _dask_call.Call(_dask_call.container, (kwargs["constructor"], *args))
        return _dask_call.Call(node.func, args, kwargs)
    raise TypeError(f"memchannel.dask cannot run a {type(node).__name__} in a "
                    f"subinterpreter: {node!r}")


def _argument(obj, data, ts):
    if isinstance(obj, (ts.GraphNode, ts.TaskRef)):
        return task_to_call(obj, data)
    return obj


class InterpreterExecutorPlugin(WorkerPlugin):
    """A Dask WorkerPlugin: gives every worker a ``WorkerInterpreterExecutor`` (memchannel
    ``InterpreterPoolExecutor`` inside) under ``name``, so that tasks annotated
    ``dask.annotate(executor=name)`` run in the worker's isolated subinterpreters.

    ``max_workers``: interpreters per worker (default: the worker's thread count, the
    most tasks it runs at once).  Register it with ``client.register_plugin(plugin)``;
    workers that join later get it too.  Unregistering (``client.unregister_worker_plugin
    (plugin.name)``) or closing the worker shuts the pool down.
    """

    def __init__(self, max_workers=None, name=DEFAULT_NAME):
        if max_workers is not None and max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty string")
        self.max_workers = max_workers
        self.executor_name = name
        self.name = f"memchannel-{name}"  # the plugin's key: registering again replaces it

    def setup(self, worker):
        import logging

        stopped = [name for name in ("profile", "profile-cycle")
                   if name in worker.periodic_callbacks]
        for name in stopped:  # it calls sys._current_frames() (the module docstring)
            worker.periodic_callbacks.pop(name).stop()
        if stopped:
            logging.getLogger(__name__).warning(
                "memchannel.dask: stopped Dask's profiler on worker %s (it cannot run beside "
                "subinterpreters; start workers with distributed.worker.profile.enabled: "
                "false, see docs/guide-cluster.md)", worker.address)
        if self.executor_name in worker.executors:
            if isinstance(worker.executors[self.executor_name], WorkerInterpreterExecutor):
                worker.executors.pop(self.executor_name).shutdown(wait=False)
            else:
                raise ValueError(f"the worker already has an executor named "
                                 f"{self.executor_name!r}")
        worker.executors[self.executor_name] = WorkerInterpreterExecutor(
            self.max_workers or worker.state.nthreads)

    def teardown(self, worker):
        executor = worker.executors.get(self.executor_name)
        if isinstance(executor, WorkerInterpreterExecutor):
            del worker.executors[self.executor_name]
            # Not waiting: this runs on the worker's event loop.  Running tasks finish,
            # then the interpreters end (at the latest when the process exits).
            executor.shutdown(wait=False)


def interpreter_stats(dask_worker, name=DEFAULT_NAME):
    """The stats of the worker's interpreter pool (``InterpreterPoolExecutor.stats()``),
    or None when it has none: ``client.run(interpreter_stats)`` gives them per worker."""
    executor = dask_worker.executors.get(name)
    return executor.stats() if isinstance(executor, WorkerInterpreterExecutor) else None


# -- memchannel.compare on a Dask cluster ------------------------------------------------

COMPARE_KINDS = ("dask", "dask-processes", "dask-interpreters")
_COMPARE_EXECUTOR = "compare-interpreters"  # compare's own name: never a user's plugin


class ClusterExecutor(Executor):
    """A ``concurrent.futures.Executor`` on a Dask cluster, for ``memchannel.compare``:
    ``Client.get_executor(pure=False)`` (so that equal calls are not deduplicated), its
    tasks annotated ``executor=...`` for "dask-interpreters".

    ``target``: "local" (a ``LocalCluster`` on 127.0.0.1 started here and closed by
    ``shutdown``, shaped by ``kind`` and ``n``: "dask" 1 worker process x n threads,
    "dask-processes" n processes x 1 thread, "dask-interpreters" 1 process x n
    interpreters), a scheduler address, or a ``distributed.Client`` (the cluster as it is;
    ``n`` is not used).  ``workers``: task slots (threads) in the cluster; ``cluster``:
    its shape, in words.
    """

    def __init__(self, kind, n, target):
        from distributed import Client, LocalCluster

        if kind not in COMPARE_KINDS:
            raise ValueError(f"unknown Dask kind {kind!r}; choose from {', '.join(COMPARE_KINDS)}")
        self.kind = kind
        self._cluster = self._client = None
        self._plugin = None
        try:
            if isinstance(target, Client):
                client = target
            elif target == "local":
                processes = n if kind == "dask-processes" else 1
                threads = 1 if kind == "dask-processes" else n
                import dask

                with dask.config.set(profiler_off()):
                    self._cluster = LocalCluster(
                        n_workers=processes, threads_per_worker=threads, processes=True,
                        host="127.0.0.1", dashboard_address=":0")
                client = self._client = Client(self._cluster)
            elif isinstance(target, str):
                if kind == "dask-processes":
                    raise ValueError("the 'dask-processes' kind shapes its own cluster: "
                                     "it needs dask='local'")
                client = self._client = Client(target)
            else:
                raise TypeError(f"dask must be 'local', a scheduler address or a "
                                f"distributed.Client, not {type(target).__name__}")
            nthreads = list(client.nthreads().values())
            if not nthreads:
                raise RuntimeError(f"the Dask cluster at {client.scheduler.address} has no "
                                   "workers")
            self.workers = sum(nthreads)
            unit = "interpreter" if kind == "dask-interpreters" else "thread"
            count = len(nthreads)
            if len(set(nthreads)) == 1:
                each = f"{nthreads[0]} {unit}{'s' if nthreads[0] > 1 else ''}"
            else:
                each = f"{self.workers} {unit}s in all"
            where = "LocalCluster" if self._cluster is not None else client.scheduler.address
            self.cluster = f"{where}: {count} worker process{'es' if count > 1 else ''} x {each}"
            self.client = client
            self._executor = client.get_executor(pure=False)
            self._annotations = {}
            if kind == "dask-interpreters":
                self._plugin = InterpreterExecutorPlugin(name=_COMPARE_EXECUTOR)
                client.register_plugin(self._plugin)
                self._annotations = {"executor": _COMPARE_EXECUTOR}
        except BaseException:
            self._close()
            raise

    def submit(self, fn, /, *args, **kwargs):
        import dask

        with dask.annotate(**self._annotations):
            return self._executor.submit(fn, *args, **kwargs)

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        import dask

        with dask.annotate(**self._annotations):  # client.map submits everything now
            return self._executor.map(fn, *iterables, timeout=timeout)

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._executor.shutdown(wait=wait)
        self._close()

    def _close(self):
        if self._plugin is not None:
            try:
                self.client.unregister_worker_plugin(self._plugin.name)
            except Exception:  # the cluster is gone already: nothing to undo
                pass
            self._plugin = None
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

