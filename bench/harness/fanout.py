"""F1: one frame to 4 reader processes (fan-out), frames/s, run beside S1-S7 by the same CLI:

  memchannel-share     ``memchannel.share(buf, chans)``: one read-only share of a freshly
                       reserved block on each of 4 bounded channels (maxsize 4); no copy
  iceoryx2-pubsub4     iceoryx2 publish-subscribe with 4 subscribers (``loan_slice_uninit``,
                       RetryUntilDelivered, subscriber buffer 4; subscribers busy-poll)
  pyzmq-pubsub-ipc     ZeroMQ PUB/SUB over ipc:// with 4 SUB sockets: the frame is filled
                       once and the same bytes sent each time with ``copy=False`` (an XPUB
                       socket with XPUB_NODROP and HWM 4 for backpressure instead of drops)
  mp.Queue-x4          the frame's bytes put into 4 ``multiprocessing.Queue(maxsize=4)``

    python -m bench.harness --only F1 --out DIR

The parameter is the frame size: 8 MiB for the comparison; memchannel also runs 64 B and
16 MiB (cost per share against frame size). The producer writes one byte of each frame (a
sequence number for the transports that hand out a fresh frame per message, memchannel and
iceoryx2); each reader counts frames, checks that byte and its frame's size, and releases the
frame. Frames/s is taken at the producer: from just before its first measured frame (after
``warm-up`` frames) to the latest moment a reader received the last one (CLOCK_MONOTONIC is
the same clock in every process). CPU per share is the process CPU time of the producer and
the 4 readers over that window, divided by frames x 4.

Each measurement runs in a fresh interpreter (``python -m bench.harness.fanout JOB``) in its
own session, its reader processes forked from it, fresh for each repetition; not pinned.
"""

import json
import multiprocessing as mp
import os
import resource
import signal
import subprocess
import sys
import time

from . import env, transports

READERS = 4
DEPTH = 4
FRAME = 8 << 20
SIZES = [64, FRAME, 16 << 20]
FILL = 0x5A
READER_TIMEOUT = 60         # a reader that gets no frame for this long gives up
# (warm-up frames, measured frames) per repetition
COUNTS = {
    "full": {"fast": (200, 3000), "zmq": (20, 300), "mpq": (4, 40)},
    "quick": {"fast": (100, 1000), "zmq": (10, 100), "mpq": (2, 20)},
    "smoke": {"fast": (2, 10), "zmq": (2, 6), "mpq": (1, 3)},
}
TRANSPORT_COUNTS = {"memchannel-share": "fast", "iceoryx2-pubsub4": "fast",
                    "pyzmq-pubsub-ipc": "zmq", "mp.Queue-x4": "mpq"}


class _Scenario:
    key, unit = "F1", "frames/s"
    title = "one frame to 4 reader processes (fan-out), frames/s"
    transports = list(TRANSPORT_COUNTS)

    def params(self, mode):
        return SIZES

    def transports_for(self, param):
        return self.transports if param == FRAME else ["memchannel-share"]

    def count(self, transport, mode):
        return COUNTS[mode][TRANSPORT_COUNTS[transport]]


SCENARIOS = {"F1": _Scenario()}


def _label(nbytes):
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes} B"   # as param_label


# ------------------------------------------------------------------ readers

class _Reader:
    """Counts frames, checks one byte (and the size) of each, and records its CPU time after
    the last warm-up frame, and the clock and its CPU time after the last frame."""

    def __init__(self, warmup, total, nbytes, sequenced):
        self.warmup, self.total, self.nbytes, self.sequenced = warmup, total, nbytes, sequenced
        self.bad = 0
        self.cpu_w = None

    def check(self, i, nbytes, first):
        want = (i & 0xFF) if self.sequenced else FILL
        if nbytes != self.nbytes or first != want:
            self.bad += 1
        if i == self.warmup - 1:
            self.cpu_w = time.process_time_ns()

    def result(self):
        t_end, cpu_end = time.monotonic_ns(), time.process_time_ns()
        return {"t_end": t_end, "cpu": cpu_end - self.cpu_w, "bad": self.bad,
                "frames": self.total}


def _run_reader(body, out, ready, *args):
    try:
        res = body(ready, *args)
    except BaseException as exc:  # noqa: BLE001 - reported to the producer
        res = {"error": f"{type(exc).__name__}: {exc}"}
        ready.put(None)       # do not leave the producer waiting for this reader
    out.put(res)


def _mc_reader(ready, ch, warmup, total, nbytes):
    r = _Reader(warmup, total, nbytes, True)
    ready.put(1)
    for i in range(total):
        with ch.recv(timeout=READER_TIMEOUT) as b:
            with memoryview(b) as mv:
                r.check(i, mv.nbytes, mv[0])
    return r.result()


def _iox_reader(ready, name, link, warmup, total, nbytes):
    ep = transports.Iceoryx2.open(name, "recv", 0, link)
    r = _Reader(warmup, total, nbytes, True)
    ready.put(1)
    for i in range(total):
        sample = ep.recv()
        with ep.view(sample) as mv:
            r.check(i, mv.nbytes, mv[0])
        ep.release(sample)
    res = r.result()
    ep.close()
    return res


def _zmq_reader(ready, addr, warmup, total, nbytes):
    import zmq
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, DEPTH)
    sock.setsockopt(zmq.RCVTIMEO, READER_TIMEOUT * 1000)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(addr)
    r = _Reader(warmup, total, nbytes, False)
    ready.put(1)
    for i in range(total):
        frame = sock.recv(copy=False)
        with frame.buffer as mv:
            r.check(i, mv.nbytes, mv[0])
        del frame
    res = r.result()
    sock.close(linger=0)
    ctx.term()
    return res


def _mpq_reader(ready, q, warmup, total, nbytes):
    r = _Reader(warmup, total, nbytes, False)
    ready.put(1)
    for i in range(total):
        frame = q.get(timeout=READER_TIMEOUT)
        r.check(i, len(frame), frame[0])
    return r.result()


# ------------------------------------------------------------------ producers

def _mc_producer(nbytes):
    import memchannel as mc
    arena = mc.Arena()
    chans = [arena.channel(maxsize=DEPTH) for _ in range(READERS)]

    def start():
        return [(_mc_reader, (ch,)) for ch in chans]

    def send(i):
        buf = arena.reserve(nbytes)
        with memoryview(buf) as mv:
            mv[0] = i & 0xFF
        mc.share(buf, chans, timeout=READER_TIMEOUT)

    def verify():
        # every reader released every share: each frame's block went back to the arena
        stats = arena.stats()
        if stats["blocks_in_use"]:
            raise RuntimeError(f"{stats['blocks_in_use']} block(s) still in use after the "
                               "readers released every frame")
        return {"arena_mapped_bytes": stats["mapped_bytes"]}

    def close():
        for ch in chans:
            ch.close()
    return start, None, send, close, verify


def _iox_producer(nbytes):
    t = transports.Iceoryx2()
    t.check()
    link = {"depth": DEPTH, "senders": 1, "receivers": READERS, "max_payload": nbytes}
    name = t.create_link(link)
    ep = t.open(name, "send", 0, link)

    def fill_fn(i):
        def fill(mv):
            mv[0] = i & 0xFF
        return fill

    def start():
        return [(_iox_reader, (name, link)) for _ in range(READERS)]

    def sync():
        ep.sync()               # the publisher connects to the 4 subscribers

    def send(i):
        ep.send_zc(nbytes, fill_fn(i))

    return start, sync, send, ep.close, None


def _zmq_producer(nbytes):
    import zmq
    t = transports.Zmq()
    t.check()
    addr = t.create_link({})
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, DEPTH)
    sock.setsockopt(zmq.XPUB_VERBOSE, 1)    # one subscription message per subscriber
    sock.setsockopt(zmq.XPUB_NODROP, 1)     # full subscriber: EAGAIN, not a dropped frame
    sock.bind(addr)
    frame = bytes([FILL]) * nbytes         # filled once, the same bytes every time

    def start():
        return [(_zmq_reader, (addr,)) for _ in range(READERS)]

    def sync():
        # Frames published before a SUB's subscription arrived would be dropped: wait for
        # all 4 subscriptions (XPUB hands them up as messages).
        sock.setsockopt(zmq.RCVTIMEO, 30_000)
        for _ in range(READERS):
            if sock.recv()[:1] != b"\x01":
                raise RuntimeError("unexpected XPUB message before the subscriptions")

    def send(_i):
        # An XPUB is always POLLOUT-ready (libzmq), even at the HWM: yield, then nap 100 us.
        retries = 0
        while True:
            try:
                sock.send(frame, flags=zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:
                retries += 1
                if retries < transports.SPIN_POLLS // 20:
                    os.sched_yield()
                else:
                    time.sleep(1e-4)

    def close():
        sock.close(linger=0)
        ctx.term()
        t.destroy_link(addr)
    return start, sync, send, close, None


def _mpq_producer(nbytes):
    ctx = mp.get_context("fork")
    queues = [ctx.Queue(maxsize=DEPTH) for _ in range(READERS)]
    frame = bytes([FILL]) * nbytes

    def start():
        return [(_mpq_reader, (q,)) for q in queues]

    def send(_i):
        for q in queues:
            q.put(frame)

    def close():
        for q in queues:
            q.close()
            q.join_thread()
    return start, None, send, close, None


PRODUCERS = {"memchannel-share": _mc_producer, "iceoryx2-pubsub4": _iox_producer,
             "pyzmq-pubsub-ipc": _zmq_producer, "mp.Queue-x4": _mpq_producer}


def _one_rep(transport, nbytes, warmup, n):
    ctx = mp.get_context("fork")
    start, sync, send, close, verify = PRODUCERS[transport](nbytes)
    total = warmup + n
    out, ready = ctx.SimpleQueue(), ctx.SimpleQueue()
    procs = [ctx.Process(target=_run_reader, daemon=True,
                         args=(body, out, ready) + args + (warmup, total, nbytes))
             for body, args in start()]
    for p in procs:
        p.start()
    try:
        if any(ready.get() is None for _ in procs):
            results = [out.get() for _ in procs]
            errs = [r["error"] for r in results if "error" in r]
            raise RuntimeError(f"a reader failed to start: {errs[:1]}")
        if sync:
            sync()
        for i in range(warmup):
            send(i)
        t0, cpu0 = time.monotonic_ns(), time.process_time_ns()
        for i in range(warmup, total):
            send(i)
        cpu_producer = time.process_time_ns() - cpu0
        results = [out.get() for _ in procs]
        extra = verify() if verify and not any("error" in r for r in results) else {}
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
        close()
    errs = [r["error"] for r in results if "error" in r]
    if errs:
        raise RuntimeError(f"reader: {errs[0]}")
    bad = sum(r["bad"] for r in results)
    if bad:
        raise RuntimeError(f"{bad} frame(s) with the wrong size or byte")
    secs = (max(r["t_end"] for r in results) - t0) / 1e9
    cpu_ns = cpu_producer + sum(r["cpu"] for r in results)
    fps = n / secs
    return {"value": fps, "bytes_per_s": fps * nbytes, "us_per_msg": secs * 1e6 / n,
            "us_per_share": secs * 1e6 / (n * READERS),
            "cpu_us_per_msg": cpu_ns / 1e3 / n,
            "cpu_us_per_share": cpu_ns / 1e3 / (n * READERS), "frames": n, **extra}


def measure(job):
    transport, nbytes, mode, reps = job["transport"], job["param"], job["mode"], job["reps"]
    warmup, n = SCENARIOS["F1"].count(transport, mode)     # warmup >= 1: readers time from it
    try:
        if transport == "iceoryx2-pubsub4":
            transports.Iceoryx2().check()
        elif transport == "pyzmq-pubsub-ipc":
            transports.Zmq().check()
    except transports.Skip as exc:
        return {"status": "skipped", "reason": str(exc), "scope": "transport"}
    reps_out = [_one_rep(transport, nbytes, warmup, n) for _ in range(reps)]
    return {"status": "ok", "reps": reps_out, "count": n, "warmup_frames": warmup}


SUMMARY_FIELDS = ("value", "bytes_per_s", "us_per_msg", "us_per_share", "cpu_us_per_msg",
                  "cpu_us_per_share")


def _summarize(reps):
    from .cli import summarize  # cli imports this module
    return summarize(reps, SUMMARY_FIELDS)


def _run_job(job, timeout):
    """One measurement in a fresh interpreter and session (a timeout kills its readers too),
    with the CPU other processes used meanwhile (``busy`` as in cli.run_job)."""
    from .cli import BUSY_FOREIGN_CORES
    cmd = [sys.executable, "-m", "bench.harness.fanout", json.dumps(job)]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    load = env.loadavg()
    busy0, own0 = env.CpuMeter.busy_ns(), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        result = {"status": "timeout", "reason": f"no result within {timeout} s (killed)"}
    else:
        lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
        if lines:
            result = json.loads(lines[-1])
        else:
            tail = (stderr.strip().splitlines() or ["no output"])[-1][:300]
            result = {"status": "error", "reason": f"worker exited {proc.returncode}: {tail}"}
    elapsed = time.monotonic() - t0
    own1, busy1 = resource.getrusage(resource.RUSAGE_CHILDREN), env.CpuMeter.busy_ns()
    own_ns = ((own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)) * 1e9
    if busy0 is not None and busy1 is not None:
        foreign = max(0.0, (busy1 - busy0 - own_ns) / (elapsed * 1e9))
        result["foreign_cpu_cores"] = round(foreign, 3)
        result["busy"] = foreign > BUSY_FOREIGN_CORES
    result["elapsed_s"] = round(elapsed, 2)
    result["loadavg_before"] = load
    return result


def run(keys, mode, reps, timeout):
    """The results of F1 (if in `keys`), in the harness's result format."""
    results = []
    if "F1" not in keys:
        return results
    scen = SCENARIOS["F1"]
    skips = {}
    for nbytes in scen.params(mode):
        for transport in scen.transports_for(nbytes):
            job = {"scenario": "F1", "transport": transport, "param": nbytes, "mode": mode,
                   "reps": reps}
            result = dict(skips[transport]) if transport in skips else _run_job(job, timeout)
            if result["status"] == "skipped" and result.get("scope") == "transport":
                skips[transport] = result
            if result["status"] == "ok":
                result["summary"] = _summarize(result["reps"])
            elif not result.get("reason"):
                result["reason"] = "no reason given"
            result.update(transport=transport, scenario="F1", param=nbytes,
                          param_label=_label(nbytes))
            results.append(result)
            s = result.get("summary", {})
            shown = (f"{s['value']['median']:,.1f} frames/s [{s['value']['min']:,.1f}-"
                     f"{s['value']['max']:,.1f}]  {s['us_per_share']['median']:.2f} us/share  "
                     f"cpu {s['cpu_us_per_share']['median']:.2f} us/share"
                     if s else result["reason"]) + ("  (BUSY)" if result.get("busy") else "")
            print(f"F1 {_label(nbytes):>7}  {transport:<20} {result['status']}: {shown}",
                  file=sys.stderr, flush=True)
    return results


def markdown(results):
    """A section for F1 (the main tables cover S1-S7 and M1)."""
    rows = [r for r in results if r["scenario"] == "F1"]
    if not rows:
        return ""
    lines = [f"## F1: {SCENARIOS['F1'].title}", "",
             "| transport | frame | frames/s (min-max) | time per share | CPU per share "
             "(5 processes) | frames |", "|---|---|---|---|---|---|"]
    for r in rows:
        s = r.get("summary", {})
        if s:
            v = s["value"]
            busy = "*" if r.get("busy") else ""
            lines.append(f"| {r['transport']} | {r['param_label']} | {v['median']:,.1f}{busy} "
                         f"({v['min']:,.1f}-{v['max']:,.1f}) | "
                         f"{s['us_per_share']['median']:.2f} us | "
                         f"{s['cpu_us_per_share']['median']:.2f} us | {r['count']:,} |")
        else:
            lines.append(f"| {r['transport']} | {r['param_label']} | {r['status']}: "
                         f"{r.get('reason', '')} | | | |")
    lines += ["", "Medians over repetitions; 4 reader processes, bounded at 4 frames each; "
              "readers check one byte per frame; not pinned. * busy: other processes used more "
              "than 0.25 CPU during the measurement.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
