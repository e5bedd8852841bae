"""The public API as a typed program would use it. `make test` runs mypy --strict on this file
(and on docs/examples), so the stubs (py.typed, *.pyi) must describe what runs here; pytest
runs it too, so what it types is also what the package does."""

from __future__ import annotations

import inspect
import os
import queue
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

import pytest

import memchannel as mc
from memchannel import _memchannel, errors, executor, queues


def square(x: int) -> int:
    return x * x


def test_channel_buffer_and_arena_types() -> None:
    ch: mc.Channel = mc.Channel(4, maxbytes=1 << 20, backend="heap")
    ch.send(b"abc", block=True, timeout=1.0)
    ch.send(bytearray(b"de"), timeout=None)
    buf: mc.Buffer = ch.recv(timeout=5)
    with buf:
        assert bytes(memoryview(buf)) == b"abc"
        assert buf.nbytes == 3 and buf.format == "B" and buf.shape == (3,) and not buf.released
    assert buf.released
    assert ch.recv_nowait().tobytes() == b"de"
    with pytest.raises(mc.Empty):
        ch.recv(block=False)
    tracker: mc.Tracker = ch.send(b"tracked", track=True)
    assert not tracker.done
    ch.recv().release()
    released: bool = tracker.wait(5)
    assert released and tracker.done

    arena: mc.Arena = mc.Arena(capacity=8 << 20, backend="shm")
    a, b = arena.channel(), arena.channel(maxsize=2, maxbytes=4096)
    out: mc.Buffer = arena.reserve(format="i", shape=(2, 3))
    written: int = out.write(bytes(24))
    assert written == 24 and out.ndim == 2 and out.itemsize == 4
    a.send(out)  # a Buffer moves to any channel of its arena without a copy
    moved = a.recv(timeout=5)
    b.send(moved)
    assert b.qsize() == 1 and not b.empty() and not b.full()
    stats: dict[str, Any] = b.stats()
    assert stats["queued"] == 1
    assert isinstance(arena.capacity, int) and arena.name.startswith("memchannel-")
    handle: bytes = b.handle
    again: mc.Channel = mc.Channel.attach(handle)
    assert len(again.recv(timeout=5)) == 2
    again.send_object({"k": [1, 2]})
    assert again.recv_object(timeout=5) == {"k": [1, 2]}
    for channel in (a, b, again):
        channel.close()
    assert b.closed
    with pytest.raises(mc.ChannelClosed):
        b.send(b"x")


def test_errors_are_the_documented_classes() -> None:
    issubclasses: list[tuple[type[BaseException], type[BaseException]]] = [
        (mc.Empty, queue.Empty), (mc.Full, queue.Full), (mc.CapacityError, ValueError),
        (mc.ChannelNotFound, LookupError), (mc.WaitCancelled, mc.MemChannelError),
        (mc.CorruptionError, errors.MemChannelError), (mc.ChannelClosed, mc.MemChannelError),
    ]
    for sub, base in issubclasses:
        assert issubclass(sub, base)


def test_queues() -> None:
    q: mc.Queue = mc.Queue(maxsize=2, backend="heap")
    q.put({"a": 1}, timeout=1.0)
    q.put_nowait(2)
    assert q.full() and q.qsize() == 2
    assert q.get(timeout=5) == {"a": 1} and q.get_nowait() == 2
    q.shutdown()
    with pytest.raises(mc.ShutDown):
        q.put(3)

    jq: queues.JoinableQueue = mc.JoinableQueue(backend="heap")
    jq.put("task")
    assert jq.get() == "task"
    jq.task_done()
    jq.join()

    sq: mc.SimpleQueue = mc.SimpleQueue(backend="heap")
    sq.put(b"x")
    assert sq.get() == b"x" and sq.empty()
    sq.close()


def test_interpreter_pool() -> None:
    with mc.InterpreterPoolExecutor(max_workers=1) as pool:
        future: Future[int] = pool.submit(square, 7)
        assert future.result(timeout=60) == 49
        results: list[int] = list(pool.map(square, [1, 2, 3], timeout=60))
        assert results == [1, 4, 9]
        assert pool.stats()["tasks_done"] >= 4
    serial = executor.SerialExecutor()
    assert serial.submit(square, 3).result() == 9


def test_public_python_signatures_are_real() -> None:
    # Pure-Python API: inspect.signature sees the real parameters.
    assert list(inspect.signature(mc.Channel.send_object).parameters) == ["self", "obj", "block", "timeout"]
    assert list(inspect.signature(mc.Arena.reserve).parameters) == ["self", "nbytes", "format", "shape", "timeout"]
    assert list(inspect.signature(mc.Queue.put).parameters) == ["self", "obj", "block", "timeout"]
    assert "max_workers" in inspect.signature(mc.InterpreterPoolExecutor).parameters
    assert "kinds" in inspect.signature(mc.compare).parameters
    # The extension: help() shows each method's parameters (from its __text_signature__).
    assert "timeout" in inspect.signature(_memchannel.Channel.reserve).parameters
    assert "timeout" in inspect.signature(_memchannel.Channel.recv).parameters


def test_stubs_catch_wrong_calls(tmp_path: Path) -> None:
    """The stubs are real types: mypy rejects calls the extension rejects at run time."""
    mypy = shutil.which("mypy", path=os.path.dirname(sys.executable))
    if mypy is None:
        pytest.skip("mypy is not installed in this environment (make venv installs it)")
    bad = tmp_path / "bad.py"
    bad.write_text(textwrap.dedent("""
        import memchannel as mc
        ch = mc.Channel(backend="disk")
        ch.send(42)
        buf: bytes = ch.recv()
        ch.reserve(8, format=1)
        mc.Queue().put(1, timeout="soon")
    """))
    completed = subprocess.run([mypy, "--no-incremental", "--strict", str(bad)],
                               capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert completed.returncode == 1, completed.stdout + completed.stderr
    out = completed.stdout
    for line in (3, 4, 5, 6, 7):
        assert f"bad.py:{line}: error:" in out, out


def test_extension_methods_have_inspectable_signatures() -> None:
    expected: list[tuple[Callable[..., Any], list[str]]] = [
        (mc.Channel.send, ["self", "data", "block", "timeout", "track"]),
        (mc.Channel.recv, ["self", "block", "timeout"]),
        (mc.Channel.send_nowait, ["self", "data"]),
        (_memchannel.Channel.reserve, ["self", "nbytes", "format", "shape", "timeout"]),
        (mc.Channel.close, ["self"]),
        (mc.Channel.qsize, ["self"]),
        (mc.Buffer.write, ["self", "data", "offset"]),
        (mc.Buffer.release, ["self"]),
        (mc.Arena.stats, ["self"]),
        (mc.Arena.reap, ["self"]),
    ]
    for method, names in expected:
        assert list(inspect.signature(method).parameters) == names, method
    # Bound methods drop self, as for Python methods.
    ch = mc.Channel(backend="heap")
    assert list(inspect.signature(ch.send).parameters) == ["data", "block", "timeout", "track"]
    assert list(inspect.signature(ch.qsize).parameters) == []
    assert inspect.signature(ch.reserve).parameters["format"].default == "B"
    assert inspect.signature(ch.reserve).parameters["format"].kind is inspect.Parameter.KEYWORD_ONLY
    # Every public method of the extension's types has a signature and a docstring.
    for cls in (_memchannel.Channel, _memchannel.Arena, mc.Buffer):
        for name, member in vars(cls).items():
            if name.startswith("_") and name not in ("__init__", "__iter__", "__next__", "__enter__", "__exit__"):
                continue
            if not callable(member) or isinstance(member, (property, type)):
                continue
            inspect.signature(member)
            assert (member.__doc__ or "").strip(), (cls, name)
