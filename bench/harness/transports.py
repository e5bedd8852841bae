"""Transport adapters: one small class per way of moving bytes between two parties.

Every adapter has the same two halves:

* worker side (the measurement subprocess, before any party starts):
  ``check()`` raises :class:`Skip` when the transport cannot run here,
  ``create_link(link)`` makes one channel and returns its *spec*, ``destroy_link(spec)``;
* party side (a thread, an isolated subinterpreter or a forked process):
  ``open(spec, side, index, link)`` returns an :class:`Endpoint` with
  ``send / recv / view / release / forward / send_zc / send_obj / recv_obj / close``.

A spec crosses into a subinterpreter as a Python literal (it is written into the code
string the subinterpreter runs), so subinterpreter transports use bytes/int/str specs.
Processes are forked from the measurement subprocess, so their specs may be any object.

This module imports no third-party library at import time: it is imported inside
isolated subinterpreters, where most extension modules cannot be loaded.
"""

import os
import pickle
import queue
import time

THREAD, SUBINTERP, PROCESS = "threads", "subinterpreters", "processes"

# The receiving side of a polling transport spins this many empty polls before it
# starts yielding the CPU on every poll (keeps 4 parties on 2 cores from starving).
SPIN_POLLS = 2000


class Skip(Exception):
    """The transport (or this scenario on it) cannot run here; str(exc) is the reason."""


class Endpoint:
    """One party's end of one link.

    Concurrency: used by exactly one party (one thread), never shared.
    Messages returned by ``recv`` are opaque; read them through ``view`` (a 1-D unsigned
    byte memoryview the caller releases) and give them back with ``release``.
    """

    def __init__(self):
        self._zc = None

    def sync(self):
        """Called after the start signal, before the timed region (connection updates)."""

    def send(self, data):
        raise NotImplementedError

    def recv(self):
        raise NotImplementedError

    def view(self, msg):
        return memoryview(msg).cast("B")

    def release(self, msg):
        pass

    def forward(self, msg):
        """Send a received message onward (pipeline stage), as cheaply as this transport can."""
        self.send(msg)

    def send_zc(self, nbytes, fill):
        """Produce a message in place: ``fill(memoryview)`` writes it, then it is sent.

        The default is the usual recipe without channel memory: the producer owns a
        buffer (reused, so no page faults are counted), fills it and sends it.
        """
        if self._zc is None or len(self._zc) != nbytes:
            self._zc = bytearray(nbytes)
        with memoryview(self._zc) as mv:
            fill(mv)
        self.send(self._zc)

    def send_batch(self, msgs):
        """S7: send every message of the list (one call where the transport has a batch API)."""
        for m in msgs:
            self.send(m)

    def recv_batch(self, max_messages):
        """S7: 1 to max_messages messages (one call where the transport has a batch API)."""
        return [self.recv()]

    def release_batch(self, msgs):
        """S7: give back every message of a received batch, as a user of the batch API would.

        The default releases each one; a transport whose messages need no release (``release``
        not overridden) does nothing, and one whose messages are freed with their last reference
        drops the list.
        """
        if type(self).release is not Endpoint.release:
            for m in msgs:
                self.release(m)

    def send_obj(self, obj):
        self.send(pickle.dumps(obj, protocol=5))

    def recv_obj(self):
        msg = self.recv()
        with self.view(msg) as mv:
            obj = pickle.loads(mv)
        self.release(msg)
        return obj

    def close(self):
        pass


def _poll(try_get, is_empty):
    """Busy-poll ``try_get`` until it returns something other than ``is_empty``."""
    spins = 0
    while True:
        item = try_get()
        if item is not is_empty:
            return item
        spins += 1
        if spins > SPIN_POLLS:
            os.sched_yield()


class Transport:
    """Worker-side half of an adapter. Subclasses set the class attributes."""

    name = ""          # id used by --only and in the JSON
    label = ""         # human-readable row label
    domain = THREAD    # where the parties run
    library = ""       # distribution whose version is recorded
    notes = ""         # how the peer is used, shown under the tables
    # send_zc hands the receiver the producer's memory without copying the payload
    # (the untouched S2 variants run only on these; the others copy 16 MiB per message)
    zero_copy = False
    # M1 (memory of queued messages): why this transport is not measured, or None when
    # memory_holder() is implemented
    memory_skip = "not measured: no memory holder for this transport"
    # S7 (batches) runs only where the transport has a batch API of its own
    batches = False
    # O1 (one thread, objects against the pickle floor) is memchannel's own cost account
    objects_floor = False

    def check(self):
        pass

    def unsupported(self, scenario, param):
        """Reason this scenario cannot run on this transport, or None (adapter-specific)."""
        return None

    def skip_reason(self, scenario, param):
        """Reason this (scenario, param) is not measured on this transport, or None."""
        from .scenarios import S2_UNTOUCHED
        if scenario == "M1" and self.memory_skip:
            return self.memory_skip
        if scenario == "S7" and not self.batches:
            return "not applicable: no batch API (send_many/put_many) to measure"
        if scenario == "O1" and not self.objects_floor:
            return "not applicable: memchannel's one-thread object cost against its own floor"
        if scenario == "S2" and param in S2_UNTOUCHED and not self.zero_copy:
            return ("not applicable: this transport copies the payload on every send, so "
                    "untouched zero-copy cost is not defined (see S2 1 MiB / 16 MiB)")
        return self.unsupported(scenario, param)

    def memory_holder(self):
        """M1: an unbounded queue of this transport, filled by the calling process (see memory.py)."""
        raise NotImplementedError

    def create_link(self, link):
        raise NotImplementedError

    def destroy_link(self, spec):
        pass

    def teardown(self):
        pass

    @staticmethod
    def open(spec, side, index, link):
        raise NotImplementedError


def _depth(link):
    return link["depth"]


class Holder:
    """M1: one queue that the calling process fills with messages nobody receives."""

    what = "growth of the process's resident memory (VmRSS)"

    def put(self, data):
        raise NotImplementedError

    def queued(self):
        """Messages the queue reports holding (None when it cannot tell)."""
        return None

    def measure(self):
        """Extra measurements right after filling; ``primary_bytes`` overrides RSS growth."""
        return {}

    def get(self):
        raise NotImplementedError

    def verify(self, count, make, first):
        """The first messages come out intact and in order (the queue really holds them)."""
        for i in range(min(count, first)):
            got = self.get()
            if bytes(got) != make(i):
                raise AssertionError(f"message {i} changed while queued")

    def close(self):
        pass


# --------------------------------------------------------------------------- memchannel

class _McEndpoint(Endpoint):
    def __init__(self, ch):
        super().__init__()
        self.ch = ch
        self._has_objects = hasattr(ch, "send_object")

    def send(self, data):
        self.ch.send(data)

    def recv(self):
        return self.ch.recv()

    def view(self, msg):
        return memoryview(msg).cast("B")

    def release(self, msg):
        msg.release()

    def forward(self, msg):
        self.ch.send(msg)           # same arena: ownership moves, no copy

    def send_zc(self, nbytes, fill):
        buf = self.ch.reserve(nbytes)
        with memoryview(buf) as mv:
            fill(mv)
        self.ch.send(buf)

    def send_batch(self, msgs):
        self.ch.send_many(msgs)

    def recv_batch(self, max_messages):
        return self.ch.recv_many(max_messages)

    def release_batch(self, msgs):
        # Dropping the list releases every Buffer as its last reference goes (docs/design.md,
        # the Buffer row: "GC returns the block"): what a recv_many user writes, with no
        # Python call per message.
        pass

    def send_obj(self, obj):
        if self._has_objects:
            self.ch.send_object(obj)
        else:
            super().send_obj(obj)

    def recv_obj(self):
        if self._has_objects:
            return self.ch.recv_object()
        return super().recv_obj()


class MemchannelTransport(Transport):
    library = "memchannel"
    backend = "heap"
    zero_copy = True
    batches = True
    notes = ("`ch.send(bytes)`, `ch.recv()` -> Buffer, released after use; zero-copy "
             "with `ch.reserve(n)` + `ch.send(buf)`; stages forward the received Buffer; "
             "`send_object`/`recv_object` when present, else pickle")

    def __init__(self):
        self._arena = None

    def check(self):
        try:
            import memchannel as mc
        except Exception as exc:  # noqa: BLE001 - any import failure is a skip reason
            raise Skip(f"memchannel not importable: {type(exc).__name__}: {exc}")
        if not hasattr(mc, "Channel"):
            raise Skip("memchannel has no Channel yet")
        try:
            ch = mc.Channel(backend=self.backend)
        except Exception as exc:  # noqa: BLE001
            raise Skip(f"memchannel backend={self.backend!r} unavailable: "
                       f"{type(exc).__name__}: {exc}")
        if self.domain != THREAD and not hasattr(ch, "handle"):
            raise Skip("memchannel Channel has no handle to reach another party")
        ch.close()

    def create_link(self, link):
        import memchannel as mc
        depth = _depth(link)
        if self._arena is None and hasattr(mc, "Arena"):
            capacity = max(256 << 20, 4 * depth * link["max_payload"])
            try:
                self._arena = mc.Arena(capacity=capacity, backend=self.backend)
            except TypeError:
                self._arena = mc.Arena(backend=self.backend)
        if self._arena is not None:
            ch = self._arena.channel(maxsize=depth)
        else:
            ch = mc.Channel(maxsize=depth, backend=self.backend)
        self._keep = getattr(self, "_keep", [])
        self._keep.append(ch)
        return ch if self.domain == THREAD else ch.handle

    def destroy_link(self, spec):
        pass

    def teardown(self):
        for ch in getattr(self, "_keep", []):
            try:
                ch.close()
            except Exception:  # noqa: BLE001 - teardown is best effort
                pass

    @staticmethod
    def open(spec, side, index, link):
        if isinstance(spec, (bytes, bytearray)):
            import memchannel as mc
            return _McEndpoint(mc.Channel.attach(bytes(spec)))
        return _McEndpoint(spec)


class _McHolder(Holder):
    what = ("arena bytes carved for the messages: Channel.stats()['carved_bytes'] after "
            "minus before (data blocks + queue nodes, fresh arena)")
    capacity = 1 << 30

    def __init__(self, backend):
        import memchannel as mc
        self.arena = mc.Arena(capacity=self.capacity, backend=backend)
        self.ch = self.arena.channel(maxsize=0)
        self.put = self.ch.send
        self.before = self.ch.stats()

    def queued(self):
        return self.ch.qsize()

    def measure(self):
        s, b = self.ch.stats(), self.before
        return {"primary_bytes": s["carved_bytes"] - b["carved_bytes"],
                "arena_carved_bytes": s["carved_bytes"] - b["carved_bytes"],
                "arena_data_bytes": s["bytes_in_use"] - b["bytes_in_use"],
                "arena_blocks": s["blocks_in_use"] - b["blocks_in_use"],
                "arena_mapped_bytes": s["mapped_bytes"],
                "arena_mapped_growth_bytes": s["mapped_bytes"] - b["mapped_bytes"],
                "arena_segments": s["segments"],
                "arena_capacity": s["capacity"]}

    def verify(self, count, make, first):
        """Every message comes out intact and the arena returns to where it started."""
        for i in range(count):
            buf = self.ch.recv(timeout=10)
            if i < first and bytes(buf) != make(i):
                raise AssertionError(f"message {i} changed while queued")
            buf.release()
        s, b = self.ch.stats(), self.before
        if s["queued"] or s["bytes_in_use"] != b["bytes_in_use"]:
            raise AssertionError(f"arena not back to its start after draining: {s}")

    def close(self):
        self.ch.close()


class McHeapThreads(MemchannelTransport):
    name, label, domain, backend = "memchannel-heap-threads", "memchannel heap", THREAD, "heap"
    memory_skip = None
    objects_floor = True

    def memory_holder(self):
        return _McHolder("heap")


class McHeapSubinterp(MemchannelTransport):
    name, label, domain, backend = ("memchannel-heap-subinterp", "memchannel heap",
                                    SUBINTERP, "heap")
    memory_skip = ("measured as memchannel heap (threads): the same heap arena and queue; "
                   "the domain of the parties does not change what is stored")


class McShmProcesses(MemchannelTransport):
    name, label, domain, backend = "memchannel-shm-processes", "memchannel shm", PROCESS, "shm"
    memory_skip = None

    def memory_holder(self):
        return _McHolder("shm")


class _McQueueEndpoint(Endpoint):
    def __init__(self, q):
        super().__init__()
        self.q = q

    def send_obj(self, obj):
        self.q.put(obj)

    def recv_obj(self):
        return self.q.get()


class McQueueProcesses(Transport):
    name, label, domain, library = ("memchannel-queue-processes", "memchannel.Queue", PROCESS,
                                    "memchannel")
    notes = "`memchannel.Queue` `put`/`get` (the multiprocessing.Queue drop-in; objects only)"
    memory_skip = "measured as memchannel shm: the same channel under the Queue"

    def unsupported(self, scenario, param):
        if scenario != "S5":
            return "objects only (S5): the drop-in for multiprocessing.Queue"
        return None

    def create_link(self, link):
        import memchannel as mc
        return mc.Queue(maxsize=_depth(link))

    @staticmethod
    def open(spec, side, index, link):
        return _McQueueEndpoint(spec)


# --------------------------------------------------------------------------- queue.Queue

class _QueueEndpoint(Endpoint):
    def __init__(self, q):
        super().__init__()
        self.q = q

    def send(self, data):
        self.q.put(data)

    def recv(self):
        return self.q.get()

    def send_obj(self, obj):
        self.q.put(obj)

    def recv_obj(self):
        return self.q.get()


class _QueueHolder(Holder):
    what = "growth of the process's resident memory (VmRSS): the bytes objects and the deque"

    def __init__(self, q):
        self.q = q
        self.put = q.put_nowait

    def queued(self):
        return self.q.qsize()

    def get(self):
        return self.q.get(timeout=10)


class QueueQueue(Transport):
    name, label, domain, library = "queue.Queue", "queue.Queue", THREAD, "python"
    notes = "passes object references (no copy, no pickle): the in-process reference"
    zero_copy = True        # a reference to the producer's buffer
    memory_skip = None

    def memory_holder(self):
        return _QueueHolder(queue.Queue())

    def create_link(self, link):
        return queue.Queue(maxsize=_depth(link))

    @staticmethod
    def open(spec, side, index, link):
        return _QueueEndpoint(spec)


# --------------------------------------------------------------------------- multiprocessing

def _mp():
    import multiprocessing
    return multiprocessing.get_context("fork")


class _MpQueueHolder(_QueueHolder):
    what = ("growth of the process's resident memory (VmRSS): with nobody reading, the "
            "messages wait in the feeder thread's buffer (the pipe holds at most 64 KiB)")

    def close(self):
        self.q.cancel_join_thread()     # the feeder is blocked on a full pipe
        self.q.close()


class MpQueue(Transport):
    name, label, domain, library = ("mp.Queue", "multiprocessing.Queue", PROCESS, "python")
    notes = "`put`/`get` (pickled by the feeder thread, written to a pipe)"
    memory_skip = None

    def memory_holder(self):
        return _MpQueueHolder(_mp().Queue())

    def create_link(self, link):
        return _mp().Queue(maxsize=_depth(link))

    @staticmethod
    def open(spec, side, index, link):
        return _QueueEndpoint(spec)


class MpSimpleQueue(Transport):
    name, label, domain, library = ("mp.SimpleQueue", "multiprocessing.SimpleQueue",
                                    PROCESS, "python")
    notes = "`put`/`get` (pickled in the caller, a pipe guarded by locks; unbounded)"
    memory_skip = ("not applicable: put/send write into an OS pipe (64 KiB) and block while "
                   "nobody reads: nothing can hold 1,000,000 messages")

    def create_link(self, link):
        return _mp().SimpleQueue()

    @staticmethod
    def open(spec, side, index, link):
        return _QueueEndpoint(spec)


class _PipeEndpoint(Endpoint):
    def __init__(self, conn):
        super().__init__()
        self.conn = conn

    def send(self, data):
        self.conn.send_bytes(data)

    def recv(self):
        return self.conn.recv_bytes()

    def send_obj(self, obj):
        self.conn.send(obj)

    def recv_obj(self):
        return self.conn.recv()


class MpPipe(Transport):
    name, label, domain, library = "mp.Pipe", "multiprocessing.Pipe", PROCESS, "python"
    notes = "`send_bytes`/`recv_bytes` (objects: `send`/`recv`); one-way pipe, point to point"
    memory_skip = ("not applicable: put/send write into an OS pipe (64 KiB) and block while "
                   "nobody reads: nothing can hold 1,000,000 messages")

    def unsupported(self, scenario, param):
        if scenario == "S6":
            return "not applicable: a Pipe connection is point to point (no M:N)"
        return None

    def create_link(self, link):
        reader, writer = _mp().Pipe(duplex=False)
        return (reader, writer)

    @staticmethod
    def open(spec, side, index, link):
        return _PipeEndpoint(spec[1] if side == "send" else spec[0])


class _ShmMsg:
    __slots__ = ("shm", "nbytes", "name")

    def __init__(self, shm, nbytes, name):
        self.shm, self.nbytes, self.name = shm, nbytes, name


def _shared_memory(name=None, create=False, size=0):
    from multiprocessing import shared_memory
    try:   # 3.13+: keep the resource tracker out, ownership moves with the name
        return shared_memory.SharedMemory(name=name, create=create, size=size, track=False)
    except TypeError:
        shm = shared_memory.SharedMemory(name=name, create=create, size=size)
        from multiprocessing import resource_tracker
        resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001
        return shm


class _ShmRecipeEndpoint(Endpoint):
    """One SharedMemory segment per message; its name travels through a multiprocessing.Queue.

    The receiver attaches by name, reads, closes and unlinks (ownership moved with the name).
    """

    def __init__(self, q):
        super().__init__()
        self.q = q

    def send(self, data):
        with memoryview(data) as src:
            n = src.nbytes
            shm = _shared_memory(create=True, size=max(n, 1))
            shm.buf[:n] = src.cast("B")
        self.q.put((shm.name, n))
        shm.close()

    def send_zc(self, nbytes, fill):
        shm = _shared_memory(create=True, size=max(nbytes, 1))
        with shm.buf[:nbytes] as mv:
            fill(mv)
        self.q.put((shm.name, nbytes))
        shm.close()

    def recv(self):
        name, n = self.q.get()
        return _ShmMsg(_shared_memory(name=name), n, name)

    def view(self, msg):
        return msg.shm.buf[:msg.nbytes]

    def release(self, msg):
        msg.shm.close()
        msg.shm.unlink()

    def forward(self, msg):
        self.q.put((msg.name, msg.nbytes))     # pass the name on, no copy
        msg.shm.close()


class ShmRecipe(Transport):
    name, label, domain, library = ("shared_memory+Queue", "shared_memory + Queue of names",
                                    PROCESS, "python")
    notes = ("the hand-made recipe: a new `SharedMemory` per message, its name through a "
             "`multiprocessing.Queue`; receiver attaches, reads, unlinks; stages forward the name")
    memory_skip = ("not measured: one SharedMemory segment (a /dev/shm file of at least one "
                   "4 KiB page) per message; 1,000,000 queued messages are 1,000,000 files")

    def create_link(self, link):
        return _mp().Queue(maxsize=_depth(link))

    @staticmethod
    def open(spec, side, index, link):
        return _ShmRecipeEndpoint(spec)


# --------------------------------------------------------------------------- interpreter queues

def interp_queues_module():
    """The PEP 734 queue module: the backport's high-level ``Queue`` wrapping _interpqueues."""
    try:
        from interpreters_backport.interpreters import queues
        return queues
    except ImportError:
        pass
    try:
        from test.support.interpreters import queues   # CPython 3.13 test-only copy
        return queues
    except ImportError:
        return None


class _InterpQueueEndpoint(Endpoint):
    def __init__(self, qid, as_memoryview):
        super().__init__()
        queues = interp_queues_module()
        self.q = queues.Queue(qid)
        self._empty = queues.QueueEmpty
        self._full = queues.QueueFull
        self._as_memoryview = as_memoryview
        self._nothing = object()

    def _try_get(self):
        try:
            return self.q.get_nowait()
        except self._empty:
            return self._nothing

    def send(self, data):
        if self._as_memoryview:
            data = memoryview(data)
        elif type(data) is not bytes:
            data = bytes(data)
        spins = 0
        while True:
            try:
                self.q.put_nowait(data, syncobj=True)     # shared natively, not pickled
                return
            except self._full:
                spins += 1
                if spins > SPIN_POLLS:
                    os.sched_yield()

    def recv(self):
        return _poll(self._try_get, self._nothing)

    def send_obj(self, obj):
        self.send_any(obj)

    def send_any(self, obj):
        spins = 0
        while True:
            try:
                self.q.put_nowait(obj, syncobj=False)     # the default: pickled
                return
            except self._full:
                spins += 1
                if spins > SPIN_POLLS:
                    os.sched_yield()

    def recv_obj(self):
        return self.recv()

    def forward(self, msg):
        self.send(msg)


class _InterpQueueHolder(Holder):
    what = ("growth of the process's resident memory (VmRSS): the queue's items live in "
            "the runtime's memory, filled from the main interpreter of a fresh process")

    def __init__(self, as_memoryview):
        queues = interp_queues_module()
        self.q = queues.create(maxsize=0, syncobj=True)
        if as_memoryview:
            self.put = lambda data: self.q.put_nowait(memoryview(data), syncobj=True)
        else:
            self.put = lambda data: self.q.put_nowait(data, syncobj=True)

    def queued(self):
        return self.q.qsize()

    def get(self):
        return self.q.get_nowait()


class _InterpQueueBase(Transport):
    domain, library = SUBINTERP, "interpreters-pep-734"
    memory_skip = None
    as_memoryview = False

    def memory_holder(self):
        return _InterpQueueHolder(self.as_memoryview)

    def check(self):
        if interp_queues_module() is None:
            raise Skip("no PEP 734 queue module (install interpreters-pep-734)")
        try:
            import _interpreters  # noqa: F401
        except ImportError:
            try:
                import _xxsubinterpreters  # noqa: F401
            except ImportError:
                raise Skip("this Python has no subinterpreter support")

    def create_link(self, link):
        queues = interp_queues_module()
        q = queues.create(maxsize=_depth(link), syncobj=True)
        self._keep = getattr(self, "_keep", [])
        self._keep.append(q)
        return q.id


class InterpQueueBytes(_InterpQueueBase):
    name, label = "interpqueue-bytes", "interpreter queue (bytes)"
    notes = ("PEP 734 `Queue.put_nowait(bytes)`/`get_nowait()` busy-polled (the blocking "
             "`get`/`put` sleep 10 ms per empty/full poll); bytes are copied into the receiver")

    @staticmethod
    def open(spec, side, index, link):
        return _InterpQueueEndpoint(spec, as_memoryview=False)


class InterpQueueMemoryview(_InterpQueueBase):
    name, label = "interpqueue-memoryview", "interpreter queue (memoryview)"
    zero_copy = as_memoryview = True     # a view of the producer's buffer
    notes = ("PEP 734 queue carrying `memoryview`s (shared as a buffer view, no copy; the "
             "producer reuses one buffer); busy-polled like the bytes variant")

    @staticmethod
    def open(spec, side, index, link):
        return _InterpQueueEndpoint(spec, as_memoryview=True)


# --------------------------------------------------------------------------- faster-fifo

class _FasterFifoEndpoint(_QueueEndpoint):
    def send(self, data):
        self.q.put(data, block=True, timeout=1e6)

    def recv(self):
        return self.q.get(block=True, timeout=1e6)

    def send_batch(self, msgs):
        self.q.put_many(msgs, block=True, timeout=1e6)

    def recv_batch(self, max_messages):
        return self.q.get_many(block=True, timeout=1e6, max_messages_to_get=max_messages)

    send_obj = send
    recv_obj = recv


class _FasterFifoHolder(_QueueHolder):
    what = ("bytes held in its circular buffer, Queue.data_size() (the smallest max_size_bytes "
            "that fits them; the buffer is allocated up front)")
    buffer_bytes = 256 << 20

    def __init__(self):
        import faster_fifo
        super().__init__(faster_fifo.Queue(max_size_bytes=self.buffer_bytes))

    def measure(self):
        held = self.q.data_size()
        return {"primary_bytes": held, "held_bytes": held, "buffer_bytes": self.buffer_bytes}

    def get(self):
        return self.q.get(timeout=10)


class FasterFifo(Transport):
    name, label, domain, library = "faster-fifo", "faster-fifo", PROCESS, "faster-fifo"
    notes = ("`put`/`get` one message at a time (pickled into its shared circular buffer); "
             "S7: `put_many`/`get_many`")
    batches = True
    memory_skip = None

    def memory_holder(self):
        return _FasterFifoHolder()

    def check(self):
        try:
            import faster_fifo  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            raise Skip(f"faster_fifo not importable: {type(exc).__name__}: {exc}")

    def create_link(self, link):
        import faster_fifo
        size = max(1 << 20, min(_depth(link), 64) * (link["max_payload"] + 4096))
        return faster_fifo.Queue(max_size_bytes=size)

    @staticmethod
    def open(spec, side, index, link):
        return _FasterFifoEndpoint(spec)


# --------------------------------------------------------------------------- iceoryx2

class _IoxEndpoint(Endpoint):
    def __init__(self, name, side, link):
        super().__init__()
        import ctypes
        import iceoryx2 as iox2
        iox2.set_log_level(iox2.LogLevel.Error)
        self.ctypes, self.iox2 = ctypes, iox2
        self.node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        self.service = (
            self.node.service_builder(iox2.ServiceName.new(name))
            .publish_subscribe(iox2.Slice[ctypes.c_uint8])
            .enable_safe_overflow(False)
            .subscriber_max_buffer_size(link["depth"])
            .history_size(0)
            .max_publishers(max(2, link["senders"]))
            .max_subscribers(max(2, link["receivers"]))
            .open_or_create())
        self.pub = self.sub = None
        if side == "send":
            self.pub = (self.service.publisher_builder()
                        .initial_max_slice_len(max(1, link["max_payload"]))
                        .allocation_strategy(iox2.AllocationStrategy.PowerOfTwo)
                        .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
                        .create())
        else:
            self.sub = self.service.subscriber_builder().create()

    def sync(self):
        if self.pub is not None:
            self.pub.update_connections()

    def send(self, data):
        with memoryview(data) as src:
            n = src.nbytes
            sample = self.pub.loan_slice_uninit(n)
            dst = (self.ctypes.c_uint8 * n).from_address(sample.payload_ptr)
            memoryview(dst).cast("B")[:] = src.cast("B")
        sample.assume_init().send()

    def send_zc(self, nbytes, fill):
        sample = self.pub.loan_slice_uninit(nbytes)
        with sample.payload().as_memory_view().cast("B") as mv:
            fill(mv)
        sample.assume_init().send()

    def recv(self):
        return _poll(self.sub.receive, None)

    def view(self, msg):
        return msg.payload().as_memory_view().cast("B")

    def release(self, msg):
        msg.delete()

    def forward(self, msg):
        with self.view(msg) as mv:
            self.send(mv)
        # the caller's endpoint (the subscriber) releases the sample
        msg.delete()

    def close(self):
        for port in (self.pub, self.sub):
            if port is not None:
                port.delete()


class Iceoryx2(Transport):
    name, label, domain, library = "iceoryx2", "iceoryx2 pub/sub", PROCESS, "iceoryx2"
    notes = ("publish-subscribe with `Slice[c_uint8]`, `loan_slice_uninit` + copy (S1) or "
             "fill in place (S2/S4), backpressure RetryUntilDelivered; subscriber busy-polls "
             "`receive()` (pub/sub has no blocking receive); stages copy into a new loan")
    zero_copy = True
    memory_skip = ("not measured: subscriber buffers and publisher data segments are sized "
                   "up front by the service configuration, not by what is queued")

    def check(self):
        try:
            import iceoryx2  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            raise Skip(f"iceoryx2 not importable: {type(exc).__name__}: {exc}")

    def unsupported(self, scenario, param):
        if scenario == "S6" and param == "1to2":
            return "not applicable: pub/sub delivers every sample to every subscriber"
        return None

    def create_link(self, link):
        return f"memchannel-bench/{os.getpid()}/{time.monotonic_ns()}"

    @staticmethod
    def open(spec, side, index, link):
        return _IoxEndpoint(spec, side, link)


# --------------------------------------------------------------------------- pyzmq

class _ZmqEndpoint(Endpoint):
    def __init__(self, addr, side, link):
        super().__init__()
        import zmq
        self.zmq = zmq
        ctx = zmq.Context.instance()
        self.sock = ctx.socket(zmq.PUSH if side == "send" else zmq.PULL)
        self.sock.setsockopt(zmq.LINGER, 0)
        hwm = 0 if link.get("unbounded") else link["depth"]
        self.sock.setsockopt(zmq.SNDHWM if side == "send" else zmq.RCVHWM, hwm)
        # the single party binds; the side with several parties connects
        binds = link["receivers"] == 1 if side == "recv" else link["receivers"] > 1
        # A PUSH that binds for several receivers round-robins over the peers connected at
        # send time: one that connects late gets nothing (and never its sentinel). sync()
        # waits, once, until every receiver has completed its handshake.
        self._await_peers, self._monitor = 0, None
        if binds and side == "send":
            self._monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
            self._await_peers = link["receivers"]
        if binds:
            self.sock.bind(addr)
        else:       # the peer may not have bound yet: retry soon, not after 100 ms
            self.sock.setsockopt(zmq.RECONNECT_IVL, 2)
            self.sock.connect(addr)

    def sync(self):
        if self._monitor is None:
            return
        from zmq.utils.monitor import recv_monitor_message
        deadline = time.monotonic() + 30
        while self._await_peers > 0:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or not self._monitor.poll(left_ms):
                raise RuntimeError(f"{self._await_peers} PULL peer(s) never connected")
            if recv_monitor_message(self._monitor)["event"] == self.zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._await_peers -= 1
        self.sock.disable_monitor()
        self._monitor.close(linger=0)
        self._monitor = None
        time.sleep(0.02)     # let the socket attach the new pipes (commands from the I/O thread)

    def send(self, data):
        self.sock.send(data, copy=False)

    def recv(self):
        return self.sock.recv(copy=False)

    def view(self, msg):
        return msg.buffer.cast("B")

    def forward(self, msg):
        self.sock.send(msg, copy=False)

    def send_obj(self, obj):
        self.sock.send_pyobj(obj)

    def recv_obj(self):
        return self.sock.recv_pyobj()

    def close(self):
        self.sock.close(linger=0)


class Zmq(Transport):
    name, label, domain, library = "pyzmq", "pyzmq PUSH/PULL ipc://", PROCESS, "pyzmq"
    notes = "PUSH/PULL over `ipc://`, `send(copy=False)`/`recv(copy=False)`; objects via `send_pyobj`"
    memory_skip = ("not measured: unreceived messages sit in both sockets' libzmq pipes and "
                   "the kernel's socket buffers, moved there by I/O threads; no single "
                   "process holds them")

    def check(self):
        try:
            import zmq  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            raise Skip(f"pyzmq not importable: {type(exc).__name__}: {exc}")

    def create_link(self, link):
        return f"ipc:///tmp/memchannel-bench-{os.getpid()}-{time.monotonic_ns()}.ipc"

    def destroy_link(self, spec):
        try:
            os.unlink(spec[len("ipc://"):])
        except OSError:
            pass

    @staticmethod
    def open(spec, side, index, link):
        return _ZmqEndpoint(spec, side, link)


# --------------------------------------------------------------------------- registry

TRANSPORTS = [
    McHeapThreads, McHeapSubinterp, McShmProcesses, McQueueProcesses,
    QueueQueue,
    MpQueue, MpSimpleQueue, MpPipe, ShmRecipe,
    InterpQueueBytes, InterpQueueMemoryview,
    FasterFifo, Iceoryx2, Zmq,
]
BY_NAME = {t.name: t for t in TRANSPORTS}
