"""The engine of memchannel.executor's pools: the state, threads and worker loop that
``InterpreterPoolExecutor`` and ``ProcessPoolExecutor`` are thin handles on.

Engine
------
::

    submit() ─┬──────────────────────────┬─task channel of worker k──► worker k (loop)
              └─SimpleQueue─► feeder ────┘                                  │ (interpreter
    Future ◄── collector thread ◄──────── one result channel (M:N) ◄────────┘  or process)

* A worker is started once and reused: an isolated subinterpreter (own GIL) driven by one
  thread that blocks in ``Interpreter.call(_worker_loop, ...)`` for the worker's whole life,
  or a process running the same ``_worker_loop``.  Interpreters start lazily (one more each
  time a task is submitted while every worker is busy, up to ``max_workers``); processes
  all start at the first submit, before any thread of the pool exists (fork-safe).
* Each worker has its own task channel; all share one result channel.  A task goes to the
  least-loaded worker, at most ``_SLOTS_PER_WORKER`` (2: one running, one waiting) per
  worker: ``submit`` sends it itself when nothing is queued and a slot is free (one thread
  hand-off fewer), else queues it for the feeder thread, which sends it when a slot frees.
  So tasks not yet sent stay PENDING and can be cancelled, as with
  ``ProcessPoolExecutor``.  The collector thread completes the futures.
* A task is one object message (``send_object``): ``(task_id, pickle, out-of-band buffers,
  number of moved Buffers)``.  Out-of-band buffers (numpy arrays, memoryviews) are copied
  once into channel memory and the worker's arguments view that memory (no copy on the
  receiving side).  A ``memchannel.Buffer`` reserved with ``pool.reserve()`` (or received
  from ``pool.channel()``) is *moved*: sent right after the task message, no copy at all;
  the worker receives that Buffer.  Results travel back as one object message too (a
  Buffer in a result is copied, once).
* numpy cannot be imported in an isolated subinterpreter, so for interpreter workers a numpy
  array argument is sent as a memoryview with the array's format and shape (a memoryview
  result comes back as a memoryview).  Arrays whose format ``memoryview.cast`` cannot
  express (non-native byte order, complex, structured, datetime) are pickled as numpy
  arrays, and the worker then fails with an ImportError naming numpy.  Process workers
  have numpy: arrays arrive as arrays viewing channel memory.

Errors: an exception raised by a task arrives as the same exception (when it pickles; else
``RemoteError``) whose ``__cause__`` holds the worker's formatted traceback: an
``ExecutionFailed`` in the interpreter pool (as 3.14's InterpreterPoolExecutor), a
``RemoteTraceback`` in the process pool (as ``concurrent.futures.process``).  To the interpreter pool, a function
without a closure that cannot be pickled by reference (a lambda, a nested function) travels
by value, as in 3.14; one with a closure, or a local class, fails its future with a
PicklingError saying so (in the process pool, every lambda and nested function does); an initializer that cannot, the constructor.  A worker that cannot import a
function or class raises ImportError naming the module.  (Unpickling, the ImportError and
the worker's exception report are memchannel/_crossinterp.py's: one implementation for
``Interpreter.call()`` and the pools.)  A failing initializer, or a worker that
dies, breaks the pool (``BrokenInterpreterPool`` / ``BrokenProcessPool``): running and
pending futures fail with it and ``submit`` raises it.

Invariants: every started worker ends with exactly one "ended" message (sent by the thread
that drives or watches it, after the interpreter is destroyed or the process reaped); the
collector stops once the feeder has finished and every worker has ended, so
``shutdown(wait=True)`` returns with no interpreter or process of the pool left.
"""

from __future__ import annotations

import functools
import io
import itertools
import os
import pickle
import queue
import threading
import traceback
import types
import weakref
from concurrent.futures import _base

from . import _atexit, _crossinterp, _memchannel
from ._channel import Arena
from .errors import ChannelClosed, Empty

_Buffer = _memchannel.Buffer
_PROTOCOL = 5
_SLOTS_PER_WORKER = 2  # tasks sent to one worker and not finished: one running, one waiting


class RemoteTraceback(Exception):
    """The ``__cause__`` of an exception raised in a worker: its str is the worker's traceback."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return self.tb


class Future(_base.Future):
    """``concurrent.futures.Future`` whose ``result()`` raises every exception, also one
    that is false in a boolean context (CPython gh-132063: 3.12 and 3.13 before the fix
    return None for an exception class with ``__bool__`` or ``__len__`` giving false)."""

    # The base class's private method, by its mangled name: result() calls it.
    def _Future__get_result(self):
        if self._exception is not None:
            try:
                raise self._exception
            finally:
                self = None  # no reference cycle through the traceback
        return self._result


class RemoteError(Exception):
    """Stands in for a worker exception that could not be pickled or unpickled here.

    ``type_name`` is the worker exception's ``module.qualname``; str() gives its message.
    """

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name


# ---------------------------------------------------------------------------------------
# Pickling, both sides

def _view_format_castable(view: memoryview) -> bool:
    try:
        memoryview(bytes(view.itemsize)).cast("B").cast(view.format)
        return True
    except (TypeError, ValueError):
        return False


def _reduce_view(view: memoryview):
    """Reduce a memoryview (or an array seen through one) to its bytes, out of band."""
    if not _view_format_castable(view):
        return None
    if view.c_contiguous:
        data = pickle.PickleBuffer(view)
    else:
        data = pickle.PickleBuffer(bytearray(view.tobytes()))  # one extra copy: not contiguous
    return _rebuild_view, (data, view.format, view.shape, view.readonly)


def _rebuild_view(data, fmt, shape, readonly):
    """The receiving end of ``_reduce_view``: a memoryview of ``data`` with the sender's
    format and shape (``data`` is a view of the received block: no copy)."""
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    if view.nbytes == 0:
        view = view.cast(fmt)  # memoryview cannot cast to a shape with a zero in it
    elif fmt != "B" or len(shape) != 1:
        view = view.cast(fmt, shape)
    if readonly and not view.readonly:
        view = view.toreadonly()
    return view


_moving = threading.local()  # the Buffers moved with the message being unpickled


def _moved_buffer(index):
    """Unpickles to the index-th Buffer that travelled right after the task message."""
    return _moving.buffers[index]


class _Pickler(pickle.Pickler):
    """Protocol 5 with out-of-band buffers.  ``arrays_as_views``: numpy arrays become
    memoryviews (for interpreters, which cannot import numpy).  ``moved``: a list to put
    memchannel Buffers in, to be moved after the message instead of copied into it."""

    def __init__(self, file, buffers, *, arrays_as_views, moved=None):
        super().__init__(file, protocol=_PROTOCOL,
                         buffer_callback=None if buffers is None else buffers.append)
        self._arrays_as_views = arrays_as_views
        self._moved = moved

    def reducer_override(self, obj):
        cls = type(obj)
        if cls is memoryview:
            return _reduce_view(obj) or NotImplemented
        if cls is _Buffer:
            if self._moved is not None:
                self._moved.append(obj)
                return _moved_buffer, (len(self._moved) - 1,)
            return _reduce_view(memoryview(obj)) or NotImplemented
        if not self._arrays_as_views:
            return NotImplemented
        # To interpreters (3.14's InterpreterPoolExecutor): stateless functions by value.
        if cls is types.FunctionType:
            return _crossinterp.reduce_stateless_function(obj)
        if cls.__name__ == "ndarray" and cls.__module__ == "numpy":
            try:
                view = memoryview(obj)
            except (TypeError, ValueError):  # dtypes the buffer protocol cannot express
                return NotImplemented
            return _reduce_view(view) or NotImplemented
        return NotImplemented


def _dump(obj, *, arrays_as_views, moved=None, in_band=False):
    """(pickle bytes, out-of-band PickleBuffers); Buffers go to ``moved`` if given.
    ``in_band``: every buffer inside the pickle (one self-contained bytes object)."""
    buffers: list[pickle.PickleBuffer] = []
    file = io.BytesIO()
    _Pickler(file, None if in_band else buffers, arrays_as_views=arrays_as_views,
             moved=moved).dump(obj)
    return file.getvalue(), buffers


def _load_here(payload, views):
    """Unpickle a result or an exception in the caller: objects a worker found in the
    caller's main script point back at ``__main__``."""
    return _crossinterp.loads(_crossinterp.CallerSideUnpickler, payload, views)


# ---------------------------------------------------------------------------------------
# Worker side: runs in the worker interpreter or process.  Imports nothing numpy-like.

def _worker_load(payload, views, moved, where):
    """Unpickle a task (or the initializer) in the worker.  ``__main__`` means the
    caller's main script in an interpreter; anything the worker cannot import raises an
    ImportError naming the module (memchannel/_crossinterp.py's unpickler and message)."""
    _moving.buffers = moved
    try:
        return _crossinterp.loads(_crossinterp.TargetSideUnpickler, payload, views)
    except _crossinterp.ImportFailure as failure:
        raise _crossinterp.import_error(failure, where) from failure.error
    finally:
        _moving.buffers = None


def _describe(exc):
    """How a worker reports an exception: memchannel/_crossinterp.py's description (type
    name, qualname, module, message, traceback text, pickled exception or None), with
    this module's frames (the worker loop's) left out of the traceback."""
    return _crossinterp.describe_exception(exc, hide=globals())


def _worker_loop(task_handle, result_handle, init_blob, worker_id, arrays_as_views, where):
    """Serve tasks until the task channel is closed and drained.  Runs in the worker.

    Messages sent on the result channel: ("ok", wid, task_id, pickle, views),
    ("error", wid, task_id, description), ("init-failed", wid, description) and, last,
    ("exit", wid).  Every exception is caught and reported; the loop itself never raises
    unless the channels themselves fail.
    """
    from ._channel import Channel

    tasks = Channel.attach(task_handle)
    results = Channel.attach(result_handle)
    try:
        if init_blob is not None:
            try:
                initializer, initargs = _worker_load(init_blob, (), [], where)
                initializer(*initargs)
            except BaseException as exc:
                results.send_object(("init-failed", worker_id, _describe(exc)))
                return
            finally:
                initializer = initargs = None
        while True:
            try:
                task_id, payload, views, n_moved = tasks.recv_object()
                moved = [tasks.recv() for _ in range(n_moved)]
            except ChannelClosed:
                break
            fn = args = kwargs = result = None
            try:
                fn, args, kwargs = _worker_load(payload, views, moved, where)
                payload = views = moved = None
                result = fn(*args, **kwargs)
                fn = args = kwargs = None  # the task's memory returns to the arena now
                payload, buffers = _dump(result, arrays_as_views=arrays_as_views)
                reply = ("ok", worker_id, task_id, payload, buffers)
            except BaseException as exc:
                reply = ("error", worker_id, task_id, _describe(exc))
            fn = args = kwargs = result = payload = views = moved = buffers = None
            try:
                results.send_object(reply)
            except ChannelClosed:
                break
            finally:
                reply = None
    finally:
        try:
            results.send_object(("exit", worker_id))
        except ChannelClosed:
            pass


def _process_worker(task_handle, result_handle, init_blob, worker_id):
    """Entry point of a worker process."""
    _worker_loop(task_handle, result_handle, init_blob, worker_id, False,
                 f"worker process {os.getpid()}")


def call_chunk(fn, chunk):
    """One task of ``map(chunksize=n)``: n calls, results as a list."""
    return [fn(*args) for args in chunk]


def chunks(iterables, chunksize):
    it = zip(*iterables)
    while True:
        chunk = tuple(itertools.islice(it, chunksize))
        if not chunk:
            return
        yield chunk


def flatten(results):
    for chunk in results:
        chunk.reverse()  # pop from the end: no reference kept to results already yielded
        while chunk:
            yield chunk.pop()


# ---------------------------------------------------------------------------------------
# Caller side

class _WorkItem:
    __slots__ = ("future", "fn", "args", "kwargs")

    def __init__(self, future, fn, args, kwargs):
        self.future, self.fn, self.args, self.kwargs = future, fn, args, kwargs


class _Worker:
    __slots__ = ("id", "tasks", "send_lock", "in_flight", "ended", "clean_exit", "handle")

    def __init__(self, worker_id, tasks):
        self.id = worker_id
        self.tasks = tasks            # this worker's task channel
        self.send_lock = threading.Lock()  # a task message and its moved Buffers stay adjacent
        self.in_flight = 0            # tasks sent to it and not finished (<= _SLOTS_PER_WORKER)
        self.ended = False
        self.clean_exit = False       # it said "exit" before it ended
        self.handle = None            # driver thread (interpreters) or Process


_live_engines: "weakref.WeakSet[Engine]" = weakref.WeakSet()
_global_shutdown = False


def _python_exit():
    """At interpreter exit, before non-daemon threads are joined: finish every pool (after
    memchannel.interpreters has stopped, on Ctrl-C, tasks blocked in memchannel calls in
    the workers' interpreters: memchannel/_atexit.py's "stop" stage)."""
    global _global_shutdown
    _global_shutdown = True
    for engine in list(_live_engines):
        engine.shutdown(wait=True, cancel_futures=False)


_atexit.register("finish", _python_exit)
if hasattr(os, "register_at_fork"):
    # A forked child (a worker process) owns none of its parent's pools: multiprocessing
    # runs threading's exit hooks in the child, which must not touch the parent's threads.
    os.register_at_fork(after_in_child=_live_engines.clear)


class Engine:
    """The state and threads of one pool.  The executor is a thin handle on it, so a pool
    dropped without shutdown() is shut down (wait=False) by a finalizer.

    Locking: ``lock`` guards workers, running, counters and the shutdown/broken flags;
    ``room`` (same lock) is notified when a worker slot frees or the pool breaks.  Futures
    of sent tasks are completed only by the collector; futures never sent only by the
    feeder or by shutdown(cancel_futures=True).
    """

    def __init__(self, *, name, max_workers, initializer, initargs, backend,
                 arrays_as_views, broken_type, broken_text, eager):
        self.name = name
        self.max_workers = max_workers
        self.arrays_as_views = arrays_as_views
        self.broken_type = broken_type
        self.broken_text = broken_text
        self.eager = eager
        self.init_blob = None
        if initializer is not None:  # pickled once, here: errors show at construction
            try:
                self.init_blob, _ = _dump((initializer, tuple(initargs)),
                                          arrays_as_views=arrays_as_views, in_band=True)
            except Exception as exc:
                error = self.not_shareable(
                    _unsendable_callable(initializer, "the initializer", arrays_as_views) or exc)
                if error is exc:
                    raise
                raise error from error.__cause__
        self.arena = Arena(backend=backend)
        self.results = self.arena.channel()
        self.lock = threading.Lock()
        self.room = threading.Condition(self.lock)
        self.pending = queue.SimpleQueue()
        self.workers: dict[int, _Worker] = {}
        self.running: dict[int, tuple[_base.Future, _Worker]] = {}
        self.task_ids = itertools.count()
        self.outstanding = 0          # submitted, not yet finished
        self.queued = 0               # put in `pending` and not yet handled by the feeder
        self.direct_sends = 0         # submits sending from their own thread right now
        self.shutdown_started = False
        self.broken = None            # the BrokenExecutor once broken
        self.threads: list[threading.Thread] = []
        self.bytes_sent = 0
        self.bytes_received = 0
        self.tasks_done = 0
        _live_engines.add(self)

    # -- submitting ---------------------------------------------------------------------

    def submit(self, fn, args, kwargs):
        with self.lock:
            if self.broken is not None:
                raise self.broken_type(str(self.broken))
            if self.shutdown_started:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _global_shutdown:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            future = Future()
            item = _WorkItem(future, fn, args, kwargs)
            self.outstanding += 1
            if not self.threads:
                self._start()
            elif (not self.eager and self.outstanding > len(self.workers)
                  and len(self.workers) < self.max_workers):
                self._add_worker()
            # Nothing waiting and a worker slot free: send from this thread, one thread
            # hand-off fewer than through the feeder.  Otherwise the feeder sends it.
            worker = self._pick_worker() if self.queued == 0 else None
            if worker is None:
                self.queued += 1
                self.pending.put(item)
                return future
            worker.in_flight += 1
            self.direct_sends += 1
            future.set_running_or_notify_cancel()
        try:
            self._send(item, worker)
        finally:
            with self.room:
                self.direct_sends -= 1
                if self.direct_sends == 0:
                    self.room.notify_all()
        return future

    def _start(self):
        """First submit (lock held): workers, then the feeder and collector threads."""
        for _ in range(self.max_workers if self.eager else 1):
            self._add_worker()
        for target, role in ((self._feed, "feeder"), (self._collect, "collector")):
            thread = threading.Thread(target=target, name=f"{self.name}-{role}")
            thread.start()
            self.threads.append(thread)

    def _add_worker(self):
        worker = _Worker(len(self.workers), self.arena.channel())
        self.workers[worker.id] = worker
        self.launch(worker)

    def launch(self, worker):  # pragma: no cover - defined by each executor
        raise NotImplementedError

    def cause_of(self, description):
        """The ``__cause__`` of a task's exception: the worker's traceback text, as
        ``concurrent.futures.process`` does."""
        return RemoteTraceback(f'\n"""\n{description[4].rstrip()}\n"""')

    def not_shareable(self, exc):
        """The exception for a function or arguments that cannot be sent (as is, here)."""
        return exc

    def worker_ended(self, worker, error):
        """Called by the thread driving or watching a worker, once it is entirely gone."""
        try:
            self.results.send_object(("ended", worker.id, error))
        except ChannelClosed:
            pass

    # -- feeder -------------------------------------------------------------------------

    def _feed(self):
        while True:
            item = self.pending.get()
            if item is None:
                break
            with self.room:
                worker = None
                while self.broken is None:
                    worker = self._pick_worker()
                    if worker is not None:
                        worker.in_flight += 1  # the slot is taken now; freed by _complete
                        break
                    self.room.wait()
                broken = self.broken
            if broken is not None:
                self._fail_unsent(item, self.broken_type(str(broken)))
            elif not item.future.set_running_or_notify_cancel():  # cancelled while pending
                with self.lock:
                    self.outstanding -= 1
                    worker.in_flight -= 1
            else:
                self._send(item, worker)
            with self.lock:
                self.queued -= 1
            item = worker = None
        # Shutdown: workers serve what they were sent, then see their channel closed.
        with self.room:
            while self.direct_sends:  # a submit that began before shutdown still sends
                self.room.wait()
            workers = list(self.workers.values())
        for worker in workers:
            worker.tasks.close()
        self.results.send_object(("feeder-done",))

    def _pick_worker(self):
        """The least-loaded worker with a free slot, or None (lock held)."""
        best = None
        for worker in self.workers.values():
            if not worker.ended and worker.in_flight < _SLOTS_PER_WORKER and (
                    best is None or worker.in_flight < best.in_flight):
                best = worker
        return best

    def _fail_unsent(self, item, exc):
        with self.lock:
            self.outstanding -= 1
        if item.future.set_running_or_notify_cancel():
            item.future.set_exception(exc)

    def _send(self, item, worker):
        """Send one task to ``worker``, whose slot the caller has taken for it.
        Concurrency: the feeder and submitting threads, at the same time."""
        future = item.future
        moved: list = []
        dumped = False
        try:
            payload, buffers = _dump((item.fn, item.args, item.kwargs),
                                     arrays_as_views=self.arrays_as_views, moved=moved)
            dumped = True
            for buf in moved:
                if buf.released:
                    raise ValueError("a memchannel.Buffer passed to the pool was already "
                                     "sent or released")
                if buf.exports:
                    raise BufferError(
                        "a memchannel.Buffer passed to the pool is still viewed by a "
                        "memoryview or array: delete those views before submitting it (the "
                        "Buffer is moved to the worker, not copied)")
        except BaseException as exc:
            if isinstance(exc, Exception) and not dumped:
                exc = self.not_shareable(_unsendable_callable(item.fn, "the function", self.arrays_as_views) or exc)
            with self.lock:
                self.outstanding -= 1
                worker.in_flight -= 1
            future.set_exception(exc)
            return
        finally:
            item.fn = item.args = item.kwargs = None
        nbytes = len(payload) + sum(memoryview(b).nbytes for b in buffers)
        nbytes += sum(buf.nbytes for buf in moved)
        with self.lock:
            task_id = next(self.task_ids)
            self.running[task_id] = (future, worker)
            self.bytes_sent += nbytes
        try:
            with worker.send_lock:
                worker.tasks.send_object((task_id, payload, buffers, len(moved)))
                for buf in moved:
                    worker.tasks.send(buf)  # same arena: ownership moves, no copy
        except BaseException as exc:
            with self.lock:
                entry = self.running.pop(task_id, None)
                if entry is not None:
                    worker.in_flight -= 1
                    self.outstanding -= 1
            if entry is not None:
                if isinstance(exc, ChannelClosed):
                    exc = self.broken_type(str(self.broken or f"{self.name} is shutting down"))
                future.set_exception(exc)

    # -- collector ----------------------------------------------------------------------

    def _collect(self):
        feeder_done = False
        while True:
            with self.lock:
                if feeder_done and all(w.ended for w in self.workers.values()):
                    break
            message = self.results.recv_object()
            kind = message[0]
            if kind in ("ok", "error"):
                self._complete(message)
            elif kind == "exit":
                with self.lock:
                    self.workers[message[1]].clean_exit = True
            elif kind == "ended":
                _, worker_id, error = message
                with self.lock:
                    worker = self.workers[worker_id]
                    worker.ended = True
                    abrupt = not worker.clean_exit
                if abrupt:
                    self._break(f"{self.broken_text}: a worker ended abruptly", error)
            elif kind == "init-failed":
                text = message[2][4]  # the traceback text of _describe()
                _base.LOGGER.critical("Exception in initializer:\n%s", text)
                self._break(f"{self.broken_text}: a worker initializer failed", text)
            elif kind == "feeder-done":
                feeder_done = True
            message = None
        self.results.close()
        _live_engines.discard(self)

    def _complete(self, message):
        kind, worker_id, task_id = message[:3]
        with self.lock:
            entry = self.running.pop(task_id, None)
            if entry is None:
                return  # already failed: the pool broke while it ran
            future, worker = entry
            worker.in_flight -= 1
            self.outstanding -= 1
            self.tasks_done += 1
            if kind == "ok":
                self.bytes_received += len(message[3]) + sum(v.nbytes for v in message[4])
            self.room.notify()
        if kind == "ok":
            try:
                result = _load_here(message[3], message[4])
            except BaseException as exc:
                future.set_exception(exc)
                return
            future.set_result(result)
        else:
            future.set_exception(_rebuild_exception(message[3], self.cause_of(message[3])))

    def _break(self, reason, cause_text):
        with self.lock:
            if self.broken is not None:
                return
            broken = self.broken_type(reason)
            if cause_text:
                broken.__cause__ = RemoteTraceback(cause_text)
            self.broken = broken
            running = list(self.running.values())
            self.running.clear()
            self.outstanding -= len(running)
            workers = list(self.workers.values())
            self.room.notify_all()
        for worker in workers:  # workers finish their current task, then stop
            worker.tasks.close()
            _drain(worker.tasks)
        for future, _worker in running:
            exc = self.broken_type(reason)
            exc.__cause__ = broken.__cause__
            future.set_exception(exc)

    # -- shutdown -----------------------------------------------------------------------

    def shutdown(self, wait=True, cancel_futures=False):
        with self.lock:
            first = not self.shutdown_started
            self.shutdown_started = True
            if cancel_futures:
                while True:
                    try:
                        item = self.pending.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        self.queued -= 1
                        if item.future.cancel():
                            self.outstanding -= 1
            if self.threads and (first or cancel_futures):
                self.pending.put(None)  # the feeder's stop mark (again, if drained just now)
            threads = list(self.threads)
            handles = [w.handle for w in self.workers.values()]
        if wait:
            for thread in threads:
                thread.join()
            for handle in handles:
                if handle is not None:
                    handle.join()
        if not threads:
            self.results.close()
            _live_engines.discard(self)

    def stats(self):
        with self.lock:
            counters = {"workers": len(self.workers), "tasks_done": self.tasks_done,
                        "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received}
        arena = self.arena.stats()
        counters["bytes_copied"] = arena["bytes_copied"]
        counters["arena"] = arena
        return counters


def _drain(channel):
    while True:
        try:
            channel.recv_nowait().release()
        except (Empty, ChannelClosed):
            return
        except BufferError:
            pass


def _rebuild_exception(description, cause):
    """The exception a future gets for a task that raised ``description`` (``_describe``):
    the same exception, or a RemoteError when it does not unpickle here, with ``cause``
    (holding the worker's traceback text) as its ``__cause__``."""
    type_name, type_qualname, type_module, message, _text, pickled = description
    exc = None
    if pickled is not None:
        try:
            exc = _load_here(pickled, ())
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteError(f"{type_module}.{type_qualname}", message)
    exc.__cause__ = cause
    return exc


def _unsendable_callable(fn, what, to_interpreters):
    """The PicklingError to report when ``fn`` itself cannot be pickled for a worker (None
    when it can: then an argument was the problem and its own error says so)."""
    if isinstance(fn, functools.partial) and fn.func is call_chunk:
        fn = fn.args[0]  # map(chunksize=n): the user's function
    try:  # as the pool pickles it; nothing is sent
        _dump(fn, arrays_as_views=to_interpreters, moved=[])
    except Exception as exc:
        what_travels = ("lambdas and nested functions travel only without a closure (by "
                        "value, with the worker's __main__ as globals), and local classes "
                        "(and their methods) cannot run there" if to_interpreters else
                        "lambdas, nested functions and local classes (and their methods) "
                        "cannot run there")
        error = pickle.PicklingError(
            f"{what} {fn!r} cannot be sent to a worker ({type(exc).__name__}: {exc}): "
            "workers import functions and classes by module and qualified name, so "
            f"{what_travels}; define it at the top level of a module or of the main script")
        error.__cause__ = exc
        return error
    return None


def check_max_workers(max_workers):
    if max_workers is None:
        return os.cpu_count() or 1
    if max_workers <= 0:
        raise ValueError("max_workers must be greater than 0")
    return max_workers


class InterpreterEngine(Engine):
    def __init__(self, *, thread_name_prefix, **kwargs):
        self.thread_name_prefix = thread_name_prefix
        _crossinterp.warm_argument_parsers()
        super().__init__(**kwargs)
        # Workers may be created after the main script has ended (a pool finishing at
        # exit what was submitted without waiting), when __main__.__file__ is gone: note
        # now where the main script is, for interpreters.create().
        _crossinterp.remember_main()

    def cause_of(self, description):
        """As 3.14's InterpreterPoolExecutor: an ExecutionFailed whose ``excinfo`` holds
        the worker's exception type, message and traceback text."""
        from . import interpreters
        return interpreters.ExecutionFailed(interpreters.ExceptionInfo(*description[:5]))

    def not_shareable(self, exc):
        """As 3.14: NotShareableError, caused by the pickling error."""
        from .interpreters import NotShareableError
        if isinstance(exc, NotShareableError) or not isinstance(exc, Exception):
            return exc
        error = NotShareableError(str(exc))
        error.__cause__ = exc
        return error

    def launch(self, worker):
        thread = threading.Thread(target=self._drive, args=(worker,),
                                  name=f"{self.thread_name_prefix}_{worker.id}")
        worker.handle = thread
        thread.start()

    def _drive(self, worker):
        """The worker's thread: create the interpreter, run the loop in it, destroy it."""
        from . import interpreters

        error = None
        try:
            interp = interpreters.create()
            try:
                interp.call(_worker_loop, worker.tasks.handle, self.results.handle,
                            self.init_blob, worker.id, True, f"worker interpreter {interp.id}")
            finally:
                interp.close()
        except BaseException as exc:
            error = "".join(traceback.format_exception(exc))
        self.worker_ended(worker, error)


class ProcessEngine(Engine):
    def __init__(self, *, mp_context, **kwargs):
        super().__init__(**kwargs)
        self.mp_context = mp_context

    def launch(self, worker):
        process = self.mp_context.Process(
            target=_process_worker, name=f"{self.name}_{worker.id}",
            args=(worker.tasks.handle, self.results.handle, self.init_blob, worker.id))
        process.start()
        worker.handle = process

    def _start(self):
        super()._start()
        for worker in self.workers.values():  # after the fork of every worker
            thread = threading.Thread(target=self._watch, args=(worker,),
                                      name=f"{self.name}-watch_{worker.id}")
            thread.start()
            self.threads.append(thread)

    def _watch(self, worker):
        process = worker.handle
        process.join()
        error = None
        if process.exitcode != 0:
            error = f"process {process.pid} exited with code {process.exitcode}"
        self.worker_ended(worker, error)


# The exceptions and Future are public in memchannel.executor, which re-exports them.
for _public in (RemoteTraceback, Future, RemoteError):
    _public.__module__ = "memchannel.executor"
del _public
