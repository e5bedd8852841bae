"""Built-in workloads of ``python -m memchannel compare`` (and ``memchannel.compare``).

Every task function here runs unchanged in a thread, in an isolated subinterpreter (where
numpy cannot be imported: arrays arrive there as ``memoryview`` or ``memchannel.Buffer``)
and in a process, and returns the same result in each.  This module imports nothing that
cannot load in a subinterpreter.

``cpu``       pure-Python CPU work: count the primes in a range by trial division
              (about 0.1 s per task on the 2-core machine of docs/guide-parallelism.md).
``arrays``    one 16 MiB float64 array per task; the task sums it and checksums its bytes
              (about 45 ms of work per task).  memchannel pools get the arrays as Buffers
              produced in the pool's memory and moved to the worker (no copy);
              ``copy_inputs=True`` gives them numpy arrays instead (one copy into channel
              memory, none on the receiving side).  The stdlib process pool pickles them.
``pipeline``  listener thread -> pool workers -> sender thread, with memchannel channels
              between the stages: the listener reads 16 KiB messages from an input
              channel and submits each to the pool, the sender writes each reply (in
              order) to an output channel.
``FILE:FUNC`` ``FUNC`` from the Python file ``FILE`` (imported as a module, so workers can
              import it too) applied to each input; inputs are ``make_inputs(tasks)`` if
              the file defines it, else ``range(tasks)``.
"""

from __future__ import annotations

import os
import struct
import sys
import time
import zlib

# -- tasks (run in workers) -------------------------------------------------------------


def noop():
    """The no-op task that per-task overhead and start-up are measured with."""
    return None


def pause(seconds, preload=None):
    """Keeps a worker busy for a moment, so that a pool starts all its workers.
    ``preload`` is not used: passing a function makes the worker import its module
    (arguments are unpickled before the call), so that happens before timing starts."""
    time.sleep(seconds)
    return None


def count_primes(bounds):
    """Number of primes in ``range(start, stop)``, by trial division (pure Python)."""
    start, stop = bounds
    count = 0
    for n in range(max(start, 2), stop):
        if n < 4:
            count += 1
            continue
        if n % 2 == 0:
            continue
        d = 3
        while d * d <= n:
            if n % d == 0:
                break
            d += 2
        else:
            count += 1
    return count


def chunk_stats(chunk):
    """(element count, sum, CRC-32 of the bytes) of a float64 array, memoryview or Buffer."""
    view = memoryview(chunk)
    if view.format != "d" or view.ndim != 1:
        view = view.cast("B").cast("d")
    return len(view), sum(view), zlib.crc32(view)


MESSAGE_BYTES = 16 * 1024
_MESSAGE_ROUNDS = 12


def handle_message(message):
    """One pipeline message: an 8-byte id, then payload; reply id + a 32-bit FNV-style hash
    of the payload (pure Python, about 1.5 ms)."""
    view = memoryview(message).cast("B")
    (msg_id,) = struct.unpack_from("<Q", view, 0)
    h = 2166136261
    for _ in range(_MESSAGE_ROUNDS):
        for b in view[8::16]:
            h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return struct.pack("<QI", msg_id, h)


# -- inputs (built in the caller) -------------------------------------------------------

def prime_ranges(tasks, width=24_000, start=1_000_000):
    return [(start + i * width, start + (i + 1) * width) for i in range(tasks)]


def _fill_values(target, index):
    """Write the deterministic float64 data of array ``index`` into ``target`` (a writable
    buffer of float64): value k is (k % 1000) * 0.25 + index."""
    view = memoryview(target).cast("B").cast("d")
    n = len(view)
    try:
        import numpy as np
    except ImportError:
        np = None
    if np is not None:
        arr = np.frombuffer(view, dtype=np.float64)
        arr[:] = (np.arange(n) % 1000) * 0.25 + index
        del arr
    else:
        import array
        pattern = array.array("d", ((k % 1000) * 0.25 + index for k in range(1000)))
        raw = memoryview(pattern).cast("B")
        flat = view.cast("B")
        step = len(raw)
        for offset in range(0, len(flat), step):
            end = min(offset + step, len(flat))
            flat[offset:end] = raw[:end - offset]
    view.release()


def make_arrays(tasks, nbytes, pool=None, copy_inputs=False):
    """``tasks`` float64 arrays of ``nbytes`` each.  For a memchannel pool (one with
    ``reserve``) and not ``copy_inputs``: Buffers written in the pool's memory, which
    ``submit`` moves to the workers without a copy.  Otherwise numpy arrays (or
    ``array.array`` without numpy)."""
    n = nbytes // 8
    reserve = None if copy_inputs else getattr(pool, "reserve", None)
    out = []
    for index in range(tasks):
        if reserve is not None:
            target = reserve(shape=(n,), format="d")
        else:
            try:
                import numpy as np
                target = np.empty(n, dtype=np.float64)
            except ImportError:
                import array
                target = array.array("d", bytes(nbytes))
        _fill_values(target, index)
        out.append(target)
    return out


def make_messages(count, nbytes=MESSAGE_BYTES):
    messages = []
    for msg_id in range(count):
        body = bytes((msg_id * 7 + k) % 251 for k in range(256)) * (nbytes // 256)
        messages.append(struct.pack("<Q", msg_id) + body[8:])
    return messages


def run_pipeline(pool, fn, messages):
    """listener -> ``pool`` -> sender, memchannel channels between the stages.

    The input channel is made in the pool's memory when the pool has one (memchannel
    pools), so the listener hands each received Buffer to ``submit`` with no copy; for a
    stdlib process pool the listener passes ``bytes`` (a Buffer does not pickle).  The
    caller's thread plays the network: it sends every message into the input channel and
    reads every reply from the output channel.  Returns the replies, in order.
    """
    import queue
    import threading
    from concurrent.futures import ProcessPoolExecutor as StdlibProcessPool

    from ._channel import Channel

    make_channel = getattr(pool, "channel", None)
    inbox = make_channel() if make_channel is not None else Channel(backend="heap")
    outbox = Channel(backend="heap")
    as_bytes = isinstance(pool, StdlibProcessPool)
    in_flight: queue.SimpleQueue = queue.SimpleQueue()
    failures = []

    def listener():
        try:
            for buf in inbox:  # until closed and drained
                if as_bytes:
                    data = buf.tobytes()
                    buf.release()
                    in_flight.put(pool.submit(fn, data))
                else:
                    in_flight.put(pool.submit(fn, buf))
                buf = None
        except BaseException as exc:
            failures.append(exc)
        finally:
            in_flight.put(None)

    def sender():
        try:
            while (future := in_flight.get()) is not None:
                outbox.send(future.result())
        except BaseException as exc:
            failures.append(exc)
            outbox.close()

    threads = [threading.Thread(target=listener, name="pipeline-listener"),
               threading.Thread(target=sender, name="pipeline-sender")]
    for thread in threads:
        thread.start()
    try:
        for message in messages:
            inbox.send(message)
        inbox.close()
        replies = []
        for _ in messages:
            with outbox.recv() as buf:
                replies.append(buf.tobytes())
    finally:
        inbox.close()
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]
    return replies


# -- workload registry ------------------------------------------------------------------

class Workload:
    """What ``compare`` runs: ``fn`` over the inputs ``make_inputs(pool)`` builds (called
    once per run, just before the timed part), through ``runner(pool, fn, inputs)``
    (None: ``list(pool.map(fn, inputs))``)."""

    def __init__(self, name, description, fn, make_inputs, runner=None, tasks=0,
                 bytes_per_task=0):
        self.name, self.description, self.fn = name, description, fn
        self.make_inputs, self.runner = make_inputs, runner
        self.tasks, self.bytes_per_task = tasks, bytes_per_task

    def __repr__(self):
        return f"Workload({self.name!r}, {self.description!r})"


ARRAY_BYTES = 16 * 1024 * 1024


def get_workload(spec, *, tasks=None, quick=False, copy_inputs=False):
    """The Workload named ``spec``: "cpu", "arrays", "pipeline" or "FILE:FUNC"."""
    if spec == "cpu":
        n = tasks or (4 if quick else 16)
        width = 1_000 if quick else 24_000
        ranges = prime_ranges(n, width)
        return Workload("cpu", f"count primes by trial division, {n} tasks of "
                        f"{width} numbers each (pure Python)", count_primes,
                        lambda pool: ranges, tasks=n)
    if spec == "arrays":
        n = tasks or (4 if quick else 16)
        nbytes = 256 * 1024 if quick else ARRAY_BYTES
        how = ("numpy arrays, copied into channel memory" if copy_inputs
               else "Buffers written in the pool's memory and moved")
        size = f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"
        return Workload("arrays", f"{n} float64 arrays of {size} each: sum + CRC-32 per "
                        f"array (memchannel pools get {how})", chunk_stats,
                        lambda pool: make_arrays(n, nbytes, pool, copy_inputs),
                        tasks=n, bytes_per_task=nbytes)
    if spec == "pipeline":
        n = tasks or (20 if quick else 400)
        messages = make_messages(n)
        return Workload("pipeline", f"listener -> workers -> sender over memchannel "
                        f"channels: {n} messages of {MESSAGE_BYTES // 1024} KiB, ~1.5 ms "
                        "of pure-Python work each", handle_message,
                        lambda pool: messages, runner=run_pipeline, tasks=n,
                        bytes_per_task=MESSAGE_BYTES)
    if ":" in spec:
        path, _, func_name = spec.rpartition(":")
        module = _import_file(path)
        try:
            fn = getattr(module, func_name)
        except AttributeError:
            raise ValueError(f"{path} defines no function {func_name!r}") from None
        n = tasks or (4 if quick else 16)
        maker = getattr(module, "make_inputs", None)
        inputs = list(maker(n)) if maker is not None else list(range(n))
        return Workload(f"{module.__name__}:{func_name}", f"{func_name} from {path}, "
                        f"{len(inputs)} tasks", fn, lambda pool: inputs, tasks=len(inputs))
    raise ValueError(f"unknown workload {spec!r}: use cpu, arrays, pipeline or FILE:FUNC")


def _import_file(path):
    """Import a Python file as a top-level module, with its directory on sys.path, so
    that worker interpreters and processes (which copy sys.path) import it by name."""
    path = os.path.abspath(path)
    if not os.path.isfile(path) or not path.endswith(".py"):
        raise ValueError(f"{path}: not a Python file")
    directory, name = os.path.split(path[:-3])
    import importlib

    if directory not in sys.path:
        sys.path.insert(0, directory)
    return importlib.import_module(name)
