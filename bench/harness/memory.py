"""Scenario M1: what holding 1,000,000 queued 64-byte messages costs.

One repetition runs in a process forked from the measurement worker (a fresh process per
repetition, so memory freed by an earlier repetition cannot hide the next one's cost):

1. read the process's memory (``/proc/self/status``: VmRSS, RssAnon, RssShmem),
2. create the transport's queue (its *holder*, ``Transport.memory_holder()``), and for
   memchannel read ``Channel.stats()`` (arena counters),
3. queue N distinct 64-byte messages with nobody receiving,
4. read the process's memory and the arena counters again (the measurement),
5. check the queue holds N messages and the first ones come out intact and in order;
   memchannel is drained completely and its arena must be back to where it started.

What is measured, per transport (``primary`` in the results):

* memchannel: arena bytes handed out for the messages, ``stats()["carved_bytes"]`` after
  minus before (data blocks and queue nodes; the arena is fresh, so nothing is reused).
  Also reported: ``bytes_in_use`` growth (data blocks only), the arena's mapped segments,
  and the process's RSS growth (which includes whole segments as they are mapped).
* Python queues (queue.Queue, multiprocessing.Queue, interpreter queues): growth of the
  process's resident memory (VmRSS) while the messages are queued; the messages are the
  only thing allocated in between.
* faster-fifo: bytes its circular buffer holds (``Queue.data_size()``) -- the smallest
  ``max_size_bytes`` that fits them; RSS growth is also reported.

Not measured: memory outside the process (kernel pipe buffers: at most 64 KiB).
"""

import gc
import json
import os
import time
import traceback

from . import scenarios

STATUS_FIELDS = {"VmRSS": "rss", "RssAnon": "rss_anon", "RssShmem": "rss_shmem"}
VERIFY_FIRST = 1000     # messages checked by content on every transport


def message(i):
    """The i-th message: 64 distinct bytes, a new bytes object each time (as a producer makes)."""
    return i.to_bytes(8, "little") * (scenarios.M1_PAYLOAD // 8)


def process_memory():
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in STATUS_FIELDS:
                    out[STATUS_FIELDS[key]] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def measure(transport, count):
    """One repetition, in the calling (freshly forked) process; returns a result dict."""
    gc.collect()
    mem0 = process_memory()
    holder = transport.memory_holder()
    try:
        put = holder.put
        t0 = time.perf_counter_ns()
        for i in range(count):
            put(message(i))
        fill_ns = time.perf_counter_ns() - t0
        mem1 = process_memory()
        extra = holder.measure()
        queued = holder.queued()
        if queued is not None and queued != count:
            raise AssertionError(f"{queued} messages queued, {count} sent")
        holder.verify(count, message, VERIFY_FIRST)
    finally:
        holder.close()
    out = {"messages": count, "fill_s": fill_ns / 1e9, "measured_as": holder.what}
    for key in STATUS_FIELDS.values():
        if key in mem0 and key in mem1:
            out[f"{key}_delta_bytes"] = mem1[key] - mem0[key]
    primary = extra.pop("primary_bytes", None)
    if primary is None:
        if "rss_delta_bytes" not in out:
            raise RuntimeError("no /proc/self/status VmRSS to measure this transport with")
        primary = out["rss_delta_bytes"]
    out.update(extra)
    out["primary_bytes"] = primary
    out["value"] = primary / count          # bytes per message == MB per 1,000,000 messages
    return out


def _child(transport_name, count, core, fd):
    from .transports import BY_NAME
    try:
        if core is not None:
            os.sched_setaffinity(0, {core})
        result = measure(BY_NAME[transport_name](), count)
        line = "J" + json.dumps(result)
    except BaseException:  # noqa: BLE001 - report everything to the worker
        line = "E" + json.dumps(traceback.format_exc())
    data = (line + "\n").encode()
    while data:
        data = data[os.write(fd, data):]
    os.close(fd)


def run_repetition(transport_name, count, core, deadline):
    """Fork one measuring process; returns its result dict or raises RuntimeError/TimeoutError."""
    import multiprocessing
    import select
    r, w = os.pipe()
    proc = multiprocessing.get_context("fork").Process(
        target=_child, args=(transport_name, count, core, w), daemon=True)
    proc.start()
    os.close(w)
    buf = b""
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no memory measurement after {count} messages in time")
            ready, _, _ = select.select([r], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(r, 1 << 16)
                if not chunk:
                    break
                buf += chunk
            elif not proc.is_alive() and not select.select([r], [], [], 0)[0]:
                break
    finally:
        os.close(r)
        proc.join(timeout=max(0.1, min(10.0, deadline - time.monotonic())))
        if proc.is_alive():
            proc.kill()
    line = buf.decode().strip()
    if line.startswith("J"):
        return json.loads(line[1:])
    if line.startswith("E"):
        tb = [ln for ln in json.loads(line[1:]).strip().splitlines() if ln.strip()]
        raise RuntimeError(tb[-1] if tb else "measuring process failed")
    raise RuntimeError(f"measuring process ended without a result (exit code {proc.exitcode})")
