"""Functions the sync tests run in child processes and subinterpreters (stdlib + memchannel only)."""

import mmap
import os
import struct
import time


def count_with(lock, path, n):
    """Increment the counter at offset 0 of `path` n times under `lock`; offset 8 is an
    'inside' flag, offset 16 counts entries that found another party inside."""
    with open(path, "r+b") as f:
        m = mmap.mmap(f.fileno(), 64)
        try:
            for _ in range(n):
                with lock:
                    if struct.unpack_from("<Q", m, 8)[0] != 0:
                        struct.pack_into("<Q", m, 16, struct.unpack_from("<Q", m, 16)[0] + 1)
                    struct.pack_into("<Q", m, 8, 1)
                    v = struct.unpack_from("<Q", m, 0)[0]
                    time.sleep(0)  # give another party the chance to break in
                    struct.pack_into("<Q", m, 0, v + 1)
                    struct.pack_into("<Q", m, 8, 0)
        finally:
            m.close()
    return n


def hold(prim, kind, ready):
    """Take `prim` the way `kind` says, tell `ready`, then wait to be killed."""
    if kind in ("lock", "rlock"):
        prim.acquire()
        if kind == "rlock":
            prim.acquire()
    elif kind == "semaphore":
        prim.acquire()
        prim.acquire()
    elif kind == "condition_lock":
        prim.acquire()
    elif kind == "condition_wait":
        prim.acquire()
        ready.set()
        prim.wait()  # releases the lock while waiting
        time.sleep(60)
        return
    elif kind == "barrier":
        ready.set()
        prim.wait()
        time.sleep(60)
        return
    elif kind == "event":
        ready.set()
        prim.wait()
        time.sleep(60)
        return
    ready.set()
    time.sleep(60)


def touch(prim, kind):
    """Change `prim` in a way the caller can see from its own copy."""
    if kind in ("lock", "rlock"):
        return prim.acquire(timeout=5)  # left held: the caller checks locked()
    if kind in ("semaphore", "bounded"):
        return prim.acquire(timeout=5)  # one permit fewer
    if kind == "event":
        prim.set()
        return True
    if kind == "condition":
        with prim:
            prim.notify_all()
        return True
    if kind == "barrier":
        return prim.wait(timeout=10)
    raise ValueError(kind)


def pid():
    return os.getpid()
