"""The memchannel exception hierarchy.

Every error the extension raises is one of these (or a built-in TypeError / ValueError /
BufferError for bad arguments), so callers can catch ``memchannel.MemChannelError``.
"""

import queue


class MemChannelError(Exception):
    """Base class of memchannel's own errors.

    An error raised by a batch call (``send_many``, ``send_objects``, ``Queue.put_many``)
    carries ``queued``: how many of the batch's messages were queued before it (also set on
    other exception types a batch raises, such as a TypeError for a bad item).
    """

    queued: int  # set only on errors raised by batch calls (no class default)


class Empty(MemChannelError, queue.Empty):
    """recv() found no message (non-blocking, or the timeout passed)."""


class Full(MemChannelError, queue.Full):
    """send() found no room (non-blocking, or the timeout passed)."""


class ChannelClosed(MemChannelError):
    """The channel is closed: no more sends; recv() raises this once it is drained."""


class ChannelNotFound(MemChannelError, LookupError):
    """A handle names a channel that no longer exists."""


class CapacityError(MemChannelError, ValueError):
    """A message can never fit the arena: larger than its largest size class, or than every
    segment it has and can still map (``Arena.max_message_bytes``). Waiting cannot help:
    create the channel with a larger Arena."""


class CorruptionError(MemChannelError):
    """Channel memory failed validation (a peer wrote garbage, e.g. a received message's
    format, itemsize or shape); the message is dropped and counted in
    ``stats()["corruption_count"]``, and the channel keeps serving."""


class WaitCancelled(MemChannelError):
    """A blocking call was ended because its interpreter is being closed.

    Raised inside a subinterpreter when ``memchannel.interpreters.Interpreter.close()`` (or
    the end of the program, or Ctrl-C in the main thread) has to stop a thread that waits in
    ``recv()``, ``send()``, ``reserve()``, ``Queue.get()`` and the like. Let it propagate:
    the interpreter's code then ends and the interpreter can be closed.
    """


__all__ = [
    "MemChannelError", "Empty", "Full", "ChannelClosed", "ChannelNotFound", "CapacityError",
    "CorruptionError", "WaitCancelled",
]
