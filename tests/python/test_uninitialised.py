"""No object in an invalid state reaches C++ (docs/reliability.md item 24).

Every extension type is walked in every invalid state it can be put in: made by ``__new__``
without ``__init__``, after a failed ``__init__``, and (Channel) after ``close()``, (Buffer)
after ``release()`` and after being sent. Every public method and attribute found by ``dir()``
is read and called with plausible arguments. The walk runs in a subprocess, so a crash
(SIGSEGV, SIGABRT) is a failed test and not a dead pytest; the child reports every exception
that is not one of the documented ones.
"""

import json
import subprocess
import sys
import textwrap

import pytest

import memchannel as mc

CHILD = textwrap.dedent(r'''
    import copy, json, pickle, sys
    import memchannel as mc
    from memchannel import _memchannel

    backend = sys.argv[1]
    problems = []
    calls = 0

    # Plausible arguments per method name; every method is also called with no argument.
    ARGS = {
        "send": [(b"x",), (b"x", False), (b"x", True, 0), (bytearray(100),)],
        "send_nowait": [(b"x",)],
        "send_object": [({"a": 1},), (1, False), (1, True, 0)],
        "recv": [(False,), (True, 0)],
        "recv_object": [(False,), (True, 0)],
        "reserve": [(8,), (8,), (None,), (16,)],
        "attach": [(b"garbage",)],
        "channel": [(1,)],
        "write": [(b"abc",), (b"abc", 1)],
        "__exit__": [(None, None, None)],
        "__array__": [(None,), (None, True)],
        "__reduce_ex__": [(2,), (5,)],
        "__eq__": [(None,)],
        "__ne__": [(None,)],
        "__format__": [("",)],
        "__buffer__": [(0,), (0x11c,)],
        "__release_buffer__": [(memoryview(b"x"),)],
    }
    KWARGS = {"reserve": [{"timeout": 0}, {"shape": (2,), "format": "<i4"}]}
    # Methods that would block forever on a valid, empty channel: only called with a timeout.
    NEEDS_TIMEOUT = {"recv", "recv_object", "__next__"}
    SKIP = {"__init__", "__new__", "__init_subclass__", "__subclasshook__", "__class__",
            "__delattr__", "__setattr__", "__getattribute__", "__getattr__", "__dir__",
            "__class_getitem__", "__weakref__"}

    def ours(cls, name):
        """Whether `name` is defined by memchannel (not inherited from object / pybind11)."""
        for klass in cls.__mro__:
            if klass is object or klass.__module__ == "pybind11_builtins":
                continue
            if name in vars(klass):
                return True
        return False

    def record(label, name, how, exc, allowed):
        if not isinstance(exc, allowed):
            problems.append(f"{label}: {name}{how} raised {type(exc).__name__}: {exc}")

    def walk(label, obj, allowed, drained=True):
        """Reads every attribute and calls every method of obj; `allowed` are the exception
        types a memchannel-defined member may raise in this state."""
        global calls
        cls = type(obj)
        for name in sorted(set(dir(obj))):
            if name in SKIP:
                continue
            strict = ours(cls, name)
            calls += 1
            try:
                attr = getattr(obj, name)
            except BaseException as exc:
                if strict:
                    record(label, name, "", exc, allowed)
                continue
            if not callable(attr) or isinstance(attr, type):
                continue
            if name in NEEDS_TIMEOUT and not drained:
                continue
            variants = [((), {})] + [(a, {}) for a in ARGS.get(name, [])]
            variants += [((), kw) for kw in KWARGS.get(name, [])]
            for args, kwargs in variants:
                calls += 1
                try:
                    result = attr(*args, **kwargs)
                except StopIteration:
                    continue
                except BaseException as exc:
                    if strict:
                        record(label, name, repr(args), exc, allowed)
                    continue
                if isinstance(result, mc.Buffer):
                    result.release()
        for fn in (repr, str, hash, bool, copy.copy, pickle.dumps, iter, len):
            calls += 1
            try:
                fn(obj)
            except BaseException:
                pass  # only crashes matter for the builtins (their errors are CPython's)

    INVALID = (TypeError, ValueError)
    channel_types = [mc.Channel, _memchannel.Channel]
    arena_types = [mc.Arena, _memchannel.Arena]

    class SubChannel(mc.Channel):
        pass

    class SubArena(mc.Arena):
        pass

    channel_types.append(SubChannel)
    arena_types.append(SubArena)

    for cls in channel_types + arena_types:
        walk(f"{cls.__qualname__}.__new__", cls.__new__(cls), INVALID)

    for cls in channel_types:
        for bad in ({"maxsize": -1}, {"maxsize": 2**63}, {"backend": "tape"},
                    {"arena": "not an arena"}, {"arena": mc.Arena.__new__(mc.Arena)},
                    {"_handle": b"garbage"}):
            obj = cls.__new__(cls)
            try:
                obj.__init__(**bad)
            except (TypeError, ValueError):
                pass
            else:
                problems.append(f"{cls.__qualname__}.__init__(**{bad!r}) did not fail")
            walk(f"{cls.__qualname__} after __init__(**{bad!r}) failed", obj, INVALID)

    for cls in arena_types:
        for bad in ({"capacity": 10}, {"capacity": -1}, {"backend": "tape"}, {"capacity": "big"}):
            obj = cls.__new__(cls)
            try:
                obj.__init__(**bad)
            except (TypeError, ValueError):
                pass
            else:
                problems.append(f"{cls.__qualname__}.__init__(**{bad!r}) did not fail")
            walk(f"{cls.__qualname__} after __init__(**{bad!r}) failed", obj, INVALID)

    # Closed channels: recv of queued messages and stats() keep working; every other call
    # raises a documented error (ChannelClosed and the rest of MemChannelError included).
    documented = (TypeError, ValueError, BufferError, mc.MemChannelError)
    for cls in channel_types:
        ch = cls(backend=backend)
        ch.send(b"queued")
        ch.close()
        stats = ch.stats()
        assert stats["closed"] and stats["queued"] == 1, stats
        walk(f"closed {cls.__qualname__}", ch, documented)
        walk(f"closed, drained {cls.__qualname__}", ch, documented)

    # Buffers: released and sent ones raise ValueError (TypeError for bad arguments).
    ch = mc.Channel(backend=backend)
    for state in ("released", "sent", "received+released"):
        buf = ch.reserve(16)
        if state == "released":
            buf.release()
        elif state == "sent":
            ch.send(buf)
        else:
            ch.send(buf)
            buf = ch.recv()
            buf.release()
        walk(f"{state} Buffer", buf, INVALID)
    while ch.qsize():
        ch.recv().release()
    try:
        mc.Buffer.__new__(mc.Buffer)
    except TypeError:
        pass
    else:
        problems.append("Buffer.__new__ did not raise TypeError")
    try:
        mc.Buffer()
    except TypeError:
        pass
    else:
        problems.append("Buffer() did not raise TypeError")

    # A channel whose __init__ failed can still be initialised and works.
    ch = mc.Channel.__new__(mc.Channel)
    try:
        ch.__init__(-1)
    except ValueError:
        pass
    ch.__init__(2, backend=backend)
    ch.send(b"late")
    assert bytes(ch.recv()) == b"late"
    print(json.dumps({"problems": problems, "calls": calls}))
''')


@pytest.mark.parametrize("backend", ["heap", "shm"])
def test_every_method_of_every_invalid_object(backend):
    proc = subprocess.run([sys.executable, "-c", CHILD, backend], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, (
        f"the walk died with exit code {proc.returncode} (a negative code is the signal)\n"
        f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-4000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["calls"] > 200, report  # the walk did reach the methods
    assert report["problems"] == [], "\n".join(report["problems"])


@pytest.mark.parametrize("cls", [mc.Channel, mc._memchannel.Channel])
def test_uninitialised_channel_message(cls):
    ch = cls.__new__(cls)
    with pytest.raises(TypeError, match="not initialised"):
        ch.stats()
    with pytest.raises(TypeError, match="not initialised"):
        ch.send(b"x")
    with pytest.raises(TypeError, match="not initialised"):
        ch.recv_nowait()
    with pytest.raises(TypeError, match="not initialised"):
        ch.handle


@pytest.mark.parametrize("cls", [mc.Arena, mc._memchannel.Arena])
def test_uninitialised_arena_message(cls):
    arena = cls.__new__(cls)
    with pytest.raises(TypeError, match="not initialised"):
        arena.stats()
    with pytest.raises(TypeError, match="not initialised"):
        mc.Channel(arena=arena)


def test_unbound_method_on_wrong_object():
    """The methods take `self` as a plain object: a foreign self must be refused, not cast."""
    with pytest.raises(TypeError):
        mc._memchannel.Channel.stats(object())
    with pytest.raises(TypeError):
        mc._memchannel.Arena.stats(mc.Channel(backend="heap"))
    with pytest.raises(TypeError):
        mc._memchannel.Channel.qsize(mc.Arena(backend="heap"))
