"""Buffer ownership: reserve/fill/send with no copy, use-after-send, exports, GC."""

import gc

import pytest

import memchannel as mc

np = pytest.importorskip("numpy")


def test_reserved_numpy_buffer_arrives_without_copy(backend):
    ch = mc.Channel(backend=backend)
    buf = ch.reserve(shape=(4, 5), format="<f8")
    arr = np.asarray(buf)
    assert arr.shape == (4, 5) and arr.dtype == np.dtype("<f8")
    arr[:] = np.arange(20, dtype="<f8").reshape(4, 5)
    del arr
    copied_before = ch.stats()["bytes_copied"]
    ch.send(buf)
    out = ch.recv()
    got = np.asarray(out)
    assert got.dtype == np.dtype("<f8") and got.shape == (4, 5)
    assert np.array_equal(got, np.arange(20, dtype="<f8").reshape(4, 5))
    assert ch.stats()["bytes_copied"] == copied_before
    assert out.format == memoryview(np.empty(0, "<f8")).format and out.shape == (4, 5)


def test_received_buffer_is_a_zero_copy_view(backend):
    ch = mc.Channel(backend=backend)
    ch.send(b"\x00" * 64)
    out = ch.recv()
    view = np.asarray(out)
    assert view.ctypes.data == out.address  # the array views channel memory
    view[0] = 42
    assert memoryview(out)[0] == 42


def test_use_after_send_raises_value_error(backend):
    ch = mc.Channel(backend=backend)
    buf = ch.reserve(16)
    ch.send(buf)
    with pytest.raises(ValueError):
        memoryview(buf)
    with pytest.raises(ValueError):
        buf.nbytes
    with pytest.raises(ValueError):
        ch.send(buf)
    assert ch.qsize() == 1


def test_use_after_release_raises_value_error(backend):
    ch = mc.Channel(backend=backend)
    ch.send(b"data")
    buf = ch.recv()
    buf.release()
    buf.release()  # a second release is a no-op, like memoryview.release()
    with pytest.raises(ValueError):
        memoryview(buf)
    with pytest.raises(ValueError):
        buf.tobytes()
    with pytest.raises(ValueError):
        ch.send(buf)


def test_release_or_send_while_exported_raises_buffer_error(backend):
    ch = mc.Channel(backend=backend)
    buf = ch.reserve(32)
    mv = memoryview(buf)
    with pytest.raises(BufferError):
        buf.release()
    with pytest.raises(BufferError):
        ch.send(buf)
    assert ch.stats()["blocks_in_use"] == 1  # nothing was freed
    assert ch.qsize() == 0
    mv[0] = 1  # the view still works
    mv.release()
    ch.send(buf)
    assert memoryview(ch.recv())[0] == 1


def test_context_manager_releases(backend):
    ch = mc.Channel(backend=backend)
    ch.send(b"x" * 100)
    with ch.recv() as buf:
        assert bytes(buf) == b"x" * 100
    assert buf.released
    assert ch.stats()["blocks_in_use"] == 0


def test_garbage_collected_buffers_return_their_blocks(backend):
    ch = mc.Channel(backend=backend)
    for _ in range(50):
        ch.send(b"y" * 1000)
    bufs = [ch.recv() for _ in range(50)]
    assert ch.stats()["blocks_in_use"] == 50
    reserved = [ch.reserve(100) for _ in range(5)]
    assert ch.stats()["blocks_in_use"] == 55
    del bufs, reserved
    gc.collect()
    assert ch.stats()["blocks_in_use"] == 0


def test_received_buffer_can_be_forwarded_without_copy(backend):
    arena = mc.Arena(backend=backend)
    first, second = arena.channel(), arena.channel()
    first.send(b"frame" * 1000)
    copied = first.stats()["bytes_copied"]
    buf = first.recv()
    address = buf.address
    second.send(buf)
    out = second.recv()
    assert out.address == address
    assert bytes(out) == b"frame" * 1000
    assert second.stats()["bytes_copied"] == copied


def test_non_contiguous_input_is_copied_contiguously_and_counted(backend):
    ch = mc.Channel(backend=backend)
    base = np.arange(24, dtype=np.int32).reshape(4, 6)
    strided = base[:, ::2]
    assert not strided.flags.c_contiguous
    before = ch.stats()["bytes_copied"]
    ch.send(strided)
    out = np.asarray(ch.recv())
    assert out.shape == (4, 3) and out.dtype == np.int32
    assert np.array_equal(out, strided)
    assert ch.stats()["bytes_copied"] - before == strided.nbytes


@pytest.mark.parametrize("dtype", ["u1", "<i2", ">i4", "<f4", "<f8", "<c16", "?"])
def test_dtypes_and_shapes_round_trip(backend, dtype):
    ch = mc.Channel(backend=backend)
    arr = (np.arange(60) % 7).astype(dtype).reshape(3, 4, 5)
    ch.send(arr)
    out = np.asarray(ch.recv())
    assert out.dtype == arr.dtype and out.shape == arr.shape
    assert np.array_equal(out, arr)
