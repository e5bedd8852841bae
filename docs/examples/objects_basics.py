"""Python objects over a channel: send_object / recv_object, numpy arrays without a copy.

Run: python docs/examples/objects_basics.py   (from docs/guide-objects.md)
"""
import numpy as np

import memchannel as mc

ch = mc.Channel()
frame = np.arange(1_000_000, dtype=np.float32).reshape(1000, 1000)
ch.send_object({"frame": frame, "meta": {"id": 7, "tags": ["raw"]}})  # one copy into channel memory

msg = ch.recv_object()  # no copy: the array views the received block
arr = msg["frame"]
print("meta:", msg["meta"])
print("equal:", np.array_equal(arr, frame), arr.dtype, arr.shape)

base = arr  # the .base chain ends in a memoryview of a memchannel.Buffer
while not isinstance(base, memoryview):
    base = base.base
print("views channel memory:", isinstance(base.obj, mc.Buffer))
print("blocks in use:", ch.stats()["blocks_in_use"])
del msg, arr, base  # the last reference to the block's memory goes...
print("blocks in use after del:", ch.stats()["blocks_in_use"])  # ...and the block is free

try:  # pickling errors are the original exception; nothing is queued
    ch.send_object({"frame": frame, "lock": __import__("threading").Lock()})
except TypeError as exc:
    print("TypeError:", exc, "| queued:", ch.qsize())

# expect: meta: {'id': 7, 'tags': ['raw']}
# expect: equal: True float32 (1000, 1000)
# expect: views channel memory: True
# expect: blocks in use: 1
# expect: blocks in use after del: 0
# expect: TypeError: cannot pickle '_thread.lock' object | queued: 0
