"""Hostile-peer fuzzing (docs/shm.md, "Hostile-peer fuzzing"): while an honest sender (a process)
and receiver (this one) run, a third process of the same user maps the channel's segment 0 and
forges words of one kind, picked by a seeded random generator: queue links, lengths, block
offsets, formats, states, counters, header words.

Verdict per run:
- no crash: the sender and the forger exit 0, this process is still here;
- no hang past the call's timeout: every recv/send has a timeout, and a run whose receiver sees
  no progress and no error for STALL_S while messages are still owed is a silent stall;
- every loss counted: messages sent minus messages received equals stats()["messages_lost"];
- honest traffic resumes: after the forger is done, a fresh batch goes through complete.

`python tests/python/test_hostile_fuzz.py` prints the summary table that docs/shm.md quotes.
"""

import os
import random
import subprocess
import sys
import textwrap
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import memchannel as mc  # noqa: E402
from _forge import (  # noqa: E402
    ATTACHED_HOLDERS_OFFSET, BLOCK_MAGIC_OFFSET, CARVE_OFFSET, CH_ATTACHED, CH_HEAD, CH_MAXBYTES, CH_MAXSIZE,
    CH_TAIL, CORRUPTION_COUNT_OFFSET, HEADER_BYTES, NODE_BLOCK,
    NODE_GEN, NODE_LENGTH, NODE_NEXT, NODE_POSITION, NODE_SEQ, NODE_STATE, SEGMENT_COUNT_OFFSET, Forger)

MODES = ["links", "lengths", "offsets", "formats", "states", "counters", "header", "headtail", "attached",
         "limits"]
SEEDS = [1, 2, 3]
MESSAGES = 1500      # per run, before the forger is done
AFTER = 200          # sent after it: must all arrive
STALL_S = 6.0
BLOCK_MAGIC = 0x4D43424B

SENDER = textwrap.dedent(
    """
    import sys, memchannel as mc
    ch = mc.Channel.attach(bytes.fromhex(sys.argv[1]))
    print("ready", flush=True)
    first, last = int(sys.argv[2]), int(sys.argv[3])
    sent = errors = 0
    i = first
    while i < last:
        try:
            fmt = "B" if i % 3 else "<I"
            data = (b"%08d" % i).ljust(64 if i % 2 else 200, b".")
            if fmt == "B":
                ch.send(data, timeout=5)
            else:
                buf = ch.reserve(64, format=fmt, timeout=5)
                memoryview(buf).cast("B")[:len(data[:64])] = data[:64]
                ch.send(buf, timeout=5)
            sent += 1
            i += 1
        except mc.CorruptionError:
            errors += 1  # a repair happened: this message was not sent; send it again
            if errors > 10000:
                break
        except mc.Full:
            print("stalled", sent, errors, flush=True)
            sys.exit(3)
    print("sent", sent, errors, flush=True)
    """
)

FORGER = textwrap.dedent(
    """
    import random, sys, time
    sys.path.insert(0, sys.argv[4])
    from _forge import *
    name, mode, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    f = Forger(name)
    words = 0
    def some(xs):
        xs = list(xs)
        return rng.choice(xs) if xs else None
    def garbage():
        return rng.choice([0, 1, 0xFFFFFFFFFFFFFFFF, rng.getrandbits(64), rng.getrandbits(32), 1 << 40])
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline and words < 3:
        time.sleep(rng.uniform(0.01, 0.15))
        nodes = f.nodes(kinds=(2, 3))
        # Message blocks (not the channel header's arena cell: its words are not fuzzed here).
        blocks = [o for o in range(HEADER_BYTES, f.carve_end() - 63, 64)
                  if f.u32(o + BLOCK_MAGIC_OFFSET) == 0x4D43424B and not f.u32(o + 32) & 1]
        if mode == "links":
            at = some(o for o, (t, k, s) in nodes.items() if k == 2)
            if at is None: continue
            to = some(nodes) if rng.random() < 0.7 else rng.randrange(HEADER_BYTES, f.size, 64)
            f.link(at, to)
        elif mode == "lengths":
            at = some(nodes)
            if at is None: continue
            if rng.random() < 0.5: f.put64(at + NODE_LENGTH, garbage())
            else:
                b = some(blocks)
                if b is None: continue
                f.put64(b + 16, garbage())
        elif mode == "offsets":
            at = some(nodes)
            if at is None: continue
            f.put32(at + rng.choice([NODE_BLOCK, NODE_GEN]), garbage())
        elif mode == "formats":
            b = some(blocks)
            if b is None: continue
            off = rng.choice([24, 64, 72, 80, 96])  # meta_bytes, then the metadata after the header
            f.put32(b + off, garbage())
        elif mode == "states":
            if rng.random() < 0.5 and nodes:
                at = some(nodes)
                f.put64(at + NODE_STATE, garbage() if rng.random() < 0.5 else f.u64(at + NODE_STATE) ^ (1 << rng.randrange(16)))
            else:
                b = some(blocks)
                if b is None: continue
                f.put32(b, garbage())
        elif mode == "counters":
            off = rng.randrange(CORRUPTION_COUNT_OFFSET, CORRUPTION_COUNT_OFFSET + 1088, 8)
            f.put64(off, garbage())
            if rng.random() < 0.5:
                at = some(nodes)
                if at is not None: f.put64(at + rng.choice([NODE_SEQ, NODE_POSITION]), garbage())
        elif mode == "header":
            off = rng.choice([0, 8, 16, 24, 32, CARVE_OFFSET, SEGMENT_COUNT_OFFSET, ATTACHED_HOLDERS_OFFSET, 1728])
            if off == 0 and rng.random() < 0.5:
                for o in range(0, 64, 8): f.put64(o, 0)  # the first 64 bytes zeroed
            elif off == ATTACHED_HOLDERS_OFFSET:
                f.put32(off, rng.choice([0, 1, 0xFFFFFFFF]))
            else:
                f.put64(off, garbage())
        elif mode == "headtail":  # the channel's head and tail, together
            ch = some(f.channel_headers())
            if ch is None: continue
            for end in (CH_HEAD, CH_TAIL):
                old = f.u64(ch + end)
                to = some(nodes) if rng.random() < 0.6 and nodes else rng.randrange(HEADER_BYTES, f.size, 64)
                f.put64(ch + end, (((old >> 32) + rng.randrange(1, 5)) << 32) | (to >> 6) if rng.random() < 0.8 else garbage())
            dummy = some(o for o, (t, k, s) in nodes.items() if k == 3)
            if dummy is not None and rng.random() < 0.4:  # and the dummy they hid: no dummy to find
                f.put64(dummy + NODE_STATE, garbage())
                words += 1
            words += 1
        elif mode == "attached":  # how many Channel objects use the header
            ch = some(f.channel_headers())
            if ch is None: continue
            f.put32(ch + CH_ATTACHED, rng.choice([0, 1, 2, 0xFFFFFFFF, rng.getrandbits(32)]))
        elif mode == "limits":  # maxsize / maxbytes
            ch = some(f.channel_headers())
            if ch is None: continue
            f.put64(ch + rng.choice([CH_MAXSIZE, CH_MAXBYTES]), rng.choice([0, 1, 2, 1 << 62, garbage()]))
        words += 1
    f.close()
    print("forged", words, flush=True)
    """
)


def run_one(mode, seed):
    """One run; returns its row: sent, received, lost, counted, errors, verdict."""
    arena = mc.Arena(capacity=4 << 20, backend="shm")
    ch = arena.channel(maxsize=0 if seed % 2 else 64)
    here = os.path.dirname(os.path.abspath(__file__))
    sender = subprocess.Popen([sys.executable, "-c", SENDER, ch.handle.hex(), "0", str(MESSAGES)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert sender.stdout.readline().strip() == "ready", sender.stderr.read()
    forger = subprocess.Popen([sys.executable, "-c", FORGER, arena.name, mode, str(seed), here],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    received, errors, verdict = 0, 0, "ok"

    def receive_until(done, owed):
        nonlocal received, errors, verdict
        last_progress = time.monotonic()
        while True:
            try:
                ch.recv(timeout=0.5)
                received += 1
                last_progress = time.monotonic()
            except mc.CorruptionError:
                errors += 1
                last_progress = time.monotonic()
            except mc.Empty:
                if done() and ch.stats()["queued"] == 0:
                    return
                if time.monotonic() - last_progress > STALL_S and owed():
                    verdict = "stall"
                    return
            except mc.MemChannelError as e:  # anything else: a clear error, recorded
                errors += 1
                verdict = f"error: {type(e).__name__}"
                return

    time.sleep(0.4)  # let a queue build up: the forger needs messages in flight to forge
    receive_until(lambda: sender.poll() is not None and forger.poll() is not None, lambda: True)
    sender.wait(timeout=30)
    out, err = sender.stdout.read(), sender.stderr.read()  # not communicate(): "ready" was read buffered
    f_out, f_err = forger.communicate(timeout=30)
    if sender.returncode != 0 or forger.returncode != 0:
        verdict = f"crash: sender {sender.returncode} {err[-300:]} forger {forger.returncode} {f_err[-300:]}"
    last_line = out.strip().split("\n")[-1]
    sent = int(last_line.split()[1]) if last_line.startswith("sent") else 0
    if not last_line.startswith("sent") and verdict == "ok":
        verdict = f"sender: {out.strip()[-200:]} {err[-300:]}"
    forged = int(f_out.split()[1]) if f_out.startswith("forged") else 0
    # Traffic resumes: a fresh batch, sent after the forger is done, arrives whole.
    if verdict == "ok":
        before = received
        after = subprocess.Popen([sys.executable, "-c", SENDER, ch.handle.hex(), "0", str(AFTER)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        receive_until(lambda: after.poll() is not None, lambda: received - before < AFTER)
        a_out, a_err = after.communicate(timeout=30)
        lines = a_out.split("\n")
        if after.returncode != 0 or not lines[-2].startswith("sent"):
            verdict = f"after: {a_out.strip()} {a_err[-300:]}"
        else:
            sent += int(lines[-2].split()[1])
            if received - before < AFTER and verdict == "ok":
                verdict = f"after: {received - before}/{AFTER} arrived"
    try:
        counted = ch.stats()["messages_lost"]
    except mc.MemChannelError as e:
        counted, verdict = -1, f"stats: {e}"
    lost = sent - received
    if verdict == "ok" and lost != counted:
        verdict = "uncounted loss"
    return dict(mode=mode, seed=seed, forged=forged, sent=sent, received=received, lost=lost, counted=counted,
                errors=errors, verdict=verdict)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", MODES)
def test_hostile_peer(mode, seed):
    row = run_one(mode, seed)
    assert row["verdict"] == "ok", row


if __name__ == "__main__":
    print("| mode | seed | words forged | sent | received | lost | counted | errors seen | verdict |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode in MODES:
        for seed in SEEDS:
            r = run_one(mode, seed)
            print(f"| {r['mode']} | {r['seed']} | {r['forged']} | {r['sent']} | {r['received']} | {r['lost']} | {r['counted']} "
                  f"| {r['errors']} | {r['verdict']} |", flush=True)
