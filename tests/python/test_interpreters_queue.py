"""memchannel.interpreters.create_queue() / Queue: 3.14's concurrent.interpreters queue on
memchannel channels (python/memchannel/_queues.py), on CPython 3.12 and 3.13."""

import pickle
import queue
import textwrap
import threading

import pytest

from memchannel import interpreters

pytestmark = pytest.mark.timeout(60)


def test_put_get_fifo_and_sizes():
    q = interpreters.create_queue(3)
    assert (q.maxsize, q.qsize(), q.empty(), q.full()) == (3, 0, True, False)
    for item in (1, "two", [3]):
        q.put(item)
    assert (q.qsize(), q.empty(), q.full()) == (3, False, True)
    assert [q.get(), q.get(), q.get_nowait()] == [1, "two", [3]]
    assert interpreters.create_queue().maxsize == 0  # no limit


def test_empty_and_full_raise_the_stdlib_exceptions():
    assert issubclass(interpreters.QueueEmpty, queue.Empty)
    assert issubclass(interpreters.QueueFull, queue.Full)
    q = interpreters.create_queue(1)
    with pytest.raises(interpreters.QueueEmpty):
        q.get_nowait()
    with pytest.raises(interpreters.QueueEmpty):
        q.get(timeout=0.05)  # a float timeout, then the error
    q.put(1)
    with pytest.raises(interpreters.QueueFull):
        q.put_nowait(2)
    with pytest.raises(interpreters.QueueFull):
        q.put(2, timeout=0.05)
    with pytest.raises(ValueError):
        q.get(timeout=-1)
    assert q.get() == 1  # nothing was lost


def test_queue_ids_and_identity():
    q = interpreters.create_queue()
    assert interpreters.Queue(q.id) is q
    with pytest.raises(TypeError):
        interpreters.Queue(str(q.id))
    with pytest.raises(interpreters.QueueNotFoundError):
        interpreters.Queue(q.id + 1_000_000)
    assert pickle.loads(pickle.dumps(q)) is q
    assert pickle.loads(pickle.dumps(interpreters.UNBOUND)) is interpreters.UNBOUND


def test_values_are_copied_and_unpicklable_ones_are_not_shareable():
    q = interpreters.create_queue()
    value = {"a": [1, 2]}
    q.put(value)
    got = q.get()
    assert got == value and got is not value
    with pytest.raises(interpreters.NotShareableError):
        q.put(threading.Lock())
    assert q.empty()


def test_shared_between_interpreters_both_ways():
    to_worker = interpreters.create_queue()
    from_worker = interpreters.create_queue()
    with interpreters.create() as interp:
        interp.prepare_main(inbox=to_worker, outbox=from_worker)
        interp.exec(textwrap.dedent("""
            from memchannel import interpreters
            assert interpreters.Queue(inbox.id) is inbox  # the same queue object there
            outbox.put(("ready", inbox.id))
        """))
        assert from_worker.get(timeout=10) == ("ready", to_worker.id)
        worker = interp.call_in_thread(echo_until_none, to_worker, from_worker)
        for item in (1, b"bytes", {"k": (1.5, None)}):
            to_worker.put(item)
            assert from_worker.get(timeout=10) == item
        to_worker.put(None)
        worker.join()
        assert worker.exception is None


def echo_until_none(inbox, outbox):
    while True:
        item = inbox.get()  # blocks in the channel's wait, no polling
        if item is None:
            return
        outbox.put(item)


def queue_filled_by_a_destroyed_interpreter(**put_options):
    q = interpreters.create_queue()
    with interpreters.create() as interp:
        interp.prepare_main(q=q)
        interp.call(put_items, q, put_options)
    return q


def put_items(q, options):
    q.put("first", **options)
    q.put("second", **options)


def test_unbound_items_default_to_the_unbound_marker():
    q = queue_filled_by_a_destroyed_interpreter()
    assert q.get() is interpreters.UNBOUND
    assert q.get() is interpreters.UNBOUND


def test_unbound_error_raises_item_interpreter_destroyed():
    q = queue_filled_by_a_destroyed_interpreter(unbounditems=interpreters.UNBOUND_ERROR)
    with pytest.raises(interpreters.ItemInterpreterDestroyed):
        q.get()


def test_unbound_remove_skips_the_items():
    q = queue_filled_by_a_destroyed_interpreter(unbounditems=interpreters.UNBOUND_REMOVE)
    q.put("mine")
    assert q.get() == "mine"
    with pytest.raises(interpreters.QueueEmpty):
        q.get_nowait()


def test_unbounditems_default_comes_from_create_queue_and_is_checked():
    q = interpreters.create_queue(unbounditems=interpreters.UNBOUND_REMOVE)
    with interpreters.create() as interp:
        interp.call(put_items, q, {})
    with pytest.raises(interpreters.QueueEmpty):
        q.get(timeout=0.05)
    with pytest.raises(ValueError):
        interpreters.create_queue(unbounditems="something else")


def test_items_of_a_live_interpreter_are_delivered():
    q = interpreters.create_queue(unbounditems=interpreters.UNBOUND_ERROR)
    with interpreters.create() as interp:
        interp.call(put_items, q, {})
        assert [q.get(), q.get()] == ["first", "second"]


def put_numbered(q, sender, count):
    for i in range(count):
        q.put((sender, i))


def test_many_interpreters_put_at_once_and_every_item_arrives_once_in_order_per_sender():
    q = interpreters.create_queue(maxsize=8)  # small: the senders block on a full queue
    workers = [interpreters.create() for _ in range(3)]
    try:
        threads = [w.call_in_thread(put_numbered, q, n, 200) for n, w in enumerate(workers)]
        got = [q.get(timeout=30) for _ in range(600)]
        for thread in threads:
            thread.join()
            assert thread.exception is None
    finally:
        for w in workers:
            w.close()
    for sender in range(3):
        assert [i for s, i in got if s == sender] == list(range(200))
    assert q.empty()
