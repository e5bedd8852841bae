"""Q1: echo round trip between two subinterpreters over a cross-interpreter queue, with
blocking gets: ``memchannel.interpreters`` ``Queue`` (3.14's API on memchannel channels:
futex waits) against CPython 3.13's own queue (``test.support.interpreters.queues``, the
draft of 3.14's ``concurrent.interpreters``, whose blocking ``get()``/``put()`` sleep 10 ms
per empty/full poll).

    python -m bench.harness --only Q1,mc.interpreters.Queue,interpqueue-blocking

The client puts a 64 B ``bytes`` on "ping" and blocks in ``get()`` on "pong"; the server
blocks in ``get()`` on "ping" and puts what it got on "pong" (roles S3Client/S3Server).
Reported: round trips per second (``value``) and the client's p50/p99.  Targets
(report.TARGETS): p50 at most 1/100 of the stdlib queue's, round trips/s at least 2x.
The two transports run Q1 only; Q1 runs on the other transports too (their own echo).

This module registers itself in scenarios.SCENARIOS / ROLES and transports.TRANSPORTS
(imported at the end of scenarios.py).
"""

import pickle

from . import scenarios, transports
from .transports import SUBINTERP, Endpoint, Skip, Transport

Q1_SIZES = [64]


class Q1(scenarios.Scenario):
    key, unit = "Q1", "round trips/s"
    title = "interpreter-queue echo round trip (blocking gets)"

    def params(self, mode):
        return Q1_SIZES

    def links(self, param):
        return {"ping": scenarios._link(1, 1, param), "pong": scenarios._link(1, 1, param)}

    def parties(self, param):
        return [("client", [("ping", "send", 0), ("pong", "recv", 0)]),
                ("server", [("ping", "recv", 0), ("pong", "send", 0)])]

    def count(self, param, mode):
        # The stdlib queue's round trip is ~10-20 ms (its polls): keep its run short.
        return scenarios._by_mode(mode, 300, 100, 4)

    def summarize(self, param, count, parties):
        client = dict(parties)["client"]
        secs = max(client["t1"] - client["t0"], 1) / 1e9
        return {"value": count / secs, "p50_us": client["p50_ns"] / 1e3,
                "p99_us": client["p99_ns"] / 1e3, "messages": count}


class _QueueEndpoint(Endpoint):
    """Blocking put()/get() of bytes on one queue object."""

    def __init__(self, q, put):
        super().__init__()
        self.q = q
        self._put = put

    def send(self, data):
        self._put(data if type(data) is bytes else bytes(data))

    def recv(self):
        return self.q.get()

    def send_obj(self, obj):
        self._put(obj)

    def recv_obj(self):
        return self.q.get()


class _Q1Only(Transport):
    domain = SUBINTERP
    memory_skip = "not measured: Q1 only"

    def unsupported(self, scenario, param):
        if scenario != "Q1":
            return "not measured: this transport runs the Q1 echo only"
        return None


class McInterpretersQueue(_Q1Only):
    name, label = "mc.interpreters.Queue", "memchannel.interpreters Queue (blocking get)"
    library = "memchannel"
    notes = ("`memchannel.interpreters.create_queue()`: `put(bytes)` (pickled into a "
             "memchannel channel), blocking `get()` in the channel's futex wait")

    def check(self):
        try:
            from memchannel import interpreters
            interpreters.create_queue
        except Exception as exc:  # noqa: BLE001 - any import failure is a skip reason
            raise Skip(f"memchannel.interpreters.create_queue unavailable: "
                       f"{type(exc).__name__}: {exc}")

    def create_link(self, link):
        from memchannel import interpreters
        q = interpreters.create_queue(link["depth"])
        self._keep = getattr(self, "_keep", [])
        self._keep.append(q)
        return pickle.dumps(q)  # the same queue in the party's interpreter

    @staticmethod
    def open(spec, side, index, link):
        q = pickle.loads(spec)
        return _QueueEndpoint(q, q.put)


class InterpQueueBlocking(_Q1Only):
    name, label = "interpqueue-blocking", "interpreter queue, blocking get (3.13)"
    library = "interpreters-pep-734"
    notes = ("CPython 3.13's `test.support.interpreters.queues` (or the PEP 734 backport): "
             "`put(bytes, syncobj=True)`, blocking `get()`, which sleeps 10 ms per empty poll")

    def check(self):
        if transports.interp_queues_module() is None:
            raise Skip("no PEP 734 queue module (CPython 3.13's test package, or "
                       "install interpreters-pep-734)")

    def create_link(self, link):
        queues = transports.interp_queues_module()
        q = queues.create(maxsize=link["depth"], syncobj=True)
        self._keep = getattr(self, "_keep", [])
        self._keep.append(q)
        return q.id

    @staticmethod
    def open(spec, side, index, link):
        q = transports.interp_queues_module().Queue(spec)
        return _QueueEndpoint(q, lambda data: q.put(data, syncobj=True))


scenarios.SCENARIOS["Q1"] = Q1()
scenarios.ROLES[("Q1", "client")] = scenarios.S3Client()
scenarios.ROLES[("Q1", "server")] = scenarios.S3Server()
for _transport in (McInterpretersQueue, InterpQueueBlocking):
    if _transport.name not in transports.BY_NAME:
        transports.TRANSPORTS.append(_transport)
        transports.BY_NAME[_transport.name] = _transport
