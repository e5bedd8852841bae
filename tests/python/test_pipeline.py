"""Zero-copy frame pipeline across a process, a subinterpreter and another process."""

import multiprocessing as mp

import pytest

import memchannel as mc
from memchannel import interpreters, pipeline

FRAMES = 12


def test_frames_cross_processes_and_an_interpreter_without_copies():
    pytest.importorskip("numpy")
    ctx = mp.get_context("spawn")
    arena = mc.Arena()
    a, b, c = arena.channel(maxsize=3), arena.channel(maxsize=3), arena.channel(maxsize=3)
    copied = arena.stats()["bytes_copied"]
    producer = ctx.Process(target=pipeline.produce, args=(a, FRAMES, pipeline.FRAME_SHAPE, True), daemon=True)
    process_stage = ctx.Process(target=pipeline.forward, args=(b, c, FRAMES), daemon=True)
    producer.start()
    process_stage.start()
    with interpreters.create() as interp:  # a stage in a subinterpreter of this process
        stage = interp.call_in_thread(pipeline.forward, a, b, FRAMES)
        consumer_addresses = pipeline.consume(c, FRAMES)
        stage.join()
        interpreter_addresses = stage.result
    producer.join(30)
    process_stage.join(30)
    assert producer.exitcode == 0 and process_stage.exitcode == 0
    # The subinterpreter stage and the consumer share this process's mapping: each frame was
    # seen at the same address by both, so no stage copied it.
    assert interpreter_addresses == consumer_addresses
    assert arena.stats()["bytes_copied"] == copied == 0
    assert arena.stats()["blocks_in_use"] == 0


def test_forwarding_between_channels_of_one_arena_keeps_the_address():
    arena = mc.Arena(backend="heap")
    a, b = arena.channel(), arena.channel()
    buf = a.reserve(shape=(4, 4), format="<i")
    address = buf.address
    a.send(buf)
    b.send(a.recv())
    out = b.recv()
    assert out.address == address and out.shape == (4, 4) and out.format == "<i"
    assert arena.stats()["bytes_copied"] == 0
