"""Isolated subinterpreters (own GIL) sharing channels with the main interpreter."""

import gc
import struct
import sys

import pytest

import memchannel as mc
from memchannel import interpreters

import _interp_workers as w


def test_extension_imports_in_an_isolated_subinterpreter():
    with interpreters.create() as interp:
        assert interp.call(w.import_extension) == ("memchannel._memchannel", "Channel")


def test_four_subinterpreters_in_four_threads_send_into_one_channel():
    ch = mc.Channel(maxsize=8192, backend="heap")
    per_sender = 100_000
    workers = [interpreters.create() for _ in range(4)]
    threads = [wk.call_in_thread(w.send_numbered, ch, i, per_sender) for i, wk in enumerate(workers)]
    next_seq = [0] * 4
    for _ in range(4 * per_sender):
        with ch.recv(timeout=60) as buf:
            sender, seq = struct.unpack("<II", buf)
        assert seq == next_seq[sender]
        next_seq[sender] += 1
    for t in threads:
        t.join()
        assert t.result == per_sender
    for wk in workers:
        wk.close()
    assert next_seq == [per_sender] * 4
    with pytest.raises(mc.Empty):
        ch.recv_nowait()  # nothing duplicated
    assert ch.stats()["blocks_in_use"] == 0


@pytest.mark.parametrize("backend", ["heap", "shm"])
def test_channel_created_in_a_subinterpreter_drains_in_main(backend):
    with interpreters.create() as interp:
        ch = interp.call(w.make_channel_and_fill, backend, 50)
    # The creating interpreter is gone; the channel lives on for its other users.
    assert [struct.unpack("<I", ch.recv(timeout=5))[0] for _ in range(50)] == list(range(50))


@pytest.mark.parametrize("backend", ["heap", "shm"])
def test_channel_created_in_main_drains_in_a_subinterpreter(backend):
    ch = mc.Channel(backend=backend)
    for i in range(30):
        ch.send(struct.pack("<I", i))
    with interpreters.create() as interp:
        assert interp.call(w.drain, ch, 30) == list(range(30))


def test_channel_keeps_working_after_a_subinterpreter_using_it_closes():
    ch = mc.Channel(backend="heap")
    interp = interpreters.create()
    interp.call(w.send_numbered, ch, 7, 10)
    interp.close()
    ch.send(b"after close")
    got = [bytes(ch.recv(timeout=5)) for _ in range(11)]
    assert got[-1] == b"after close"
    assert [struct.unpack("<II", g) for g in got[:10]] == [(7, i) for i in range(10)]


def test_destroying_an_interpreter_that_holds_buffers_leaks_no_blocks():
    ch = mc.Channel(backend="heap")
    for i in range(20):
        ch.send(b"x" * 1000)
    interp = interpreters.create()
    assert interp.call(w.hold_buffers, ch, 20) == 20
    assert ch.stats()["blocks_in_use"] == 20
    interp.close()
    gc.collect()
    assert ch.stats()["blocks_in_use"] == 0


@pytest.mark.parametrize("backend", ["heap", "shm"])
def test_buffer_memory_reused_in_an_interpreter_is_freed_with_it(backend):
    # Each interpreter reuses the memory of its freed Buffer objects (pybind/buffer.cc): that
    # memory, and Buffers still held at close, go with the interpreter; interpreters made later
    # (their states at reused addresses) and the main interpreter are not touched by it.
    ch = mc.Channel(backend=backend)
    for round_ in range(4):
        small, large = b"s%d" % round_, b"L" * 1000
        for i in range(3 * 64):
            ch.send(small if i % 2 else large)
        for _ in range(5):
            ch.send(small)
        interp = interpreters.create()
        assert interp.call(w.drop_then_hold, ch, 3, 5) == 3 * 64 + 5
        interp.close()
        gc.collect()
        assert ch.stats()["blocks_in_use"] == 0
        ch.send_many([small] * 100)
        got = ch.recv_many(100, timeout=5)
        assert [bytes(b) for b in got] == [small] * 100
        del got

