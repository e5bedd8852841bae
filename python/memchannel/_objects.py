"""Python objects over channels: pickle protocol 5, out-of-band buffers in channel memory.

One object is one message, held in one block, so a receiver never sees part of an object
even when many senders and receivers share the channel (M:N), and a bounded channel counts
an object as one message. The block (little-endian):

    offset 0          magic b"MCO1"                                   4 bytes
           4          nbuffers                                        u32
           8          pickle_len                                      u64
          16          table: nbuffers x (offset u64, length u64)      16 * nbuffers bytes
    16 + 16*nbuffers  pickle bytes                                    pickle_len bytes
    (padding)         each out-of-band buffer at its table offset, 64-byte aligned

Where it runs: ``Channel.send_object``/``recv_object`` (and the batches ``send_objects``/
``recv_objects``) are C methods (pybind/objects.cc). They handle the common case, an object
without out-of-band buffers, themselves: the pickle and its 16-byte header are copied into one
block, and on receipt the pickle is copied out and the block freed before ``pickle.loads``.
Frames with out-of-band buffers, and in-band pickles over 64 KiB, come here:
``send_frame_with_buffers`` and ``decode``.

Sending: ``pickle.dumps(obj, protocol=5, buffer_callback=...)`` sets aside every
out-of-band buffer (numpy arrays, ``pickle.PickleBuffer``) instead of copying it into the
pickle (numpy object arrays, and structured arrays with object fields, are pickled in-band,
item by item: their memory is pointers, which mean nothing to another process); the block is reserved at its full size, the pickle and each buffer are copied into
it once, and the block is sent (ownership moves, no further copy).

Receiving: the Buffer is parsed, each out-of-band buffer is handed to ``pickle.loads`` as a
memoryview slice of the Buffer, so a received numpy array views channel memory (its
``.base`` chain ends in a memoryview whose ``.obj`` is the memchannel Buffer). The slices
keep the Buffer exported; the block returns to the arena when the last array or view made
from it is gone. An object without out-of-band buffers frees its block at once.

Copies: one per out-of-band buffer on the send side (into the block, through
``Buffer.write``), none on the receive side; all of them are counted in
``stats()["bytes_copied"]``.

``recv_object`` runs ``pickle.loads``: like ``multiprocessing.Queue``, only receive objects
from peers you trust. The frame itself is checked (bounds of every offset and length)
before anything is unpickled, and a malformed frame raises CorruptionError.
"""

from __future__ import annotations

import pickle
import struct
import time

from . import _memchannel
from .errors import CorruptionError

_MAGIC = b"MCO1"
_HEADER = struct.Struct("<4sIQ")  # magic, nbuffers, pickle_len
_ENTRY = struct.Struct("<QQ")  # offset, length of one out-of-band buffer
_ALIGN = 64  # out-of-band buffers start on a cache line (and SIMD-friendly for numpy)
_PROTOCOL = 5


def _aligned(offset: int) -> int:
    return (offset + _ALIGN - 1) & ~(_ALIGN - 1)


def _raw_bytes(pb: pickle.PickleBuffer) -> memoryview:
    """The bytes of an out-of-band buffer as a flat 'B' memoryview, in C order."""
    with memoryview(pb) as view:
        if view.format != "B" and _memchannel._parse_format(view.format)[0] == "pointer":
            # numpy pickles object arrays in-band (their items are pickled one by one); only an
            # explicit PickleBuffer over one gets here, and its bytes would be addresses.
            raise TypeError(
                f"send_object(): an out-of-band buffer of pointers (format {view.format!r}) "
                "cannot be sent; pickle the objects themselves (numpy object arrays are, "
                "without PickleBuffer)")
    try:
        return pb.raw()
    except BufferError:  # not contiguous: flatten (one extra copy; numpy never gives these)
        with memoryview(pb) as view:
            return memoryview(view.tobytes())


def _remaining(deadline):
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def frame_block(channel, data: bytes, buffers: list, timeout=None, block: bool = True):
    """The frame of ``data`` (a protocol-5 pickle) and its out-of-band ``buffers`` in one
    Buffer reserved from ``channel``'s arena at its full size: the pickle and each buffer
    copied in once (64-byte aligned). ``timeout`` bounds the wait for arena room."""
    raws = [_raw_bytes(pb) for pb in buffers]
    try:
        table_end = _HEADER.size + _ENTRY.size * len(raws)
        offsets = []
        end = table_end + len(data)
        for raw in raws:
            start = _aligned(end)
            offsets.append(start)
            end = start + raw.nbytes
        block_buf = channel.reserve(end, timeout=timeout if block else 0)
        try:
            with memoryview(block_buf) as dst:
                _HEADER.pack_into(dst, 0, _MAGIC, len(raws), len(data))
                for i, (start, raw) in enumerate(zip(offsets, raws)):
                    _ENTRY.pack_into(dst, _HEADER.size + _ENTRY.size * i, start, raw.nbytes)
            block_buf.write(data, table_end)  # counted in stats()["bytes_copied"]
            for start, raw in zip(offsets, raws):
                block_buf.write(raw, start)
        except BaseException:
            block_buf.release()
            raise
        return block_buf
    finally:
        # Our views of the sender's memory go now, not at the next garbage collection. The
        # PickleBuffers are left alone: one may be the caller's own object, still in use.
        for raw in raws:
            raw.release()


def send_frame_with_buffers(channel, data: bytes, buffers: list, block: bool = True, timeout=None) -> None:
    """Send the frame of ``data`` and its out-of-band ``buffers`` on ``channel`` as one block
    (frame_block), then send it (ownership moves). Called by ``Channel.send_object`` once it
    has pickled an object that has out-of-band buffers; ``timeout`` covers waiting for arena
    room and for queue room together. On Full/ChannelClosed the block is returned.
    """
    deadline = None if (timeout is None or not block) else time.monotonic() + timeout
    block_buf = frame_block(channel, data, buffers, _remaining(deadline), block)
    try:
        channel.send(block_buf, block, _remaining(deadline))
    except BaseException:
        block_buf.release()  # not sent: the block goes back to the arena
        raise


def share_object(obj, channels, *, track: bool = False, timeout=None):
    """Pickle ``obj`` once (protocol 5, out-of-band buffers in channel memory) and send one
    read-only share of the frame on each of ``channels`` (``memchannel.share``): every
    receiver's ``recv_object()`` gets its own object whose arrays view the same block,
    read-only (numpy: not writeable). All channels must be of one arena. Returns a Tracker
    with ``track=True`` (done when every receiver's object and arrays are gone)."""
    from ._channel import share
    chans = list(channels)
    if not chans:
        raise ValueError("share_object() needs at least one channel")
    buffers: list = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    block_buf = frame_block(chans[0], data, buffers, timeout)
    try:
        return share(block_buf, chans, track=track, timeout=timeout)
    except BaseException:
        if not block_buf.released and "sent" not in repr(block_buf):
            block_buf.release()  # refused before any share was made: the frame goes back
        raise


def decode(buf):
    """Unpickle one received frame (a Buffer). Takes over ``buf``: released here unless arrays
    view it. Called by ``Channel.recv_object`` for frames with out-of-band buffers or a large
    pickle; the frame checks and their messages are the same as the C side's."""
    view = memoryview(buf)
    keep = False
    try:
        nbytes = view.nbytes
        if nbytes < _HEADER.size:
            raise CorruptionError(
                f"recv_object(): a {nbytes}-byte message is not an object message "
                "(was it sent with send() rather than send_object()?)")
        magic, nbuffers, pickle_len = _HEADER.unpack_from(view, 0)
        if magic != _MAGIC:
            raise CorruptionError(
                "recv_object(): message is not an object message (bad magic; was it sent "
                "with send() rather than send_object()?)")
        table_end = _HEADER.size + _ENTRY.size * nbuffers
        if table_end > nbytes or pickle_len > nbytes - table_end:
            raise CorruptionError(
                f"recv_object(): object header out of bounds ({nbuffers} buffers, "
                f"{pickle_len} pickle bytes in a {nbytes}-byte message)")
        pickle_end = table_end + pickle_len
        slices = []
        for i in range(nbuffers):
            start, length = _ENTRY.unpack_from(view, _HEADER.size + _ENTRY.size * i)
            if start < pickle_end or start > nbytes or length > nbytes - start:
                raise CorruptionError(
                    f"recv_object(): out-of-band buffer {i} at [{start}, {start}+{length}) "
                    f"lies outside the {nbytes}-byte message")
            slices.append(view[start:start + length])
        with view[table_end:pickle_end] as pickled:
            obj = pickle.loads(pickled, buffers=slices)
        keep = bool(slices)  # the slices now belong to the object (arrays, memoryviews)
        return obj
    finally:
        view.release()
        if not keep:
            try:
                buf.release()
            except BufferError:  # a half-built object still holds a slice: GC frees it
                pass


def send_object(channel, obj, block: bool = True, timeout=None) -> None:
    """``channel.send_object(obj, block, timeout)``, as a function."""
    channel.send_object(obj, block, timeout)


def recv_object(channel, block: bool = True, timeout=None):
    """``channel.recv_object(block, timeout)``, as a function."""
    return channel.recv_object(block, timeout)
