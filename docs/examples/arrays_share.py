"""One frame, three readers in other processes, no copy: memchannel.share (docs/guide-arrays.md).

The sender fills a frame in channel memory once and shares it read-only with three worker
processes; each computes a statistic of the same memory; a Tracker tells the sender when all
three let go, so it knows the frame went back to the arena.
"""

import multiprocessing as mp

import numpy as np

import memchannel as mc


def worker(frames, results, what):
    with frames.recv(timeout=30) as buf:
        frame = np.asarray(buf)                 # a view of the shared memory, not writeable
        value = {"mean": frame.mean(), "max": frame.max(), "nonzero": np.count_nonzero(frame)}[what]
        results.send_object((what, float(value), frame.flags.writeable))
        del frame                               # the view goes before the Buffer is released


def main():
    arena = mc.Arena()
    inboxes = [arena.channel() for _ in range(3)]
    results = arena.channel()
    names = ["mean", "max", "nonzero"]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker, args=(inbox, results, name)) for inbox, name in zip(inboxes, names)]
    for p in procs:
        p.start()

    buf = arena.reserve(shape=(1080, 1920), format="B")
    frame = np.asarray(buf)
    frame[:] = 0
    frame[100:200, 300:400] = 255
    del frame
    tracker = mc.share(buf, inboxes, track=True)  # one share per worker; buf is consumed
    out = dict((what, (value, writeable)) for what, value, writeable in
               (results.recv_object(timeout=60) for _ in names))
    print(f"mean {out['mean'][0]:.3f}, max {out['max'][0]:.0f}, nonzero {out['nonzero'][0]:.0f}")
    # expect: mean 1.230, max 255, nonzero 10000
    print("writeable in any worker:", any(w for _, w in out.values()))
    # expect: writeable in any worker: False
    print("all shares released:", tracker.wait(30))
    # expect: all shares released: True
    for p in procs:
        p.join(30)


if __name__ == "__main__":
    main()
