"""Property-based tests of the Python API (hypothesis); see docs/testing.md.

A hypothesis state machine drives random sequences of Channel / Buffer operations over both
backends, with random argument types and values, and checks after every step:

1. only the exception types documented for that operation are raised (``ALLOWED`` below,
   from docs/design.md's Semantics table and the docstrings), and where the model knows the
   answer, exactly the right one (a send on a closed channel is ChannelClosed, a recv on an
   empty open one is Empty, a bad timeout is TypeError or ValueError, ...);
2. nothing crashes: every property runs in a child process (``python test_properties.py
   NAME``), so a segfault or an abort is a test failure that shows the child's output and the
   steps of the example that crashed (each step is written to a log file before it runs);
3. the arena's ``blocks_in_use`` equals what the model says is held (live Buffers, queued
   messages, received objects viewing their block) after every step, and ``stats()`` comes
   back to its baseline (blocks_in_use, bytes_in_use, queued) once everything is released and
   drained at the end; ``census()`` is then consistent and no segment is left in /dev/shm.

A model of every queue checks that what was sent comes back in FIFO order with identical
bytes, format and shape (one consumer: the test), and that objects sent with send_object come
back equal.

Run time: the ``ci`` profile is derandomized (the same examples every run) and bounded
(MEMCHANNEL_PROPS_EXAMPLES, default 200 examples of at most 30 steps per backend). For a
longer local run: ``MEMCHANNEL_PROPS_EXAMPLES=5000 MEMCHANNEL_PROPS_SEED=random pytest
tests/python/test_properties.py`` (random examples; a failure prints a @reproduce_failure blob).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD_TIMEOUT = 600  # seconds; a hang is a failure too (faulthandler dumps every thread first)


def run_child(name: str, *args: str) -> None:
    """Runs property ``name`` in a fresh interpreter; any failure or crash fails the test."""
    from conftest import SHM_PREFIX
    import memchannel._memchannel as _mc

    prefix = SHM_PREFIX + "props-" + name.replace("_", "") + "-" + "-".join(args) + "-"
    with tempfile.TemporaryDirectory(prefix="memchannel-props-") as tmp:
        log = os.path.join(tmp, "steps.log")
        env = dict(os.environ, MEMCHANNEL_SHM_PREFIX=prefix, MEMCHANNEL_PROPS_LOG=log,
                   PYTHONFAULTHANDLER="1")
        try:
            proc = subprocess.run(
                [sys.executable, "-X", "faulthandler", os.path.abspath(__file__), name, *args],
                env=env, cwd=tmp, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
            rc, out, err = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as e:
            rc, out, err = "timeout", e.stdout or "", e.stderr or ""
            out, err = (s.decode(errors="replace") if isinstance(s, bytes) else s for s in (out, err))
        steps = open(log).read() if os.path.exists(log) else ""
    left = _mc._list_segments(prefix)
    if rc != 0:
        what = ("crashed with signal %d" % -rc) if isinstance(rc, int) and rc < 0 else "failed (%s)" % rc
        msg = "property %s %s %s\n--- stdout (tail)\n%s\n--- stderr (tail)\n%s" % (
            name, " ".join(args), what, out[-12000:], err[-12000:])
        if isinstance(rc, int) and rc < 0 or rc == "timeout":
            msg += "\n--- steps of the example that was running (in order)\n" + steps[-8000:]
        pytest.fail(msg, pytrace=False)
    assert not left, "segments left in /dev/shm after the child exited: %r" % left


@pytest.mark.parametrize("backend", ["heap", "shm"])
def test_api_state_machine(backend):
    run_child("machine", backend)


@pytest.mark.parametrize("backend", ["heap", "shm"])
def test_fresh_arena_sizes(backend):
    run_child("fresh_sizes", backend)


def test_uninitialised_objects():
    run_child("uninitialised")


# =============================================================================================
# Everything below runs in the child process only (python test_properties.py NAME [BACKEND]):
# model, strategies and the state machine, so that collecting this file in the pytest process
# stays cheap.

if __name__ == "__main__":
    import array
    import gc
    import math
    import pickle
    import queue
    import struct
    from decimal import Decimal
    from fractions import Fraction

    import hypothesis
    from hypothesis import HealthCheck, given, note, settings, strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

    import memchannel as mc
    from memchannel import _memchannel

    try:
        import numpy as np
    except ImportError:  # the suite runs without numpy too, with fewer argument types
        np = None

    EXAMPLES = int(os.environ.get("MEMCHANNEL_PROPS_EXAMPLES", "200"))
    SEED = os.environ.get("MEMCHANNEL_PROPS_SEED", "")
    settings.register_profile(
        "ci", max_examples=EXAMPLES, stateful_step_count=30, deadline=None,
        derandomize=(SEED != "random"), database=None, print_blob=(SEED == "random"),
        suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
        phases=[p for p in hypothesis.Phase if p != hypothesis.Phase.shrink or not os.environ.get("MEMCHANNEL_PROPS_NOSHRINK")])
    settings.load_profile("ci")

    MC_ERRORS = (mc.Empty, mc.Full, mc.ChannelClosed, mc.ChannelNotFound, mc.CapacityError,
                 mc.CorruptionError, mc.MemChannelError)

    # -----------------------------------------------------------------------------------------
    # The documented exception types, per operation (docs/design.md "Semantics (Python)", the
    # docstrings of memchannel.Channel / Buffer / errors). An operation may raise only these; the
    # model below narrows them further where it knows the state (e.g. exactly Empty).
    #   send / send_nowait: TypeError (no buffer protocol, suboffsets, pointer items 'O', bad
    #       timeout type), ValueError (Buffer already sent/released, bad timeout value, > 32
    #       dims), BufferError (a Buffer with live exports), Full, CapacityError, ChannelClosed.
    #   recv / recv_nowait / next(): TypeError, ValueError (timeout), Empty, ChannelClosed.
    #   reserve: TypeError (argument types, pointer formats, neither nbytes nor shape),
    #       ValueError (negative / too large / inconsistent sizes, unknown format), CapacityError
    #       (can never fit), Full (timeout), ChannelClosed (allowed, not required).
    #   Buffer.release / with: BufferError (exports). Buffer.write: TypeError (not a C-contiguous
    #       bytes-like object, offset type), ValueError (released/sent, overrun, negative offset).
    #   Buffer.tobytes / memoryview() / np.asarray() / attributes: ValueError once released/sent.
    #   close(): nothing. Channel.attach: TypeError, ValueError (not a handle), ChannelNotFound,
    #       MemChannelError (another process's heap channel). pickle: as attach.
    #   send_object: the exception pickle.dumps raises for the object, else as send.
    #   recv_object: as recv, plus CorruptionError for a message not sent with send_object.
    # OverflowError, RuntimeError, SystemError, AttributeError etc. are documented nowhere.
    ALLOWED = {
        "send": (TypeError, ValueError, BufferError, mc.Full, mc.CapacityError, mc.ChannelClosed),
        "recv": (TypeError, ValueError, mc.Empty, mc.ChannelClosed),
        "reserve": (TypeError, ValueError, mc.Full, mc.CapacityError, mc.ChannelClosed),
        "release": (BufferError,),
        "write": (TypeError, ValueError),
        "read": (ValueError,),
        "attach": (TypeError, ValueError, mc.ChannelNotFound, mc.MemChannelError),
        "recv_object": (TypeError, ValueError, mc.Empty, mc.ChannelClosed, mc.CorruptionError),
        "construct": (TypeError, ValueError, mc.MemChannelError),
    }

    LOG_FD = None

    def log_reset():
        global LOG_FD
        path = os.environ.get("MEMCHANNEL_PROPS_LOG")
        if not path:
            return
        if LOG_FD is not None:
            os.close(LOG_FD)
        LOG_FD = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)

    def log_step(text):
        note(text)
        if LOG_FD is not None:
            os.write(LOG_FD, (text + "\n").encode("utf-8", "replace"))

    class Unexpected(AssertionError):
        pass

    # `expect`: None = any type documented for the operation, success allowed; a tuple of
    # types = exactly one of these must be raised; MAY_SUCCEED in the tuple = or success.
    MAY_SUCCEED = ("may-succeed",)

    def may(*types):
        return tuple(types) + MAY_SUCCEED

    def must(*types):
        return tuple(types)

    def call(op, what, fn, expect=None):
        """Runs fn() and returns (result, exception); raises Unexpected when the outcome is not
        allowed (see `expect`)."""
        log_step(what)
        types = ALLOWED[op] if expect is None else tuple(t for t in expect if isinstance(t, type))
        may_succeed = expect is None or MAY_SUCCEED[0] in expect or not types
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - classifying is the point
            if not isinstance(e, types):
                raise Unexpected("%s raised %s: %s (allowed here: %s)" % (
                    what, type(e).__name__, e, ", ".join(t.__name__ for t in types) or "none")) from e
            return None, e.with_traceback(None)  # no frame may keep a Buffer alive
        if not may_succeed:
            raise Unexpected("%s succeeded (returned %r) but must raise %s" % (
                what, result, " or ".join(t.__name__ for t in types)))
        return result, None

    # -----------------------------------------------------------------------------------------
    # Argument values and their classification.

    class NoBuffer:
        """An object without the buffer protocol."""

        def __repr__(self):
            return "NoBuffer()"

    NAN = float("nan")

    def classify_timeout(t):
        """'ok' (a valid finite number), 'forever' (valid, never expires), 'maybe' (a number
        type the docs neither promise nor refuse: TypeError or accepted), 'type', 'value'."""
        if t is None:
            return "forever"
        if isinstance(t, bool) or (np is not None and isinstance(t, np.bool_)):
            return "type"
        if isinstance(t, (int, float)) or (np is not None and isinstance(t, (np.int64, np.float64))):
            v = float(t) if not (isinstance(t, int) and abs(t) > 2**1000) else (math.inf if t > 0 else -math.inf)
            if math.isnan(v) or v < 0:
                return "value"
            return "forever" if v >= 1e9 else "ok"
        if np is not None and isinstance(t, (np.integer, np.floating)) or isinstance(t, (Fraction, Decimal)):
            v = float(t)
            if math.isnan(v) or v < 0:
                return "maybe-value"
            return "maybe"
        return "type"

    SMALL_TIMEOUTS = [0, 0.0, 0.001, 0.002, 1e-9]
    BAD_TIMEOUTS = [-1, -0.001, -(2**70), NAN, -math.inf, "0.1", b"1", [0.01], True, False,
                    NoBuffer(), complex(0.01, 0)]
    MAYBE_TIMEOUTS = [Fraction(1, 1000), Decimal("0.001")]
    HUGE_TIMEOUTS = [None, math.inf, 1e300, 2**64, 2**2000, 10**9]
    if np is not None:
        SMALL_TIMEOUTS += [np.float64(0.001), np.int64(0), np.float64(0.0)]
        BAD_TIMEOUTS += [np.bool_(True), np.float64(NAN), np.int64(-1), np.float64(-1.0)]
        MAYBE_TIMEOUTS += [np.float32(0.001), np.int32(0), np.uint8(0), np.float16(0.0)]

    def timeouts(can_block_forever):
        """Timeouts for a call; huge ones only where the model says the call cannot wait."""
        opts = SMALL_TIMEOUTS + BAD_TIMEOUTS + MAYBE_TIMEOUTS
        if can_block_forever:
            opts = opts + HUGE_TIMEOUTS
        return st.sampled_from(opts)

    def timeout_expect(t, block=True):
        """Exception types a bad timeout adds (with block=False the timeout may be ignored)."""
        c = classify_timeout(t)
        if c in ("ok", "forever", "maybe"):
            return (), (TypeError,) if c == "maybe" else ()
        if c == "maybe-value":
            return ((TypeError, ValueError), ()) if block else ((), (TypeError, ValueError))
        err = TypeError if c == "type" else ValueError
        return ((err,), ()) if block else ((), (err,))

    # Data for send() / write(): any object; the model computes what it must do.
    def _nd(draw, dtype):
        shape = draw(st.lists(st.integers(0, 5), min_size=0, max_size=3))
        n = int(np.prod(shape)) if shape else 1
        if np.dtype(dtype).hasobject:
            flat = np.empty(n, dtype=dtype)
        else:
            flat = np.frombuffer(draw(st.binary(min_size=n * np.dtype(dtype).itemsize,
                                                max_size=n * np.dtype(dtype).itemsize)), dtype=dtype).copy()
        a = flat.reshape(shape)
        how = draw(st.sampled_from(["c", "f", "slice", "T"]))
        if how == "f":
            a = np.asfortranarray(a)
        elif how == "slice" and a.ndim >= 1:
            a = a[::2]
        elif how == "T":
            a = a.T
        return a

    DTYPES = ["u1", "<i4", ">i8", "<f8", "f4", "c16", "?", "<U3", "S4", "V8", "e",
              [("a", "<i4"), ("b", "<f8")], "O", [("a", "<i4"), ("o", "O")]]

    @st.composite
    def payloads(draw):
        kind = draw(st.sampled_from(
            ["bytes", "bytes", "bytearray", "memoryview", "noncontig", "cast", "array", "big",
             "numpy", "numpy", "npscalar", "nobuffer"]))
        if kind == "bytes":
            return draw(st.binary(max_size=300))
        if kind == "bytearray":
            return bytearray(draw(st.binary(max_size=300)))
        if kind == "memoryview":
            return memoryview(draw(st.binary(max_size=300)))
        if kind == "noncontig":
            step = draw(st.integers(2, 3))
            return memoryview(draw(st.binary(max_size=200)))[::step]
        if kind == "cast":
            rows = draw(st.integers(0, 6))
            cols = draw(st.integers(1, 6))
            fmt = draw(st.sampled_from(["B", "i", "d", "q"]))
            size = struct.calcsize(fmt)
            raw = draw(st.binary(min_size=rows * cols * size, max_size=rows * cols * size))
            mv = memoryview(raw)
            return mv.cast(fmt, shape=[rows, cols]) if rows and draw(st.booleans()) else mv.cast(fmt)
        if kind == "array":
            code = draw(st.sampled_from("bBhHiIlLqQfdw" if sys.version_info >= (3, 13) else "bBhHiIlLqQfd"))
            if code == "w":
                return array.array("w", draw(st.text(max_size=20)))
            raw = draw(st.binary(max_size=64))
            size = array.array(code).itemsize
            return array.array(code, raw[: len(raw) // size * size])
        if kind == "big":
            return bytes(draw(st.sampled_from([256 * 1024, 300 * 1024, 70 * 1024])))
        if kind in ("numpy", "npscalar") and np is None:
            return draw(st.binary(max_size=16))
        if kind == "numpy":
            dtype = draw(st.sampled_from(DTYPES))
            return _nd(draw, dtype)
        if kind == "npscalar":
            return draw(st.sampled_from([np.float64(2.5), np.int64(-3), np.uint8(7), np.float32(NAN),
                                         np.bool_(True), np.complex64(1j)]))
        return draw(st.sampled_from([None, 0, -1, 2**100, 3.5, NAN, "text", True, NoBuffer(),
                                     [1, 2], {"a": 1}, (b"x",), Fraction(1, 3)]))

    def buffer_info(data):
        """(bytes, format, shape, has_pointers) the receiver must see for send(data), or None when
        data has no buffer protocol (TypeError)."""
        try:
            with memoryview(data) as mv:
                fmt = mv.format
                return mv.tobytes(), fmt, tuple(mv.shape), "O" in fmt, mv.c_contiguous, mv.ndim
        except (TypeError, BufferError):
            return None
        except (NotImplementedError, ValueError):  # formats memoryview.tobytes cannot walk
            return "opaque"

    def has_pointers(data):
        if np is not None and isinstance(data, np.ndarray):
            return data.dtype.hasobject
        info = buffer_info(data)
        return isinstance(info, tuple) and info[3]

    # Formats for reserve(): (format, expected: 'ok' / TypeError / ValueError / 'either').
    FORMATS = [("B", "ok"), ("b", "ok"), ("<i4", "ok"), ("i", "ok"), (">q", "ok"), ("d", "ok"),
               ("<d", "ok"), ("f", "ok"), ("e", "ok"), ("?", "ok"), ("c", "ok"), ("3s", "ok"),
               ("x", "ok"), ("2i", "ok"), ("<f8", "ok"), ("float32", "ok"), ("int64", "ok"),
               ("complex128", "either"), ("O", TypeError), ("object", TypeError), ("|O", TypeError),
               ("T{O:a:}", TypeError), ("T{<i:a:O:b:}", TypeError), ("i4,O", TypeError),
               ("T{<i:a:<d:b:}", "either"), ("", ValueError), ("0i", ValueError),
               ("garbage!", ValueError), ("Zd", "either"), ("<i4,<f8", "either")]
    if np is None:
        FORMATS = [f for f in FORMATS if f[0] not in ("float32", "int64", "<f8")]

    def reserve_format(fmt):
        """(final format, itemsize) reserve() must report for an accepted format."""
        try:
            return fmt, struct.calcsize(fmt)
        except struct.error:
            f = memoryview(np.empty(0, dtype=fmt)).format
            return f, struct.calcsize(f)

    SIZES = st.one_of(st.integers(0, 2048), st.integers(0, 1 << 21),
                      st.sampled_from([-1, -(2**70), 2**63, 2**64 - 1, 2**64, 2**70, True, False, 1.0,
                                       "16", None, b"8", NoBuffer()]))
    if np is not None:
        SIZES = st.one_of(SIZES, st.sampled_from([np.int64(16), np.uint32(8), np.int8(-1), np.float64(8.0)]))

    SHAPES = st.one_of(
        st.none(),
        st.lists(st.integers(0, 6), max_size=4).map(tuple),
        st.lists(st.integers(0, 6), max_size=3),  # any sequence is accepted
        st.sampled_from([(1,) * 33, (-1,), (2**40, 2**40), (2**33,), (2**64,), ("a",), (1.5,), 5, "ab",
                         (True,), (1 << 19, 4)]),
    )

    def size_class(v):
        """('ok', int) / ('type',) / ('value',) for an nbytes or shape entry."""
        if isinstance(v, bool) or (np is not None and isinstance(v, np.bool_)):
            return ("type",)
        try:
            i = v.__index__()
        except (AttributeError, TypeError):
            return ("type",)
        if i < 0 or i >= 2**64:
            return ("value",)
        return ("ok", i)

    def deep_equal(a, b):
        if np is not None and isinstance(a, np.ndarray):
            return (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
                    and a.tobytes() == b.tobytes())
        if isinstance(a, pickle.PickleBuffer):
            with a.raw() as ra:
                return bytes(ra) == bytes(b)
        if isinstance(a, float) and math.isnan(a):
            return isinstance(b, float) and math.isnan(b)
        if isinstance(a, (list, tuple)):
            return type(a) is type(b) and len(a) == len(b) and all(map(deep_equal, a, b))
        if isinstance(a, dict):
            return type(b) is dict and a.keys() == b.keys() and all(deep_equal(a[k], b[k]) for k in a)
        return type(a) is type(b) and a == b

    class Unpicklable:
        def __reduce__(self):
            raise TypeError("cannot pickle Unpicklable")

    leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-(2**200), 2**200), st.floats(),
                     st.text(max_size=20), st.binary(max_size=40))
    if np is not None:
        leaf = st.one_of(leaf, st.builds(lambda d, n: np.arange(n, dtype=d), st.sampled_from(["u1", "<f8", ">i4"]),
                                         st.integers(0, 50)),
                         st.builds(lambda n: np.array([object(), "x"][:n] if n < 3 else ["s"] * n, dtype=object),
                                   st.integers(0, 4)),
                         st.just(np.zeros((3, 4))[:, 1]))
    OBJECTS = st.one_of(
        st.recursive(leaf, lambda kids: st.one_of(st.lists(kids, max_size=4), st.tuples(kids, kids),
                                                  st.dictionaries(st.text(max_size=4), kids, max_size=3)),
                     max_leaves=8),
        st.builds(lambda n: pickle.PickleBuffer(bytearray(range(n % 256)) * (1 + n // 256)),
                  st.integers(0, 2000)),
        st.sampled_from([Unpicklable(), (lambda: 1), NoBuffer]),
    )

    # -----------------------------------------------------------------------------------------
    # The model.

    INLINE_BYTES = 64  # messages of up to this many plain bytes travel in their queue node

    def item_inline(item):
        """Whether a queued message of the model travels inline (holds no block): a raw one as
        decided at its send, an object frame without out-of-band buffers of at most 64 bytes."""
        if item[0] == "raw":
            return item[4]
        return not item[2] and item[3] <= INLINE_BYTES

    class MBuf:
        """One Buffer the test holds, and what the model knows of it."""

        def __init__(self, obj, arena, content, fmt, shape):
            self.obj = obj
            self.arena = arena  # "A" or "F"
            self.state = "live"  # live / released / sent / dropped
            self.content = content  # bytes
            self.format = fmt
            self.shape = shape
            self.views = []  # memoryviews and numpy arrays over it
            self.inline = False  # a message received inline (core/node.h): it holds no block

        def __repr__(self):
            return "MBuf(%s, %s, %d bytes, %r, %r, %d views)" % (
                self.arena, self.state, len(self.content), self.format, self.shape, len(self.views))

    class MQueue:
        def __init__(self, arena, maxsize, maxbytes):
            self.arena = arena
            self.maxsize = maxsize
            self.maxbytes = maxbytes
            self.items = []  # ("raw", bytes, format, shape, inline, n) / ("obj", obj, frame_holds_block, n)
            self.closed = False

        def nbytes(self):
            return sum(it[-1] for it in self.items)

        def admits(self, length):
            if self.maxsize and len(self.items) >= self.maxsize:
                return False
            b = self.nbytes()
            return not (self.maxbytes and b != 0 and (length > self.maxbytes or b > self.maxbytes - length))

    class ChannelMachine(RuleBasedStateMachine):
        backend = "heap"

        def __init__(self):
            super().__init__()
            log_reset()
            self.bufs = []
            self.objects = []  # (obj, arena) received objects whose arrays view their block
            self.arenas = {}
            self.queues = {}  # queue name -> MQueue
            self.chans = []  # (channel object, queue name)
            self.baseline = {}

        @initialize(cap=st.sampled_from([64 << 10, 256 << 10, 1 << 20]),
                    maxsize=st.sampled_from([0, 0, 1, 3]), maxbytes=st.sampled_from([0, 0, 100, 4096]))
        def setup(self, cap, maxsize, maxbytes):
            other = "shm" if self.backend == "heap" else "heap"
            log_step("A = mc.Arena(capacity=%d, backend=%r); F = mc.Arena(capacity=1 << 20, backend=%r)"
                     % (cap, self.backend, other))
            self.arenas = {"A": mc.Arena(capacity=cap, backend=self.backend),
                           "F": mc.Arena(capacity=1 << 20, backend=other)}
            log_step("c0 = A.channel(%d, maxbytes=%d); c1 = A.channel(); f0 = F.channel()" % (maxsize, maxbytes))
            specs = [("c0", "A", maxsize, maxbytes), ("c1", "A", 0, 0), ("f0", "F", 0, 0)]
            for name, arena, ms, mb in specs:
                self.queues[name] = MQueue(arena, ms, mb)
                self.chans.append((self.arenas[arena].channel(ms, maxbytes=mb), name))
            for name, a in self.arenas.items():
                s = a.stats()
                self.baseline[name] = (s["blocks_in_use"], s["bytes_in_use"])

        # -- helpers ----------------------------------------------------------------------------
        def chan(self, i):
            ch, q = self.chans[i % len(self.chans)]
            return ch, q, self.queues[q], "ch[%d](%s)" % (i % len(self.chans), q)

        def buf(self, i):
            live = [b for b in self.bufs if b.state != "dropped"]
            return live[i % len(live)] if live else None

        def bufname(self, b):
            return "buf[%d]" % self.bufs.index(b)

        def describe(self, data):
            for b in self.bufs:
                if data is b.obj:
                    return self.bufname(b)
            r = repr(data)
            return r if len(r) < 80 else r[:77] + "..."

        def resolve_data(self, data, pick):
            """The data to send: a drawn value, or (pick) one of the Buffers we hold."""
            if pick is not None and self.bufs:
                b = self.buf(pick)
                if b is not None:
                    return b.obj, b
            return data, None

        def expect_send(self, q, data, mb, block, timeout):
            """(must-raise types or None, payload (bytes, fmt, shape) when it can succeed)."""
            t_err, t_opt = timeout_expect(timeout, block)
            errs = []
            payload = None
            if mb is not None:
                if mb.state != "live":
                    errs.append(ValueError)
                elif mb.arena == q.arena and mb.views:
                    errs.append(BufferError)
                else:
                    payload = (mb.content, mb.format, mb.shape)
            else:
                info = buffer_info(data)
                if info is None:
                    errs.append(TypeError)
                elif info == "opaque":
                    payload = None
                elif info[3] or has_pointers(data):
                    errs.append(TypeError)  # docs/design.md item: pointer items are refused
                elif info[5] > 32:
                    errs.append(ValueError)
                else:
                    payload = (info[0], info[1], info[2])
            errs += list(t_err)
            length = len(payload[0]) if payload is not None else None
            return self.outcome(q, errs, list(t_opt), length), (None if errs else payload)

        def outcome(self, q, errs, opt, length):
            """What a send of `length` bytes (None: unknown) to queue q may do, given the argument
            errors `errs` (one must be raised), optional ones `opt` and the queue's state. With
            several problems at once, any one of their exceptions is right."""
            state = []
            if length is not None and length > self.arenas[q.arena].max_message_bytes:
                state.append(mc.CapacityError)
            if q.closed:
                state.append(mc.ChannelClosed)
            if length is not None and not q.admits(length):
                state.append(mc.Full)
            if errs or state:
                return tuple(errs) + tuple(state) + tuple(opt)
            return may(mc.Full, *opt)  # arena capacity: Full is always possible

        def check_received(self, got, item, what):
            kind = item[0]
            if kind == "raw":
                _, content, fmt, shape, _inline, _n = item
                assert content is None or got.tobytes() == content, "%s: payload differs from what was sent" % what
                assert got.format == fmt, "%s: format %r, sent %r" % (what, got.format, fmt)
                assert tuple(got.shape) == tuple(shape), "%s: shape %r, sent %r" % (what, got.shape, shape)
                with memoryview(got) as mv:
                    assert mv.format == fmt and tuple(mv.shape) == tuple(shape)
                    assert content is None or got.nbytes == mv.nbytes == len(content)
            else:
                raw = got.tobytes()
                assert raw[:4] == b"MCO1", "%s: an object frame lost its magic" % what

        # -- channel rules ----------------------------------------------------------------------
        @rule(i=st.integers(0, 8), data=payloads(), pick=st.one_of(st.none(), st.integers(0, 50)),
              block=st.sampled_from([False, True, 0, 1, None, "", "x"]), t=st.data())
        def send(self, i, data, pick, block, t):
            ch, qn, q, cname = self.chan(i)
            data, mb = self.resolve_data(data, pick)
            blocking = bool(block)
            timeout = t.draw(timeouts(can_block_forever=q.closed and blocking))
            expect, payload = self.expect_send(q, data, mb, blocking, timeout)
            _, err = call("send", "%s.send(%s, block=%r, timeout=%r)" % (cname, self.describe(data), block, timeout),
                          lambda: ch.send(data, block, timeout), expect)
            self.after_send(err, q, mb, payload, data)

        @rule(i=st.integers(0, 8), data=payloads(), pick=st.one_of(st.none(), st.integers(0, 50)))
        def send_nowait(self, i, data, pick):
            ch, qn, q, cname = self.chan(i)
            data, mb = self.resolve_data(data, pick)
            expect, payload = self.expect_send(q, data, mb, False, None)
            _, err = call("send", "%s.send_nowait(%s)" % (cname, self.describe(data)),
                          lambda: ch.send_nowait(data), expect)
            self.after_send(err, q, mb, payload, data)

        def after_send(self, err, q, mb, payload, data):
            if err is not None:
                if mb is not None and mb.state == "live":
                    assert not mb.obj.released, "a failed send() consumed the Buffer"
                return
            if payload is None:  # a format memoryview cannot walk: its bytes, by numpy if need be
                with memoryview(data) as mv:
                    raw = np.ascontiguousarray(data).tobytes() if np is not None else None
                    payload = (raw, mv.format, tuple(mv.shape))
            n = len(payload[0]) if payload[0] is not None else 0
            if mb is not None and mb.arena == q.arena:
                inline = mb.inline  # moved: a block stays a block; an inline message goes inline again
            else:  # a copy: up to 64 contiguous plain bytes (format "B", one dimension) travel in the node
                with memoryview(data) as mv:
                    contiguous = mv.c_contiguous or mv.nbytes == 0  # as PyBuffer_IsContiguous
                inline = (payload[0] is not None and payload[1] == "B" and len(payload[2]) == 1 and contiguous
                          and n <= INLINE_BYTES)
            q.items.append(("raw", payload[0], payload[1], payload[2], inline, n))
            if mb is not None and mb.arena == q.arena:
                mb.state = "sent"
                assert mb.obj.released, "a sent Buffer does not report released"

        def expect_recv(self, q, block, timeout):
            t_err, t_opt = timeout_expect(timeout, block)
            if t_err:
                return tuple(t_err) + tuple(t_opt)
            if q.items:
                return may(*t_opt) if t_opt else must()
            if q.closed:
                return (mc.ChannelClosed,) + tuple(t_opt)
            return (mc.Empty,) + tuple(t_opt)

        @rule(i=st.integers(0, 8), block=st.sampled_from([False, True, 0, 1]), t=st.data(),
              keep=st.booleans())
        def recv(self, i, block, t, keep):
            ch, qn, q, cname = self.chan(i)
            timeout = t.draw(timeouts(can_block_forever=bool(q.items) or q.closed))
            expect = self.expect_recv(q, bool(block), timeout)
            got, err = call("recv", "%s.recv(block=%r, timeout=%r)" % (cname, block, timeout),
                            lambda: ch.recv(block, timeout), expect)
            self.after_recv(got, err, q, cname, keep)

        @rule(i=st.integers(0, 8), keep=st.booleans(), how=st.sampled_from(["nowait", "next"]))
        def recv_nowait(self, i, keep, how):
            ch, qn, q, cname = self.chan(i)
            if how == "next":
                if not q.items and not q.closed:
                    return  # next() would wait forever: documented
                expect = must() if q.items else (StopIteration,)
                got, err = call("recv", "next(%s)" % cname, lambda: next(ch), expect)
                if isinstance(err, StopIteration):
                    return
            else:
                got, err = call("recv", "%s.recv_nowait()" % cname, ch.recv_nowait, self.expect_recv(q, False, None))
            self.after_recv(got, err, q, cname, keep)

        def after_recv(self, got, err, q, cname, keep):
            if err is not None:
                return
            assert q.items, "%s: received a message the model never sent" % cname
            item = q.items.pop(0)
            self.check_received(got, item, cname)
            mb = MBuf(got, q.arena, got.tobytes(), got.format, tuple(got.shape))
            mb.inline = item_inline(item)
            self.bufs.append(mb)
            log_step("  -> %s = %r" % (self.bufname(mb), got))
            if not keep:
                self.drop(mb)

        @rule(i=st.integers(0, 8), nbytes=SIZES, shape=SHAPES, fmt=st.sampled_from(FORMATS),
              timeout=st.sampled_from(SMALL_TIMEOUTS + BAD_TIMEOUTS + MAYBE_TIMEOUTS),
              omit=st.sampled_from(["none", "none", "format", "nbytes", "shape"]))
        def reserve(self, i, nbytes, shape, fmt, timeout, omit):
            ch, qn, q, cname = self.chan(i)
            fmt, fmt_class = fmt
            kwargs = {"format": fmt, "shape": shape, "timeout": timeout}
            args = (nbytes,)
            if omit == "format":
                del kwargs["format"]
                fmt, fmt_class = "B", "ok"
            elif omit == "nbytes":
                args = ()
                nbytes = None
            elif omit == "shape":
                del kwargs["shape"]
                shape = None
            errs, opt = [], []
            t_err, t_opt = timeout_expect(timeout)
            errs += t_err
            opt += t_opt
            itemsize = None
            final_fmt = fmt
            if fmt_class == "ok":
                final_fmt, itemsize = reserve_format(fmt)
            elif fmt_class == "either":
                opt += [ValueError, TypeError]
            else:
                errs.append(fmt_class)
            total = None
            dims = None
            if shape is not None:
                try:
                    entries = tuple(shape)
                except TypeError:
                    errs.append(TypeError)
                    entries = None
                if entries is not None:
                    if len(entries) > 32:
                        errs.append(ValueError)
                    classes = [size_class(e) for e in entries]
                    if any(c[0] == "type" for c in classes):
                        errs.append(TypeError)
                    elif any(c[0] == "value" for c in classes):
                        errs.append(ValueError)
                    elif len(entries) <= 32:
                        dims = tuple(c[1] for c in classes)
                        elements = math.prod(dims)
                        if itemsize is not None:
                            total = elements * itemsize
                            if total >= 2**64:
                                errs.append(ValueError)
                                total = None
                        elif elements >= 2**64:
                            errs.append(ValueError)
                if nbytes is not None:
                    c = size_class(nbytes)
                    if c[0] == "type":
                        errs.append(TypeError)
                    elif c[0] == "value":
                        errs.append(ValueError)
                    elif total is not None and c[1] != total:
                        errs.append(ValueError)
            elif nbytes is None:
                errs.append(TypeError)
            else:
                c = size_class(nbytes)
                if c[0] == "type":
                    errs.append(TypeError)
                elif c[0] == "value":
                    errs.append(ValueError)
                elif itemsize is not None:
                    total = c[1]
                    if total % itemsize:
                        errs.append(ValueError)
                        total = None
                    else:
                        dims = (total // itemsize,)
            a = self.arenas[q.arena]
            if q.closed:
                opt.append(mc.ChannelClosed)  # allowed, not required: a Buffer can still be filled
            if errs:
                expect = tuple(errs) + tuple(opt)
            elif total is None:
                expect = may(*opt, ValueError, TypeError, mc.Full, mc.CapacityError, mc.ChannelClosed)
            elif total > a.max_message_bytes:
                expect = (mc.CapacityError,) + tuple(opt)
            else:
                expect = may(mc.Full, mc.ChannelClosed, *opt)
            desc = "%s.reserve(%s)" % (cname, ", ".join([repr(x) for x in args] + ["%s=%r" % kv for kv in kwargs.items()]))
            got, err = call("reserve", desc, lambda: ch.reserve(*args, **kwargs), expect)
            if err is not None:
                return
            assert got.nbytes == total if total is not None else True
            if dims is not None:
                assert tuple(got.shape) == dims, "%s: shape %r" % (desc, got.shape)
            if fmt_class == "ok":
                assert got.format == final_fmt, "%s: format %r, expected %r" % (desc, got.format, final_fmt)
                assert got.itemsize == itemsize
            mb = MBuf(got, q.arena, got.tobytes(), got.format, tuple(got.shape))
            self.bufs.append(mb)
            log_step("  -> %s = %r" % (self.bufname(mb), got))

        @rule(i=st.integers(0, 8))
        def close(self, i):
            ch, qn, q, cname = self.chan(i)
            call("send", "%s.close()" % cname, ch.close, must())
            q.closed = True
            assert ch.closed

        @rule(i=st.integers(0, 8), how=st.sampled_from(["attach", "pickle", "attach-bytearray",
                                                        "attach-memoryview"]))
        def attach(self, i, how):
            ch, qn, q, cname = self.chan(i)
            if how == "pickle":
                fn = lambda: pickle.loads(pickle.dumps(ch))  # noqa: E731
                desc = "pickle.loads(pickle.dumps(%s))" % cname
            else:
                h = ch.handle
                h = bytearray(h) if how == "attach-bytearray" else memoryview(h) if how == "attach-memoryview" else h
                fn = lambda: mc.Channel.attach(h)  # noqa: E731
                desc = "mc.Channel.attach(%s(%s.handle))" % (type(h).__name__, cname)
            got, err = call("attach", desc, fn, must())
            assert got.backend == ch.backend and got.closed == q.closed
            assert got.qsize() == len(q.items), "%s: qsize %d, model %d" % (desc, got.qsize(), len(q.items))
            self.chans.append((got, qn))
            log_step("  -> ch[%d]" % (len(self.chans) - 1))

        @rule(i=st.integers(0, 8), junk=st.one_of(
            st.binary(max_size=80), st.sampled_from([None, 42, "MCH1", NoBuffer()]),
            st.tuples(st.integers(0, 200), st.integers(0, 255))))
        def attach_garbage(self, i, junk):
            ch, qn, q, cname = self.chan(i)
            if isinstance(junk, tuple):  # a real handle with one byte changed
                h = bytearray(ch.handle)
                pos, val = junk
                pos %= len(h)
                if pos < 5:
                    return  # the magic and kind only: covered by the random bytes
                h[pos] = val
                junk = bytes(h)
                desc = "mc.Channel.attach(%s.handle with byte %d = %d)" % (cname, pos, val)
            else:
                desc = "mc.Channel.attach(%r)" % (junk,)
            got, err = call("attach", desc, lambda: mc.Channel.attach(junk), may(*ALLOWED["attach"]))
            if got is not None:
                got.stats()
                got.qsize()
                del got  # it may name one of ours: never close it

        @rule(i=st.integers(0, 8), obj=OBJECTS, block=st.sampled_from([False, True]), t=st.data())
        def send_object(self, i, obj, block, t):
            ch, qn, q, cname = self.chan(i)
            timeout = t.draw(timeouts(can_block_forever=q.closed and block))
            buffers = []
            try:
                frame = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
                pickle_err = None
            except Exception as e:  # noqa: BLE001
                pickle_err, frame = type(e), b""
            t_err, t_opt = timeout_expect(timeout, block)
            size = 16 + 16 * len(buffers) + len(frame)  # the frame's exact length (_objects.py)
            for pb in buffers:
                with pb.raw() as raw:
                    size = (size + 63) // 64 * 64 + raw.nbytes
            if pickle_err is not None:
                expect = (pickle_err,) + tuple(t_err) + tuple(t_opt)
            else:
                expect = self.outcome(q, list(t_err), list(t_opt), size)
            op = "send" if pickle_err is None else "construct"
            saved = ALLOWED[op]
            if pickle_err is not None:
                ALLOWED[op] = ALLOWED[op] + (pickle_err,)
            try:
                _, err = call(op, "%s.send_object(%s, block=%r, timeout=%r)" % (cname, self.describe(obj), block, timeout),
                              lambda: ch.send_object(obj, block, timeout), expect)
            finally:
                ALLOWED[op] = saved
            if err is None:
                q.items.append(("obj", obj, bool(buffers), size))

        @rule(i=st.integers(0, 8), block=st.sampled_from([False, True]), t=st.data(), keep=st.booleans())
        def recv_object(self, i, block, t, keep):
            ch, qn, q, cname = self.chan(i)
            timeout = t.draw(timeouts(can_block_forever=bool(q.items) or q.closed))
            expect = self.expect_recv(q, block, timeout)
            head = q.items[0] if q.items else None
            t_err, t_opt = timeout_expect(timeout, block)
            if head is not None and head[0] == "raw" and not t_err:
                if head[1] is None or head[1][:4] == b"MCO1":  # looks like a frame: undefined
                    expect = may(*ALLOWED["recv_object"], pickle.UnpicklingError, EOFError)
                else:
                    expect = (mc.CorruptionError,) + tuple(t_opt)
            got, err = call("recv_object", "%s.recv_object(block=%r, timeout=%r)" % (cname, block, timeout),
                            lambda: ch.recv_object(block, timeout), expect)
            consumed = err is None or isinstance(err, (mc.CorruptionError, pickle.UnpicklingError, EOFError))
            if not consumed:
                return
            assert head is not None, "%s: recv_object() returned a message the model never sent" % cname
            q.items.pop(0)
            if err is not None or head[0] == "raw":
                return  # a raw message: consumed, its block released
            assert deep_equal(head[1], got), "%s: received %r, sent %r" % (cname, got, head[1])
            if head[2] and keep:  # arrays viewing the block: they hold it
                self.objects.append((got, q.arena))
            del got

        @rule(j=st.integers(0, 50))
        def drop_object(self, j):
            if self.objects:
                log_step("del objects[%d]" % (j % len(self.objects)))
                self.objects.pop(j % len(self.objects))

        # -- Buffer rules -----------------------------------------------------------------------
        @rule(j=st.integers(0, 50), how=st.sampled_from(["release", "release", "with", "exit-twice"]))
        def release(self, j, how):
            mb = self.buf(j)
            if mb is None:
                return
            name = self.bufname(mb)
            expect = (BufferError,) if (mb.state == "live" and mb.views) else must()
            if how == "release":
                call("release", "%s.release()" % name, mb.obj.release, expect)
            elif how == "with":
                def use():
                    with mb.obj as b:
                        assert b is mb.obj
                call("release", "with %s: pass" % name, use,
                     (ValueError,) if mb.state != "live" else expect)
            else:
                call("release", "%s.__exit__(None, None, None) x2" % name,
                     lambda: (mb.obj.__exit__(None, None, None), mb.obj.__exit__(None, None, None)), expect)
            if mb.state == "live" and not mb.views:
                mb.state = "released"
            assert mb.obj.released == (mb.state != "live")

        @rule(j=st.integers(0, 50), data=payloads(), pick=st.one_of(st.none(), st.integers(0, 50)),
              offset=st.one_of(st.integers(0, 300), st.sampled_from([None, -1, 2**64, 2**70, True, 1.0, "0"])),
              omit_offset=st.booleans())
        def write(self, j, data, pick, offset, omit_offset):
            mb = self.buf(j)
            if mb is None:
                return
            data, src = self.resolve_data(data, pick)
            errs, opt = [], []
            if mb.state != "live":
                errs.append(ValueError)
            off = 0
            if not omit_offset:
                c = size_class(offset) if offset is not None else ("type",)
                if c[0] != "ok":
                    errs.append(TypeError if c[0] == "type" else ValueError)
                else:
                    off = c[1]
            info = buffer_info(data) if src is None or src.state == "live" else None
            src_bytes = None
            if info is None or info == "opaque" or not info[4]:
                errs.append(TypeError)  # not a C-contiguous bytes-like object (or a dead Buffer)
                if src is not None:
                    errs.append(ValueError)
            else:
                src_bytes = info[0]
                if info[3]:
                    opt.append(TypeError)  # pointer items: write() may refuse them too
                if off > len(mb.content) or len(src_bytes) > len(mb.content) - off:
                    errs.append(ValueError)
            expect = tuple(errs) + tuple(opt) if errs else (may(*opt) if opt else must())
            name = self.bufname(mb)
            args = (data,) if omit_offset else (data, offset)
            got, err = call("write", "%s.write(%s)" % (name, ", ".join(self.describe(a) for a in args)),
                            lambda: mb.obj.write(*args), expect)
            if err is None:
                assert got == len(src_bytes)
                c = bytearray(mb.content)
                c[off:off + len(src_bytes)] = src_bytes
                mb.content = bytes(c)
                assert mb.obj.tobytes() == mb.content, "%s: write() did not land" % name

        @rule(j=st.integers(0, 50), how=st.sampled_from(["tobytes", "attrs", "len", "repr"]))
        def read(self, j, how):
            mb = self.buf(j)
            if mb is None:
                return
            name = self.bufname(mb)
            live = mb.state == "live"
            expect = must() if live else (ValueError,)
            if how == "tobytes":
                got, _ = call("read", "%s.tobytes()" % name, mb.obj.tobytes, expect)
                if live:
                    assert got == mb.content, "%s: tobytes() differs from the model" % name
            elif how == "attrs":
                for attr in ("nbytes", "format", "itemsize", "ndim", "shape", "readonly", "address"):
                    got, _ = call("read", "%s.%s" % (name, attr), lambda: getattr(mb.obj, attr), expect)
                    if live and attr == "format":
                        assert got == mb.format
                    if live and attr == "shape":
                        assert tuple(got) == mb.shape
                assert mb.obj.exports == len(mb.views) if live else True
            elif how == "len":
                got, _ = call("read", "len(%s)" % name, lambda: len(mb.obj), expect)
                if live:
                    assert got == (mb.shape[0] if mb.shape else 1)
            else:
                call("read", "repr(%s)" % name, lambda: repr(mb.obj), must())

        @rule(j=st.integers(0, 50), how=st.sampled_from(["memoryview", "memoryview", "asarray", "frombuffer"]))
        def export(self, j, how):
            mb = self.buf(j)
            if mb is None:
                return
            name = self.bufname(mb)
            live = mb.state == "live"
            if how == "memoryview":
                got, err = call("read", "memoryview(%s)" % name, lambda: memoryview(mb.obj),
                                must() if live else (ValueError,))
                if got is not None:
                    assert got.format == mb.format and tuple(got.shape) == mb.shape
                    assert got.tobytes() == mb.content and not got.readonly
            elif np is None:
                return
            else:
                fn = (lambda: np.asarray(mb.obj)) if how == "asarray" else (lambda: np.frombuffer(mb.obj, dtype="u1"))
                # numpy may refuse formats it cannot represent ('x', '3s', ...), never a live
                # plain one; a released or sent Buffer must raise ValueError (not give an array).
                plain = mb.format in ("B", "b", "<i4", "i", ">q", "d", "<d", "f", "e", "?", "l", "<q", "q")
                expect = (ValueError,) if not live else (must() if plain or how == "frombuffer"
                                                          else may(ValueError, TypeError, NotImplementedError))
                got, err = call("read", "np.%s(%s)" % (how, name), fn, expect)
                if got is not None:
                    assert got.dtype != object, "%s over %s gave an object array" % (how, name)
                    assert got.tobytes() == mb.content
                    if how == "asarray":
                        assert got.shape == mb.shape
            if got is not None:
                mb.views.append(got)

        @rule(j=st.integers(0, 50), k=st.integers(0, 50), how=st.sampled_from(["release", "del"]))
        def unexport(self, j, k, how):
            mb = self.buf(j)
            if mb is None or not mb.views:
                return
            v = mb.views.pop(k % len(mb.views))
            log_step("%s of a view of %s" % (how, self.bufname(mb)))
            if how == "release" and isinstance(v, memoryview):
                v.release()
            del v

        @rule(j=st.integers(0, 50))
        def drop_buffer(self, j):
            mb = self.buf(j)
            if mb is not None:
                self.drop(mb)

        def drop(self, mb):
            """Forget the Buffer (GC returns a live block); views keep it alive until they go."""
            log_step("del %s (and its %d views)" % (self.bufname(mb), len(mb.views)))
            mb.views.clear()
            mb.obj = None
            mb.state = "dropped"

        # -- other API --------------------------------------------------------------------------
        @rule(i=st.integers(0, 8))
        def introspect(self, i):
            ch, qn, q, cname = self.chan(i)
            log_step("%s.stats(), qsize(), empty(), full(), closed, backend, repr" % cname)
            s = ch.stats()
            assert s["queued"] == len(q.items) == ch.qsize(), "%s: queued %d, model %d" % (cname, s["queued"], len(q.items))
            assert ch.empty() == (not q.items)
            assert ch.closed == q.closed == s["closed"]
            assert s["corruption_count"] == 0, "%s: corruption counted: %r" % (cname, s)
            assert ch.backend == s["backend"]
            assert s["bytes_queued"] == q.nbytes(), "%s: bytes_queued %d, model %d" % (cname, s["bytes_queued"], q.nbytes())
            assert ch.full() == (bool(q.maxsize) and len(q.items) >= q.maxsize
                                 or bool(q.maxbytes) and q.nbytes() >= q.maxbytes)
            repr(ch)

        @rule(maxsize=SIZES, maxbytes=SIZES, backend=st.sampled_from(["heap", "shm", "SHM", "", 5, None]),
              arena=st.sampled_from([None, "A", "F", "junk"]))
        def construct(self, maxsize, maxbytes, backend, arena):
            kwargs = {"maxbytes": maxbytes}
            if arena is not None:
                kwargs["arena"] = self.arenas.get(arena, arena)
            else:
                kwargs["backend"] = backend
            desc = "mc.Channel(%r, %s)" % (maxsize, ", ".join("%s=%r" % kv for kv in kwargs.items()))
            errs = []
            for v in (maxsize, maxbytes):
                c = size_class(v)
                if c[0] != "ok":
                    errs.append(TypeError if c[0] == "type" else ValueError)
            if arena == "junk" or (arena is None and not isinstance(backend, str)):
                errs.append(TypeError)
            elif arena is None and backend not in ("heap", "shm"):
                errs.append(ValueError)
            expect = tuple(errs) if errs else may(ValueError)  # absurd bounds: ValueError
            got, err = call("construct", desc, lambda: mc.Channel(maxsize, **kwargs), expect)
            if got is not None:
                got.close()

        # -- invariants -------------------------------------------------------------------------
        def expected_blocks(self, arena):
            n = sum(1 for b in self.bufs if b.arena == arena and b.state == "live" and not b.inline)
            n += sum(1 for name, q in self.queues.items() if q.arena == arena for it in q.items
                     if not item_inline(it))
            n += sum(1 for _, a in self.objects if a == arena)
            return n

        @invariant()
        def blocks_match_model(self):
            if not self.arenas:
                return
            for name, a in self.arenas.items():
                s = a.stats()
                want = self.baseline[name][0] + self.expected_blocks(name)
                assert s["blocks_in_use"] == want, (
                    "arena %s: blocks_in_use %d, the model holds %d (%r)" % (name, s["blocks_in_use"], want, s))
                assert s["corruption_count"] == 0, "arena %s counted corruption: %r" % (name, s)

        def teardown(self):
            if not self.arenas:
                return
            passed = False
            try:
                self.check_baseline()
                passed = True
            finally:  # whatever failed, leave nothing behind for the next example
                for mb in self.bufs:
                    mb.views.clear()
                    mb.obj = None
                self.objects.clear()
                names = [a.name for a in self.arenas.values() if a.backend == "shm"]
                while self.chans:
                    self.chans.pop()[0].close()
                self.arenas.clear()
                gc.collect()
            if not passed:
                return  # the failure's traceback still holds the objects: nothing to check
            left = [s for s in _memchannel._list_segments(os.environ.get("MEMCHANNEL_SHM_PREFIX", ""))
                    if any(s.startswith(n) for n in names)]
            assert not left, "segments left after every channel was closed and dropped: %r" % left

        def check_baseline(self):
            log_step("teardown: release every Buffer, drain every channel")
            for mb in self.bufs:
                mb.views.clear()
                if mb.obj is not None:
                    mb.obj.release()
                mb.obj = None
            self.objects.clear()
            for ch, qn in self.chans[:3]:
                q = self.queues[qn]
                while True:
                    try:
                        b = ch.recv_nowait()
                    except (mc.Empty, mc.ChannelClosed):
                        break
                    assert q.items, "teardown: %s held a message the model never sent" % qn
                    self.check_received(b, q.items.pop(0), "teardown " + qn)
                    b.release()
                assert not q.items, "teardown: %s lost %d messages" % (qn, len(q.items))
            for name, a in self.arenas.items():
                s = a.stats()
                base_blocks, base_bytes = self.baseline[name]
                assert (s["blocks_in_use"], s["bytes_in_use"]) == (base_blocks, base_bytes), (
                    "arena %s did not come back to its baseline (%d blocks, %d bytes): %r"
                    % (name, base_blocks, base_bytes, s))
                c = a.census()
                assert c["free_lists_consistent"] and c["bad_cells"] == 0, "arena %s census: %r" % (name, c)
                assert c["reserved"] == c["queued"] == c["received"] == 0, "arena %s census: %r" % (name, c)
            for ch, qn in self.chans:
                assert ch.stats()["queued"] == 0

    # -----------------------------------------------------------------------------------------
    # Stateless properties.

    def prop_fresh_sizes(backend):
        """On a fresh arena, a message of n <= max_message_bytes is accepted; a larger one is
        accepted or raises CapacityError, never Full (nothing is in use: waiting cannot help).
        max_message_bytes is the largest message that is sure to fit with the queue node a
        send needs, so a reservation a little larger may still fit."""

        @given(cap=st.one_of(st.sampled_from([17 << 10, 20 << 10, 40 << 10, 64 << 10, 100 << 10, 1 << 20,
                                              3 << 20]), st.integers(17 << 10, 4 << 20)),
               where=st.one_of(st.sampled_from([0, -1, 1, 2]), st.floats(0, 1)), how=st.sampled_from(["reserve", "send"]))
        @settings(max_examples=min(100, settings().max_examples))
        def prop(cap, where, how):
            a = mc.Arena(capacity=cap, backend=backend)
            ch = a.channel()
            m = a.max_message_bytes
            n = max(0, int(m * where) if isinstance(where, float) else m + where)
            desc = "mc.Arena(capacity=%d, backend=%r).channel().%s(%d) (max_message_bytes %d)" % (cap, backend, how, n, m)
            note(desc)
            expect = (mc.CapacityError, MAY_SUCCEED[0]) if n > m else must()
            fn = (lambda: ch.reserve(n, timeout=0)) if how == "reserve" else (lambda: ch.send(bytes(n), block=False))
            got, err = call("reserve" if how == "reserve" else "send", desc, fn, expect)
            if got is not None:
                got.release()
            ch.close()

        prop()

    UNINIT_TYPES = None

    def prop_uninitialised():
        """An object made with __new__ and no __init__: every public method and attribute raises
        TypeError or ValueError (docs: no object in an invalid state reaches C++)."""
        types = [("mc.Channel", mc.Channel), ("_memchannel.Channel", _memchannel.Channel),
                 ("mc.Arena", mc.Arena), ("_memchannel.Arena", _memchannel.Arena)]
        arg_values = [None, 0, b"x", 1.0, "x"]

        @given(t=st.sampled_from(types), data=st.data())
        @settings(max_examples=min(100, settings().max_examples))
        def prop(t, data):
            name, cls = t
            attrs = sorted(a for a in dir(cls) if not a.startswith("_") or a in (
                "__repr__", "__reduce__", "__iter__", "__next__", "__len__"))
            attr = data.draw(st.sampled_from(attrs))
            nargs = data.draw(st.integers(0, 2))
            args = [data.draw(st.sampled_from(arg_values)) for _ in range(nargs)]
            log_reset()
            obj = cls.__new__(cls)
            desc = "%s.__new__(%s).%s(*%r)" % (name, name, attr, args)
            log_step(desc)
            try:
                v = getattr(obj, attr)
                if callable(v):
                    v(*args)
            except (TypeError, ValueError):
                pass
            except Exception as e:  # noqa: BLE001
                raise Unexpected("%s raised %s: %s (allowed: TypeError, ValueError)" % (desc, type(e).__name__, e))
            else:
                # __iter__ returns self and a pybind11 type's repr names the type: neither
                # reads the C++ state. Everything else must refuse the object.
                if attr not in ("__iter__", "__repr__"):
                    raise Unexpected("%s succeeded on an uninitialised object" % desc)

        prop()

    def run(name, args):
        if name == "machine":
            ChannelMachine.backend = args[0]
            run_state_machine_as_test(ChannelMachine, settings=settings())
        elif name == "fresh_sizes":
            prop_fresh_sizes(args[0])
        elif name == "uninitialised":
            prop_uninitialised()
        else:
            raise SystemExit("unknown property %r" % name)
        print("property %s %s: passed" % (name, " ".join(args)))

    run(sys.argv[1], sys.argv[2:])
