"""Waiting scenarios (docs/guide-waiting.md), run beside S1-S6 by the same CLI:

  A1  asyncio round trip of a 64 B message between two processes, both sides in an asyncio
      loop: memchannel (recv_async/send_async) vs pyzmq's zmq.asyncio PUSH/PULL over ipc://
      vs multiprocessing.Queue + loop.run_in_executor (the usual workaround). p50/p99 in us.
  W1  64 B messages/s into one receiver from a sender process: memchannel.select over 8
      channels (the sender round-robins over them) vs a plain recv() on one channel.

    python -m bench.harness --only A1,W1 --out DIR

Each measurement runs in a fresh interpreter (``python -m bench.harness.waiting JOB``) with
its peer process forked from it; one warm-up repetition, then ``reps``.
"""

import asyncio
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time

PAYLOAD = b"\x5a" * 64
SEL_CHANNELS = 8
COUNTS = {"full": (3000, 400_000), "quick": (1000, 100_000), "smoke": (50, 2000)}  # (A1 trips, W1 msgs)


class _Scenario:
    def __init__(self, key, title, unit, transports):
        self.key, self.title, self.unit, self.transports = key, title, unit, transports

    def params(self, mode):
        return [64]

    def count(self, param, mode):
        return COUNTS[mode][0 if self.key == "A1" else 1]


SCENARIOS = {
    "A1": _Scenario("A1", "asyncio round trip between two processes, 64 B", "us",
                    ["memchannel-asyncio", "pyzmq-asyncio-ipc", "mp.Queue+run_in_executor"]),
    "W1": _Scenario("W1", "64 B msgs/s into one receiver: select over 8 channels vs recv on one",
                    "msg/s", ["memchannel-select8", "memchannel-recv1"]),
}


# ------------------------------------------------------------------ A1: asyncio round trips

def _percentiles(samples):
    s = sorted(samples)
    return {"p50_us": s[len(s) // 2] / 1e3, "p99_us": s[min(len(s) - 1, int(len(s) * 0.99))] / 1e3}


async def _trips(send, recv, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await send(PAYLOAD)
        await recv()
        out.append(time.perf_counter_ns() - t0)
    return out


def _mc_echo(inbox, outbox, total):
    async def main():
        for _ in range(total):
            buf = await inbox.recv_async()
            await outbox.send_async(buf)  # the same arena: moved, no copy
    asyncio.run(main())


def _zmq_echo(a, b, total):
    import zmq
    import zmq.asyncio

    async def main():
        ctx = zmq.asyncio.Context()
        pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
        pull.connect(a)
        push.connect(b)
        for _ in range(total):
            await push.send(await pull.recv())
        pull.close(linger=1000)
        push.close(linger=1000)
        ctx.term()
    asyncio.run(main())


def _exec_echo(qin, qout, total):
    async def main():
        loop = asyncio.get_running_loop()
        for _ in range(total):
            msg = await loop.run_in_executor(None, qin.get)
            qout.put(msg)
    asyncio.run(main())


def _a1(transport, n, reps):
    ctx = mp.get_context("fork")
    total = n * (reps + 1)
    results = []
    if transport == "memchannel-asyncio":
        import memchannel as mc
        arena = mc.Arena()
        inbox, outbox = arena.channel(16), arena.channel(16)
        p = ctx.Process(target=_mc_echo, args=(inbox, outbox, total))
        p.start()

        async def main():
            for _ in range(reps + 1):
                results.append(await _trips(inbox.send_async, outbox.recv_async, n))
        asyncio.run(main())
    elif transport == "pyzmq-asyncio-ipc":
        import zmq
        import zmq.asyncio
        d = tempfile.mkdtemp(prefix="mc-bench-zmq-")
        a, b = f"ipc://{d}/a", f"ipc://{d}/b"
        p = ctx.Process(target=_zmq_echo, args=(a, b, total))

        async def main():
            zctx = zmq.asyncio.Context()
            push, pull = zctx.socket(zmq.PUSH), zctx.socket(zmq.PULL)
            push.bind(a)
            pull.bind(b)
            p.start()
            for _ in range(reps + 1):
                results.append(await _trips(push.send, pull.recv, n))
            push.close(linger=1000)
            pull.close(linger=1000)
            zctx.term()
        asyncio.run(main())
    else:
        qin, qout = ctx.Queue(), ctx.Queue()
        p = ctx.Process(target=_exec_echo, args=(qin, qout, total))
        p.start()

        async def main():
            loop = asyncio.get_running_loop()

            async def send(m):
                qin.put(m)

            async def recv():
                return await loop.run_in_executor(None, qout.get)
            for _ in range(reps + 1):
                results.append(await _trips(send, recv, n))
        asyncio.run(main())
    p.join(60)
    return [_percentiles(r) | {"value": _percentiles(r)["p50_us"]} for r in results[1:]]


# ------------------------------------------------------------------ W1: select vs recv

def _w1_sender(chans, n):
    for i in range(n):
        chans[i % len(chans)].send(PAYLOAD)


def _w1(transport, n, reps):
    import memchannel as mc
    ctx = mp.get_context("fork")
    out = []
    for rep in range(reps + 1):
        k = SEL_CHANNELS if transport == "memchannel-select8" else 1
        arena = mc.Arena()
        chans = [arena.channel(1024) for _ in range(k)]
        p = ctx.Process(target=_w1_sender, args=(chans, n))
        p.start()
        if k == 1:
            ch = chans[0]
            ch.recv(timeout=30).release()
            t0 = time.perf_counter_ns()
            for _ in range(n - 1):
                ch.recv().release()
        else:
            mc.select(chans, timeout=30)[1].release()
            t0 = time.perf_counter_ns()
            for _ in range(n - 1):
                mc.select(chans)[1].release()
        dt = time.perf_counter_ns() - t0
        p.join(60)
        if rep:
            out.append({"value": (n - 1) / (dt / 1e9), "us_per_msg": dt / 1e3 / (n - 1)})
    return out


def measure(job):
    key, transport, mode, reps = job["scenario"], job["transport"], job["mode"], job["reps"]
    n = SCENARIOS[key].count(64, mode)
    try:
        if transport.startswith("pyzmq"):
            import zmq  # noqa: F401
    except ImportError as e:
        return {"status": "skipped", "reason": f"pyzmq not installed ({e})"}
    reps_out = _a1(transport, n, reps) if key == "A1" else _w1(transport, n, reps)
    return {"status": "ok", "reps": reps_out}


def _summarize(reps):
    out = {}
    for field in ("value", "p50_us", "p99_us", "us_per_msg"):
        vals = [r[field] for r in reps if field in r]
        if vals:
            out[field] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    return out


def run(keys, mode, reps, timeout):
    """The results of the waiting scenarios `keys`, in the harness's result format."""
    results = []
    for key in keys:
        for transport in SCENARIOS[key].transports:
            job = {"scenario": key, "transport": transport, "mode": mode, "reps": reps}
            cmd = [sys.executable, "-m", "bench.harness.waiting", json.dumps(job)]
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            try:
                proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                result = json.loads(lines[-1]) if lines else {
                    "status": "error", "reason": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
            except subprocess.TimeoutExpired:
                result = {"status": "timeout", "reason": f"no result within {timeout} s"}
            if result["status"] == "ok":
                result["summary"] = _summarize(result["reps"])
            result.update(transport=transport, scenario=key, param=64, param_label="64 B")
            results.append(result)
            s = result.get("summary", {})
            shown = (f"p50 {s['p50_us']['median']:.1f} us, p99 {s['p99_us']['median']:.1f} us" if "p50_us" in s
                     else f"{s['value']['median']:.4g} msg/s" if "value" in s else result.get("reason", ""))
            print(f"{key} {transport:<28} {result['status']}: {shown}", file=sys.stderr, flush=True)
    return results


def markdown(results):
    """A section for the waiting scenarios (the main tables cover S1-S6 and M1)."""
    lines = []
    for key, scen in SCENARIOS.items():
        rows = [r for r in results if r["scenario"] == key]
        if not rows:
            continue
        lines += [f"## {key}: {scen.title}", "", "| transport | result |", "|---|---|"]
        for r in rows:
            s = r.get("summary", {})
            if "p50_us" in s:
                cell = f"p50 {s['p50_us']['median']:.1f} us / p99 {s['p99_us']['median']:.1f} us"
            elif "value" in s:
                cell = f"{s['value']['median']:.4g} msg/s"
            else:
                cell = f"{r['status']}: {r.get('reason', '')}"
            lines.append(f"| {r['transport']} | {cell} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
