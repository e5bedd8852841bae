"""memchannel's synchronization primitives: threading/multiprocessing semantics, mutual
exclusion across threads, subinterpreters and processes, and what a killed holder leaves
(docs/guide-sync.md). Timeouts are asserted loosely (behaviour, not speed)."""

import multiprocessing as mp
import os
import pickle
import signal
import struct
import threading
import time

import pytest

import memchannel as mc
from memchannel import interpreters

import _sync_workers as w

BACKENDS = ["shm", "heap"]


def counter_file(tmp_path):
    path = tmp_path / "counter"
    path.write_bytes(bytes(64))
    return str(path)


def read_counter(path):
    data = open(path, "rb").read()
    return struct.unpack_from("<Q", data, 0)[0], struct.unpack_from("<Q", data, 16)[0]


# ---- threading API --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_lock_api(backend):
    lock = mc.Lock(backend=backend)
    assert not lock.locked()
    assert lock.acquire() is True
    assert lock.locked()
    assert lock.acquire(False) is False
    assert lock.acquire(block=False) is False
    assert lock.acquire(blocking=False) is False
    t0 = time.monotonic()
    assert lock.acquire(timeout=0.1) is False
    assert 0.08 <= time.monotonic() - t0 < 2.0
    # Any thread may release a Lock (as threading.Lock and multiprocessing.Lock allow).
    th = threading.Thread(target=lock.release)
    th.start()
    th.join()
    assert not lock.locked()
    with pytest.raises(RuntimeError, match="release unlocked lock"):
        lock.release()
    with pytest.raises(ValueError):  # multiprocessing's class for the same mistake
        lock.release()
    with lock:
        assert lock.locked()
    assert not lock.locked()
    assert lock.acquire(True, -1) is True  # threading's "no timeout"
    lock.release()
    with pytest.raises(ValueError):
        lock.acquire(timeout=-2)
    with pytest.raises(TypeError):
        lock.acquire(timeout="soon")


@pytest.mark.parametrize("backend", BACKENDS)
def test_rlock_api(backend):
    r = mc.RLock(backend=backend)
    with pytest.raises(RuntimeError, match="un-acquired"):
        r.release()
    assert r.acquire() and r.acquire()
    got = []
    th = threading.Thread(target=lambda: got.append(r.acquire(timeout=0.05)))
    th.start()
    th.join()
    assert got == [False]
    errors = []

    def wrong_thread_release():
        try:
            r.release()
        except RuntimeError as e:
            errors.append(e)

    th = threading.Thread(target=wrong_thread_release)
    th.start()
    th.join()
    assert len(errors) == 1
    r.release()
    assert r.locked()
    r.release()
    assert not r.locked()


@pytest.mark.parametrize("backend", BACKENDS)
def test_semaphores(backend):
    s = mc.Semaphore(2, backend=backend)
    assert s.acquire() and s.acquire(timeout=0)
    assert s.get_value() == 0
    t0 = time.monotonic()
    assert s.acquire(timeout=0.1) is False
    assert time.monotonic() - t0 >= 0.08
    s.release(3)  # a Semaphore may go above its initial value
    assert s.get_value() == 3
    b = mc.BoundedSemaphore(1, backend=backend)
    with pytest.raises(ValueError, match="too many"):
        b.release()
    with b:
        assert b.get_value() == 0
        assert not b.acquire(False)
    assert b.get_value() == 1
    with pytest.raises(ValueError):
        mc.Semaphore(-1)
    with pytest.raises(TypeError):
        mc.Semaphore(1.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_event(backend):
    e = mc.Event(backend=backend)
    assert not e.is_set()
    t0 = time.monotonic()
    assert e.wait(0.1) is False
    assert time.monotonic() - t0 >= 0.08
    threading.Timer(0.05, e.set).start()
    assert e.wait(5) is True
    assert e.is_set() and e.wait(0)
    e.clear()
    assert not e.is_set()


@pytest.mark.parametrize("backend", BACKENDS)
def test_condition(backend):
    c = mc.Condition(backend=backend)
    with pytest.raises(RuntimeError):
        c.wait(0.01)
    with pytest.raises(RuntimeError):
        c.notify()
    with c:
        t0 = time.monotonic()
        assert c.wait(0.1) is False
        assert time.monotonic() - t0 >= 0.08
    items, woken = [], []

    def consumer():
        with c:
            woken.append(c.wait_for(lambda: items, timeout=10))

    threads = [threading.Thread(target=consumer) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while c._state._cond_waiting() < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    with c:
        items.append(1)
        c.notify(1)
    time.sleep(0.2)
    assert len(woken) == 1  # notify(1) woke one
    with c:
        c.notify_all()
    for t in threads:
        t.join(5)
    assert woken == [[1], [1], [1]]
    lock = mc.Lock(backend=backend)
    c2 = mc.Condition(lock)
    with c2:
        assert c2.wait(0.01) is False
    with pytest.raises(TypeError):
        mc.Condition(threading.Lock())


@pytest.mark.parametrize("backend", BACKENDS)
def test_barrier(backend):
    calls = []
    b = mc.Barrier(3, action=lambda: calls.append(1), backend=backend)
    assert b.parties == 3 and b.n_waiting == 0 and not b.broken
    out = []
    threads = [threading.Thread(target=lambda: out.append(b.wait(10))) for _ in range(2)]
    for t in threads:
        t.start()
    out.append(b.wait(10))
    for t in threads:
        t.join()
    assert sorted(out) == [0, 1, 2] and calls == [1]
    t0 = time.monotonic()
    with pytest.raises(threading.BrokenBarrierError):
        b.wait(0.1)  # a timeout breaks the barrier, as in threading
    assert time.monotonic() - t0 >= 0.08
    assert b.broken
    with pytest.raises(threading.BrokenBarrierError):
        b.wait()
    b.reset()
    assert not b.broken
    waiter_error = []

    def waiter():
        try:
            b.wait(10)
        except threading.BrokenBarrierError as e:
            waiter_error.append(e)

    th = threading.Thread(target=waiter)
    th.start()
    while b.n_waiting < 1:
        time.sleep(0.01)
    b.abort()
    th.join(5)
    assert len(waiter_error) == 1
    with pytest.raises(ValueError):
        mc.Barrier(0)


# ---- mutual exclusion -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_exclusion_threads(tmp_path, backend):
    lock = mc.Lock(backend=backend)
    path = counter_file(tmp_path)
    threads = [threading.Thread(target=w.count_with, args=(lock, path, 300)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert read_counter(path) == (1200, 0)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
@pytest.mark.parametrize("kind", ["lock", "rlock", "semaphore"])
def test_exclusion_processes(tmp_path, method, kind):
    ctx = mp.get_context(method)
    lock = {"lock": mc.Lock, "rlock": mc.RLock, "semaphore": lambda: mc.BoundedSemaphore(1)}[kind]()
    path = counter_file(tmp_path)
    procs = [ctx.Process(target=w.count_with, args=(lock, path, 200)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert read_counter(path) == (600, 0)


def test_exclusion_subinterpreters(tmp_path):
    lock = mc.Lock()
    path = counter_file(tmp_path)
    workers = [interpreters.create() for _ in range(4)]
    try:
        threads = [wk.call_in_thread(w.count_with, lock, path, 200) for wk in workers]
        for t in threads:
            t.join(60)
    finally:
        for wk in workers:
            wk.close()
    assert read_counter(path) == (800, 0)


def test_exclusion_executor_and_processes(tmp_path):
    """Interpreter pool tasks and processes update one counter under one lock."""
    lock = mc.Lock()
    path = counter_file(tmp_path)
    proc = mp.get_context("fork").Process(target=w.count_with, args=(lock, path, 200))
    proc.start()
    with mc.InterpreterPoolExecutor(2) as ex:
        futures = [ex.submit(w.count_with, lock, path, 100) for _ in range(4)]
        assert [f.result(60) for f in futures] == [100] * 4
    proc.join(60)
    assert read_counter(path) == (600, 0)


# ---- every copy is the same primitive -------------------------------------------------------

KINDS = {
    "lock": lambda b: mc.Lock(backend=b),
    "rlock": lambda b: mc.RLock(backend=b),
    "semaphore": lambda b: mc.Semaphore(2, backend=b),
    "bounded": lambda b: mc.BoundedSemaphore(2, backend=b),
    "event": lambda b: mc.Event(backend=b),
    "condition": lambda b: mc.Condition(backend=b),
    "barrier": lambda b: mc.Barrier(2, backend=b),
}


def seen_from_original(prim, kind, result):
    if kind in ("lock", "rlock"):
        return result is True and prim.locked()
    if kind in ("semaphore", "bounded"):
        return result is True and prim.get_value() == 1
    if kind == "event":
        return prim.is_set()
    return result is not None


def run_with_partner(prim, kind, call):
    """For a barrier, the original waits as the second party while `call` runs."""
    if kind != "barrier":
        return call()
    th = threading.Thread(target=prim.wait, args=(10,))
    th.start()
    try:
        return call()
    finally:
        th.join(10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_sent_through_channel(kind, backend):
    prim = KINDS[kind](backend)
    ch = mc.Channel(backend=backend)
    ch.send_object({"prim": prim})
    copy = ch.recv_object(timeout=5)["prim"]
    assert type(copy) is type(prim)
    result = run_with_partner(prim, kind, lambda: w.touch(copy, kind))
    assert seen_from_original(prim, kind, result)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_passed_to_subinterpreter(kind, backend):
    prim = KINDS[kind](backend)
    with interpreters.create() as interp:
        result = run_with_partner(prim, kind, lambda: interp.call(w.touch, prim, kind))
    assert seen_from_original(prim, kind, result)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_pickled_to_spawn_child(kind):
    prim = KINDS[kind]("shm")
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        result = run_with_partner(prim, kind, lambda: pool.apply(w.touch, (prim, kind)))
    if kind in ("lock", "rlock"):
        # The child exited holding it: the next acquirer is told.
        assert prim.locked()
        return
    assert seen_from_original(prim, kind, result)


def test_heap_primitive_refused_in_another_process():
    lock = mc.Lock(backend="heap")
    data = pickle.dumps(lock)
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        with pytest.raises(mc.MemChannelError, match="heap"):
            pool.apply(pickle.loads, (data,))


def test_forged_handle_is_refused():
    lock = mc.Lock()
    with pytest.raises((ValueError, mc.MemChannelError)):
        mc.sync._attach(mc.Lock, b"MCH1garbage", os.getpid(), "shm", None)
    assert lock.acquire(False)


# ---- a killed holder ------------------------------------------------------------------------


def start_holder(prim, kind):
    ready = mp.get_context("fork").Event()
    proc = mp.get_context("fork").Process(target=w.hold, args=(prim, kind, ready))
    proc.start()
    assert ready.wait(30), "the child never took the primitive"
    time.sleep(0.05)
    return proc


def kill(proc):
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL


@pytest.mark.parametrize("call", ["timeout", "plain"])
@pytest.mark.parametrize("kind", ["lock", "rlock"])
def test_killed_lock_holder(kind, call):
    lock = mc.Lock() if kind == "lock" else mc.RLock()
    proc = start_holder(lock, kind)
    assert lock.acquire(timeout=0.05) is False  # a live holder keeps it
    kill(proc)
    t0 = time.monotonic()
    with pytest.raises(mc.LockAbandoned):
        if call == "timeout":
            lock.acquire(timeout=10)
        else:
            lock.acquire()
    assert time.monotonic() - t0 < 5  # no hang: the liveness check found the owner dead
    assert lock.locked()  # held by us now
    if kind == "rlock":
        assert lock._is_owned()
    lock.release()  # once: the abandoned lock is held at depth 1
    assert not lock.locked()
    assert lock.acquire(timeout=1) is True  # usable afterwards
    lock.release()


@pytest.mark.parametrize("kind", ["lock", "rlock"])
def test_killed_lock_holder_with_statement(kind):
    lock = mc.Lock() if kind == "lock" else mc.RLock()
    kill(start_holder(lock, kind))
    ran = []
    with pytest.raises(mc.LockAbandoned):
        with lock:
            ran.append(1)
    assert ran == [] and not lock.locked()  # released on the way out
    with lock:
        ran.append(2)
    assert ran == [2]


def test_killed_semaphore_holder():
    sem = mc.BoundedSemaphore(3)
    proc = start_holder(sem, "semaphore")  # takes two permits
    assert sem.get_value() == 1
    kill(proc)
    assert sem.acquire(timeout=10) and sem.acquire(timeout=10) and sem.acquire(timeout=10)
    sem.release(3)
    assert sem.get_value() == 3
    with pytest.raises(ValueError):
        sem.release()


@pytest.mark.parametrize("cls", [mc.Semaphore, mc.BoundedSemaphore])
def test_killed_semaphore_holder_while_this_process_holds_one(cls):
    """The dead process's permits come back exactly while another holder lives: this
    process's own release afterwards is not "released too many times", and no extra permit.
    (A kill inside each step of acquire/release: tests/cpp/test_sync_crash.cc.)"""
    sem = cls(3)
    assert sem.acquire()
    proc = start_holder(sem, "semaphore")  # takes two permits
    assert sem.get_value() == 0
    kill(proc)
    sem._recover()
    assert sem.get_value() == 2
    sem.release()
    assert sem.get_value() == 3
    sem._recover()
    assert sem.get_value() == 3


@pytest.mark.parametrize("cls", [mc.Lock, mc.RLock, mc.Semaphore, mc.BoundedSemaphore])
def test_uninitialised_primitive_is_refused(cls):
    obj = cls.__new__(cls)  # no __init__: no primitive behind it
    for call in (obj.acquire, obj.release, obj.__enter__, lambda: obj.__exit__(None, None, None)):
        with pytest.raises(TypeError, match="not initialised"):
            call()


def test_killed_plain_semaphore_holder():
    sem = mc.Semaphore(2)
    kill(start_holder(sem, "semaphore"))
    assert sem.acquire(timeout=10) and sem.acquire(timeout=10)  # both permits came back
    assert sem.get_value() == 0


def test_semaphore_without_reclaim_keeps_consumed_permits():
    """reclaim=False: a permit a dead process acquired was consumed, not held."""
    sem = mc.Semaphore(2, reclaim=False)
    kill(start_holder(sem, "semaphore"))
    sem._recover()
    assert sem.get_value() == 0
    assert sem.acquire(timeout=0.05) is False
    sem.release()
    assert sem.acquire(timeout=1)


def test_lock_abandoned_is_a_memchannel_error():
    assert issubclass(mc.LockAbandoned, mc.MemChannelError)


def test_killed_event_waiter():
    e = mc.Event()
    kill(start_holder(e, "event"))
    threading.Timer(0.05, e.set).start()
    assert e.wait(10)


def test_killed_condition_waiter():
    c = mc.Condition()
    kill(start_holder(c, "condition_wait"))
    woken = []

    def waiter():
        with c:
            woken.append(c.wait(10))

    th = threading.Thread(target=waiter)
    th.start()
    time.sleep(0.2)
    with c:
        c.notify(1)  # reaches the live waiter, not the dead one
    th.join(10)
    assert woken == [True]


def test_killed_condition_lock_holder():
    c = mc.Condition()
    kill(start_holder(c, "condition_lock"))
    with pytest.raises(mc.LockAbandoned):
        c.acquire(timeout=10)
    assert c.wait(0.01) is False  # we hold it: the condition works
    c.release()
    with c:
        c.notify_all()


def test_killed_barrier_party():
    b = mc.Barrier(3)
    proc = start_holder(b, "barrier")
    errors = []

    def party():
        try:
            b.wait(30)
        except threading.BrokenBarrierError as e:
            errors.append(e)

    th = threading.Thread(target=party)
    th.start()
    time.sleep(0.1)
    kill(proc)
    t0 = time.monotonic()
    th.join(10)
    assert not th.is_alive() and len(errors) == 1
    assert time.monotonic() - t0 < 5
    assert b.broken
    b.reset()
    out = []
    threads = [threading.Thread(target=lambda: out.append(b.wait(10))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(out) == [0, 1, 2]


def _pass_one_round_then_sleep(b, passed):
    b.wait(30)
    passed.set()
    time.sleep(60)


def test_barrier_party_killed_before_arriving():
    """A process that passed the round before and is killed before it arrives in this one
    breaks the barrier for the parties waiting in it, well before their timeout."""
    b = mc.Barrier(2)
    passed = mp.get_context("fork").Event()
    proc = mp.get_context("fork").Process(target=_pass_one_round_then_sleep, args=(b, passed))
    proc.start()
    assert b.wait(30) in (0, 1)  # round 0, with the child
    assert passed.wait(30)
    kill(proc)
    t0 = time.monotonic()
    with pytest.raises(threading.BrokenBarrierError):
        b.wait(30)
    assert time.monotonic() - t0 < 5
    b.reset()
    out = []
    threads = [threading.Thread(target=lambda: out.append(b.wait(10))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(out) == [0, 1]  # usable again by live parties


def test_primitive_outlives_its_creator():
    """Made in a child that exits: the parent's copy still works."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        lock = pool.apply(mc.Lock)
    assert lock.acquire(timeout=5)
    lock.release()


def test_signatures_are_inspectable():
    import inspect

    for cls in (mc.Lock, mc.RLock, mc.Semaphore, mc.BoundedSemaphore, mc.Event, mc.Barrier, mc.Condition):
        for name in ("acquire", "release", "wait", "set", "clear", "is_set", "notify", "reset", "abort", "locked"):
            fn = getattr(cls, name, None)
            if callable(fn):
                inspect.signature(fn)  # raises ValueError for a builtin without __text_signature__
    assert list(inspect.signature(mc.Lock.acquire).parameters) == ["self", "block", "timeout"]
    assert list(inspect.signature(mc.Barrier.__init__).parameters)[:4] == ["self", "parties", "action", "timeout"]
