"""Soak (docs/reliability.md item 14): random SIGKILLs and restarts of participants for a while, then
check that arena usage and /dev/shm entries return to baseline and that resident memory of
the surviving process grew less than 5 %.

    python -m bench.soak [--seconds 3600] [--participants 6] [--kill-every 1.0] [--json FILE]
    make soak SOAK_SECONDS=3600

One long-lived parent owns the arena and two channels (work, echo). Participants are spawned
processes, each picking a role: a sender (sequence-tagged messages of random sizes, some sent
by reserve + fill + send, some holding reserved blocks for a while), a receiver (holds a few
received blocks before releasing them), or a forwarder (receives on one channel and sends the
same Buffer on the other, no copy). Every `--kill-every` seconds (randomised +-50 %) one
participant is SIGKILLed, whatever it is doing, and a new one is started. The parent itself
also sends and receives all along, so it sees the others die mid-operation.

At the end every participant is killed, the parent drains both channels and reaps the dead
holders, and the figures are checked against the baseline taken before the first
participant started: blocks in use, bytes in use, /dev/shm entries of this run's prefix, and
the parent's RSS (after warm-up). Exit status 0 only if every check passes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import signal
import struct
import sys
import time

HEADER = struct.Struct("<IQ")  # participant id, sequence number


def _rss_bytes() -> int:
    """Private resident memory (RssAnon): what a leak grows. Touched pages of the shared
    arena count in plain RSS too but are bounded by the arena's capacity."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def _segments(prefix: str) -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))


# --------------------------------------------------------------------------- participants

def participant(role: str, pid_tag: int, work, echo, seed: int) -> None:
    import memchannel as mc

    rng = random.Random(seed)
    held = []
    seq = 0
    while True:
        try:
            if role == "sender":
                size = rng.choice((16, 64, 256, 4096, 65536))
                if rng.random() < 0.3:
                    buf = work.reserve(size + HEADER.size, timeout=1.0)
                    buf.write(HEADER.pack(pid_tag, seq))
                    if rng.random() < 0.1:
                        held.append(buf)        # keep it reserved for a while (reclaimed if killed)
                    else:
                        work.send(buf, timeout=1.0)
                else:
                    work.send(HEADER.pack(pid_tag, seq) + bytes(size), timeout=1.0)
                seq += 1
            elif role == "receiver":
                msg = work.recv(timeout=1.0)
                if rng.random() < 0.2:
                    held.append(msg)            # hold it for a while (reclaimed if killed)
                else:
                    msg.release()
            else:  # forwarder: work -> echo, the same block, no copy
                msg = work.recv(timeout=1.0)
                echo.send(msg, timeout=1.0)
            if len(held) > 8:
                for b in held:
                    b.release()
                held.clear()
        except (mc.Empty, mc.Full):
            continue
        except mc.ChannelClosed:
            return


# --------------------------------------------------------------------------- the run

def run(seconds: float, participants: int, kill_every: float, seed: int) -> dict:
    prefix = os.environ.setdefault("MEMCHANNEL_SHM_PREFIX", f"memchannel-soak{os.getpid()}-")
    import memchannel as mc

    rng = random.Random(seed)
    ctx = mp.get_context("spawn")
    shm_before = _segments(prefix)
    arena = mc.Arena(capacity=256 << 20)
    work, echo = arena.channel(maxsize=4096), arena.channel(maxsize=4096)
    baseline = arena.stats()
    roles = ("sender", "sender", "receiver", "forwarder")
    procs: dict[int, tuple[str, mp.Process]] = {}
    next_tag = 1

    def start_one():
        nonlocal next_tag
        role = roles[next_tag % len(roles)]
        p = ctx.Process(target=participant, args=(role, next_tag, work, echo, rng.randrange(1 << 30)),
                        daemon=True)
        p.start()
        procs[next_tag] = (role, p)
        next_tag += 1

    for _ in range(participants):
        start_one()

    kills = 0
    failures: list[dict] = []  # participants that ended on their own (an exception)
    parent_sent = parent_received = 0
    samples = []
    rss_warm = None
    t_start = time.monotonic()
    next_kill = t_start + kill_every * rng.uniform(0.5, 1.5)
    next_sample = t_start
    warmup_end = t_start + min(60.0, seconds * 0.1)
    while (now := time.monotonic()) < t_start + seconds:
        # The parent is a participant too: it sends and drains the echo channel.
        try:
            work.send(HEADER.pack(0, parent_sent) + bytes(64), timeout=0.05)
            parent_sent += 1
        except mc.Full:
            pass
        for _ in range(64):
            try:
                echo.recv(block=False).release()
                parent_received += 1
            except mc.Empty:
                break
        if now >= next_kill:
            # A participant that ended on its own raised (its traceback is in the log): that is
            # a failure of the run, not a kill. Replace it and count it.
            for tag in [t for t, (_, p) in procs.items() if p.exitcode is not None]:
                role, p = procs.pop(tag)
                failures.append({"t": round(now - t_start, 1), "role": role, "exitcode": p.exitcode})
                start_one()
            tag = rng.choice(list(procs))
            role, p = procs.pop(tag)
            try:
                os.kill(p.pid, signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                failures.append({"t": round(now - t_start, 1), "role": role, "exitcode": p.exitcode})
            p.join(10)
            start_one()
            next_kill = now + kill_every * rng.uniform(0.5, 1.5)
        if rss_warm is None and now >= warmup_end:
            rss_warm = _rss_bytes()
        if now >= next_sample:
            st = arena.stats()
            samples.append({"t": round(now - t_start, 1), "blocks_in_use": st["blocks_in_use"],
                            "bytes_in_use": st["bytes_in_use"], "reclaimed": st["reclaimed_blocks"],
                            "corruption": st["corruption_count"], "rss": _rss_bytes(),
                            "segments": len(_segments(prefix)), "kills": kills})
            print(f"[soak] t={samples[-1]['t']:7.1f}s kills={kills:5d} blocks_in_use={st['blocks_in_use']:6d} "
                  f"reclaimed={st['reclaimed_blocks']:7d} rss={samples[-1]['rss'] / 2**20:7.1f} MiB "
                  f"parent sent/recv={parent_sent}/{parent_received}", flush=True)
            next_sample = now + max(1.0, seconds / 60)

    # Tear down: kill everyone, drain, reap, compare with the baseline.
    for role, p in procs.values():
        if p.exitcode is not None:
            failures.append({"t": round(time.monotonic() - t_start, 1), "role": role, "exitcode": p.exitcode})
            continue
        os.kill(p.pid, signal.SIGKILL)
    for _, p in procs.values():
        p.join(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        arena.reap()
        drained = 0
        for ch in (work, echo):
            while True:
                try:
                    ch.recv(block=False).release()
                    drained += 1
                except mc.Empty:
                    break
        if drained == 0 and arena.stats()["blocks_in_use"] == baseline["blocks_in_use"]:
            break
        time.sleep(0.1)
    final = arena.stats()
    census = arena.census()
    # Messages lost: after every participant is dead and reaped and the parent has drained
    # both channels, a block still Queued is a message nobody can ever receive (what a
    # protocol window leaves behind), and a channel still counting queued messages is one
    # whose count a death corrupted. Messages a killed receiver had already taken are not
    # lost by the channel: they died with their receiver, as documented.
    left_queued = {"work": work.stats()["queued"], "echo": echo.stats()["queued"]}
    lost = (census["queued"] + census.get("sending", 0) + census.get("transferred", 0)
            + sum(left_queued.values()))
    rss_end = _rss_bytes()
    rss_warm = rss_warm or samples[0]["rss"]
    work.close()
    echo.close()
    mc._memchannel._detach_all()  # as at exit: the last process to detach removes the segments
    shm_after = _segments(prefix)
    if shm_after != shm_before:
        print(f"[soak] left in /dev/shm: {sorted(set(shm_after) - set(shm_before))}", flush=True)
    checks = {
        "blocks_in_use back to baseline": final["blocks_in_use"] == baseline["blocks_in_use"],
        "bytes_in_use back to baseline": final["bytes_in_use"] == baseline["bytes_in_use"],
        "no corruption counted": final["corruption_count"] == 0,
        "census: free lists consistent, nothing reserved/received": (
            census["free_lists_consistent"] and census["reserved"] == 0 and census["received"] == 0
            and census.get("node_list_consistent", True)),
        "messages lost (blocks left queued after the drain, channel counts) == 0": lost == 0,
        "/dev/shm entries back to baseline": shm_after == shm_before,
        "parent RSS grew < 5 % after warm-up": rss_end < rss_warm * 1.05,
        "no participant ended on its own (an exception)": not failures,
    }
    return {
        "seconds": seconds, "participants": participants, "kills": kills,
        "parent_sent": parent_sent, "parent_received": parent_received,
        "baseline": {k: baseline[k] for k in ("blocks_in_use", "bytes_in_use")},
        "final": {k: final[k] for k in ("blocks_in_use", "bytes_in_use", "reclaimed_blocks",
                                         "corruption_count")},
        "census": census, "rss_warm": rss_warm, "rss_end": rss_end,
        "messages_lost": lost, "left_queued": left_queued, "participant_failures": failures,
        "shm_before": shm_before, "shm_after": shm_after,
        "checks": checks, "samples": samples,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3600.0)
    ap.add_argument("--participants", type=int, default=6)
    ap.add_argument("--kill-every", type=float, default=1.0, help="mean seconds between kills")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write the full result (with samples) here")
    args = ap.parse_args(argv)
    result = run(args.seconds, args.participants, args.kill_every, args.seed)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(f"\nsoak: {result['seconds']:.0f} s, {result['kills']} kills, parent sent "
          f"{result['parent_sent']} / received {result['parent_received']}, reclaimed "
          f"{result['final']['reclaimed_blocks']} blocks, messages lost {result['messages_lost']}, "
          f"RSS {result['rss_warm'] / 2**20:.1f} -> {result['rss_end'] / 2**20:.1f} MiB")
    for name, ok in result["checks"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    if not all(result["checks"].values()):
        print(f"  baseline {result['baseline']}, final {result['final']}, census {result['census']}")
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
