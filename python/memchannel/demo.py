"""The memchannel demo (`make demo`, `python -m memchannel demo [--quick] [--frames N]`).

1. Four isolated subinterpreters (each with its own GIL) send numbered messages into one
   channel that the main interpreter drains: every message once, in order per sender.
2. A 1920x1080x3 frame pipeline (producer -> stage -> stage -> consumer), run three ways:
   memchannel between subinterpreters, memchannel between processes, and
   multiprocessing.Queue between processes doing the same job. Frames per second side by side,
   with the bytes memchannel copied (zero: frames are written in channel memory and handed on).
2b. Fan-out: one producer shares each frame (from a pool of 6) read-only with three consumers,
   two subinterpreters and one process: no copy, and the frames come back to the pool.
3. A short comparison of serial / threads / interpreters / processes on a CPU workload.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import struct
import sys
import threading
import time

import memchannel as mc
from memchannel import interpreters, pipeline


class Progress:
    """A one-line progress bar on stderr (redrawn at most 10 times a second)."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.start, self.last = label, total, time.perf_counter(), 0.0

    def __call__(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.last < 0.1 and done < self.total:
            return
        self.last = now
        width = 30
        filled = int(width * done / self.total)
        rate = done / max(now - self.start, 1e-9)
        sys.stderr.write(f"\r  {self.label:<34} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done}/{self.total} {rate:7.1f}/s")
        if done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, "
            f"Python {platform.python_version()}, memchannel {mc.__version__}")


# --- 1. M:N across subinterpreters -------------------------------------------------------

def _numbered_sender(ch, sender_id: int, count: int) -> int:
    for seq in range(count):
        ch.send(struct.pack("<II", sender_id, seq))
    return count


def many_to_one(per_sender: int) -> None:
    print(f"\n1. Four isolated subinterpreters -> one channel -> main interpreter "
          f"({per_sender:,} messages each)")
    ch = mc.Channel(maxsize=4096, backend="heap")
    workers = [interpreters.create() for _ in range(4)]
    start = time.perf_counter()
    threads = [w.call_in_thread(_numbered_sender, ch, i, per_sender) for i, w in enumerate(workers)]
    expected = [0] * 4
    progress = Progress("draining", 4 * per_sender)
    for n in range(4 * per_sender):
        with ch.recv() as buf:
            sender, seq = struct.unpack("<II", buf)
        if seq != expected[sender]:
            raise SystemExit(f"out of order: sender {sender} sent {seq}, expected {expected[sender]}")
        expected[sender] += 1
        if n % 1000 == 999 or n + 1 == 4 * per_sender:
            progress(n + 1)
    elapsed = time.perf_counter() - start
    for t in threads:
        t.join()
    for w in workers:
        w.close()
    print(f"   {4 * per_sender:,} messages, each exactly once and in order per sender: "
          f"{4 * per_sender / elapsed:,.0f} msgs/s; blocks in use afterwards: "
          f"{ch.stats()['blocks_in_use']}")


# --- 2. Frame pipeline --------------------------------------------------------------------

def frames_with_interpreters(frames: int) -> dict:
    arena = mc.Arena(backend="heap")
    a, b, c = arena.channel(maxsize=4), arena.channel(maxsize=4), arena.channel(maxsize=4)
    copied = arena.stats()["bytes_copied"]
    workers = [interpreters.create() for _ in range(3)]
    start = time.perf_counter()
    threads = [
        workers[0].call_in_thread(pipeline.produce, a, frames, pipeline.FRAME_SHAPE, False),
        workers[1].call_in_thread(pipeline.forward, a, b, frames),
        workers[2].call_in_thread(pipeline.forward, b, c, frames),
    ]
    seen = pipeline.consume(c, frames, Progress("memchannel, subinterpreters", frames))
    elapsed = time.perf_counter() - start
    for t in threads:
        t.join()
    stage1, stage2 = threads[1].result, threads[2].result
    for w in workers:
        w.close()
    same = stage1 == stage2 == seen
    return {"fps": frames / elapsed, "copied": arena.stats()["bytes_copied"] - copied, "same_address": same}


def frames_with_processes(frames: int) -> dict:
    ctx = mp.get_context("spawn")
    arena = mc.Arena(backend="shm")
    a, b, c = arena.channel(maxsize=4), arena.channel(maxsize=4), arena.channel(maxsize=4)
    copied = arena.stats()["bytes_copied"]
    procs = _start_stages(ctx, pipeline.produce, pipeline.forward, (a, b, c), frames)
    # Start-up (spawning three interpreters) is not part of the frame rate: wait for frame 0.
    first = c.recv()
    start = time.perf_counter()
    first.release()
    progress = Progress("memchannel, processes", frames)
    pipeline_rest = _consume_from(c, 1, frames, progress)
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join(30)
    return {"fps": (frames - 1) / elapsed, "copied": arena.stats()["bytes_copied"] - copied,
            "ok": pipeline_rest}


def _start_stages(ctx, produce, forward, links, frames: int) -> list:
    """A producer into links[0], then a forwarder per next link, each a daemon process."""
    a, b, c = links
    procs = [
        ctx.Process(target=produce, args=(a, frames), daemon=True),
        ctx.Process(target=forward, args=(a, b, frames), daemon=True),
        ctx.Process(target=forward, args=(b, c, frames), daemon=True),
    ]
    for p in procs:
        p.start()
    return procs


def _consume_from(ch, first: int, frames: int, progress) -> bool:
    for expected in range(first, frames):
        with ch.recv() as buf:
            (seq,) = struct.unpack_from("<Q", buf, 0)
            if seq != expected:
                raise SystemExit(f"frame {seq} arrived where {expected} was expected")
        progress(expected + 1)
    return True


def frames_with_mp_queue(frames: int) -> dict:
    ctx = mp.get_context("spawn")
    a, b, c = ctx.Queue(maxsize=4), ctx.Queue(maxsize=4), ctx.Queue(maxsize=4)
    procs = _start_stages(ctx, pipeline.queue_produce, pipeline.queue_forward, (a, b, c), frames)
    c.get()  # frame 0: excludes start-up, as above
    start = time.perf_counter()
    progress = Progress("multiprocessing.Queue, processes", frames)
    for expected in range(1, frames):
        c.get()
        progress(expected + 1)
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join(30)
    return {"fps": (frames - 1) / elapsed}


def frame_pipeline(frames: int) -> None:
    size = pipeline.frame_bytes() / 2**20
    print(f"\n2. Frame pipeline: producer -> stage -> stage -> consumer, {frames} frames of "
          f"1920x1080x3 uint8 ({size:.1f} MiB each)")
    results = {}
    results["memchannel, subinterpreters"] = frames_with_interpreters(frames)
    results["memchannel, processes (shm)"] = frames_with_processes(frames)
    try:
        import numpy  # noqa: F401
        results["multiprocessing.Queue, processes"] = frames_with_mp_queue(frames)
    except ImportError:
        print("   (numpy not installed: multiprocessing.Queue comparison skipped)")
    base = results.get("multiprocessing.Queue, processes", {}).get("fps")
    print(f"\n   {'transport':<36}{'frames/s':>10}{'vs mp.Queue':>13}{'bytes copied':>14}")
    for name, r in results.items():
        ratio = f"{r['fps'] / base:.1f}x" if base else "-"
        copied = f"{r['copied']:,}" if "copied" in r else "(pickled)"
        print(f"   {name:<36}{r['fps']:>10.1f}{ratio:>13}{copied:>14}")
    same = results["memchannel, subinterpreters"]["same_address"]
    print(f"   subinterpreter stages saw each frame at the producer's address: {same}")


# --- 2b. Fan-out: one producer, three consumers, pool-backed shared frames ---------------

def fan_out(frames: int) -> None:
    print(f"\n2b. Fan-out: one camera-like producer -> three consumers (two subinterpreters, one "
          f"process), {frames} frames from a pool of 6, each shared read-only (memchannel.share)")
    try:
        import numpy as np
    except ImportError:
        np = None
    arena = mc.Arena(backend="shm")
    chans = [arena.channel(maxsize=4) for _ in range(3)]
    pool = arena.pool(shape=pipeline.FRAME_SHAPE, format="B", count=6)
    in_use = chans[0].stats()["blocks_in_use"]
    copied = arena.stats()["bytes_copied"]
    workers = [interpreters.create() for _ in range(2)]
    threads = [w.call_in_thread(pipeline.consume, ch, frames) for w, ch in zip(workers, chans[:2])]
    proc = mp.get_context("spawn").Process(target=pipeline.consume, args=(chans[2], frames))
    proc.start()
    progress = Progress("producer (shared frames)", frames)
    start = time.perf_counter()
    most_in_use = in_use
    for seq in range(frames):
        buf = pool.reserve(timeout=60)   # comes back when all three consumers released it
        pipeline.fill_frame(buf, seq, np)
        mc.share(buf, chans)             # one read-only share per consumer, no copy
        most_in_use = max(most_in_use, chans[0].stats()["blocks_in_use"])
        progress(seq + 1)
    for t in threads:
        t.join()
    proc.join(60)
    elapsed = time.perf_counter() - start
    same = threads[0].result == threads[1].result
    for w in workers:
        w.close()
    deadline = time.monotonic() + 5
    while pool.idle != 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    print(f"   {frames / elapsed:.1f} frames/s to each of 3 consumers; bytes copied: "
          f"{arena.stats()['bytes_copied'] - copied:,}; frames back in the pool: {pool.idle}/6; "
          f"process consumer exit code {proc.exitcode}")
    print(f"   the two subinterpreter consumers saw each frame at the same address: {same}; most arena "
          f"data blocks in use beyond the pool's 6 frames: {most_in_use - in_use}")
    pool.close()


# --- 3. Parallelism comparison ------------------------------------------------------------

def comparison(quick: bool) -> None:
    try:
        from memchannel import compare
    except ImportError:
        print("\n3. (memchannel.compare is not available in this build)")
        return
    print("\n3. The same pure-Python CPU work, serial vs threads vs interpreters vs processes")
    compare.main(["--workload", "cpu", "--workers", "1,2", "--startup", "no"] + (["--quick"] if quick else []))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memchannel demo")
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    parser.add_argument("--frames", type=int, default=None, help="frames per pipeline run")
    args = parser.parse_args(argv or [])
    frames = args.frames or (30 if args.quick else 120)
    print("memchannel demo on", machine())
    many_to_one(20_000 if args.quick else 100_000)
    frame_pipeline(frames)
    fan_out(frames)
    comparison(args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
