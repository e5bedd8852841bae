"""Buffers whose items are pointers never cross a channel, and formats are checked on both
sides (docs/reliability.md item 16).

Sender: any format with a pointer item ('O' plain, in a struct, in a sub-array; '&'; 'X{}')
is refused by send(), send_nowait() and reserve() with a TypeError that names send_object().
Receiver: the format, itemsize and shape read from arena memory are untrusted. A message whose
metadata was forged (here: rewritten in the queued block, through its address in this process
and through the segment file as another process would) raises CorruptionError, is counted in
corruption_count, and its block goes back to the arena; it is never exported.
"""

import ctypes
import os
import pickle
import random
import struct
import subprocess
import sys
import warnings

import pytest

import memchannel as mc
from memchannel import _memchannel

np = pytest.importorskip("numpy")


def still_works(ch):
    ch.send(b"ok")
    assert bytes(ch.recv()) == b"ok"


def object_arrays():
    return {
        "object": np.array([object(), "x", 3], dtype=object),
        "object 2-d": np.empty((2, 2), dtype=object),
        "struct with an object field": np.zeros(3, dtype=[("a", "<f8"), ("b", "O")]),
        "object sub-array field": np.zeros(2, dtype=[("a", "(2,)O")]),
        "nested struct with an object field": np.zeros(2, dtype=[("s", [("x", "i4"), ("o", "O")])]),
        "aligned struct with an object field": np.zeros(2, dtype=np.dtype([("a", "i1"), ("o", "O")], align=True)),
    }


# --- the sender's side --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(object_arrays()))
def test_send_refuses_object_arrays(backend, kind):
    arr = object_arrays()[kind]
    ch = mc.Channel(backend=backend)
    before = ch.stats()["blocks_in_use"]
    for send in (ch.send, ch.send_nowait, lambda a: ch.send(a, block=False), lambda a: ch.send(a, timeout=0)):
        with pytest.raises(TypeError, match="send_object"):
            send(arr)
    assert ch.stats()["blocks_in_use"] == before  # nothing was allocated or left behind
    assert ch.qsize() == 0
    still_works(ch)


@pytest.mark.parametrize("fmt", ["O", "<O", "object", "f8,O", "T{O:a:}", "T{<d:x:O:y:}", "(2)O", "2O",
                                 "T{i:a:T{O:b:}:c:}", "&d", "X{}", "i4,(3,)O"])
def test_reserve_refuses_pointer_formats(backend, fmt):
    ch = mc.Channel(backend=backend)
    before = ch.stats()["blocks_in_use"]
    with pytest.raises(TypeError, match="send_object"):
        ch.reserve(64, format=fmt)
    with pytest.raises(TypeError, match="send_object"):
        ch.reserve(shape=(2,), format=fmt)
    assert ch.stats()["blocks_in_use"] == before
    still_works(ch)


def test_memoryview_of_object_array_is_refused(backend):
    ch = mc.Channel(backend=backend)
    with pytest.raises(TypeError, match="send_object"):
        ch.send(memoryview(np.array([None, 1], dtype=object)))


def test_object_arrays_travel_with_send_object_pickled_in_band(backend):
    ch = mc.Channel(backend=backend)
    before = ch.stats()["blocks_in_use"]
    for kind, arr in object_arrays().items():
        # numpy hands pickle no out-of-band buffer for them: their memory is pointers
        buffers = []
        pickle.dumps(arr, protocol=5, buffer_callback=buffers.append)
        assert buffers == [], kind
        ch.send_object({"k": arr})
        got = ch.recv_object()["k"]
        assert got.dtype == arr.dtype and got.shape == arr.shape, kind
        assert pickle.dumps(got) == pickle.dumps(arr), kind
    assert ch.stats()["blocks_in_use"] == before  # in-band: each block was freed on receipt


def test_send_object_refuses_an_explicit_picklebuffer_of_pointers(backend):
    ch = mc.Channel(backend=backend)
    before = ch.stats()["blocks_in_use"]
    with pytest.raises(TypeError, match="pointers"):
        ch.send_object(pickle.PickleBuffer(np.array([object()], dtype=object)))
    assert ch.stats()["blocks_in_use"] == before
    assert ch.qsize() == 0


@pytest.mark.parametrize("dtype", [
    "i1", "u1", "<i2", ">i4", "<u8", "<f2", "f4", ">f8", np.longdouble, "c8", ">c16", np.clongdouble,
    "?", "S7", "U3", "V5", "datetime64[ns]",
    [("a", "<i4"), ("b", "<f8")],
    np.dtype([("a", "<i4"), ("b", "<f8")], align=True),
    np.dtype([("a", "i1"), ("b", [("x", ">f4"), ("y", "<i2")])], align=True),  # numpy can't read it back
    np.dtype([("a", "i1"), ("b", [("x", "f4"), ("y", "i2")])], align=True),
    [("a", "(2,3)<f4"), ("b", "S3")],
    np.dtype([("a", "(2,3)<f4"), ("b", "S3")], align=True),
    [("a", ">i2"), ("b", "<u8"), ("c", "<U2")],
], ids=str)
def test_honest_formats_still_pass_both_ways(backend, dtype):
    ch = mc.Channel(backend=backend)
    arr = np.zeros(5, dtype=dtype)
    try:
        memoryview(arr)
    except (ValueError, TypeError):  # no PEP 3118 export (datetime): send() says so, as before
        with pytest.raises(TypeError):
            ch.send(arr)
        return
    arr = np.frombuffer(random.Random(1).randbytes(arr.nbytes), dtype=arr.dtype)
    try:
        np.asarray(memoryview(arr))
    except RuntimeError:
        # numpy exports a format whose itemsize its own parser disagrees with (some aligned
        # nested structs): no receiver could read it, so send() refuses it up front.
        with pytest.raises(ValueError, match="itemsize"):
            ch.send(arr)
        return
    ch.send(arr)
    buf = ch.recv()
    assert buf.format == memoryview(arr).format and buf.itemsize == arr.itemsize
    got = np.asarray(buf)
    # numpy's own round trip through its buffer format ('V5' comes back as an empty struct)
    assert got.dtype == np.asarray(memoryview(arr)).dtype and got.tobytes() == arr.tobytes()
    del got
    buf.release()


@pytest.mark.parametrize("dtype", ["<f8", "float32", "f8,i4", "i1,(2,)f4", "U4", "S3"])
def test_reserve_with_numpy_spellings(backend, dtype):
    ch = mc.Channel(backend=backend)
    buf = ch.reserve(shape=(3,), format=dtype)
    assert buf.itemsize == np.dtype(dtype).itemsize
    ch.send(buf)
    with ch.recv() as got:
        assert np.asarray(got).dtype == np.dtype(dtype)


def test_inconsistent_itemsize_is_refused_with_a_clear_message(backend):
    # numpy exports this dtype (explicit itemsize, trailing padding) with a format that says
    # 24 bytes for items of 32: no reader can tell where items start, numpy's own included.
    dt = np.dtype({"names": ["a", "b"], "formats": ["i1", "<f8"], "offsets": [0, 16], "itemsize": 32})
    ch = mc.Channel(backend=backend)
    with pytest.raises(ValueError, match="itemsize is 32"):
        ch.send(np.zeros(2, dtype=dt))
    ch.send(memoryview(np.zeros(2, dtype=dt)).cast("B"))  # the documented way out
    assert ch.recv().nbytes == 64


# --- the parser ---------------------------------------------------------------------------------

def parse(fmt):
    return _memchannel._parse_format(fmt)


@pytest.mark.parametrize("fmt, size", [
    ("B", 1), ("<d", 8), ("l", struct.calcsize("l")), ("<l", 4), ("=q", 8), ("3s", 3), ("10p", 10),
    ("di", 12), ("@id", 16), ("<id", 12), ("2x", 2), ("Zd", 16), (">Zf", 8), ("g", ctypes.sizeof(ctypes.c_longdouble)),
    ("P", struct.calcsize("P")), ("3w", 12), ("(2,3)f", 24), ("T{<i:a:<d:b:}", 12), (" 2i ", 8),
])
def test_parser_itemsizes(fmt, size):
    verdict, itemsize, aligned, why = parse(fmt)
    assert verdict == "ok", why
    assert size in (itemsize, aligned)
    assert _memchannel._format_fits(fmt, size)
    assert not _memchannel._format_fits(fmt, size + 1)


@pytest.mark.parametrize("fmt", ["O", "<O", "2O", "T{O}", "T{i:a:O:b:}", "(2)O", "&d", "X{}", "T{T{T{O}}}"])
def test_parser_pointer_formats(fmt):
    assert parse(fmt)[0] == "pointer"
    assert not _memchannel._format_fits(fmt, 8)


@pytest.mark.parametrize("fmt", ["", "!!", "q\0", "T{", "}", "T{i", "(2,3", "()d", "(a)d", "3", "Zq", "Zi",
                                 "<P", ">n", "<g", "T{i:name", "y", "\xff", "d" * 2000 + "9999999999d",
                                 "4294967296x", "(65536,65536)d", "0d"])
def test_parser_invalid_formats(fmt):
    assert parse(fmt)[0] == "invalid"
    assert not any(_memchannel._format_fits(fmt, n) for n in (0, 1, 8, 16))


def random_format(rng, depth=0):
    codes = list("xcbB?hHiIlLqQnNefdspPgwO") + ["Zf", "Zd", "Zg"]
    out = ""
    if rng.random() < 0.3:
        out += rng.choice("@=<>!^")
    if depth < 3 and rng.random() < 0.15:
        out += "T{" + "".join(random_format(rng, depth + 1) for _ in range(rng.randint(1, 4))) + "}"
    else:
        if rng.random() < 0.15:
            out += "(" + ",".join(str(rng.randint(1, 3)) for _ in range(rng.randint(1, 2))) + ")"
        if rng.random() < 0.3:
            out += str(rng.randint(1, 5))
        out += rng.choice(codes)
    if rng.random() < 0.3:
        out += ":f%d:" % rng.randint(0, 99)
    return out


def test_parser_agrees_with_struct_and_numpy():
    """On random formats: the struct module's size is ours; numpy's is one of the two readings;
    what numpy reads as an object dtype is a pointer format for us, and what either of them
    accepts (with items of at least one byte) we accept."""
    from numpy._core._internal import _dtype_from_pep3118
    rng = random.Random(10)
    checked = {"struct": 0, "numpy": 0, "object": 0}
    for _ in range(4000):
        fmt = "".join(random_format(rng) for _ in range(rng.randint(1, 4)))
        verdict, itemsize, aligned, why = parse(fmt)
        try:
            size = struct.calcsize(fmt)
        except struct.error:
            pass
        else:
            checked["struct"] += 1
            assert (verdict, itemsize) == ("ok", size), (fmt, why)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dt = _dtype_from_pep3118(fmt)
        except Exception:
            continue
        if dt.hasobject:
            checked["object"] += 1
            assert verdict == "pointer", fmt
        else:
            checked["numpy"] += 1
            assert verdict == "ok" and dt.itemsize in (itemsize, aligned), (fmt, verdict, itemsize, aligned, why)
    assert min(checked.values()) > 100, checked


# --- the receiver's side: forged metadata in a queued message -----------------------------------

def forge(meta_address, *, itemsize=None, ndim=None, fmt=None, shape=None):
    """Rewrites the BlockMeta (core/block.h) of a block: itemsize u32, ndim u16, format_len
    u16, shape int64[ndim], format chars. `meta_address` is the payload address minus
    meta_bytes (64 for a 1-d buffer with a short format)."""
    prefix = (ctypes.c_char * 8).from_address(meta_address)
    old_itemsize, old_ndim, old_len = struct.unpack("<IHH", bytes(prefix))
    ndim = old_ndim if ndim is None else ndim
    fmt = bytes(fmt) if fmt is not None else None
    new_len = old_len if fmt is None else len(fmt)
    struct.pack_into("<IHH", prefix, 0, old_itemsize if itemsize is None else itemsize, ndim, new_len)
    if shape is not None:
        ctypes.memmove(meta_address + 8, struct.pack("<%dq" % len(shape), *shape), 8 * len(shape))
    if fmt is not None:
        ctypes.memmove(meta_address + 8 + 8 * ndim, fmt, len(fmt))


FORGERIES = {
    "O": dict(fmt=b"O"),
    "<O": dict(fmt=b"<O"),
    "struct with an O field": dict(fmt=b"T{<q:a:O:b:}", itemsize=16, shape=[2]),
    "O sub-array": dict(fmt=b"(2)O", itemsize=16, shape=[2]),
    "pointer to q": dict(fmt=b"&q"),
    "function pointer": dict(fmt=b"X{}"),
    "unparseable": dict(fmt=b"!!"),
    "NUL inside": dict(fmt=b"q\0"),
    "bytes beyond ASCII": dict(fmt=b"\xffq"),
    "itemsize not the format's": dict(fmt=b"<i"),  # 4-byte items, itemsize still 8
    "native l with itemsize 4": dict(fmt=b"l", itemsize=4, shape=[8]),
    "shape x itemsize != length": dict(shape=[5]),
    "negative shape": dict(shape=[-4]),
    "empty format": dict(fmt=b""),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_forged_format_in_a_queued_message_raises_corruption_error(backend, forgery):
    ch = mc.Channel(backend=backend)
    PAD = b"." * 64  # "first" and "after" hold blocks (past the 64 inline bytes)
    ch.send(b"first" + PAD)
    baseline = ch.stats()
    buf = ch.reserve(shape=(4,), format="<q")
    np.asarray(buf)[:] = [1, 2, 3, 4]
    address = buf.address
    ch.send(buf)
    ch.send(b"after" + PAD)
    forge(address - 64, **FORGERIES[forgery])
    assert bytes(ch.recv()) == b"first" + PAD
    with pytest.raises(mc.CorruptionError, match="corrupt"):
        ch.recv()
    stats = ch.stats()
    assert stats["corruption_count"] == baseline["corruption_count"] + 1  # counted once
    assert stats["blocks_in_use"] == baseline["blocks_in_use"]  # "after" replaced "first"; the forged one is free
    assert bytes(ch.recv()) == b"after" + PAD  # the channel keeps serving
    still_works(ch)
    assert ch.stats()["blocks_in_use"] == baseline["blocks_in_use"] - 1


def test_forged_format_read_by_recv_object_and_iteration(backend):
    ch = mc.Channel(backend=backend)
    for receive in (ch.recv_object, lambda: next(iter(ch)), ch.recv_nowait):
        buf = ch.reserve(shape=(2,), format="<d")
        address = buf.address
        ch.send(buf)
        forge(address - 64, fmt=b"O")
        with pytest.raises(mc.CorruptionError):
            receive()
    assert ch.stats()["corruption_count"] == 3
    still_works(ch)


FORGER = r'''
import mmap, os, sys
path, marker, fmt = sys.argv[1], bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3])
fd = os.open(path, os.O_RDWR)
try:
    m = mmap.mmap(fd, os.fstat(fd).st_size)
finally:
    os.close(fd)
at = m.find(marker)
assert at >= 64 and m.find(marker, at + 1) == -1, at
meta = at - 64                           # BlockMeta: itemsize, ndim, format_len, shape[1], format
m[meta + 6:meta + 8] = len(fmt).to_bytes(2, "little")
m[meta + 16:meta + 16 + len(fmt)] = fmt
m.flush()
m.close()
print("forged")
'''


def test_a_peer_process_forges_the_format_through_the_segment():
    """The threat as it is: another process maps the arena's segment and rewrites a queued
    message's metadata. The receiver must raise CorruptionError, not hand numpy pointers."""
    arena = mc.Arena(capacity=64 << 20, backend="shm")
    ch = arena.channel()
    marker = os.urandom(32)
    buf = ch.reserve(shape=(8,), format="<q")
    buf.write(marker)
    ch.send(buf)
    proc = subprocess.run([sys.executable, "-c", FORGER, "/dev/shm/" + arena.name, marker.hex(), b"O".hex()],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "forged" in proc.stdout, proc.stderr
    with pytest.raises(mc.CorruptionError, match="'O'"):
        np.asarray(ch.recv())
    assert ch.stats()["corruption_count"] == 1
    assert ch.stats()["blocks_in_use"] == 0
    still_works(ch)
