"""Drop-ins for ``multiprocessing.Queue``, ``SimpleQueue`` and ``JoinableQueue`` over channels.

    import memchannel as mc
    q = mc.Queue()                      # instead of multiprocessing.Queue()
    p = ctx.Process(target=work, args=(q,)); p.start()
    q.put({"frame": numpy_array})       # one copy into shared memory
    obj = q.get(timeout=5)              # arrays view shared memory: no copy

A queue is a few channels of one arena: ``_items`` carries the objects (``send_object`` /
``recv_object``: pickle protocol 5, out-of-band buffers in channel memory), ``_state`` is a
shared flag (closed = shut down immediately), and a JoinableQueue adds ``_tasks`` (one
zero-byte token per unfinished task) and ``_wake`` (a level-triggered wake-up for ``join()``).
All of it lives in the arena, so a queue pickles into any process (fork, spawn, forkserver,
through another queue or channel) and into subinterpreters, like a Channel; ``ctx`` is
accepted for signature compatibility and not needed.

Differences from multiprocessing.Queue (all on the side of fewer surprises):

* No feeder thread: ``put`` pickles and enqueues before it returns. Pickling errors raise in
  ``put`` itself, the object's state is captured at ``put`` time, and an item is visible to
  ``get``/``qsize``/``empty`` in every process as soon as ``put`` returns.
  ``join_thread``/``cancel_join_thread`` therefore have nothing to wait for.
* ``qsize()`` works on every platform; an unbounded queue is still bounded by its arena's
  capacity (1 GiB by default): ``put`` then blocks like a full queue.
* ``close()`` is local to this process (as in multiprocessing); ``shutdown()`` is global.
* ``backend="heap"`` queues connect threads and subinterpreters of one process only.

Concurrency: every method, any thread, any interpreter, any process.
"""

from __future__ import annotations

import queue as _queue

from ._channel import Arena
from .errors import ChannelClosed, Empty, Full

__all__ = ["Queue", "SimpleQueue", "JoinableQueue", "ShutDown"]

_ShutDownBase = getattr(_queue, "ShutDown", Exception)  # queue.ShutDown is new in 3.13

# join() waits for a wake-up but re-checks the task count this often anyway, so a process
# that died between taking the wake-up token and passing it on cannot strand other joiners.
_JOIN_RECHECK_SECONDS = 1.0


class ShutDown(_ShutDownBase):
    """put() on a queue that was shut down, or get() on one shut down and drained."""


def _shut_down(message: str, cause: BaseException) -> ShutDown:
    # A batch's ShutDown keeps the count of what it queued before the channel closed.
    exc = ShutDown(message)
    exc.queued = getattr(cause, "queued", 0)  # type: ignore[attr-defined]
    return exc


def _clamp(timeout):
    # multiprocessing treats a negative timeout as "do not wait"; the channel rejects it.
    if timeout is not None and timeout < 0:
        return 0.0
    return timeout


class Queue:
    """``multiprocessing.Queue`` over a memchannel: ``Queue(maxsize=0, *, backend="shm", ctx=None)``.

    FIFO per producer; each item is received exactly once by one consumer. ``get`` raises
    ``memchannel.Empty`` (a ``queue.Empty``), ``put`` raises ``memchannel.Full`` (a
    ``queue.Full``); after ``shutdown()`` they raise ``memchannel.ShutDown``.
    """

    def __init__(self, maxsize: int = 0, *, backend: str = "shm", ctx=None):
        arena = Arena(backend=backend)
        maxsize = maxsize if maxsize > 0 else 0
        self._init(maxsize, arena.channel(maxsize), arena.channel(1))

    def _init(self, maxsize, items, state):
        self._maxsize = maxsize
        self._items = items  # the objects, one message each
        self._state = state  # closed <=> shut down with immediate=True (a shared flag)
        self._closed = False  # close() in this process only
        self._used = False

    def __getstate__(self):
        return (self._maxsize, self._items, self._state)

    def __setstate__(self, state):
        self._init(*state)

    def __repr__(self):
        where = "closed" if self._closed else ("shut down" if self._items.closed else "open")
        return f"<memchannel.{type(self).__name__} {where} maxsize={self._maxsize} qsize={self._items.qsize()}>"

    def _check_closed(self):
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")

    def put(self, obj, block: bool = True, timeout=None) -> None:
        """Enqueue ``obj``; blocks while full (``Full`` on timeout, or at once if not ``block``)."""
        # The per-item path: the checks of _check_closed and _clamp, written inline.
        if self._closed:
            self._check_closed()
        self._used = True
        if timeout is not None and timeout < 0:
            timeout = 0.0
        try:
            self._items.send_object(obj, block, timeout)
        except ChannelClosed:
            raise ShutDown(f"put() on a shut-down queue {self!r}") from None

    def get(self, block: bool = True, timeout=None):
        """Dequeue the oldest item; blocks while empty (``Empty`` on timeout).

        Its numpy arrays view shared memory, which returns to the arena when they are gone.
        """
        if self._closed:
            self._check_closed()
        self._used = True
        if self._state.closed:
            raise ShutDown(f"get() on a queue {self!r} shut down with immediate=True")
        if timeout is not None and timeout < 0:
            timeout = 0.0
        try:
            return self._items.recv_object(block, timeout)
        except ChannelClosed:
            raise ShutDown(f"get() on a shut-down and drained queue {self!r}") from None

    def put_many(self, objs, block: bool = True, timeout=None) -> int:
        """Enqueue every object of the iterable ``objs``, in order, under one timeout; returns
        how many. What fits is queued at once, then it waits for room as ``put`` does. On
        ``Full`` (or any error) the objects before it stay queued: the exception's ``queued``
        attribute says how many. One C call for the whole batch (``Channel.send_objects``).
        """
        self._check_closed()
        self._used = True
        try:
            return self._items.send_objects(objs, block, _clamp(timeout))
        except ChannelClosed as exc:
            raise _shut_down(f"put_many() on a shut-down queue {self!r}", exc) from None

    def get_many(self, max_messages: int, block: bool = True, timeout=None) -> list:
        """Dequeue 1 to ``max_messages`` items: waits (up to ``timeout``) for the first, then
        takes what is queued without waiting (``Empty`` on timeout). One C call for the batch.
        """
        self._check_closed()
        self._used = True
        if self._state.closed:
            raise ShutDown(f"get_many() on a queue {self!r} shut down with immediate=True")
        try:
            return self._items.recv_objects(max_messages, block, _clamp(timeout))
        except ChannelClosed:
            raise ShutDown(f"get_many() on a shut-down and drained queue {self!r}") from None

    def put_nowait(self, obj) -> None:
        self.put(obj, False)

    def get_nowait(self):
        return self.get(False)

    def qsize(self) -> int:
        """Number of items queued now (in every process; exact, not approximate)."""
        return self._items.qsize()

    def empty(self) -> bool:
        if self._closed and self._used:  # as multiprocessing: the reader of a used queue is gone
            raise OSError(f"Queue {self!r} is closed")
        return self._items.empty()

    def full(self) -> bool:
        return self._items.full()

    def close(self) -> None:
        """No more put/get from this process; other processes keep using the queue."""
        self._closed = True

    def join_thread(self) -> None:
        """Nothing to join (there is no feeder thread); requires close() first, as multiprocessing."""
        if not self._closed:
            raise AssertionError(f"Queue {self!r} not closed")

    def cancel_join_thread(self) -> None:
        """Nothing to cancel: ``put`` has already enqueued everything when it returned."""

    def shutdown(self, immediate: bool = False) -> None:
        """Shut the queue down for every process, like ``queue.Queue.shutdown`` (3.13).

        Afterwards ``put`` raises ``ShutDown``; ``get`` returns what is queued and then raises
        ``ShutDown``. With ``immediate=True`` the queued items are discarded (their task counts
        too, for a JoinableQueue) and ``get`` raises ``ShutDown`` at once. Blocked callers in
        any process wake up.
        """
        if immediate:
            self._state.close()  # set the shared flag first: get() checks it before receiving
        self._items.close()
        if immediate:
            while True:
                try:
                    buf = self._items.recv_nowait()
                except (Empty, ChannelClosed):
                    break
                buf.release()  # discarded without unpickling
                self._discarded()

    def _discarded(self) -> None:
        """An item left the queue without a get() (immediate shutdown)."""


class JoinableQueue(Queue):
    """``multiprocessing.JoinableQueue``: a Queue with ``task_done()`` and ``join()``.

    The unfinished-task count lives in shared memory as the length of the ``_tasks`` channel
    (a token is queued before each item and taken by ``task_done()``), so it works across
    processes started by fork, spawn or forkserver and across subinterpreters. Whoever takes
    the last token drops a wake-up token into ``_wake`` (capacity 1); a waiting ``join()``
    receives it, re-checks the count and passes the token on to the next joiner.
    """

    def __init__(self, maxsize: int = 0, *, backend: str = "shm", ctx=None):
        arena = Arena(backend=backend)
        maxsize = maxsize if maxsize > 0 else 0
        self._init(maxsize, arena.channel(maxsize), arena.channel(1), arena.channel(), arena.channel(1))

    def _init(self, maxsize, items, state, tasks=None, wake=None):
        super()._init(maxsize, items, state)
        self._tasks = tasks  # one zero-byte token per unfinished task
        self._wake = wake  # at most one token: "the count reached zero, re-check"

    def __getstate__(self):
        return (self._maxsize, self._items, self._state, self._tasks, self._wake)

    def put(self, obj, block: bool = True, timeout=None) -> None:
        self._check_closed()
        if self._items.closed:
            raise ShutDown(f"put() on a shut-down queue {self!r}")
        self._tasks.send(b"")  # counted before the item is visible, so task_done cannot underflow
        try:
            super().put(obj, block, timeout)
        except BaseException:
            self._take_task_token()
            raise

    def put_many(self, objs, block: bool = True, timeout=None) -> int:
        self._check_closed()
        if self._items.closed:
            raise ShutDown(f"put_many() on a shut-down queue {self!r}")
        objs = list(objs)
        self._tasks.send_many([b""] * len(objs))  # counted before the items are visible
        try:
            return super().put_many(objs, block, timeout)
        except BaseException as exc:
            for _ in range(len(objs) - getattr(exc, "queued", 0)):
                self._take_task_token()
            raise

    def task_done(self) -> None:
        """Mark one item taken with get() as processed; ValueError if called too many times."""
        if not self._take_task_token():
            raise ValueError("task_done() called too many times")

    def join(self) -> None:
        """Block until every item put so far has been marked with task_done()."""
        while not self._tasks.empty():
            try:
                self._wake.recv(timeout=_JOIN_RECHECK_SECONDS).release()
            except Empty:
                pass
        self._signal_joiners()  # pass the wake-up on to the next joiner, if any

    def _take_task_token(self) -> bool:
        try:
            self._tasks.recv_nowait().release()
        except Empty:
            return False
        if self._tasks.empty():  # checked after our removal: the last remover always sees 0
            self._signal_joiners()
        return True

    def _signal_joiners(self) -> None:
        try:
            self._wake.send_nowait(b"")
        except Full:
            pass  # a wake-up is already pending

    def _discarded(self) -> None:
        self._take_task_token()


class SimpleQueue:
    """``multiprocessing.SimpleQueue``: unbounded, ``put(obj)``, ``get()``, ``empty()``, ``close()``."""

    def __init__(self, *, backend: str = "shm", ctx=None):
        self._init(Arena(backend=backend).channel())

    def _init(self, items):
        self._items = items
        self._closed = False

    def __getstate__(self):
        return (self._items,)

    def __setstate__(self, state):
        self._init(*state)

    def __repr__(self):
        return f"<memchannel.SimpleQueue {'closed' if self._closed else 'open'}>"

    def _check_closed(self):
        if self._closed:
            raise OSError(f"SimpleQueue {self!r} is closed")

    def put(self, obj) -> None:
        self._check_closed()
        self._items.send_object(obj)

    def get(self):
        self._check_closed()
        return self._items.recv_object()

    def empty(self) -> bool:
        self._check_closed()
        return self._items.empty()

    def close(self) -> None:
        """No more use from this process (idempotent); other processes keep using the queue."""
        self._closed = True
