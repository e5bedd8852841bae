"""Functions the subinterpreter tests run inside isolated subinterpreters (no numpy here)."""

import struct


def import_extension():
    import memchannel
    from memchannel import _memchannel

    return _memchannel.__name__, memchannel.Channel.__name__


def send_numbered(ch, sender_id, count):
    for seq in range(count):
        ch.send(struct.pack("<II", sender_id, seq))
    return count


def make_channel_and_fill(backend, count):
    import memchannel as mc

    ch = mc.Channel(backend=backend)
    for i in range(count):
        ch.send(struct.pack("<I", i))
    return ch  # pickled: the caller attaches through the handle


def drain(ch, count):
    return [struct.unpack("<I", ch.recv(timeout=10))[0] for _ in range(count)]


def hold_buffers(ch, count):
    """Receive `count` messages and keep them in a module global (never released)."""
    import sys

    held = [ch.recv(timeout=10) for _ in range(count)]
    sys.modules[__name__]._held = held
    return len(held)


def drop_then_hold(ch, batches, keep):
    """Receive `batches` batches and drop each (the Buffers' memory is reused by the next), then
    keep `keep` more messages in a module global (never released); returns what was received."""
    import sys

    total = 0
    for _ in range(batches):
        total += len(ch.recv_many(64, timeout=10))
    held = [ch.recv(timeout=10) for _ in range(keep)]
    sys.modules[__name__]._held = held
    return total + len(held)
