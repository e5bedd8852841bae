"""The Python side of Channel and Arena (pickling, attach, object messages, Arena.channel and
Arena.reserve) over the extension's classes; types in _channel.pyi and _memchannel.pyi."""

from __future__ import annotations

from . import _memchannel

Buffer = _memchannel.Buffer
Tracker = _memchannel.Tracker


def _tracker_wait_async(self, timeout=None):
    """``await tracker.wait_async(timeout=None)``: True once the message was released, False
    after ``timeout`` seconds; no thread, no polling (memchannel._aio)."""
    from . import _aio
    return _aio.tracker_wait_async(self, timeout)


Tracker.wait_async = _tracker_wait_async  # the extension's class of this interpreter


def share(buf, channels, *, track: bool = False, timeout=None):
    """Send one read-only share of ``buf``'s memory on each of ``channels``, with no copy.

    ``buf`` is a Buffer (reserved from the channels' arena and filled, or received from one of
    its channels); it is consumed, as by ``send()``. Each receiver gets a Buffer with
    ``readonly=True`` over the same memory (numpy arrays of it are not writeable), in any
    thread, interpreter or process. The memory returns to the arena when the last share is
    released, wherever: released, dropped with a closed channel, or reclaimed from a holder
    that died. A received share can be forwarded with ``send()`` (the share moves) or shared
    again. At most 42 shares of one block over its shared life.

    ``track=True`` returns a ``Tracker`` that completes when every share was released.
    ``timeout`` bounds the wait of each channel that is full. A channel that refuses its share
    (closed, or still full at the timeout) gets none and the error is raised after every
    channel was tried, with ``.sent``, how many channels got theirs.
    """
    return _memchannel._share(buf, channels, track, timeout)


def _attach_pickled(handle: bytes) -> "Channel":
    # The handle names its process; Channel.attach refuses another process's heap channel
    # with the message that says to use backend='shm' (pybind/handle.cc).
    return Channel.attach(handle)


class Channel(_memchannel.Channel):
    """A queue of buffers between threads, subinterpreters and processes.

    ``Channel(maxsize=0, *, maxbytes=0, backend="shm", arena=None)``: ``maxsize`` bounds the
    number of queued messages and ``maxbytes`` their payload bytes (0 = unbounded, limited only
    by the arena's capacity). ``backend="shm"`` (the default) lives in /dev/shm and reaches
    other processes through ``handle`` or pickling; ``"heap"`` stays in this process. With
    ``arena``, the channel is made in that arena's memory (its backend). Concurrency: any
    thread, any interpreter; with "shm", any process.
    """

    __slots__ = ()

    @classmethod
    def attach(cls, handle: bytes) -> "Channel":
        """Open the channel named by ``handle`` (``ch.handle``) in this interpreter or process
        (heap channels: this process only). ``ChannelNotFound`` once it no longer exists."""
        if not isinstance(handle, (bytes, bytearray, memoryview)):
            raise TypeError(f"Channel.attach() needs the bytes of Channel.handle, got {type(handle).__name__}")
        return cls(_handle=bytes(handle))

    def __reduce__(self):
        return (_attach_pickled, (self.handle,))

    # asyncio (memchannel._aio; docs/guide-waiting.md). Plain methods that return the
    # coroutine: the object (and its arguments' types) are checked at the call, as for the
    # blocking methods, and asyncio is imported on first use only.
    def recv_async(self, timeout=None):
        """``await ch.recv_async()``: the next message; ``Empty`` after ``timeout`` seconds,
        ``ChannelClosed`` once closed and drained. No thread, no polling; a cancelled await
        takes nothing."""
        self._wait_key  # noqa: B018 - raises TypeError on an uninitialised object
        from . import _aio
        return _aio.recv_async(self, timeout)

    def send_async(self, data, timeout=None):
        """``await ch.send_async(data)``: send ``data`` (bytes-like or a reserved Buffer),
        waiting while the channel is full; ``Full`` after ``timeout`` seconds. A cancelled
        send queued nothing."""
        self._wait_key  # noqa: B018
        from . import _aio
        return _aio.send_async(self, data, timeout)

    def recv_object_async(self, timeout=None):
        """``await ch.recv_object_async()``: one object sent with ``send_object`` (runs
        ``pickle.loads``)."""
        self._wait_key  # noqa: B018
        from . import _aio
        return _aio.recv_object_async(self, timeout)

    def send_object_async(self, obj, timeout=None):
        """``await ch.send_object_async(obj)``: ``send_object(obj)``, waiting while full."""
        self._wait_key  # noqa: B018
        from . import _aio
        return _aio.send_object_async(self, obj, timeout)

    def __aiter__(self):
        """``async for buf in ch``: messages until the channel is closed and drained."""
        self._wait_key  # noqa: B018
        return self

    def __anext__(self):
        self._wait_key  # noqa: B018
        from . import _aio
        return _aio.anext_or_stop(self)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<memchannel.Channel backend={self.backend!r} {state} queued={self.qsize()}>"


class Arena(_memchannel.Arena):
    """Memory shared by the channels made from it; a received Buffer can be sent on to any
    channel of the same arena without a copy.

    ``Arena(capacity=None, backend="shm")``: ``capacity`` in bytes (default 1 GiB, mapped as it
    is used). Concurrency: any thread, any interpreter; with "shm", any process.
    """

    def channel(self, maxsize: int = 0, *, maxbytes: int = 0) -> Channel:
        """A new Channel in this arena's memory (``maxsize`` and ``maxbytes`` as for Channel)."""
        return Channel(maxsize, maxbytes=maxbytes, arena=self)

    def reserve(self, nbytes=None, *, format="B", shape=None, timeout=None) -> Buffer:
        """A writable Buffer in this arena's memory, to fill and then send on any of its channels."""
        carrier = getattr(self, "_reserve_channel", None)
        if carrier is None:
            carrier = self._reserve_channel = self.channel()
        return carrier.reserve(nbytes, format=format, shape=shape, timeout=timeout)
