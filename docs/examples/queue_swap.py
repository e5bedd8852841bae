"""A producer process moves numpy arrays to the main process through a queue.
The same script measures multiprocessing.Queue (--stdlib) and memchannel.Queue: one import differs.

    python docs/examples/queue_swap.py                        # memchannel.Queue, small sizes
    python docs/examples/queue_swap.py --stdlib               # multiprocessing.Queue
    python docs/examples/queue_swap.py --mib 4 --count 256 --runs 5 [--stdlib]
"""
import argparse, statistics, sys, time
import multiprocessing as mp
import numpy as np

if "--stdlib" in sys.argv:
    from multiprocessing import Queue
else:
    from memchannel import Queue  # type: ignore[assignment]  # the swap (another class to mypy)


def produce(q, count, nbytes):
    arr = np.ones(nbytes, dtype=np.uint8)
    q.put("ready")
    for i in range(count):
        q.put((i, arr))
    q.put(None)


def run(count, nbytes):
    q = Queue(maxsize=8)
    p = mp.Process(target=produce, args=(q, count, nbytes))
    p.start()
    assert q.get() == "ready"
    start, received = time.perf_counter(), 0
    while (item := q.get()) is not None:
        i, arr = item
        assert i == received and arr.nbytes == nbytes and arr[-1] == 1
        received += 1
    elapsed = time.perf_counter() - start
    p.join()
    return elapsed


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=float, default=0.25)
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--stdlib", action="store_true")
    args = ap.parse_args()
    nbytes = int(args.mib * 2**20)
    times = [run(args.count, nbytes) for _ in range(args.runs)]
    median = statistics.median(times)
    name = "multiprocessing.Queue" if args.stdlib else "memchannel.Queue"
    print(f"{name}: {args.count} x {args.mib:g} MiB, median of {args.runs}: {median * 1e3:.1f} ms, "
          f"{args.count * args.mib / median:.0f} MiB/s, {median / args.count * 1e6:.0f} us per array")

# expect: memchannel.Queue:
