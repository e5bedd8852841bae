"""Waiting on several channels: ``select``, ``select_object`` and ``wait``.

All three share the core's one wake-up mechanism (docs/design.md, "Waiting on several
channels: fd readiness"): a pass over the channels, a short spin, then a sleep on this
thread's listener socket, armed in every channel's fd wait-list, which the sender that makes a
channel ready fires. Senders may be threads, subinterpreters or other processes; the channels
may come from different arenas and backends.
"""

from __future__ import annotations

from collections.abc import Iterable

from . import _memchannel
from ._objects import decode

__all__ = ["select", "select_object", "wait", "select_async", "wait_async"]


def _channels(channels, fn: str):
    if type(channels) is list or type(channels) is tuple:
        return channels
    # A Channel is itself iterable (it yields its messages): refuse it, do not drain it.
    if isinstance(channels, (str, bytes, _memchannel.Channel)):
        raise TypeError(f"{fn}() needs a sequence of channels, got {type(channels).__name__}")
    try:
        return list(channels)
    except TypeError:
        raise TypeError(f"{fn}() needs a sequence of channels, got {type(channels).__name__}") from None


def select(channels: Iterable, timeout=None):
    """Take exactly one message from whichever of ``channels`` has one first.

    Returns ``(channel, Buffer)``; no message is taken from any other channel. Channels that
    are always ready are served in rotated order (each call starts one channel further), so
    none is starved. A channel that is closed and drained is skipped; when every channel is
    closed and drained, raises ``ChannelClosed``. ``Empty`` when ``timeout`` seconds pass
    first (``timeout=0``: one look, no wait). Concurrency: any thread, any interpreter, any
    process; several selects may share channels (each message goes to one of them).
    """
    return _memchannel._select(_channels(channels, "select"), timeout)


def select_object(channels: Iterable, timeout=None):
    """``select`` for messages sent with ``send_object``: returns ``(channel, obj)``.

    Runs ``pickle.loads``: receive only from trusted peers.
    """
    ch, buf = _memchannel._select(_channels(channels, "select_object"), timeout)
    return ch, decode(buf)


def wait(channels: Iterable, timeout=None) -> list:
    """The channels of ``channels`` that are ready (a message queued, or closed), in the
    order given, taking nothing; waits until at least one is or ``timeout`` passes (then
    ``[]``). Level-triggered, as ``multiprocessing.connection.wait``: a ready channel stays
    in the answer until its messages are taken. Concurrency: any thread, any process.
    """
    return _memchannel._wait(_channels(channels, "wait"), timeout)


# asyncio forms (memchannel._aio, imported on first use so that programs that never await do
# not load asyncio).
async def select_async(channels: Iterable, timeout=None):
    """``await`` one message from whichever of ``channels`` has one first, as ``select``:
    ``(channel, Buffer)``. No thread, no polling; a cancelled await takes nothing."""
    from . import _aio
    return await _aio.select_async(_channels(channels, "select_async"), timeout)


async def wait_async(channels: Iterable, timeout=None) -> list:
    """``await`` the ready channels, as ``wait`` (``[]`` on timeout)."""
    from . import _aio
    return await _aio.wait_async(_channels(channels, "wait_async"), timeout)
