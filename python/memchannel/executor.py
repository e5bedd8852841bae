"""Executors whose workers are isolated subinterpreters or processes, fed through memchannel.

    from memchannel import InterpreterPoolExecutor

    with InterpreterPoolExecutor(max_workers=2) as pool:        # 3.14's constructor
        primes = list(pool.map(count_primes, ranges, chunksize=4))

    from memchannel import executor
    pool = executor.make_executor("interpreters", 2)  # or "processes", "threads", "serial", ...

``InterpreterPoolExecutor`` and ``ProcessPoolExecutor`` (this module's: the interface of
``concurrent.futures.ProcessPoolExecutor`` without ``max_tasks_per_child``, with memchannel
transport) share one engine; only how a worker is started differs, so switching between
them is one argument.

The engine (threads, channels, the worker loop, how tasks and results are pickled) is
memchannel/_engine.py; this module holds the public pools on top of it.

Errors, pickling and broken pools: as memchannel/_engine.py's docstring says.
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
import time
import weakref
from concurrent.futures import ThreadPoolExecutor, _base
from concurrent.futures.thread import BrokenThreadPool

from ._engine import (
    Engine,
    Future,
    InterpreterEngine,
    ProcessEngine,
    RemoteError,
    RemoteTraceback,
    call_chunk,
    check_max_workers,
    chunks,
    flatten,
)

__all__ = [
    "InterpreterPoolExecutor", "ProcessPoolExecutor", "SerialExecutor", "make_executor",
    "BrokenInterpreterPool", "RemoteTraceback", "RemoteError", "EXECUTOR_KINDS",
]


class BrokenInterpreterPool(BrokenThreadPool):
    """An InterpreterPoolExecutor worker failed in its initializer or ended abruptly
    (a ``BrokenThreadPool``, as in 3.14)."""


class _ChannelPoolExecutor(_base.Executor):
    """Common front of the memchannel pools (see the module docstring)."""

    _engine: Engine

    def _setup(self, engine):
        self._engine = engine
        self._max_workers = engine.max_workers
        # Dropped without shutdown(): let the workers finish what was submitted, then stop.
        self._finalizer = weakref.finalize(self, engine.shutdown, False, False)

    def submit(self, fn, /, *args, **kwargs):
        """Schedule ``fn(*args, **kwargs)`` in a worker; return its Future.

        ``fn``, the arguments and the result travel by pickle (protocol 5, buffers out of
        band); functions must be importable by module and qualified name in the worker.
        A ``memchannel.Buffer`` from ``reserve()`` is moved to the worker without a copy
        (do not use it afterwards).  Concurrency: any thread.
        """
        return self._engine.submit(fn, args, kwargs)

    def map(self, fn, *iterables, timeout=None, chunksize=1, buffersize=None):
        """Like 3.14's ``Executor.map``: ``chunksize`` > 1 sends that many calls per task;
        ``buffersize``: at most that many tasks are submitted and not yet yielded (the
        iterables are then read lazily, so they may be endless)."""
        if buffersize is not None:
            if not isinstance(buffersize, int):
                raise TypeError("buffersize must be an integer or None")
            if buffersize < 1:
                raise ValueError("buffersize must be None or > 0")
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1:
            return _map(self, fn, iterables, timeout, buffersize)
        return flatten(_map(self, functools.partial(call_chunk, fn),
                            (chunks(iterables, chunksize),), timeout, buffersize))

    def shutdown(self, wait=True, *, cancel_futures=False):
        """Stop accepting tasks; workers finish the tasks already submitted (unless
        ``cancel_futures``: those not yet sent to a worker are cancelled) and stop.  With
        ``wait``, return once every worker is gone."""
        self._engine.shutdown(wait, cancel_futures)

    def reserve(self, nbytes=None, *, format="B", shape=None, timeout=None):
        """A writable Buffer in the pool's memory.  Fill it, then pass it to ``submit`` or
        ``map``: it is moved to the worker with no copy, and the worker receives it as a
        Buffer (``memoryview(buf)``; ``numpy.asarray(buf)`` in a process worker)."""
        return self._engine.arena.reserve(nbytes, format=format, shape=shape, timeout=timeout)

    def channel(self, maxsize=0, *, maxbytes=0):
        """A Channel in the pool's memory: Buffers received from it can be passed to
        ``submit`` without a copy (a pipeline stage handing frames to the pool)."""
        return self._engine.arena.channel(maxsize, maxbytes=maxbytes)

    def stats(self):
        """Counters: workers started, tasks done, bytes sent to and received from workers
        (pickles, out-of-band buffers and moved Buffers), and the pool arena's
        ``bytes_copied`` (copies made into channel memory) and full ``arena`` stats."""
        return self._engine.stats()

    @property
    def _broken(self):
        return self._engine.broken


def _map(executor, fn, iterables, timeout, buffersize):
    if buffersize is None:
        return _base.Executor.map(executor, fn, *iterables, timeout=timeout)
    end_time = None if timeout is None else timeout + time.monotonic()
    arguments = zip(*iterables)
    futures = collections.deque(executor.submit(fn, *args)
                                for args in itertools.islice(arguments, buffersize))

    def results():
        try:
            while futures:
                args = next(arguments, None)
                if args is not None:  # one more in flight for each one yielded
                    futures.append(executor.submit(fn, *args))
                future = futures.popleft()
                if end_time is None:
                    yield _base._result_or_cancel(future)
                else:
                    yield _base._result_or_cancel(future, end_time - time.monotonic())
        finally:
            for future in futures:
                future.cancel()

    return results()


class InterpreterPoolExecutor(_ChannelPoolExecutor, ThreadPoolExecutor):
    """A ``concurrent.futures.Executor`` whose workers are isolated subinterpreters.

    ``InterpreterPoolExecutor(max_workers=None, thread_name_prefix='', initializer=None,
    initargs=())``, as in CPython 3.14, and like 3.14's a ``ThreadPoolExecutor`` subclass
    (so ``asyncio``'s ``loop.set_default_executor()`` takes it).  Each worker is an
    interpreter with its own GIL, driven by its own thread (named
    ``thread_name_prefix + "_" + n``), started when needed (up to ``max_workers``, default
    ``min(32, cpu count + 4)`` as ``ThreadPoolExecutor``) and reused.
    ``initializer(*initargs)`` runs in each new worker; if it raises, the pool breaks
    (``BrokenInterpreterPool``).  A task's exception arrives as the same exception, chained
    from an ``interpreters.ExecutionFailed`` holding the worker's traceback; stateless functions
    (lambdas and nested functions without a closure) travel by value, as in 3.14; a function
    or arguments that cannot be sent fail with ``interpreters.NotShareableError``.  Tasks
    run in parallel on CPython 3.12 and 3.13; arrays reach them as memoryviews (numpy
    cannot load in a subinterpreter).
    Concurrency: any thread may submit; shutdown from any thread.
    """

    _counter = itertools.count()

    def __init__(self, max_workers=None, thread_name_prefix="", initializer=None,
                 initargs=()):
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_workers is None:
            cpus = getattr(os, "process_cpu_count", os.cpu_count)() or 1
            max_workers = min(32, cpus + 4)
        max_workers = check_max_workers(max_workers)
        name = f"InterpreterPoolExecutor-{next(self._counter)}"
        self._thread_name_prefix = thread_name_prefix or name
        self._setup(InterpreterEngine(
            name=name, thread_name_prefix=self._thread_name_prefix, max_workers=max_workers,
            initializer=initializer, initargs=initargs, backend="heap",
            arrays_as_views=True, broken_type=BrokenInterpreterPool,
            broken_text="the interpreter pool is not usable anymore", eager=False))


class ProcessPoolExecutor(_ChannelPoolExecutor):
    """``concurrent.futures.ProcessPoolExecutor`` with memchannel transport.

    ``ProcessPoolExecutor(max_workers=None, initializer=None, initargs=(), *,
    mp_context=None)``.  Same engine as InterpreterPoolExecutor; arguments and results
    travel through shared-memory channels (numpy arrays out of band: one copy into channel
    memory, none on the receiving side; Buffers from ``reserve()`` are moved with no copy).
    All ``max_workers`` processes start at the first submit.  A failing initializer or a
    dead worker breaks the pool (``concurrent.futures.process.BrokenProcessPool``).
    """

    _counter = itertools.count()

    def __init__(self, max_workers=None, initializer=None, initargs=(), *, mp_context=None):
        from concurrent.futures.process import BrokenProcessPool
        import multiprocessing

        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        max_workers = check_max_workers(max_workers)
        self._setup(ProcessEngine(
            mp_context=mp_context or multiprocessing.get_context(),
            name=f"memchannel.ProcessPoolExecutor-{next(self._counter)}",
            max_workers=max_workers, initializer=initializer, initargs=initargs,
            backend="shm", arrays_as_views=False, broken_type=BrokenProcessPool,
            broken_text="the process pool is not usable anymore", eager=True))


class SerialExecutor(_base.Executor):
    """Runs each task in the submitting thread, at submit: the baseline of a comparison."""

    def __init__(self, max_workers=None, initializer=None, initargs=()):
        self._max_workers = 1
        self._shutdown = False
        if initializer is not None:
            initializer(*initargs)

    def submit(self, fn, /, *args, **kwargs):
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        future = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        return map(fn, *iterables)

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._shutdown = True


EXECUTOR_KINDS = ("serial", "threads", "interpreters", "processes", "processes-pickle")


def make_executor(kind, max_workers=None, **kwargs):
    """The executor for ``kind``: "serial", "threads" (ThreadPoolExecutor), "interpreters"
    (InterpreterPoolExecutor), "processes" (this module's ProcessPoolExecutor, memchannel
    transport) or "processes-pickle" (concurrent.futures.ProcessPoolExecutor).  ``kwargs``
    (initializer, initargs, mp_context) go to the constructor."""
    from concurrent.futures import ProcessPoolExecutor as PicklingProcessPoolExecutor
    from concurrent.futures import ThreadPoolExecutor

    factories = {
        "serial": SerialExecutor,
        "threads": ThreadPoolExecutor,
        "interpreters": InterpreterPoolExecutor,
        "processes": ProcessPoolExecutor,
        "processes-pickle": PicklingProcessPoolExecutor,
    }
    try:
        factory = factories[kind]
    except KeyError:
        raise ValueError(f"unknown executor kind {kind!r}; choose from "
                         f"{', '.join(EXECUTOR_KINDS)}") from None
    return factory(max_workers, **kwargs)
