"""asyncio awaitables over channels, without threads and without polling.

Each event loop has one ``_Dispatcher``: one listener socket (``_memchannel._Listener``)
watched with ``loop.add_reader``, registered in the fd wait-list of every channel an await of
that loop waits on (docs/design.md, "Waiting on several channels: fd readiness"). A pending
await is a future in the dispatcher's table: a thousand awaits on a thousand channels are a
thousand futures and one fd, no thread. When a sender (thread, subinterpreter or process)
makes a channel ready it sends the socket one datagram naming the channel; the dispatcher
wakes the first waiter of that channel, which then tries again itself.

Cancellation-safe by construction: only the awaiting coroutine takes a message, in the same
step in which it returns it, so an await cancelled before it completes has taken nothing. A
waiter woken and then cancelled before it ran passes the wake-up on to the next waiter.
"""

from __future__ import annotations

import asyncio
import collections
import weakref

from . import _memchannel
from ._objects import decode
from .errors import ChannelClosed, Empty, Full

__all__ = [
    "recv_async", "send_async", "recv_object_async", "send_object_async", "select_async", "wait_async",
    "tracker_wait_async",
]

# When the arena (not the channel's bound) is out of room, no wait-list fires for "room": an
# await then looks again after these delays (seconds), doubling. Only that case polls.
_ARENA_RETRY_FIRST, _ARENA_RETRY_MAX = 0.001, 0.05
# Before an await arms the loop's listener it may spin for a message, without the GIL, for up
# to _SPIN_NS: a wake-up through the listener socket and epoll costs tens of microseconds
# (most of it the cross-CPU wake of the loop's thread), a spinning hand-off a few. It spins
# only while the loop has nothing else to do (no ready callback, no timer due in the window),
# so the longest it delays another of the loop's fds is the window; and after _SPIN_GIVE_UP
# spins in a row found nothing it stops spinning (an idle consumer costs no CPU) until a
# message again comes within _SPIN_RESUME_S of a sleep. docs/guide-waiting.md, "asyncio".
_SPIN_NS = 50_000
_SPIN_GIVE_UP = 4
_SPIN_RESUME_S = 0.001
# Idle registrations a loop keeps (each holds one slot of its channel's 28-slot wait-list and
# a reference to the channel object).
_IDLE_KEPT = 32


class _Entry:
    __slots__ = ("channel", "slot", "readers", "writers", "scheduled")

    def __init__(self, channel, slot):
        self.channel = channel
        self.slot = slot
        self.readers: collections.deque = collections.deque()
        self.writers: collections.deque = collections.deque()
        self.scheduled = False


class _Dispatcher:
    """The waits of one event loop. Concurrency: the loop's thread only."""

    def __init__(self, loop):
        self.loop = loop
        self.listener = _memchannel._Listener()
        self.spin_misses = 0  # spins in a row that found nothing
        self.trackers: dict = {}  # Tracker._key -> [(tracker, future)]: tracker_wait_async
        # Loops whose queues can be looked at (asyncio's own; not uvloop, say) can spin.
        self.can_spin = isinstance(getattr(loop, "_ready", None), collections.deque) and isinstance(
            getattr(loop, "_scheduled", None), list)
        self.entries: dict = {}
        self.idle: collections.OrderedDict = collections.OrderedDict()  # entries without waiters
        loop.add_reader(self.listener.fileno(), self._on_readable)

    def _entry(self, ch) -> _Entry:
        key = ch._wait_key
        e = self.entries.get(key)
        if e is not None:
            self.idle.pop(key, None)
        else:
            e = _Entry(ch, self.listener.register(ch))
            self.entries[key] = e
        return e

    def _forget(self, e: _Entry) -> None:
        """An entry without waiters keeps its wait-list slot (the next await on the channel
        is then one arm, not a registration) while at most _IDLE_KEPT entries are idle."""
        if e.readers or e.writers or e.scheduled:
            return
        self.idle[e.channel._wait_key] = e
        while len(self.idle) > _IDLE_KEPT:
            key, old = self.idle.popitem(last=False)
            if not (old.readers or old.writers or old.scheduled):
                self.entries.pop(key, None)
                self.listener.unregister(old.channel, old.slot)

    def _on_readable(self) -> None:
        fired = self.listener.drain()
        if fired is None:  # more datagrams than it lists: look at every channel
            targets = list(self.entries.values())
        else:  # validated: only channels this loop registered
            targets = [self.entries[k] for k in dict.fromkeys(fired) if k in self.entries]
        for e in targets:
            self._service(e)
        if self.trackers:
            keys = list(self.trackers) if fired is None else [k for k in dict.fromkeys(fired) if k in self.trackers]
            for k in keys:
                self._service_trackers(k)

    def _service_trackers(self, key) -> None:
        """A datagram said "look" for tracked block ``key``: complete the waits whose tracker
        is done (a stale datagram, of an earlier tracking of the block, re-arms instead)."""
        waits = self.trackers.get(key)
        if not waits:
            return
        pending = []
        for tracker, fut in waits:
            if fut.done():
                continue
            if tracker.done or tracker._arm(self.listener.key):
                fut.set_result(True)
            else:
                pending.append((tracker, fut))
        if pending:
            self.trackers[key] = pending
        else:
            del self.trackers[key]

    def _kick(self, e: _Entry) -> None:
        if not e.scheduled:
            e.scheduled = True
            self.loop.call_soon(self._service_scheduled, e)

    def _service_scheduled(self, e: _Entry) -> None:
        e.scheduled = False
        self._service(e)
        self._forget(e)

    def _service(self, e: _Entry) -> None:
        for waiters, writable in ((e.readers, False), (e.writers, True)):
            while waiters and waiters[0].done():
                waiters.popleft()
            if not waiters:
                continue
            # Arm first, then look (the Dekker pair of core/fd_wait.h): if not ready now, the
            # sender that makes it ready fires the socket.
            if self.listener.arm(e.channel, e.slot, writable):
                waiters[0].set_result(True)  # stays queued until its await takes it out
                if len(waiters) > 1:
                    self._kick(e)  # after the woken one ran: more may be ready

    def spin_recv(self, channel):
        """A message spun for (``channel._spin_recv``) while the loop is idle, else None."""
        if not self.can_spin or self.spin_misses >= _SPIN_GIVE_UP:
            return None
        loop = self.loop
        if loop._ready:
            return None
        scheduled = loop._scheduled
        if scheduled and scheduled[0]._when <= loop.time() + _SPIN_NS * 1e-9:
            return None
        buf = channel._spin_recv(_SPIN_NS)
        if buf is None:
            self.spin_misses += 1
        else:
            self.spin_misses = 0
        return buf

    async def wait(self, channels, writable: bool, deadline) -> bool:
        """Until one of ``channels`` may be ready (True) or the loop's clock passes
        ``deadline`` (False)."""
        loop = self.loop
        fut = loop.create_future()
        entries = []
        timer = None
        try:
            for ch in channels:
                e = self._entry(ch)
                entries.append(e)
                (e.writers if writable else e.readers).append(fut)
                if self.listener.arm(ch, e.slot, writable):
                    if not fut.done():
                        fut.set_result(True)
                    break
            if deadline is not None and not fut.done():
                timer = loop.call_at(deadline, _expire, fut)
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # woken, then cancelled: pass it on
                for e in entries:
                    self._kick(e)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            for e in entries:
                waiters = e.writers if writable else e.readers
                if waiters and waiters[0] is fut:
                    waiters.popleft()
                elif fut in waiters:
                    waiters.remove(fut)
                self._forget(e)


async def tracker_wait_async(tracker, timeout=None) -> bool:
    """``await tracker.wait_async(timeout=None)``: True once the tracked message was released,
    False after ``timeout`` seconds. No thread, no polling: the party that releases the message
    signals this loop's listener socket (core/tracking.cc). Await one Tracker from one event
    loop at a time (the block names one listener)."""
    if tracker.done:
        return True
    d = _dispatcher()
    deadline = _deadline(timeout)
    loop = d.loop
    fut = loop.create_future()
    key = tracker._key
    d.trackers.setdefault(key, []).append((tracker, fut))
    timer = None
    try:
        if tracker._arm(d.listener.key):
            return True
        if deadline is not None:
            timer = loop.call_at(deadline, _expire, fut)
        return await fut
    finally:
        if timer is not None:
            timer.cancel()
        waits = d.trackers.get(key)
        if waits is not None:
            waits[:] = [w for w in waits if w[1] is not fut]
            if not waits:
                del d.trackers[key]


def _expire(fut) -> None:
    if not fut.done():
        fut.set_result(False)


_dispatchers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_plain_dispatchers: dict = {}  # loops without weak references (keyed by id, checked by identity)


def _dispatcher() -> _Dispatcher:
    loop = asyncio.get_running_loop()
    try:
        d = _dispatchers.get(loop)
        if d is None:
            d = _dispatchers[loop] = _Dispatcher(loop)
        return d
    except TypeError:
        d = _plain_dispatchers.get(id(loop))
        if d is None or d.loop is not loop:
            d = _plain_dispatchers[id(loop)] = _Dispatcher(loop)
        return d


def _deadline(timeout):
    if timeout is None:
        return None
    seconds = _memchannel._timeout_seconds(timeout)
    return None if seconds is None else asyncio.get_running_loop().time() + seconds


def _expired(deadline) -> bool:
    return deadline is not None and asyncio.get_running_loop().time() >= deadline


async def recv_async(channel, timeout=None):
    """``await`` the next message of ``channel`` (a Buffer). ``Empty`` after ``timeout``
    seconds, ``ChannelClosed`` once closed and drained. Cancellation takes nothing."""
    deadline = _deadline(timeout)  # the timeout rule holds even when a message is there
    buf = channel._try_recv()
    if buf is not None:
        return buf
    d = _dispatcher()
    if deadline is None or deadline - d.loop.time() > _SPIN_NS * 1e-9:
        buf = d.spin_recv(channel)
        if buf is not None:
            return buf
    while True:
        slept_from = d.loop.time()
        if _expired(deadline) or not await d.wait((channel,), False, deadline):
            buf = channel._try_recv()
            if buf is None:
                raise Empty("recv_async(): no message before the timeout")
            return buf
        buf = channel._try_recv()
        if buf is not None:
            if d.loop.time() - slept_from < _SPIN_RESUME_S:
                d.spin_misses = 0  # it came soon after the spin gave up: spinning may pay again
            return buf


async def anext_or_stop(channel):
    """``Channel.__anext__``: the next message, StopAsyncIteration once closed and drained."""
    try:
        return await recv_async(channel)
    except ChannelClosed:
        raise StopAsyncIteration from None


async def _send_retrying(channel, attempt, timeout, what: str):
    deadline = _deadline(timeout)
    delay = _ARENA_RETRY_FIRST
    while True:
        try:
            return attempt()
        except Full:
            pass
        if _expired(deadline):
            raise Full(f"{what}: no room before the timeout")
        if channel.writable_hint():
            # The channel has room, so the arena is out of it: nothing fires for that.
            await asyncio.sleep(delay if deadline is None else min(delay, max(0.0, deadline - asyncio.get_running_loop().time())))
            delay = min(delay * 2, _ARENA_RETRY_MAX)
            continue
        await _dispatcher().wait((channel,), True, deadline)


async def send_async(channel, data, timeout=None) -> None:
    """``await`` queueing ``data`` (bytes-like, or a Buffer reserved from this channel's arena,
    moved without a copy) while the channel is full. ``Full`` after ``timeout`` seconds,
    ``ChannelClosed`` if closed. A cancelled send queued nothing (a Buffer stays the caller's)."""
    if timeout is None:
        try:
            return channel.send(data, block=False)  # the common case: room now
        except Full:
            pass
    await _send_retrying(channel, lambda: channel.send(data, block=False), timeout, "send_async()")


async def recv_object_async(channel, timeout=None):
    """``recv_async`` for ``send_object`` messages: the object (runs ``pickle.loads``)."""
    return decode(await recv_async(channel, timeout))


async def send_object_async(channel, obj, timeout=None) -> None:
    """``send_async`` for any picklable object (as ``send_object``)."""
    await _send_retrying(channel, lambda: channel.send_object(obj, False), timeout, "send_object_async()")


async def select_async(channels, timeout=None):
    """``await`` one message from whichever of ``channels`` has one first: ``(channel,
    Buffer)``, as ``memchannel.select`` (fair, skips closed-and-drained channels,
    ``ChannelClosed`` when all are, ``Empty`` on timeout). Cancellation takes nothing."""
    chans = list(channels)
    if not chans:
        raise ValueError("select_async() needs at least one channel")
    deadline = _deadline(timeout)
    while True:
        try:
            return _memchannel._select(chans, 0)
        except Empty:
            pass
        if _expired(deadline):
            raise Empty("select_async(): no message before the timeout")
        live = [c for c in chans if not c.closed or c.qsize()]
        await _dispatcher().wait(live or chans, False, deadline)


async def wait_async(channels, timeout=None) -> list:
    """``await`` the ready channels of ``channels`` (as ``memchannel.wait``), ``[]`` on
    timeout."""
    chans = list(channels)
    deadline = _deadline(timeout)
    while True:
        ready = _memchannel._wait(chans, 0)
        if ready or _expired(deadline):
            return ready
        await _dispatcher().wait(chans, False, deadline)
