"""memchannel: zero-copy buffer channels between CPython subinterpreters and processes.

    import memchannel as mc
    ch = mc.Channel()
    ch.send(b"hello")
    with ch.recv() as buf:
        print(bytes(buf))
"""

from . import _lifecycle, _memchannel
from ._channel import Arena, Buffer, Channel, Tracker, share
from .errors import (
    CapacityError,
    ChannelClosed,
    ChannelNotFound,
    CorruptionError,
    Empty,
    Full,
    MemChannelError,
    WaitCancelled,
)
from .queues import JoinableQueue, Queue, ShutDown, SimpleQueue
from .executor import InterpreterPoolExecutor
from .compare import compare
from ._select import select, select_async, select_object, wait, wait_async
from .sync import (  # locks, semaphores, events, conditions, barriers: docs/guide-sync.md
    Barrier, BoundedSemaphore, Condition, Event, Lock, LockAbandoned, RLock, Semaphore,
)

__version__ = "0.1.0"

_lifecycle.install()

__all__ = [
    "Arena", "Buffer", "Channel", "Tracker", "share", "MemChannelError", "Empty", "Full", "ChannelClosed",
    "ChannelNotFound", "CapacityError", "CorruptionError", "WaitCancelled",
    "Queue", "SimpleQueue", "JoinableQueue", "ShutDown",
    "InterpreterPoolExecutor", "compare",
    "select", "select_object", "wait", "select_async", "wait_async",
    "Lock", "RLock", "Semaphore", "BoundedSemaphore", "Event", "Condition", "Barrier", "LockAbandoned",
]
