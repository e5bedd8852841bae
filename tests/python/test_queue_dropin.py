"""memchannel.Queue / JoinableQueue / SimpleQueue as drop-ins for multiprocessing's queues.

The behaviours are those CPython's Lib/test/_test_multiprocessing.py checks for its queues
(_TestQueue, TestSimpleQueue), run under fork and spawn, plus what a drop-in needs beyond
them: many producers and consumers, pickling anywhere, subinterpreters, shutdown().
Functions run in children and subinterpreters are module-level so they can be found by name;
numpy is not imported at module level (subinterpreters import this module).
"""

import multiprocessing as mp
import pickle
import queue as pyqueue
import threading
import time

import pytest

import memchannel as mc

START_METHODS = ["fork", "spawn"]
JOIN = 60  # seconds: generous bound for a child to finish


@pytest.fixture(params=START_METHODS)
def ctx(request):
    return mp.get_context(request.param)


def run_child(ctx, target, *args):
    p = ctx.Process(target=target, args=args, daemon=True)
    p.start()
    return p


def finish(p):
    p.join(JOIN)
    assert p.exitcode == 0, f"child exit code {p.exitcode}"


# --- children ---------------------------------------------------------------------------------

def get_six_after_event(q, child_can_start, parent_can_continue):
    child_can_start.wait()
    for _ in range(6):
        q.get()
    parent_can_continue.set()


def put_two_to_five_after_event(q, child_can_start, parent_can_continue):
    child_can_start.wait()
    for i in (2, 3, 4, 5):
        q.put(i)
    parent_can_continue.set()


def put_ten_to_nineteen(q):
    for i in range(10, 20):
        q.put(i)


def worker_doing_task_done(q, done):
    for obj in iter(q.get, None):
        time.sleep(0.01)
        done.put(obj)  # recorded before task_done(): join() must wait for this
        q.task_done()
    q.task_done()  # for the sentinel


def producer(q, pid, count):
    for seq in range(count):
        q.put((pid, seq, "x" * (seq % 7)))


def consumer(q, results):
    got = []
    for item in iter(q.get, None):
        got.append(item[:2])
    results.put(got)


def put_then_exit_without_reader(q, count):
    for i in range(count):
        q.put({"i": i, "payload": bytes(1000)})
    q.close()
    q.join_thread()  # returns at once: put() already enqueued everything


def put_then_cancel_join_thread(q, count):
    for i in range(count):
        q.put(i)
    q.cancel_join_thread()


def put_queue_into_queue(outer, received):
    inner = mc.Queue()
    inner.put("through a queue inside a queue")
    outer.put(inner)
    # Stay alive until the parent has attached: a queue's memory goes away when the last
    # process using it exits, and until the parent unpickles it, that is this process.
    received.wait(JOIN)


def blocked_get_until_shutdown(q, started, result):
    started.set()
    try:
        q.get(timeout=JOIN)
    except mc.ShutDown:
        result.put("ShutDown")
    except Exception as exc:  # pragma: no cover - reported to the parent
        result.put(repr(exc))


def simple_queue_reports_empty(q, child_can_start, parent_can_continue):
    child_can_start.wait()
    try:
        q.put(q.empty())
        q.put(q.empty())
    finally:
        parent_can_continue.set()


def echo_through_queues(inbox, outbox, count):
    for _ in range(count):
        outbox.put(inbox.get(timeout=JOIN))
    return "echoed"


def joinable_worker_in_subinterpreter(q, count):
    total = 0
    for _ in range(count):
        total += q.get(timeout=JOIN)
        q.task_done()
    return total


class Unpicklable:
    def __reduce__(self):
        raise AttributeError("Unpicklable refuses")


# --- single-process behaviour ------------------------------------------------------------------

def test_exceptions_are_the_queue_module_ones():
    assert issubclass(mc.Empty, pyqueue.Empty) and issubclass(mc.Full, pyqueue.Full)
    if hasattr(pyqueue, "ShutDown"):
        assert issubclass(mc.ShutDown, pyqueue.ShutDown)
    q = mc.Queue(1)
    with pytest.raises(pyqueue.Empty):
        q.get_nowait()
    q.put(1)
    with pytest.raises(pyqueue.Full):
        q.put_nowait(2)


def test_fifo_qsize_empty_full():
    q = mc.Queue(maxsize=3)
    assert q.qsize() == 0 and q.empty() and not q.full()
    q.put(1)
    assert q.qsize() == 1 and not q.empty()
    q.put(5)
    q.put([7])
    assert q.qsize() == 3 and q.full()
    assert [q.get(), q.get()] == [1, 5]
    assert q.qsize() == 1
    assert q.get() == [7]
    assert q.qsize() == 0 and q.empty()


def test_unbounded_when_maxsize_is_zero_or_negative():
    for maxsize in (0, -1):
        q = mc.Queue(maxsize)
        for i in range(1000):
            q.put_nowait(i)
        assert not q.full() and q.qsize() == 1000
        assert [q.get_nowait() for _ in range(1000)] == list(range(1000))


def test_get_timeout_raises_empty_after_waiting():
    q = mc.Queue()
    start = time.monotonic()
    with pytest.raises(mc.Empty):
        q.get(True, 0.2)
    assert time.monotonic() - start >= 0.19
    start = time.monotonic()
    with pytest.raises(mc.Empty):
        q.get(False, 5)  # block=False ignores the timeout
    with pytest.raises(mc.Empty):
        q.get(True, -1)  # negative timeout: do not wait (as multiprocessing)
    assert time.monotonic() - start < 4


def test_put_error_is_raised_in_put_and_the_queue_keeps_working():
    # multiprocessing reports pickling errors from its feeder thread (bpo-30414); with no
    # feeder thread the error reaches the caller, and the queue's size is unaffected.
    q = mc.Queue(maxsize=1)
    with pytest.raises(AttributeError, match="Unpicklable refuses"):
        q.put(Unpicklable())
    assert q.qsize() == 0 and q.empty()
    q.put(True)
    assert q.qsize() == 1
    assert q.get(timeout=5) is True
    assert q.empty()


def test_object_state_is_captured_at_put():
    q = mc.Queue()
    item = [1, 2]
    q.put(item)
    item.append(3)  # multiprocessing may pickle this later, in its feeder thread
    assert q.get() == [1, 2]


def test_closed_queue_put_get_raise_value_error_and_join_thread_returns():
    for q in (mc.Queue(), mc.JoinableQueue()):
        q.close()
        q.join_thread()  # does not hang
        q.cancel_join_thread()
        assert q.empty()  # unused: close() changed nothing else (as multiprocessing)
        with pytest.raises(ValueError, match="is closed"):
            q.put("foo")
        with pytest.raises(ValueError, match="is closed"):
            q.get()
    for q in (mc.Queue(), mc.JoinableQueue()):
        q.put("foo")
        q.close()
        q.join_thread()
        with pytest.raises(OSError, match="is closed"):
            q.empty()  # used: as multiprocessing, whose reader is closed by then


def test_join_thread_needs_close_first():
    q = mc.Queue()
    with pytest.raises(AssertionError, match="not closed"):
        q.join_thread()


def test_close_is_local_to_this_queue_object():
    q = mc.Queue()
    other = pickle.loads(pickle.dumps(q))  # what another process would hold
    q.close()
    other.put("still open elsewhere")
    assert other.get() == "still open elsewhere"


def test_queue_pickles_outside_process_spawning():
    q = mc.JoinableQueue(4)
    copy = pickle.loads(pickle.dumps(q))
    copy.put({"via": "copy"})
    assert q.qsize() == 1 and q.get() == {"via": "copy"}
    q.task_done()
    copy.join()  # the task count is shared too


def test_joinable_task_done_too_many_times_raises_value_error():
    q = mc.JoinableQueue()
    with pytest.raises(ValueError, match="too many times"):
        q.task_done()
    q.put(1)
    q.get()
    q.task_done()
    q.join()
    with pytest.raises(ValueError, match="too many times"):
        q.task_done()


def test_joinable_failed_put_does_not_count_a_task():
    q = mc.JoinableQueue(1)
    q.put("a")
    with pytest.raises(mc.Full):
        q.put("b", timeout=0.05)
    with pytest.raises(TypeError):
        q.put(threading.Lock())
    q.get()
    q.task_done()
    q.join()  # returns: only one task was ever counted


def test_join_waits_for_task_done_in_another_thread():
    q = mc.JoinableQueue()
    for i in range(5):
        q.put(i)
    processed = []

    def work():
        for _ in range(5):
            processed.append(q.get())
            time.sleep(0.01)
            q.task_done()

    t = threading.Thread(target=work)
    t.start()
    q.join()
    assert processed == [0, 1, 2, 3, 4]
    t.join()


def test_shutdown_put_raises_get_drains_then_raises():
    q = mc.Queue()
    q.put(1)
    q.put(2)
    q.shutdown()
    with pytest.raises(mc.ShutDown):
        q.put(3)
    assert [q.get(), q.get()] == [1, 2]
    with pytest.raises(mc.ShutDown):
        q.get()
    with pytest.raises(mc.ShutDown):
        q.get(timeout=5)


def test_shutdown_immediate_discards_items_and_counts_off_their_tasks():
    q = mc.JoinableQueue()
    for i in range(10):
        q.put({"i": i})
    assert q.get() == {"i": 0}  # taken but not yet task_done(): join() still waits for it
    q.shutdown(immediate=True)
    with pytest.raises(mc.ShutDown):
        q.get_nowait()
    with pytest.raises(mc.ShutDown):
        q.put(11)
    assert q.qsize() == 0
    joiner = threading.Thread(target=q.join)
    joiner.start()
    joiner.join(0.2)
    assert joiner.is_alive()  # the 9 discarded tasks were counted off, the taken one was not
    q.task_done()
    joiner.join(JOIN)
    assert not joiner.is_alive()


def test_shutdown_wakes_a_getter_blocked_in_another_thread():
    q = mc.Queue()
    outcome = []

    def getter():
        try:
            q.get()
        except mc.ShutDown:
            outcome.append("ShutDown")

    t = threading.Thread(target=getter)
    t.start()
    time.sleep(0.05)
    q.shutdown()
    t.join(JOIN)
    assert outcome == ["ShutDown"]


def test_simple_queue_put_get_empty_close():
    q = mc.SimpleQueue()
    assert q.empty()
    q.put({"a": 1})
    q.put([2])
    assert not q.empty()
    assert q.get() == {"a": 1} and q.get() == [2]
    q.close()
    q.close()  # closing twice does not fail
    with pytest.raises(OSError, match="is closed"):
        q.empty()


# --- across processes: fork and spawn ------------------------------------------------------------

def test_put_blocks_when_full_and_times_out(ctx):
    maxsize = 6
    q = mc.Queue(maxsize=maxsize)
    child_can_start, parent_can_continue = ctx.Event(), ctx.Event()
    p = run_child(ctx, get_six_after_event, q, child_can_start, parent_can_continue)
    assert q.empty() and not q.full()
    q.put(1)
    q.put(2, True)
    q.put(3, True, None)
    q.put(4, False)
    q.put(5, False, None)
    q.put_nowait(6)
    assert not q.empty() and q.full()  # visible at once: no feeder thread to wait for
    for attempt in (lambda: q.put(7, False), lambda: q.put(7, False, None),
                    lambda: q.put_nowait(7), lambda: q.put(7, False, 5)):
        start = time.monotonic()
        with pytest.raises(pyqueue.Full):
            attempt()
        assert time.monotonic() - start < 4  # non-blocking: no wait
    for attempt in (lambda: q.put(7, True, 0.1), lambda: q.put(7, True, timeout=0.1)):
        start = time.monotonic()
        with pytest.raises(pyqueue.Full):
            attempt()
        assert time.monotonic() - start >= 0.09
    child_can_start.set()
    assert parent_can_continue.wait(JOIN)
    assert q.empty() and not q.full()
    finish(p)


def test_get_from_a_queue_another_process_puts_into_later(ctx):
    q = mc.Queue()
    child_can_start, parent_can_continue = ctx.Event(), ctx.Event()
    p = run_child(ctx, put_two_to_five_after_event, q, child_can_start, parent_can_continue)
    assert q.empty()
    child_can_start.set()
    assert parent_can_continue.wait(JOIN)
    assert not q.empty()
    assert q.get(True, None) == 2
    assert q.get(True) == 3
    assert q.get(timeout=1) == 4
    assert q.get_nowait() == 5
    assert q.empty()
    for attempt in (lambda: q.get(False), lambda: q.get(False, None), q.get_nowait,
                    lambda: q.get(False, 5)):
        with pytest.raises(pyqueue.Empty):
            attempt()
    start = time.monotonic()
    with pytest.raises(pyqueue.Empty):
        q.get(True, 0.1)
    assert time.monotonic() - start >= 0.09
    finish(p)


def test_blocked_get_wakes_when_another_process_puts(ctx):
    q = mc.Queue()
    p = run_child(ctx, put_ten_to_nineteen, q)
    assert [q.get(timeout=JOIN) for _ in range(10)] == list(range(10, 20))
    finish(p)


def test_items_from_parent_and_child_arrive_in_order(ctx):
    q = mc.Queue()
    for i in range(10):
        q.put(i)
    p = run_child(ctx, put_ten_to_nineteen, q)
    finish(p)
    assert [q.get() for _ in range(20)] == list(range(20))
    with pytest.raises(pyqueue.Empty):
        q.get(False)


def test_joinable_task_done_and_join_across_processes(ctx):
    q, done = mc.JoinableQueue(), mc.Queue()
    workers = [run_child(ctx, worker_doing_task_done, q, done) for _ in range(2)]
    for i in range(10):
        q.put(i)
    q.join()
    assert done.qsize() == 10  # every item was processed before join() returned
    assert sorted(done.get() for _ in range(10)) == list(range(10))
    for _ in workers:
        q.put(None)
    q.join()
    for p in workers:
        finish(p)


def test_many_producers_and_consumers_exactly_once_in_order_per_producer(ctx):
    producers, consumers, per_producer = 3, 2, 400
    q, results = mc.Queue(maxsize=16), mc.Queue()  # bounded: both blocking paths run
    cs = [run_child(ctx, consumer, q, results) for _ in range(consumers)]
    ps = [run_child(ctx, producer, q, pid, per_producer) for pid in range(producers)]
    for p in ps:
        finish(p)
    for _ in cs:
        q.put(None)
    received = [results.get(timeout=JOIN) for _ in cs]
    for p in cs:
        finish(p)
    every = sorted(item for got in received for item in got)
    assert every == [(pid, seq) for pid in range(producers) for seq in range(per_producer)]
    for got in received:
        for pid in range(producers):
            seqs = [seq for who, seq in got if who == pid]
            assert seqs == sorted(seqs)


def test_child_that_put_items_exits_without_waiting_for_a_reader(ctx):
    # multiprocessing's classic hang: a child that put data exits only after its feeder
    # thread flushed the pipe, i.e. after someone reads. Here items are in shared memory.
    q = mc.Queue()
    p = run_child(ctx, put_then_exit_without_reader, q, 200)
    finish(p)
    p2 = run_child(ctx, put_then_cancel_join_thread, q, 5)
    finish(p2)
    got = [q.get(timeout=JOIN) for _ in range(205)]
    assert [item["i"] for item in got[:200]] == list(range(200))
    assert got[200:] == list(range(5))


def test_a_queue_travels_through_another_queue(ctx):
    outer, received = mc.Queue(), ctx.Event()
    p = run_child(ctx, put_queue_into_queue, outer, received)
    inner = outer.get(timeout=JOIN)
    received.set()
    finish(p)
    assert isinstance(inner, mc.Queue)
    assert inner.get(timeout=JOIN) == "through a queue inside a queue"


def test_shutdown_wakes_a_getter_blocked_in_another_process(ctx):
    q, result = mc.Queue(), mc.Queue()
    started = ctx.Event()
    p = run_child(ctx, blocked_get_until_shutdown, q, started, result)
    assert started.wait(JOIN)
    time.sleep(0.1)  # let it block in get()
    q.shutdown()
    assert result.get(timeout=JOIN) == "ShutDown"
    finish(p)


def test_simple_queue_empty_seen_from_a_child(ctx):
    q = mc.SimpleQueue()
    child_can_start, parent_can_continue = ctx.Event(), ctx.Event()
    p = run_child(ctx, simple_queue_reports_empty, q, child_can_start, parent_can_continue)
    assert q.empty()
    child_can_start.set()
    assert parent_can_continue.wait(JOIN)
    assert not q.empty()
    assert q.get() is True and q.get() is False
    assert q.empty()
    finish(p)


# --- between subinterpreters ---------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["heap", "shm"])
def test_queues_between_subinterpreters(backend):
    interpreters = pytest.importorskip("memchannel.interpreters")
    inbox, outbox = mc.Queue(backend=backend), mc.Queue(backend=backend)
    items = [{"n": i, "tags": ["a"] * i} for i in range(20)]
    with interpreters.create() as interp:
        thread = interp.call_in_thread(echo_through_queues, inbox, outbox, len(items))
        for item in items:
            inbox.put(item)
        assert [outbox.get(timeout=JOIN) for _ in items] == items
        thread.join()
        assert thread.exception is None and thread.result == "echoed"


def test_joinable_queue_task_done_in_a_subinterpreter():
    interpreters = pytest.importorskip("memchannel.interpreters")
    q = mc.JoinableQueue(backend="heap")
    with interpreters.create() as interp:
        thread = interp.call_in_thread(joinable_worker_in_subinterpreter, q, 50)
        for i in range(50):
            q.put(i)
        q.join()  # returns once the subinterpreter called task_done() for all 50
        thread.join()
        assert thread.exception is None and thread.result == sum(range(50))
