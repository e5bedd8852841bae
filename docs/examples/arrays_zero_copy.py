"""Zero-copy arrays: reserve in channel memory, fill with numpy, send, forward, receive.

Run: python docs/examples/arrays_zero_copy.py   (from docs/guide-arrays.md)
"""
import multiprocessing as mp

import numpy as np

import memchannel as mc


def stage(src, dst):
    """A pipeline stage in another process: read the frame, forward the same block."""
    buf = src.recv()
    frame = np.asarray(buf)  # zero-copy view, the sender's dtype and shape
    print("stage sees", frame.dtype, frame.shape, "mean", round(float(frame.mean()), 1), flush=True)
    del frame
    dst.send(buf)  # ownership moves on: no copy


if __name__ == "__main__":
    arena = mc.Arena()
    first, second = arena.channel(), arena.channel()
    buf = first.reserve(shape=(1080, 1920, 3), format="B")  # writable, in channel memory
    np.asarray(buf)[:] = 200                                # fill in place
    first.send(buf)                                         # no copy
    child = mp.get_context("spawn").Process(target=stage, args=(first, second))
    child.start()
    out = np.asarray(second.recv())
    child.join()
    print("consumer got", out.shape, int(out[0, 0, 0]))
    print("bytes copied:", arena.stats()["bytes_copied"])
    strided = np.arange(24, dtype="<f8").reshape(4, 6)[:, ::2]  # not contiguous
    first.send(strided)                                          # one copy, made contiguous
    print("strided copy counted:", arena.stats()["bytes_copied"] == strided.nbytes)

# expect: stage sees uint8 (1080, 1920, 3) mean 200.0
# expect: consumer got (1080, 1920, 3) 200
# expect: bytes copied: 0
# expect: strided copy counted: True
