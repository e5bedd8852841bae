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


# --- limits (issue #10: clear messages at every limit) -------------------------------------------

def test_maxsize_beyond_the_limit_says_so(backend):
    with pytest.raises(ValueError, match=r"maxsize=9223372036854775808 is too large: at most 9223372036854775807"):
        mc.Channel(2**63, backend=backend)
    with pytest.raises(ValueError, match="maxsize is too large"):
        mc.Channel(2**64, backend=backend)
    ch = mc.Channel(2**63 - 1, backend=backend)
    assert ch.stats()["maxsize"] == 2**63 - 1
    still_works(ch)


def timeout_calls(ch, np):
    """Every call that takes a timeout, as f(timeout, block)."""
    array = np.arange(4.0)  # send_object with an out-of-band buffer: the path with a deadline
    return {
        "send": lambda t, block=True: ch.send(b"x", block, t),
        "recv": lambda t, block=True: ch.recv(block, t),
        "reserve": lambda t, block=True: ch.reserve(8, timeout=t),
        "send_object": lambda t, block=True: ch.send_object({"a": array}, block, t),
        "send_object in-band": lambda t, block=True: ch.send_object(1, block, t),
        "recv_object": lambda t, block=True: ch.recv_object(block, t),
    }


@pytest.mark.parametrize("bad, error", [
    (-1, ValueError), (-0.5, ValueError), (float("nan"), ValueError), (-(2**80), ValueError),
    (True, TypeError), (False, TypeError), ("1", TypeError), ([1], TypeError), (1 + 0j, TypeError),
    (object(), TypeError),
])
def test_every_timeout_follows_one_rule(backend, bad, error):
    np = pytest.importorskip("numpy")
    ch = mc.Channel(1, backend=backend)
    bads = [bad]
    if isinstance(bad, bool):
        bads.append(np.bool_(bad))
    elif isinstance(bad, (int, float)):
        bads += [np.float64(bad), np.int64(bad)] if isinstance(bad, int) and bad > -(2**63) else [np.float64(bad)]
    for value in bads:
        for name, call in timeout_calls(ch, np).items():
            for block in (True, False):
                with pytest.raises(error, match="timeout"):
                    call(value, block)
    assert ch.qsize() == 0 and ch.stats()["blocks_in_use"] == 0
    still_works(ch)


def test_every_real_number_is_a_timeout(backend):
    np = pytest.importorskip("numpy")
    from decimal import Decimal
    from fractions import Fraction
    ch = mc.Channel(1, backend=backend)
    for value in (0, 0.0, np.int64(0), np.uint8(0), np.float64(0), np.float32(0), Fraction(0), Decimal(0), 2**80):
        calls = timeout_calls(ch, np)
        ch.send(b"fill")
        with pytest.raises(mc.Full):
            calls["send"](value if value != 2**80 else 0)
        ch.recv().release()
        if value == 2**80:
            continue  # as good as no timeout: only the calls that return at once
        with pytest.raises(mc.Empty):
            calls["recv"](value)
        with pytest.raises(mc.Empty):
            calls["recv_object"](value)
        calls["reserve"](value).release()
        calls["send_object"](value)
        calls["recv_object"](value)
        calls["send_object in-band"](value)
        assert calls["recv_object"](value) == 1
    ch.send(b"x", timeout=2**80)
    ch.recv(timeout=2**80).release()
    assert ch.stats()["blocks_in_use"] == 0


def test_numpy_of_a_released_or_sent_buffer_raises():
    np = pytest.importorskip("numpy")
    ch = mc.Channel(backend="heap")
    released = ch.reserve(16)
    released.release()
    sent = ch.reserve(16)
    ch.send(sent)
    for buf in (released, sent):
        for make in (np.asarray, np.array, lambda b: np.asarray(b, dtype="u1"), np.frombuffer):
            with pytest.raises(ValueError):
                make(buf)
    live = ch.recv()
    assert np.asarray(live).shape == (16,)
    assert live.__array__(dtype="u2").dtype == np.dtype("u2")  # numpy's meaning: a cast
    assert live.__array__(copy=True).base is None


def test_a_size_no_segment_can_ever_hold_raises_capacity_error(backend):
    arena = mc.Arena(capacity=16 << 20, backend=backend)
    ch = arena.channel()
    largest = arena.max_message_bytes
    held = [ch.reserve(1 << 20, timeout=0) for _ in range(5)]  # grows a second, 8 MiB segment
    for buf in held:
        buf.release()
    assert arena.stats()["segments"] == 2
    # 12 MiB fit the fresh arena; now the segments are 4 and 8 MiB with 4 MiB left to map,
    # and blocks are never merged: no wait can make room for it.
    assert arena.max_message_bytes < largest
    for call in (lambda: ch.reserve(largest, timeout=0), lambda: ch.reserve(largest, timeout=5),
                 lambda: ch.reserve(largest), lambda: ch.send(bytes(largest), timeout=5),
                 lambda: ch.send(bytes(arena.max_message_bytes + 1), block=False)):
        with pytest.raises(mc.CapacityError, match="does not fit this arena"):
            call()
    ch.reserve(arena.max_message_bytes, timeout=0).release()  # what it says still fits, fits
    still_works(ch)
