"""Batches: send_many / recv_many, send_objects / recv_objects, Queue.put_many / get_many.

Run: python docs/examples/batches.py   (from docs/guide-objects.md)
"""
import multiprocessing as mp

import memchannel as mc


def worker(jobs: mc.Queue, results: mc.Queue) -> None:
    while True:
        batch = jobs.get_many(100)  # waits for the first job, then takes what is queued
        if None in batch:
            results.put_many([x * x for x in batch if x is not None])
            results.put(None)
            return
        results.put_many([x * x for x in batch])


if __name__ == "__main__":
    ch = mc.Channel(maxsize=8)
    # expect: queued: 3
    print("queued:", ch.send_many([b"a", b"bb", b"ccc"]))
    # expect: received: [b'a', b'bb', b'ccc']
    print("received:", [bytes(b) for b in ch.recv_many(10)])

    try:  # a bounded channel queues what fits, then waits; the error says how many went in
        ch.send_many([b"%d" % i for i in range(20)], timeout=0.1)
    except mc.Full as exc:
        # expect: Full after 8 messages
        print("Full after", exc.queued, "messages")
    # expect: then: 8 drained
    print("then:", len(ch.recv_many(100)), "drained")

    ch.send_objects([(1, "one"), {"two": 2}, [3.0]])
    # expect: objects: [(1, 'one'), {'two': 2}, [3.0]]
    print("objects:", ch.recv_objects(10))

    jobs, results = mc.Queue(), mc.Queue()
    p = mp.get_context("spawn").Process(target=worker, args=(jobs, results))
    p.start()
    jobs.put_many(list(range(1000)) + [None])
    total, done = 0, False
    while not done:
        for r in results.get_many(256, timeout=60):
            if r is None:
                done = True
            else:
                total += r
    p.join()
    # expect: sum of squares: 332833500
    print("sum of squares:", total)
