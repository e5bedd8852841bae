"""Publish/subscribe on top of ``memchannel.share``: one frame, every subscriber, no copy.

    pub = mc.Publisher(policy="drop_oldest")     # or "block", "skip"
    inbox = pub.subscribe(maxsize=4)             # a bounded channel; pickle it to a process
    buf = pub.reserve(shape=(1080, 1920), format="B"); ...fill...
    pub.publish(buf)                             # one read-only share per subscriber

The slow-subscriber policy is chosen explicitly, per publisher:

* ``"block"``: ``publish`` waits (up to its ``timeout``) for room in every subscriber; the
  slowest sets the pace, and nothing is lost.
* ``"drop_oldest"``: a full subscriber's oldest queued frame is dropped (released) to make
  room, so it always gets the newest; ``dropped`` counts them.
* ``"skip"``: a full subscriber does not get this frame; ``skipped`` counts them.

A subscriber that closes its channel is forgotten at the next ``publish``. Concurrency: one
publishing thread at a time per Publisher; subscribers anywhere (threads, interpreters,
processes).
"""

from __future__ import annotations

from ._channel import Arena, share
from .errors import ChannelClosed, Empty, Full

__all__ = ["Publisher"]

_POLICIES = ("block", "drop_oldest", "skip")


class Publisher:
    """``Publisher(arena=None, *, policy="block")``: subscribers' channels in one arena (shm
    by default), and ``publish`` sharing each frame with all of them."""

    def __init__(self, arena: Arena | None = None, *, policy: str = "block"):
        if policy not in _POLICIES:
            raise ValueError(f"Publisher policy must be one of {_POLICIES}, got {policy!r}")
        self.arena = arena if arena is not None else Arena()
        self.policy = policy
        self.subscribers: list = []
        self.dropped = 0   # frames drop_oldest released unread
        self.skipped = 0   # subscriber deliveries skip left out

    def subscribe(self, maxsize: int = 4):
        """A new subscriber channel, bounded to ``maxsize`` queued frames (>= 1)."""
        if maxsize < 1:
            raise ValueError(f"subscribe(): maxsize must be >= 1, got {maxsize}")
        ch = self.arena.channel(maxsize)
        self.subscribers.append(ch)
        return ch

    def unsubscribe(self, channel) -> None:
        """Stop publishing to ``channel`` (its queued frames stay for its reader)."""
        self.subscribers = [c for c in self.subscribers if c is not channel]

    def reserve(self, nbytes=None, *, format="B", shape=None, timeout=None):
        """A writable frame in the publisher's arena, to fill and ``publish``."""
        return self.arena.reserve(nbytes, format=format, shape=shape, timeout=timeout)

    def publish(self, buf, *, track: bool = False, timeout=None):
        """Share ``buf`` (consumed) with every live subscriber, by the policy. Returns a
        Tracker with ``track=True``, or None; ``buf`` is released when nobody gets it."""
        self.subscribers = [c for c in self.subscribers if not c.closed]
        targets = []
        for ch in self.subscribers:
            if self.policy != "block" and ch.full():
                if self.policy == "skip":
                    self.skipped += 1
                    continue
                try:  # drop_oldest: make room by releasing the oldest queued frame
                    ch.recv(block=False).release()
                    self.dropped += 1
                except Empty:  # its reader took one meanwhile
                    pass
            targets.append(ch)
        if not targets:
            buf.release()
            return None
        try:
            return share(buf, targets, track=track, timeout=timeout if self.policy == "block" else 0)
        except (Full, ChannelClosed) as exc:
            if self.policy == "block" and isinstance(exc, Full):
                raise
            # skip/drop_oldest: a subscriber that filled up (or closed) in the meantime lost
            # this frame; the others got it.
            self.skipped += len(targets) - getattr(exc, "sent", 0)
            return None
