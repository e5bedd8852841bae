"""Frame pipelines: stages that pass frames through channels of one Arena without copying.

Each stage receives a Buffer and sends that same Buffer on (``dst.send(src.recv())``):
ownership moves, the payload stays where the producer wrote it. These functions are plain
module-level functions so they run unchanged in a thread, an isolated subinterpreter
(``memchannel.interpreters``) or a process (``multiprocessing``); none of them needs numpy.

A frame carries its sequence number in its first 8 bytes, and a fill byte derived from it
at the start of every 4 KiB page, so a consumer can check it received the right frame intact.
"""

from __future__ import annotations

import struct

FRAME_SHAPE = (1080, 1920, 3)
PAGE = 4096


def frame_bytes(shape=FRAME_SHAPE) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _fill_byte(seq: int) -> int:
    return (seq * 7 + 1) % 251


def produce(ch, count: int, shape=FRAME_SHAPE, use_numpy: bool | None = None) -> int:
    """Reserve `count` frames in channel memory, fill each, send it. Returns frames sent."""
    np = None
    if use_numpy is not False:
        try:
            import numpy as np  # noqa: F811 - optional
        except ImportError:
            if use_numpy:
                raise
            np = None
    for seq in range(count):
        buf = ch.reserve(shape=shape, format="B")
        fill_frame(buf, seq, np)
        ch.send(buf)
    return count


def fill_frame(buf, seq: int, np=None) -> None:
    """Write frame `seq` into `buf` in place (channel memory): its number, then its fill byte."""
    fill = _fill_byte(seq)
    if np is not None:
        arr = np.asarray(buf)
        arr.fill(fill)
        flat = arr.reshape(-1)
        flat[:8] = np.frombuffer(struct.pack("<Q", seq), dtype=np.uint8)
        del arr, flat
    else:
        with memoryview(buf) as mv:
            flat = mv.cast("B")
            flat[:] = bytes([fill]) * len(flat)  # without numpy: a memset-like fill
            struct.pack_into("<Q", flat, 0, seq)
            flat.release()


def forward(src, dst, count: int) -> list[int]:
    """Receive `count` frames, read each (one byte per page), send it on. Returns the payload
    address seen for each frame, so callers can check that no stage copied it."""
    addresses = []
    for _ in range(count):
        buf = src.recv()
        with memoryview(buf) as mv:
            flat = mv.cast("B")
            touched = 0
            for off in range(0, len(flat), PAGE):
                touched ^= flat[off]
            flat.release()
        addresses.append(buf.address)
        dst.send(buf)
    return addresses


def consume(ch, count: int, on_frame=None) -> list[int]:
    """Receive and check `count` frames in order; returns their payload addresses.
    `on_frame(i)` is called after each frame (progress display)."""
    addresses = []
    for expected in range(count):
        with ch.recv() as buf:
            with memoryview(buf) as mv:
                flat = mv.cast("B")
                (seq,) = struct.unpack_from("<Q", flat, 0)
                if seq != expected:
                    raise AssertionError(f"frame {seq} arrived where {expected} was expected")
                fill = _fill_byte(seq)
                if flat[PAGE] != fill or flat[len(flat) - 1] != fill:
                    raise AssertionError(f"frame {seq} is corrupted")
                flat.release()
            addresses.append(buf.address)
        if on_frame is not None:
            on_frame(expected + 1)
    return addresses


# The same job over multiprocessing.Queue, for comparison (frames are pickled through pipes).

def queue_produce(q, count: int, shape=FRAME_SHAPE) -> None:
    import numpy as np

    for seq in range(count):
        arr = np.empty(shape, dtype=np.uint8)
        arr.fill(_fill_byte(seq))
        arr.reshape(-1)[:8] = np.frombuffer(struct.pack("<Q", seq), dtype=np.uint8)
        q.put(arr)


def queue_forward(src, dst, count: int) -> None:
    for _ in range(count):
        arr = src.get()
        flat = arr.reshape(-1)
        touched = 0
        for off in range(0, flat.size, PAGE):
            touched ^= int(flat[off])
        dst.put(arr)


def queue_consume(q, count: int, on_frame=None) -> None:
    for expected in range(count):
        flat = q.get().reshape(-1)
        (seq,) = struct.unpack_from("<Q", flat[:8].tobytes())
        if seq != expected or flat[PAGE] != _fill_byte(seq):
            raise AssertionError(f"frame {seq} wrong (expected {expected})")
        if on_frame is not None:
            on_frame(expected + 1)
