"""Cross-interpreter queues: 3.14's ``concurrent.interpreters.create_queue()`` and ``Queue``
on memchannel channels, for CPython 3.12 and 3.13.

    from memchannel import interpreters

    queue = interpreters.create_queue()
    with interpreters.create() as interp:
        interp.prepare_main(queue=queue)                 # the same queue over there
        interp.exec("queue.put(sum(range(10)))")
        assert queue.get(timeout=5) == 45

A ``Queue`` is a memchannel ``Channel`` (in-process heap arena, shared by every interpreter
of the process): ``get()`` and a full ``put()`` block on the channel's futex wait, with no
polling, and a float ``timeout`` is honoured on the monotonic clock.  Items are copied: each
is pickled (protocol 5) by ``put()`` and unpickled by ``get()``, in any interpreter;
a value that does not pickle raises ``NotShareableError``.  Each item remembers the
interpreter that put it: when that interpreter has been destroyed by the time the item is
got, ``unbounditems`` decides, as in 3.14 (``UNBOUND``: ``get()`` returns the ``UNBOUND``
marker; ``UNBOUND_ERROR``: it raises ``ItemInterpreterDestroyed``; ``UNBOUND_REMOVE``: the
item is skipped).

Differences from 3.14, on purpose (docs/interpreters.md): the unbound rule is applied when
the item is got, so ``qsize()`` still counts an item that ``UNBOUND_REMOVE`` will skip; a
queue id is known to an interpreter once the queue object has reached it (created there,
or passed by ``prepare_main()``, ``call()`` or another queue): ``Queue(id)`` elsewhere
raises ``QueueNotFoundError``.
"""

import itertools
import pickle
import queue as _stdlib_queue
import threading
import time
import weakref

from . import _worker
from ._channel import Channel
from .errors import ChannelClosed, Empty, Full

__all__ = [
    "create", "list_all", "Queue", "QueueError", "QueueNotFoundError", "QueueEmpty",
    "QueueFull", "ItemInterpreterDestroyed", "UNBOUND", "UNBOUND_ERROR", "UNBOUND_REMOVE",
]


class QueueError(RuntimeError):
    """Base class of the queue errors (3.14's name)."""


class QueueNotFoundError(QueueError):
    """No queue with this id is known to this interpreter."""


class QueueEmpty(QueueError, _stdlib_queue.Empty):
    """``get()`` found the queue empty (non-blocking, or once the timeout ran out)."""


class QueueFull(QueueError, _stdlib_queue.Full):
    """``put()`` found the queue full (non-blocking, or once the timeout ran out)."""


class ItemInterpreterDestroyed(QueueError):
    """The interpreter that put the item is gone, and the item said ``UNBOUND_ERROR``."""


class _UnboundMarker:
    """``UNBOUND``, ``UNBOUND_ERROR`` and ``UNBOUND_REMOVE``: singletons in every
    interpreter (they pickle by name).  ``get()`` returns ``UNBOUND`` for an item whose
    interpreter is gone when the item said so."""

    __slots__ = ("_name", "_op")

    def __init__(self, name, op):
        self._name, self._op = name, op

    def __repr__(self):
        return f"memchannel.interpreters.{self._name}"

    def __reduce__(self):
        return self._name


UNBOUND = _UnboundMarker("UNBOUND", 0)
UNBOUND_ERROR = _UnboundMarker("UNBOUND_ERROR", 1)
UNBOUND_REMOVE = _UnboundMarker("UNBOUND_REMOVE", 2)


def _unbound_op(unbounditems):
    if unbounditems not in (UNBOUND, UNBOUND_ERROR, UNBOUND_REMOVE):
        raise ValueError(f"unbounditems must be UNBOUND, UNBOUND_ERROR or UNBOUND_REMOVE, "
                         f"got {unbounditems!r}")
    return unbounditems._op


# Queue ids: unique in the process (the creating interpreter's id in the high bits).
_counter = itertools.count(1)
_known_lock = threading.Lock()
_known = weakref.WeakValueDictionary()   # id -> Queue known to this interpreter


def create(maxsize=0, *, unbounditems=UNBOUND):
    """Return a new cross-interpreter queue holding at most ``maxsize`` items (<= 0: no
    limit).  ``unbounditems`` is the default for items whose interpreter is destroyed
    before they are got (see the module docstring)."""
    if not isinstance(maxsize, int):
        raise TypeError(f"maxsize must be an int, got {maxsize!r}")
    op = _unbound_op(unbounditems)
    maxsize = max(maxsize, 0)
    queue_id = (_worker.current_id() << 32) | next(_counter)
    return Queue._new(queue_id, Channel(maxsize, backend="heap"), maxsize, op)


def list_all():
    """The queues this interpreter knows."""
    with _known_lock:
        return list(_known.values())


def _attach(queue_id, handle, maxsize, op):
    """Unpickles a Queue in another interpreter (or process-wide: the channel's handle)."""
    with _known_lock:
        known = _known.get(queue_id)
    if known is not None:
        return known
    return Queue._new(queue_id, Channel.attach(handle), maxsize, op)


class Queue:
    """A cross-interpreter FIFO queue (3.14's ``concurrent.interpreters.Queue``).

    ``Queue(id)`` is the object this interpreter already has for that id.  Pickling a
    Queue (``prepare_main()``, ``call()``, another queue's ``put()``) gives the same queue
    in the other interpreter.  Concurrency: any thread, any interpreter of the process.
    """

    def __new__(cls, id, /):
        if not isinstance(id, int):
            raise TypeError(f"id must be an int, got {id!r}")
        with _known_lock:
            known = _known.get(id)
        if known is None:
            raise QueueNotFoundError(f"queue {id} not found in this interpreter")
        return known

    @classmethod
    def _new(cls, queue_id, channel, maxsize, op):
        self = super().__new__(cls)
        self._id = queue_id
        self._channel = channel
        self._maxsize = maxsize
        self._op = op
        with _known_lock:
            return _known.setdefault(queue_id, self)

    def __reduce__(self):
        return (_attach, (self._id, self._channel.handle, self._maxsize, self._op))

    def __repr__(self):
        return f"{type(self).__name__}({self._id})"

    def __hash__(self):
        return hash(self._id)

    def __eq__(self, other):
        return isinstance(other, Queue) and other._id == self._id

    @property
    def id(self):
        return self._id

    @property
    def maxsize(self):
        """The most items the queue holds (0: no limit)."""
        return self._maxsize

    def empty(self):
        return self._channel.empty()

    def full(self):
        return self._maxsize > 0 and self._channel.qsize() >= self._maxsize

    def qsize(self):
        return self._channel.qsize()

    def put(self, obj, block=True, timeout=None, *, unbounditems=None):
        """Add ``obj`` (a copy: it is pickled) to the queue.  Blocks while the queue is
        full, up to ``timeout`` seconds (None: no limit); then raises QueueFull."""
        op = self._op if unbounditems is None else _unbound_op(unbounditems)
        _check_timeout(timeout)
        try:
            self._channel.send_object((_worker.current_id(), op, obj), block, timeout)
        except Full:
            raise QueueFull("queue full") from None
        except ChannelClosed:
            raise QueueNotFoundError(f"queue {self._id} has been destroyed") from None
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            from .interpreters import NotShareableError
            raise NotShareableError(
                f"{type(obj).__name__} object cannot be put in {self!r}: "
                f"{type(exc).__name__}: {exc}") from exc

    def put_nowait(self, obj, *, unbounditems=None):
        self.put(obj, block=False, unbounditems=unbounditems)

    def get(self, block=True, timeout=None):
        """Remove and return the next item.  Blocks while the queue is empty, up to
        ``timeout`` seconds (None: no limit); then raises QueueEmpty."""
        _check_timeout(timeout)
        deadline = None if timeout is None or not block else time.monotonic() + timeout
        while True:
            try:
                putter, op, obj = self._channel.recv_object(block, timeout)
            except Empty:
                raise QueueEmpty("queue empty") from None
            except ChannelClosed:
                raise QueueNotFoundError(f"queue {self._id} has been destroyed") from None
            if putter == _worker.current_id() or _worker.interpreter_exists(putter):
                return obj
            if op == 0:
                return UNBOUND
            if op == 1:
                raise ItemInterpreterDestroyed(
                    f"the interpreter ({putter}) that put the item is gone")
            if deadline is not None:  # UNBOUND_REMOVE: the item is skipped
                timeout = max(0.0, deadline - time.monotonic())

    def get_nowait(self):
        return self.get(block=False)


def _check_timeout(timeout):
    if timeout is not None and timeout < 0:
        raise ValueError("timeout value must be non-negative")
