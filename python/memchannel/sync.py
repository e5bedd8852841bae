"""Locks, semaphores, events, conditions and barriers shared by threads, subinterpreters and
processes, safe when a holder dies (docs/guide-sync.md).

The names, signatures and semantics are those of ``threading`` and ``multiprocessing``:

    import memchannel as mc
    lock = mc.Lock()              # instead of multiprocessing.Lock()
    with lock:
        ...

Each primitive lives in arena memory (``backend="shm"`` by default: any process of the host;
``"heap"``: threads and subinterpreters of this process; or ``arena=`` an ``mc.Arena``), waits
on futexes, pickles (to spawn, fork and forkserver children, through ``Interpreter.call`` and
``InterpreterPoolExecutor`` tasks, inside ``send_object`` messages), and every copy is the same
primitive. When a process dies:

* a Lock or RLock it held goes to the next acquirer, whose ``acquire()`` raises
  :class:`LockAbandoned` with the lock held (``with lock:`` releases it again before the
  exception leaves the ``with`` statement);
* the Semaphore permits it acquired and did not release come back;
* a Barrier it was waiting at, or whose round before it passed, breaks
  (``threading.BrokenBarrierError``);
* a Condition forgets its waits; notifications reach the live waiters.
"""

from __future__ import annotations

import os
import threading
import time as _time

from . import _memchannel
from .errors import MemChannelError

_Sync = _memchannel._Sync

_LOCK, _RLOCK, _SEMAPHORE, _BOUNDED, _EVENT, _CONDITION, _BARRIER = range(1, 8)
_RECLAIM = 1


class LockAbandoned(MemChannelError):
    """``acquire()`` got the lock from an owner that died holding it.

    The lock is now held by the caller, as POSIX ``EOWNERDEAD`` and Windows
    ``WAIT_ABANDONED`` do: the data it protects may be half updated. Repair it, then
    ``release()``. ``with lock:`` releases the lock again before this leaves the ``with``
    statement (the block does not run).
    """


class ReleaseError(RuntimeError, ValueError):
    """``release()`` of a lock that is not held (Lock) or not held by this thread (RLock).

    A RuntimeError as in ``threading`` and a ValueError as in ``multiprocessing``.
    """


_Sync._abandoned = LockAbandoned
_Sync._release_error = ReleaseError


def _attach(cls, handle: bytes, pid: int, backend: str, extra):
    if backend == "heap" and pid != os.getpid():
        raise MemChannelError(
            f"a backend='heap' {cls.__name__} cannot be used in another process (it lives in the "
            f"memory of process {pid}); create it with backend='shm' to cross processes")
    obj = cls.__new__(cls)
    _Sync.__init__(obj, 0, _handle=handle)
    if extra is not None:
        obj._restore(extra)
    return obj


class _Primitive(_Sync):
    __slots__ = ()
    _kind = 0

    def __reduce__(self):
        return (_attach, (type(self), self.handle, os.getpid(), self.backend, self._extra()))

    def _extra(self):
        return None

    def _restore(self, extra) -> None:  # pragma: no cover - overridden where _extra is
        pass

    def __repr__(self) -> str:
        return f"<memchannel.{type(self).__name__} backend={self.backend!r}{self._describe()}>"

    def _describe(self) -> str:
        return ""


class Lock(_Primitive):
    """A non-recursive lock (``threading.Lock`` / ``multiprocessing.Lock``).

    ``Lock(*, backend="shm", arena=None)``. ``acquire(block=True, timeout=None)`` returns
    True, or False when the timeout passed; any thread or process may ``release()`` it;
    releasing an unlocked lock raises :class:`ReleaseError`. If the process holding it dies,
    the next ``acquire()`` raises :class:`LockAbandoned` with the lock held.
    """

    __slots__ = ()

    def __init__(self, *, backend: str = "shm", arena=None):
        _Sync.__init__(self, _LOCK, backend=backend, arena=arena)

    def _describe(self) -> str:
        return " locked" if self.locked() else " unlocked"


class RLock(_Primitive):
    """A recursive lock owned by one thread of one process (``threading.RLock``).

    Releasing it from a thread that does not own it raises :class:`ReleaseError`. If the
    owning process dies, the next ``acquire()`` raises :class:`LockAbandoned` with the lock
    held once by the caller.
    """

    __slots__ = ()

    def __init__(self, *, backend: str = "shm", arena=None):
        _Sync.__init__(self, _RLOCK, backend=backend, arena=arena)

    def _describe(self) -> str:
        return " locked" if self.locked() else " unlocked"


class Semaphore(_Primitive):
    """A counting semaphore (``threading.Semaphore`` / ``multiprocessing.Semaphore``).

    ``Semaphore(value=1, *, backend="shm", arena=None, reclaim=True)``. With ``reclaim``, the
    permits a process acquired and did not release come back when it dies; pass
    ``reclaim=False`` for a semaphore that counts events (released by one process, acquired
    by another), where an acquired permit is consumed, not held.
    """

    __slots__ = ()
    _sync_kind = _SEMAPHORE

    def __init__(self, value: int = 1, *, backend: str = "shm", arena=None, reclaim: bool = True):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"value must be an int, got {type(value).__name__}")
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        _Sync.__init__(self, self._sync_kind, value, value, _RECLAIM if reclaim else 0, backend=backend, arena=arena)

    def get_value(self) -> int:
        """The permits available now (``multiprocessing.Semaphore.get_value``)."""
        return self._value()

    def _describe(self) -> str:
        return f" value={self._value()}"


class BoundedSemaphore(Semaphore):
    """A semaphore whose ``release()`` raises ValueError above its initial value."""

    __slots__ = ()
    _sync_kind = _BOUNDED


class Event(_Primitive):
    """``threading.Event`` / ``multiprocessing.Event``: ``set``, ``clear``, ``is_set``,
    ``wait(timeout=None)``. Nobody holds an event, so no death leaves it wrong."""

    __slots__ = ()

    def __init__(self, *, backend: str = "shm", arena=None):
        _Sync.__init__(self, _EVENT, backend=backend, arena=arena)

    def _describe(self) -> str:
        return " set" if self.is_set() else " unset"


class _ConditionState(_Primitive):
    __slots__ = ()


class Condition:
    """``threading.Condition(lock=None)`` over a memchannel Lock or RLock (a new RLock when
    ``lock`` is None, made with ``backend``/``arena``).

    ``wait(timeout=None)``, ``wait_for(predicate, timeout=None)``, ``notify(n=1)``,
    ``notify_all()``, plus the lock's ``acquire``/``release`` and ``with``. A waiter or
    notifier that dies does not stop the others: its registration is dropped (a wait may
    then wake once without a notify, which ``wait_for`` absorbs). If the lock's owner died,
    re-taking the lock in ``wait()`` raises :class:`LockAbandoned` with the lock held.
    """

    __slots__ = ("_lock", "_state", "acquire", "release", "__weakref__")

    def __init__(self, lock=None, *, backend: str = "shm", arena=None):
        if lock is None:
            lock = RLock(backend=backend, arena=arena)
        elif not isinstance(lock, (Lock, RLock)):
            raise TypeError(
                "Condition(lock) needs a memchannel.Lock or memchannel.RLock (a threading or "
                f"multiprocessing lock cannot be shared this way), got {type(lock).__name__}")
        state = _ConditionState.__new__(_ConditionState)
        _Sync.__init__(state, _CONDITION, backend=lock.backend, arena=arena)
        self._setup(lock, state)

    def _setup(self, lock, state) -> None:
        self._lock = lock
        self._state = state
        self.acquire = lock.acquire
        self.release = lock.release

    def __reduce__(self):
        return (_rebuild_condition, (self._lock, self._state))

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)

    def __repr__(self) -> str:
        return f"<memchannel.Condition({self._lock!r}) waiting={self._state._cond_waiting()}>"

    def _is_owned(self) -> bool:
        return self._lock._is_owned()

    def wait(self, timeout=None) -> bool:
        """Release the lock, wait for a notify (or the timeout), take the lock back; True
        unless the timeout passed."""
        if not self._lock._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        if timeout is not None:
            _memchannel._timeout_seconds(timeout)  # the one timeout rule, before anything changes
        self._state._cond_register()
        depth = self._lock._release_save()
        try:
            return self._state._cond_wait(timeout)
        finally:
            self._lock._acquire_restore(depth)

    def wait_for(self, predicate, timeout=None):
        """Wait until ``predicate()`` is true (``threading.Condition.wait_for``)."""
        endtime = None
        waittime = timeout
        result = predicate()
        while not result:
            if waittime is not None:
                if endtime is None:
                    endtime = _time.monotonic() + waittime
                else:
                    waittime = endtime - _time.monotonic()
                    if waittime <= 0:
                        break
            self.wait(waittime)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` waiters (the lock must be held)."""
        if not self._lock._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        if not isinstance(n, int) or n < 0:
            raise ValueError("n must be a non-negative int")
        self._state._cond_notify(min(n, 0xFFFFFFFF))

    def notify_all(self) -> None:
        """Wake every waiter (the lock must be held)."""
        self.notify(0xFFFFFFFF)

    notifyAll = notify_all


def _rebuild_condition(lock, state):
    cond = Condition.__new__(Condition)
    cond._setup(lock, state)
    return cond


class Barrier(_Primitive):
    """``threading.Barrier(parties, action=None, timeout=None)``.

    ``wait(timeout=None)`` returns the arrival index (0 .. parties - 1); the last arrival runs
    ``action`` (if any) before the others are released. A wait that times out, an action that
    raises, ``abort()``, the death of a process waiting at the barrier, or the death of a
    process that passed the round before and has not arrived in this one break it: waiters
    get ``threading.BrokenBarrierError`` until ``reset()`` (docs/guide-sync.md, "When a
    process dies", says what is not detected). ``action`` and ``timeout`` travel
    with a pickled copy (the action by reference, as pickle does).
    """

    __slots__ = ("_action", "_timeout")

    def __init__(self, parties: int, action=None, timeout=None, *, backend: str = "shm", arena=None):
        if not isinstance(parties, int) or isinstance(parties, bool):
            raise TypeError(f"parties must be an int, got {type(parties).__name__}")
        if parties < 1:
            raise ValueError("parties must be >= 1")
        if parties >= 0xFFFF:
            raise ValueError("parties must be < 65535")
        if timeout is not None:
            _memchannel._timeout_seconds(timeout)
        _Sync.__init__(self, _BARRIER, 0, parties, backend=backend, arena=arena)
        self._action = action
        self._timeout = timeout

    def _extra(self):
        return (self._action, self._timeout)

    def _restore(self, extra) -> None:
        self._action, self._timeout = extra

    @property
    def parties(self) -> int:
        """The number of parties that must call wait()."""
        return self._limit

    def wait(self, timeout=None) -> int:
        """Wait for every party; returns this party's arrival index."""
        if timeout is None:
            timeout = self._timeout
        ticket = self._barrier_arrive(timeout)
        if ticket is None:
            raise threading.BrokenBarrierError
        generation, index, last = ticket
        if last:
            if self._action is not None:
                try:
                    self._action()
                except BaseException:
                    self.abort()
                    raise
            self._barrier_release(generation)
            return index
        outcome = self._barrier_wait(generation, index, timeout)
        if outcome != 0:
            raise threading.BrokenBarrierError
        return index

    def _describe(self) -> str:
        state = " broken" if self.broken else f" waiting={self.n_waiting}"
        return f" parties={self.parties}{state}"


__all__ = [
    "Lock", "RLock", "Semaphore", "BoundedSemaphore", "Event", "Condition", "Barrier",
    "LockAbandoned", "ReleaseError",
]
