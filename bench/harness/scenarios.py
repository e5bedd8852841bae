"""Scenarios S1-S6 and M1: which links and parties a measurement has, what each party does,
and how one repetition's party timings become one number.

Role code runs inside parties (threads, isolated subinterpreters, processes), so this
module imports only the standard library.

What the numbers do not measure: the time to set up channels and parties, page faults
of the first repetition (it is the warm-up), and any work a real consumer would do on
the data beyond what each scenario says.
"""

import statistics
import time

PAGE = 4096
FRAME_SHAPE = (1080, 1920, 3)
FRAME_BYTES = 1080 * 1920 * 3
S1_SIZES = [64, 4 << 10, 64 << 10, 1 << 20, 16 << 20]
S2_SIZES = [1 << 20, 16 << 20]
# S2 without page touching: what one zero-copy message costs apart from the data, at 64 B
# and at 16 MiB (the per-message-cost target compares the two). Run on transports that
# hand over memory without copying it; the others copy 16 MiB per message (see S2 16 MiB).
S2_UNTOUCHED = {"64B-untouched": 64, "16MiB-untouched": 16 << 20}
M1_PAYLOAD = 64
M1_MESSAGES = 1_000_000
S3_SIZES = [64, 1 << 20]
SMALL_TUPLE = (1, 2.5, "three", b"four", None)
SMALL_DICT = {"id": 7, "name": "sensor-3", "value": 21.5, "ok": True, "tags": ["a", "b"]}
S6_PAYLOAD = 64
S7_PAYLOAD, S7_BATCH = 64, 64
SENTINEL = b"\0"

now = time.perf_counter_ns


def depth_for(payload):
    """Queue depth used by every transport for this payload: bounded memory, same for all."""
    return max(4, min(1024, (64 << 20) // max(payload, 1)))


def touch_fill(nbytes):
    """A fill function writing one byte per 4 KiB page (the producer 'writes' the message)."""
    pattern = bytes([0x5A]) * len(range(0, nbytes, PAGE))

    def fill(mv):
        mv[::PAGE] = pattern
    return fill


def no_fill(mv):
    """The untouched S2 variant: the producer writes nothing into the reserved message."""


def s2_size(param):
    """(payload bytes, touches pages) for an S2 parameter."""
    if param in S2_UNTOUCHED:
        return S2_UNTOUCHED[param], False
    return param, True


def touch_read(ep, msg):
    """Read one byte per 4 KiB page of a received message, then give it back."""
    with ep.view(msg) as mv:
        bytes(mv[::PAGE])
    ep.release(msg)


# --------------------------------------------------------------------------- roles

class Role:
    def prepare(self, param, count):
        return {"param": param, "n": count}

    def run(self, eps, st):
        raise NotImplementedError


class S1Sender(Role):
    def prepare(self, param, count):
        return {"n": count, "payload": b"\x5a" * param}

    def run(self, eps, st):
        ep, payload = eps["a"], st["payload"]
        t0 = now()
        for _ in range(st["n"]):
            ep.send(payload)
        return {"t0": t0, "t1": now(), "sent": st["n"]}


class S1Receiver(Role):
    def run(self, eps, st):
        ep = eps["a"]
        recv, release = ep.recv, ep.release
        t0 = now()
        for _ in range(st["n"]):
            release(recv())
        return {"t0": t0, "t1": now(), "received": st["n"]}


class S2Sender(Role):
    def prepare(self, param, count):
        size, touch = s2_size(param)
        return {"n": count, "size": size, "fill": touch_fill(size) if touch else no_fill}

    def run(self, eps, st):
        ep, size, fill = eps["a"], st["size"], st["fill"]
        t0 = now()
        for _ in range(st["n"]):
            ep.send_zc(size, fill)
        return {"t0": t0, "t1": now(), "sent": st["n"]}


class S2Receiver(Role):
    def prepare(self, param, count):
        return {"n": count, "touch": s2_size(param)[1]}

    def run(self, eps, st):
        ep = eps["a"]
        recv, release = ep.recv, ep.release
        t0 = now()
        if st["touch"]:
            for _ in range(st["n"]):
                touch_read(ep, recv())
        else:
            for _ in range(st["n"]):
                release(recv())
        return {"t0": t0, "t1": now(), "received": st["n"]}


class S3Client(Role):
    def prepare(self, param, count):
        return {"n": count, "payload": b"\x5a" * param}

    def run(self, eps, st):
        ping, pong, payload = eps["ping"], eps["pong"], st["payload"]
        lat = []
        t_start = now()
        for _ in range(st["n"]):
            t0 = now()
            ping.send(payload)
            pong.release(pong.recv())
            lat.append(now() - t0)
        t_end = now()
        lat.sort()
        return {"t0": t_start, "t1": t_end, "p50_ns": lat[len(lat) // 2],
                "p99_ns": lat[min(len(lat) - 1, (len(lat) * 99) // 100)],
                "mean_ns": statistics.fmean(lat)}


class S3Server(Role):
    def run(self, eps, st):
        ping, pong = eps["ping"], eps["pong"]
        t0 = now()
        for _ in range(st["n"]):
            pong.forward(ping.recv())
        return {"t0": t0, "t1": now()}


class S4Producer(Role):
    def prepare(self, param, count):
        return {"n": count, "fill": touch_fill(FRAME_BYTES)}

    def run(self, eps, st):
        ep, fill = eps["l1"], st["fill"]
        t0 = now()
        for _ in range(st["n"]):
            ep.send_zc(FRAME_BYTES, fill)
        return {"t0": t0, "t1": now(), "sent": st["n"]}


class S4Stage(Role):
    def __init__(self, inp, out):
        self.inp, self.out = inp, out

    def run(self, eps, st):
        inp, out = eps[self.inp], eps[self.out]
        t0 = now()
        for _ in range(st["n"]):
            out.forward(inp.recv())
        return {"t0": t0, "t1": now()}


class S4Consumer(Role):
    def run(self, eps, st):
        ep = eps["l3"]
        t0 = now()
        for _ in range(st["n"]):
            touch_read(ep, ep.recv())
        return {"t0": t0, "t1": now(), "received": st["n"]}


class S5Sender(Role):
    def prepare(self, param, count):
        return {"n": count, "obj": SMALL_TUPLE if param == "tuple" else SMALL_DICT}

    def run(self, eps, st):
        ep, obj = eps["a"], st["obj"]
        t0 = now()
        for _ in range(st["n"]):
            ep.send_obj(obj)
        return {"t0": t0, "t1": now(), "sent": st["n"]}


class S5Receiver(Role):
    def prepare(self, param, count):
        return {"n": count, "param": param}

    def run(self, eps, st):
        ep = eps["a"]
        t0 = now()
        last = None
        for _ in range(st["n"]):
            last = ep.recv_obj()
        expected = SMALL_TUPLE if st["param"] == "tuple" else SMALL_DICT
        if last != expected:
            raise AssertionError(f"object changed in transit: {last!r}")
        return {"t0": t0, "t1": now(), "received": st["n"]}


class S6Sender(Role):
    def prepare(self, param, count):
        return {"n": count, "payload": b"\x5a" * S6_PAYLOAD, "param": param}

    def run(self, eps, st):
        ep, payload = eps["a"], st["payload"]
        t0 = now()
        for _ in range(st["n"]):
            ep.send(payload)
        if st["param"] == "1to2":
            ep.send(SENTINEL)
            ep.send(SENTINEL)
        return {"t0": t0, "t1": now(), "sent": st["n"]}


class S6Receiver(Role):
    def prepare(self, param, count):
        return {"n": count, "param": param}

    def run(self, eps, st):
        ep = eps["a"]
        got = 0
        t0 = now()
        if st["param"] == "2to1":
            for _ in range(2 * st["n"]):
                ep.release(ep.recv())
            got = 2 * st["n"]
        else:
            while True:
                msg = ep.recv()
                with ep.view(msg) as mv:
                    size = mv.nbytes
                ep.release(msg)
                if size == len(SENTINEL):
                    break
                got += 1
        return {"t0": t0, "t1": now(), "received": got}


class S7Sender(Role):
    """Batches: ``send_batch`` of BATCH messages at a time ("batch64"), or one ``send`` each."""

    def prepare(self, param, count):
        return {"n": count, "payload": b"\x5a" * S7_PAYLOAD, "param": param}

    def run(self, eps, st):
        ep, payload, n = eps["a"], st["payload"], st["n"]
        t0 = now()
        if st["param"] == "single":
            for _ in range(n):
                ep.send(payload)
        else:
            batch = [payload] * S7_BATCH
            for _ in range(n // S7_BATCH):
                ep.send_batch(batch)
        return {"t0": t0, "t1": now(), "sent": n}


class S7Receiver(Role):
    def prepare(self, param, count):
        return {"n": count, "param": param}

    def run(self, eps, st):
        ep, n = eps["a"], st["n"]
        got = 0
        t0 = now()
        if st["param"] == "single":
            for _ in range(n):
                ep.release(ep.recv())
            got = n
        else:
            while got < n:
                msgs = ep.recv_batch(S7_BATCH)
                got += len(msgs)
                ep.release_batch(msgs)
        return {"t0": t0, "t1": now(), "received": got}


class O1Both(Role):
    """One thread: send_obj + recv_obj of a 5-tuple on one channel, then the floor on the same
    channel: pickle.dumps + send of the bytes + recv + pickle.loads of the received message."""

    def prepare(self, param, count):
        return {"n": count}

    def run(self, eps, st):
        import pickle
        ep, n, obj = eps["a"], st["n"], SMALL_TUPLE
        send_obj, recv_obj = ep.send_obj, ep.recv_obj
        t0 = now()
        for _ in range(n):
            send_obj(obj)
            recv_obj()
        t1 = now()
        dumps, loads, send, recv, release = pickle.dumps, pickle.loads, ep.send, ep.recv, ep.release
        for _ in range(n):
            send(dumps(obj, 5))
            msg = recv()
            loads(msg)
            release(msg)
        t2 = now()
        return {"t0": t0, "t1": t2, "objects_ns": t1 - t0, "floor_ns": t2 - t1, "sent": n}


ROLES = {
    ("S1", "sender"): S1Sender(), ("S1", "receiver"): S1Receiver(),
    ("S2", "sender"): S2Sender(), ("S2", "receiver"): S2Receiver(),
    ("S3", "client"): S3Client(), ("S3", "server"): S3Server(),
    ("S4", "producer"): S4Producer(), ("S4", "stage1"): S4Stage("l1", "l2"),
    ("S4", "stage2"): S4Stage("l2", "l3"), ("S4", "consumer"): S4Consumer(),
    ("S5", "sender"): S5Sender(), ("S5", "receiver"): S5Receiver(),
    ("S6", "sender"): S6Sender(), ("S6", "receiver"): S6Receiver(),
    ("S7", "sender"): S7Sender(), ("S7", "receiver"): S7Receiver(),
    ("O1", "both"): O1Both(),
}


# --------------------------------------------------------------------------- layouts

def _link(senders, receivers, max_payload, **extra):
    return dict(senders=senders, receivers=receivers, max_payload=max_payload,
                depth=depth_for(max_payload), **extra)


class Scenario:
    """Static description of one scenario (used by the worker and the report)."""

    key = ""
    title = ""
    unit = ""
    kind = "parties"    # "parties": links and parties (worker.py); "memory": memory.py
    lower_is_better = False

    def params(self, mode):
        raise NotImplementedError

    def links(self, param):
        raise NotImplementedError

    def parties(self, param):
        """List of (role, [(link, side, index), ...]) in core-assignment order."""
        raise NotImplementedError

    def count(self, param, mode):
        raise NotImplementedError

    def summarize(self, param, count, parties):
        """``parties``: list of (role, timing) for one repetition -> dict with "value"."""
        raise NotImplementedError


def _span(parties, first_roles, last_roles):
    t0 = min(t["t0"] for r, t in parties if r in first_roles)
    t1 = max(t["t1"] for r, t in parties if r in last_roles)
    return max(t1 - t0, 1)


def _by_mode(mode, full, quick, smoke):
    return {"full": full, "quick": quick, "smoke": smoke}[mode]


class S1(Scenario):
    key, title, unit = "S1", "one-way throughput 1->1 (sender passes existing bytes)", "msg/s"

    def params(self, mode):
        return S1_SIZES

    def links(self, param):
        return {"a": _link(1, 1, param)}

    def parties(self, param):
        return [("sender", [("a", "send", 0)]), ("receiver", [("a", "recv", 0)])]

    def count(self, param, mode):
        budget, lo, hi = _by_mode(mode, (2 << 30, 100, 200_000), (512 << 20, 30, 30_000),
                                  (8 << 20, 2, 50))
        return max(lo, min(hi, budget // param))

    def summarize(self, param, count, parties):
        secs = _span(parties, {"sender"}, {"receiver"}) / 1e9
        return {"value": count / secs, "bytes_per_s": count * param / secs, "messages": count}


class S2(S1):
    key, title = "S2", ("zero-copy 1->1 (produce in place, receiver reads 1 byte per page; "
                        "'untouched': no page written or read)")

    def params(self, mode):
        return S2_SIZES + list(S2_UNTOUCHED)

    def links(self, param):
        return {"a": _link(1, 1, s2_size(param)[0])}

    def count(self, param, mode):
        if param in S2_UNTOUCHED:       # per-message cost, not bandwidth: as many as S1 64 B
            return _by_mode(mode, 200_000, 30_000, 50)
        budget, lo, hi = _by_mode(mode, (4 << 30, 100, 20_000), (1 << 30, 30, 3_000),
                                  (16 << 20, 2, 20))
        return max(lo, min(hi, budget // param))

    def summarize(self, param, count, parties):
        secs = _span(parties, {"sender"}, {"receiver"}) / 1e9
        size, touch = s2_size(param)
        out = {"value": count / secs, "us_per_msg": secs * 1e6 / count, "messages": count}
        if touch:       # untouched messages move no data: no bandwidth to speak of
            out["bytes_per_s"] = count * size / secs
        return out


class S3(Scenario):
    key, title, unit = "S3", "round-trip latency (blocking receives, echo)", "us"

    def params(self, mode):
        return S3_SIZES

    def links(self, param):
        return {"ping": _link(1, 1, param), "pong": _link(1, 1, param)}

    def parties(self, param):
        return [("client", [("ping", "send", 0), ("pong", "recv", 0)]),
                ("server", [("ping", "recv", 0), ("pong", "send", 0)])]

    def count(self, param, mode):
        if param <= 4096:
            return _by_mode(mode, 20_000, 3_000, 20)
        return _by_mode(mode, 1_000, 200, 4)

    def summarize(self, param, count, parties):
        client = dict(parties)["client"]
        return {"value": client["p50_ns"] / 1e3, "p50_us": client["p50_ns"] / 1e3,
                "p99_us": client["p99_ns"] / 1e3, "messages": count}


class S4(Scenario):
    key, title, unit = "S4", "frame pipeline 1920x1080x3 uint8: producer->stage->stage->consumer", \
        "frames/s"

    def params(self, mode):
        return ["1080p"]

    def links(self, param):
        return {name: _link(1, 1, FRAME_BYTES) for name in ("l1", "l2", "l3")}

    def parties(self, param):
        return [("producer", [("l1", "send", 0)]),
                ("stage1", [("l1", "recv", 0), ("l2", "send", 0)]),
                ("stage2", [("l2", "recv", 0), ("l3", "send", 0)]),
                ("consumer", [("l3", "recv", 0)])]

    def count(self, param, mode):
        return _by_mode(mode, 300, 60, 3)

    def summarize(self, param, count, parties):
        secs = _span(parties, {"producer"}, {"consumer"}) / 1e9
        return {"value": count / secs, "bytes_per_s": count * FRAME_BYTES / secs,
                "messages": count}


class S5(Scenario):
    key, title, unit = "S5", "small Python objects 1->1", "msg/s"

    def params(self, mode):
        return ["tuple", "dict"]

    def links(self, param):
        return {"a": _link(1, 1, 256)}

    def parties(self, param):
        return [("sender", [("a", "send", 0)]), ("receiver", [("a", "recv", 0)])]

    def count(self, param, mode):
        return _by_mode(mode, 100_000, 20_000, 50)

    def summarize(self, param, count, parties):
        secs = _span(parties, {"sender"}, {"receiver"}) / 1e9
        return {"value": count / secs, "messages": count}


class S6(Scenario):
    key, title, unit = "S6", f"M:N throughput, {S6_PAYLOAD} B messages", "msg/s"

    def params(self, mode):
        return ["2to1", "1to2"]

    def links(self, param):
        if param == "2to1":
            return {"a": _link(2, 1, S6_PAYLOAD)}
        # 1to2 ends with one sentinel per receiver: PUSH sockets must never skip a
        # receiver for being at its high-water mark, so the link is unbounded there.
        return {"a": _link(1, 2, S6_PAYLOAD, unbounded=True)}

    def parties(self, param):
        if param == "2to1":
            return [("sender", [("a", "send", 0)]), ("receiver", [("a", "recv", 0)]),
                    ("sender", [("a", "send", 1)])]
        return [("sender", [("a", "send", 0)]), ("receiver", [("a", "recv", 0)]),
                ("receiver", [("a", "recv", 1)])]

    def count(self, param, mode):
        return _by_mode(mode, 200_000, 30_000, 50)

    def summarize(self, param, count, parties):
        secs = _span(parties, {"sender"}, {"receiver"}) / 1e9
        total = 2 * count if param == "2to1" else count
        got = sum(t.get("received", 0) for r, t in parties if r == "receiver")
        if got != total:
            raise AssertionError(f"received {got} of {total} messages")
        return {"value": total / secs, "messages": total}


class S7(Scenario):
    key, title, unit = "S7", f"batches of {S7_BATCH} x {S7_PAYLOAD} B 1->1 (send_many / recv_many)", "msg/s"

    def params(self, mode):
        return ["single", "batch64"]

    def links(self, param):
        return {"a": _link(1, 1, S7_PAYLOAD)}

    def parties(self, param):
        return [("sender", [("a", "send", 0)]), ("receiver", [("a", "recv", 0)])]

    def count(self, param, mode):
        return _by_mode(mode, 64 * 8_000, 64 * 1_000, 64 * 2)

    def summarize(self, param, count, parties):
        secs = _span(parties, {"sender"}, {"receiver"}) / 1e9
        got = sum(t.get("received", 0) for r, t in parties if r == "receiver")
        if got != count:
            raise AssertionError(f"received {got} of {count} messages")
        return {"value": count / secs, "us_per_msg": secs * 1e6 / count, "messages": count}


class O1(Scenario):
    key, title, unit = "O1", ("one thread: send_object + recv_object of a 5-tuple, against the "
                              "floor pickle.dumps + send + recv + pickle.loads"), "us"
    lower_is_better = True

    def params(self, mode):
        return ["tuple"]

    def links(self, param):
        return {"a": _link(1, 1, 256)}

    def parties(self, param):
        return [("both", [("a", "send", 0), ("a", "recv", 0)])]

    def count(self, param, mode):
        return _by_mode(mode, 200_000, 50_000, 50)

    def summarize(self, param, count, parties):
        t = dict(parties)["both"]
        objects_us, floor_us = t["objects_ns"] / 1e3 / count, t["floor_ns"] / 1e3 / count
        return {"value": objects_us, "us_per_msg": objects_us, "floor_us": floor_us,
                "floor_ratio": objects_us / floor_us, "messages": count}


class M1(Scenario):
    key, unit = "M1", "bytes/msg"
    title = (f"memory: {M1_MESSAGES:,} queued {M1_PAYLOAD} B messages, nobody receiving "
             "(bytes per message = MB per 1,000,000 messages)")
    kind = "memory"
    lower_is_better = True

    def params(self, mode):
        return [M1_PAYLOAD]

    def count(self, param, mode):
        return _by_mode(mode, M1_MESSAGES, M1_MESSAGES, 20_000)


SCENARIOS = {s.key: s for s in (S1(), S2(), S3(), S4(), S5(), S6(), S7(), O1(), M1())}


def param_label(param):
    if isinstance(param, int):
        for unit, shift in (("MiB", 20), ("KiB", 10)):
            if param >= 1 << shift and param % (1 << shift) == 0:
                return f"{param >> shift} {unit}"
        return f"{param} B"
    return {"2to1": "2->1", "1to2": "1->2", "batch64": "64/batch", "64B-untouched": "64 B untouched",
            "16MiB-untouched": "16 MiB untouched"}.get(param, str(param))


from . import interp_echo  # noqa: E402,F401  (registers Q1 and its two transports)
