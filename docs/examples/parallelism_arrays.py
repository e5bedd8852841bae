"""Arrays and InterpreterPoolExecutor: numpy cannot be imported in an isolated
subinterpreter, so a task there sees a numpy argument as a memoryview with the array's
format and shape; a Buffer written in the pool's own memory moves to the worker with no
copy at all.

Run: python docs/examples/parallelism_arrays.py   (from docs/guide-parallelism.md)

Workers import this script again to find `describe` and `total`, and numpy cannot load
there: so numpy is imported under the main guard, not at the top.
"""
import memchannel as mc


def describe(view):  # runs in a subinterpreter: memoryview and the stdlib only
    flat = view.cast("B").cast(view.format)  # 1-D, to iterate
    return type(view).__name__, view.format, view.shape, sum(flat)


def total(buf):  # gets the memchannel.Buffer itself
    with memoryview(buf) as view:
        return type(buf).__name__, view.format, view.shape, sum(view)


if __name__ == "__main__":
    import numpy as np

    with mc.InterpreterPoolExecutor(max_workers=2) as pool:
        arr = np.arange(12, dtype=np.float64).reshape(3, 4)
        print("a numpy argument arrives as:", pool.submit(describe, arr).result())

        # Written once, where the worker will read it; submit() moves it (no copy).
        buf = pool.reserve(shape=(1_000_000,), format="d")
        data = np.asarray(buf)
        data[:] = 0.5
        del data  # no view may remain when the Buffer is handed over
        copied_before = pool.stats()["bytes_copied"]
        print("a reserved Buffer arrives as:", pool.submit(total, buf).result())
        copied = pool.stats()["bytes_copied"] - copied_before
        print("bytes copied for the 8 MB buffer:", "under 4 KiB (task message only)"
              if copied < 4096 else copied)
        print("the Buffer moved to the worker:", buf.released)

# expect: a numpy argument arrives as: ('memoryview', 'd', (3, 4), 66.0)
# expect: a reserved Buffer arrives as: ('Buffer', 'd', (1000000,), 500000.0)
# expect: bytes copied for the 8 MB buffer: under 4 KiB (task message only)
# expect: the Buffer moved to the worker: True
