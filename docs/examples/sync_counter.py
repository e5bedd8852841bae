"""A lock-protected counter updated from processes and subinterpreters at once, and what
happens when a process is killed while it holds the lock (docs/guide-sync.md).

    python docs/examples/sync_counter.py
"""
import mmap
import multiprocessing as mp
import os
import signal
import struct
import time

import memchannel as mc
from memchannel import interpreters

PATH = "counter.bin"  # 8 bytes in a file every party maps: the shared data the lock protects


def add(lock, n):
    with open(PATH, "r+b") as f, mmap.mmap(f.fileno(), 8) as m:
        for _ in range(n):
            with lock:
                (value,) = struct.unpack_from("<Q", m)
                struct.pack_into("<Q", m, 0, value + 1)
    return n


def hold_forever(lock, ready):
    lock.acquire()
    ready.set()
    time.sleep(600)


def read():
    with open(PATH, "rb") as f:
        return struct.unpack("<Q", f.read(8))[0]


if __name__ == "__main__":
    with open(PATH, "wb") as f:
        f.write(bytes(8))
    lock = mc.Lock()  # shared memory: any process and any interpreter can use it
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=add, args=(lock, 500)) for _ in range(2)]
    for p in procs:
        p.start()
    interps = [interpreters.create() for _ in range(2)]
    threads = [interp.call_in_thread(add, lock, 500) for interp in interps]
    add(lock, 500)  # and the main interpreter too
    for t in threads:
        t.join()
    for p in procs:
        p.join()
    for interp in interps:
        interp.close()
    print(f"counter: {read()} (expected 2500)")
    # expect: counter: 2500 (expected 2500)

    # A process takes the lock and is killed while it holds it.
    ready = mc.Event()
    victim = ctx.Process(target=hold_forever, args=(lock, ready))
    victim.start()
    ready.wait()
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    victim.join()
    try:
        lock.acquire(timeout=10)
    except mc.LockAbandoned:
        # We hold the lock now. Here the protected data would be checked and repaired.
        print("LockAbandoned: its holder died; this process holds the lock now")
        # expect: LockAbandoned: its holder died; this process holds the lock now
    lock.release()
    add(lock, 100)  # the lock works as before
    print(f"after the kill: counter {read()}")
    # expect: after the kill: counter 2600
