"""Objects between processes: a spawned worker computes on arrays it receives without a copy.

Run: python docs/examples/objects_processes.py   (from docs/guide-objects.md)
"""
import multiprocessing as mp

import numpy as np

import memchannel as mc


def worker(requests, replies):
    for request in iter(requests.recv_object, None):  # None ends the stream
        data = request["data"]  # a view of shared memory, no copy
        replies.send_object({"id": request["id"], "mean": float(data.mean()), "n": data.size})


if __name__ == "__main__":
    requests, replies = mc.Channel(), mc.Channel()  # shm channels pickle into any process
    child = mp.get_context("spawn").Process(target=worker, args=(requests, replies))
    child.start()
    for i in range(3):
        requests.send_object({"id": i, "data": np.full(1_000_000, i, dtype=np.float64)})
    requests.send_object(None)
    for _ in range(3):
        print(replies.recv_object(timeout=60))
    child.join()
    print("worker exit code:", child.exitcode)

# expect: {'id': 0, 'mean': 0.0, 'n': 1000000}
# expect: {'id': 1, 'mean': 1.0, 'n': 1000000}
# expect: {'id': 2, 'mean': 2.0, 'n': 1000000}
# expect: worker exit code: 0
