"""memchannel.JoinableQueue / Queue in place of multiprocessing's: a worker pool with
task_done()/join() across processes, then shutdown().

Run: python docs/examples/queue_dropin.py   (from docs/guide-queue.md)
"""
import multiprocessing as mp

import memchannel as mc  # instead of: from multiprocessing import JoinableQueue, Queue


def worker(tasks, results):
    while True:
        try:
            n = tasks.get()
        except mc.ShutDown:  # shut down and drained
            return
        results.put((n, n * n))
        tasks.task_done()


if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    tasks, results = mc.JoinableQueue(maxsize=8), mc.Queue()
    workers = [ctx.Process(target=worker, args=(tasks, results)) for _ in range(2)]
    for w in workers:
        w.start()
    for n in range(20):
        tasks.put(n)  # blocks while 8 are queued
    tasks.join()  # returns when every item has had its task_done(), in either worker
    print("results after join:", results.qsize())
    print("first squares:", sorted(results.get() for _ in range(20))[:4])
    tasks.shutdown()  # global: each worker's get() raises ShutDown
    for w in workers:
        w.join()
    print("worker exit codes:", [w.exitcode for w in workers])

    q = mc.Queue(maxsize=1)
    q.put("only slot")
    try:
        q.put("one more", timeout=0.1)
    except mc.Full:  # also a queue.Full
        print("Full after 0.1 s; qsize =", q.qsize())

# expect: results after join: 20
# expect: first squares: [(0, 0), (1, 1), (2, 4), (3, 9)]
# expect: worker exit codes: [0, 0]
# expect: Full after 0.1 s; qsize = 1
