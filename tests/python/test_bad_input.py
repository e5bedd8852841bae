"""Bad input: each gets a specific exception that says what to do; the channel keeps working."""

import pytest

import memchannel as mc


def still_works(ch):
    ch.send(b"ok")
    assert bytes(ch.recv()) == b"ok"


def test_object_without_buffer_protocol(backend):
    ch = mc.Channel(backend=backend)
    with pytest.raises(TypeError, match="send_object"):
        ch.send({"not": "a buffer"})
    with pytest.raises(TypeError):
        ch.send(12345)
    still_works(ch)


def test_negative_and_absurd_sizes(backend):
    ch = mc.Channel(backend=backend)
    with pytest.raises(ValueError, match=">= 0"):
        ch.reserve(-1)
    with pytest.raises(ValueError):
        ch.reserve(2**70)
    with pytest.raises(ValueError, match="maxsize"):
        mc.Channel(-5, backend=backend)
    with pytest.raises(TypeError):
        ch.reserve("100")
    with pytest.raises(TypeError):
        ch.reserve()
    still_works(ch)


def test_size_beyond_capacity(backend):
    arena = mc.Arena(capacity=8 << 20, backend=backend)
    ch = arena.channel()
    with pytest.raises(mc.CapacityError, match="capacity"):
        ch.reserve(64 << 20)
    with pytest.raises(mc.CapacityError):
        ch.send(bytes(32 << 20))
    assert issubclass(mc.CapacityError, ValueError)
    still_works(ch)


def test_wrong_timeout_types(backend):
    ch = mc.Channel(backend=backend)
    with pytest.raises(TypeError, match="timeout"):
        ch.recv(timeout="1")
    with pytest.raises(TypeError, match="timeout"):
        ch.send(b"x", timeout=[1])
    with pytest.raises(ValueError, match="non-negative"):
        ch.recv(timeout=-1)
    with pytest.raises(ValueError):
        ch.recv(timeout=float("nan"))
    still_works(ch)


def test_garbage_handles(backend):
    with pytest.raises(ValueError, match="handle"):
        mc.Channel.attach(b"garbage")
    with pytest.raises(ValueError, match="handle"):
        mc.Channel.attach(b"\x00" * 37)
    with pytest.raises(TypeError):
        mc.Channel.attach(42)


def test_handle_of_destroyed_channel(backend):
    ch = mc.Channel(backend=backend)
    handle = ch.handle
    ch.close()
    del ch
    import gc
    gc.collect()
    with pytest.raises(mc.ChannelNotFound, match="no longer exists"):
        mc.Channel.attach(handle)


def test_unknown_backend_and_bad_arena():
    with pytest.raises(ValueError, match="backend"):
        mc.Channel(backend="tape")
    with pytest.raises(TypeError, match="Arena"):
        mc.Channel(arena="not an arena")


def test_bad_reserve_format_and_shape(backend):
    ch = mc.Channel(backend=backend)
    with pytest.raises(ValueError, match="format"):
        ch.reserve(8, format="not-a-format")
    with pytest.raises(ValueError, match="match"):
        ch.reserve(10, shape=(2, 2), format="<f8")
    with pytest.raises(ValueError, match="multiple"):
        ch.reserve(10, format="<f8")
    still_works(ch)
