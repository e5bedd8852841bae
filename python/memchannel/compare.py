"""Run the same work serially, in threads, in subinterpreters and in processes; check that
every way gives the same results; report what each costs.

    from memchannel import compare
    report = compare(count_primes, ranges, workers=(1, 2))
    print(report.table())
    report.plot("compare.png")

    python -m memchannel compare --workload cpu --workers 1,2 --png cpu.png

Kinds (``memchannel.executor.make_executor``):

================== ==========================================================================
serial             a plain loop in the calling thread: the baseline
threads            ``concurrent.futures.ThreadPoolExecutor``
interpreters       ``memchannel.InterpreterPoolExecutor``: isolated subinterpreters, own GIL
processes          ``memchannel.executor.ProcessPoolExecutor``: processes, memchannel transport
processes-pickle   ``concurrent.futures.ProcessPoolExecutor``: processes, pickles over pipes
================== ==========================================================================

On a cluster (``dask=`` "local", a scheduler address or a ``distributed.Client``;
``ray=`` "local" or an address; ``memchannel.dask.ClusterExecutor``,
``memchannel.ray.RayExecutor``; docs/guide-cluster.md):

================== ==========================================================================
dask               ``Client.get_executor(pure=False)``: tasks in the workers' threads
dask-processes     the same, on a LocalCluster of n single-thread worker processes
dask-interpreters  tasks annotated ``executor=...``, run in the workers' subinterpreters
                   (``memchannel.dask.InterpreterExecutorPlugin``)
ray                Ray tasks (``ray.remote``), one CPU each
================== ==========================================================================

With ``dask="local"`` each worker count n gets its own LocalCluster on 127.0.0.1: "dask" 1
worker process x n threads, "dask-processes" n processes x 1 thread, "dask-interpreters"
1 process x n interpreters.  On an existing cluster (an address or a Client) there is one
row per kind, its worker count the cluster's threads, whatever ``workers`` says.  Each of
these rows states its cluster (``Row.cluster``); start-up is the cluster's (or the
connection's) until the first no-op result; bytes moved and copied are not counted.

"processes" in ``kinds`` runs both process pools: memchannel's, and the stdlib one with its
default pickling as the reference.  "ideal" (POSIX, not a default) is a control, not an
executor: n forked copies of this process each run their share of the tasks on inputs they
already have (no pool, no transport, results not collected).  Its speedup is what the
machine gives n workers at that moment, the ceiling for every other kind.

Measured for each kind and worker count, in this order, on a fresh pool:

* start-up: pool creation until the first no-op task's result is back (lazy pools start
  one worker for it; process pools with the fork method start all of them);
* then every worker is started and made to import the workload's function (one short
  sleep per worker, with the function as an argument), untimed;
* per-task overhead: mean round trip of ``submit(noop).result()``, one at a time;
* wall: the workload itself (``list(pool.map(fn, inputs))`` or the workload's runner), on
  those warm workers: the steady state, start-up excluded.  Every kind runs the same
  function on the same inputs, and its results are checked against the others.

With ``repeat`` > 1 all of this is done that many times, round robin over the kinds (each
run on a fresh pool), and the medians are reported: on a shared or virtual machine one run
can be much slower than the next, and the wall range shows how much.  Also measured:

* bytes moved: bytes sent to and from workers (memchannel pools count them; for the stdlib
  process pool, the size of the pickles of each call and result; threads move nothing);
* bytes copied: ``stats()["bytes_copied"]`` of the memchannel pool's arena during the run,
  i.e. every copy made into channel memory (none on the receiving side).

Worker start-up is also measured on its own (``measure_startup``; ``startup=True``, and
the CLI unless ``--quick``): a pool of one worker until its first result, per kind and
start method, and the bare worker with no pool: an interpreter created and closed
against a process started and joined with fork, forkserver and spawn.

No timing here is a unit-test assertion: numbers depend on the machine; the guide
(docs/guide-parallelism.md) shows a measured run.
"""

from __future__ import annotations

import os
import sys
import time

# Imported by the package in every interpreter, workers included: heavier modules
# (argparse, statistics, platform, matplotlib, multiprocessing) are imported where used.

__all__ = ["compare", "Comparison", "Row", "ResultsDiffer", "measure_startup", "main",
           "DEFAULT_KINDS", "KINDS"]

KINDS = ("serial", "threads", "interpreters", "processes", "processes-pickle", "ideal",
         "dask", "dask-processes", "dask-interpreters", "ray")
DEFAULT_KINDS = ("serial", "threads", "interpreters", "processes")
CLUSTER_KINDS = ("dask", "dask-processes", "dask-interpreters", "ray")


class ResultsDiffer(Exception):
    """Two kinds of execution returned different results for the same work."""


class Row:
    """One kind at one worker count.  Times in seconds; None where not applicable."""

    FIELDS = ("kind", "workers", "tasks", "startup_s", "wall_s", "overhead_s",
              "bytes_moved", "bytes_copied", "speedup", "wall_runs", "cluster")
    __slots__ = FIELDS

    def __init__(self, kind, workers, tasks, startup_s, wall_s, overhead_s, bytes_moved,
                 bytes_copied, speedup=None, cluster=None):
        self.kind, self.workers, self.tasks = kind, workers, tasks
        self.cluster = cluster  # the cluster kinds: its shape, in words
        self.startup_s, self.wall_s, self.overhead_s = startup_s, wall_s, overhead_s
        self.bytes_moved, self.bytes_copied, self.speedup = bytes_moved, bytes_copied, speedup
        self.wall_runs = [wall_s]  # every timed run; wall_s is their median

    def as_dict(self):
        return {name: getattr(self, name) for name in self.FIELDS}

    def __repr__(self):
        return "Row(" + ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items()) + ")"


class Comparison:
    """What ``compare`` measured.  ``rows``: one Row per kind and worker count;
    ``results[(kind, workers)]``: the results of its first run (all equal, or compare would
    have raised ResultsDiffer; the "ideal" control has none); ``startup``: worker start-up
    per label, when measured."""

    def __init__(self, name, description, rows, results, startup=None, machine=""):
        self.name, self.description = name, description
        self.rows, self.results = rows, results
        self.startup = dict(startup or {})
        self.machine = machine

    def row(self, kind, workers):
        for row in self.rows:
            if row.kind == kind and row.workers == workers:
                return row
        raise KeyError((kind, workers))

    def table(self) -> str:
        title = f"{self.name}: {self.description}" if self.description else self.name
        lines = [f"workload: {title}", f"machine:  {self.machine}", ""]
        repeated = any(len(r.wall_runs) > 1 for r in self.rows)
        clusters = any(r.cluster for r in self.rows)
        header = ("kind", "workers", "start-up", "wall", "speedup", "per-task", "moved",
                  "copied") + (("wall range",) if repeated else ()) + (
                  ("cluster",) if clusters else ())
        body = []
        for r in self.rows:
            cells = (r.kind, str(r.workers), _ms(r.startup_s), _secs(r.wall_s),
                     "-" if r.speedup is None else f"{r.speedup:.2f}x",
                     _us(r.overhead_s), _bytes(r.bytes_moved), _bytes(r.bytes_copied))
            if repeated:
                cells += (f"{min(r.wall_runs):.3f}-{max(r.wall_runs):.3f} s",)
            if clusters:
                cells += (r.cluster or "this machine",)
            body.append(cells)
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
        fmt = "  ".join(f"{{:<{w}}}" if i < 2 or (clusters and i == len(widths) - 1)
                        else f"{{:>{w}}}" for i, w in enumerate(widths))
        lines.append(fmt.format(*header).rstrip())
        lines.append(fmt.format(*("-" * w for w in widths)))
        lines.extend(fmt.format(*b).rstrip() for b in body)
        lines.append("(wall: the workload on a pool whose workers have all started and "
                     "imported the task's function;\n start-up, until a new pool's first "
                     "result, is not part of it; speedup: serial wall / wall)")
        if repeated:
            runs = max(len(r.wall_runs) for r in self.rows)
            lines.append(f"(times: medians of {runs} runs, round robin over the kinds, each "
                         "on a fresh pool)")
        busy = [r for r in self.rows if r.kind == "ideal" and r.workers > 1
                and r.speedup is not None and r.speedup < 0.8 * r.workers]
        for r in busy:
            lines.append(f"note: the ideal control got only {r.speedup:.2f}x from {r.workers} "
                         "workers: the machine was busy, and no kind can beat that; compare "
                         "the kinds with it, not with the worker count")
        if self.startup:
            pools = {k: v for k, v in self.startup.items() if not k.startswith(BARE_PREFIX)}
            bare = {k[len(BARE_PREFIX):]: v for k, v in self.startup.items()
                    if k.startswith(BARE_PREFIX)}
            width = max(len(k) for k in (*pools, *bare))
            lines += ["", "worker start-up (median; not part of wall):"]
            if pools:
                lines.append("  pool of 1 worker, creation until its first no-op result:")
                lines.extend(f"    {k:<{width}}  {_ms(v):>9}" for k, v in pools.items())
            if bare:
                lines.append("  the worker alone, no pool:")
                lines.extend(f"    {k:<{width}}  {_ms(v):>9}" for k, v in bare.items())
        return "\n".join(lines)

    __str__ = table

    def plot(self, path):
        """Write a PNG: wall time and speedup per kind and worker count (and worker
        start-up when measured).  Needs matplotlib."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        kinds = list(dict.fromkeys(r.kind for r in self.rows))
        counts = sorted({r.workers for r in self.rows})
        panels = 3 if self.startup else 2
        clusters = any(r.cluster for r in self.rows)
        fig, axes = plt.subplots(1, panels, figsize=(max(5.2, 1.05 * len(kinds)) * panels, 4.4))
        width = 0.8 / len(counts)
        for ax, metric, label in ((axes[0], "wall_s", "wall time (s, median; bars: range), "
                                   "lower is better"),
                                  (axes[1], "speedup", "speedup over serial, higher is better")):
            for j, n in enumerate(counts):
                xs, ys, low, high = [], [], [], []
                for i, kind in enumerate(kinds):
                    row = next((r for r in self.rows if r.kind == kind and
                                (r.workers == n or (kind == "serial" and r.workers == 1))), None)
                    value = None if row is None else getattr(row, metric)
                    if value is None or (kind == "serial" and j > 0):
                        continue
                    xs.append(i + (j - (len(counts) - 1) / 2) * width if kind != "serial" else i)
                    ys.append(value)
                    low.append(value - min(row.wall_runs) if metric == "wall_s" else 0)
                    high.append(max(row.wall_runs) - value if metric == "wall_s" else 0)
                errors = [low, high] if metric == "wall_s" and any(low + high) else None
                bars = ax.bar(xs, ys, width, yerr=errors, capsize=2,
                              label=f"{n} worker{'s' if n > 1 else ''}")
                ax.bar_label(bars, fmt="%.2f", fontsize=7)
            ax.set_xticks(range(len(kinds)), [_tick_label(self.rows, k) for k in kinds],
                          rotation=0 if clusters else 20, fontsize=7)
            ax.set_title(label, fontsize=9)
            ax.margins(y=0.15)
            if metric == "speedup":
                ax.axhline(1.0, color="grey", linewidth=0.8)
        axes[1].legend(fontsize=8, loc="upper left")
        if self.startup:
            ax = axes[2]
            names = list(self.startup)
            values = [self.startup[k] * 1e3 for k in names]
            colors = ["tab:olive" if k.startswith(BARE_PREFIX) else "tab:gray" for k in names]
            bars = ax.barh(range(len(names)), values, color=colors)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
            ax.set_yticks(range(len(names)), names, fontsize=7)
            ax.invert_yaxis()
            ax.set_title("worker start-up (ms): pool of 1 until its first result;\n"
                         "bare: the worker alone, no pool", fontsize=9)
        title = f"{self.name}: {self.description}" if self.description else self.name
        fig.suptitle(f"{title}\n{self.machine}", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def _tick_label(rows, kind):
    """A chart's label for ``kind``: with its cluster's shape when it ran on one (one
    line per distinct shape, without the scheduler address)."""
    shapes = list(dict.fromkeys(r.cluster.partition(": ")[2] or r.cluster
                                for r in rows if r.kind == kind and r.cluster))
    short = [shape.replace("worker processes", "procs").replace("worker process", "proc")
             .replace("interpreters", "interps").replace("interpreter", "interp")
             .replace(" x ", "\nx ", 1) for shape in shapes]
    return "\n".join([kind] + short)


def _ms(seconds):
    return "-" if seconds is None else f"{seconds * 1e3:.1f} ms"


def _us(seconds):
    return "-" if seconds is None else f"{seconds * 1e6:.1f} us"


def _secs(seconds):
    return f"{seconds:.3f} s"


def _bytes(n):
    if n is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def machine_description():
    import platform
    return (f"{os.cpu_count()} CPUs, {platform.python_implementation()} "
            f"{platform.python_version()}, {platform.system()} {platform.machine()}")


# -- running -----------------------------------------------------------------------------

def _expand_kinds(kinds):
    out = []
    for kind in kinds:
        names = ("processes", "processes-pickle") if kind == "processes" else (kind,)
        for name in names:
            if name not in KINDS:
                raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
            if name not in out:
                out.append(name)
    return out


def _cluster_executor(kind, n, dask, ray):
    """A pool of a cluster kind: its executor has ``workers`` and ``cluster``."""
    if kind == "ray":
        if ray is None:
            raise ValueError("the 'ray' kind needs ray='local' or a Ray address")
        from .ray import RayExecutor
        return RayExecutor(n, address=None if ray == "local" else ray)
    if dask is None:
        raise ValueError(f"the {kind!r} kind needs dask='local', a scheduler address or "
                         "a distributed.Client")
    from .dask import ClusterExecutor
    return ClusterExecutor(kind, n, dask)


def _cluster_size(kind, dask, ray):
    """The task slots of an existing cluster (None for "local": compare shapes it)."""
    target = ray if kind == "ray" else dask
    if target is None or target == "local":
        return None
    pool = _cluster_executor("ray" if kind == "ray" else "dask", None, dask, ray)
    try:
        return pool.workers
    finally:
        pool.shutdown(wait=True)


def _default_runner(pool, fn, inputs):
    return list(pool.map(fn, inputs))


class _CountingFile:
    """A file that only counts what is written to it."""

    def __init__(self):
        self.count = 0

    def write(self, data):
        n = memoryview(data).nbytes
        self.count += n
        return n


def _pickled_size(obj):
    """Bytes of ``obj`` pickled as multiprocessing pickles it (default protocol, in band)."""
    import pickle
    from multiprocessing.reduction import ForkingPickler
    sink = _CountingFile()
    ForkingPickler(sink, pickle.DEFAULT_PROTOCOL).dump(obj)
    return sink.count


def _run_ideal(n, fn, inputs):
    """The "ideal" control: n forked children share the tasks; nothing is transported."""
    data = inputs(None) if callable(inputs) else inputs
    t = time.perf_counter()
    children = []
    for index in range(n):
        pid = os.fork()
        if pid == 0:  # the child: its share of the work, then leave at once
            status = 0
            try:
                for x in data[index::n]:
                    fn(x)
            except BaseException:
                status = 1
            os._exit(status)
        children.append(pid)
    failed = [pid for pid in children if os.waitpid(pid, 0)[1] != 0]
    wall = time.perf_counter() - t
    if failed:
        raise RuntimeError(f"the ideal control failed in {len(failed)} of its {n} children")
    return (None, None, wall, 0, None, None), None


def _run_one(kind, n, fn, inputs, runner, overhead_tasks, pool_kwargs, count_bytes=True,
             clusters=None):
    """One run on a fresh pool: (startup, overhead, wall, moved, copied, cluster), results."""
    from . import workloads
    from .executor import make_executor

    if kind == "ideal":
        return _run_ideal(n, fn, inputs)

    t0 = time.perf_counter()
    if kind in CLUSTER_KINDS:
        pool = _cluster_executor(kind, n, *clusters)
        count_bytes = False  # not counted on a cluster
    else:
        pool = make_executor(kind, n, **pool_kwargs)
    try:
        pool.submit(workloads.noop).result()
        startup = None if kind == "serial" else time.perf_counter() - t0
        if kind != "serial":
            # Start every worker, and have each import the workload's function (the task
            # carries it), before anything is timed: wall is the steady state.
            for future in [pool.submit(workloads.pause, 0.05, fn) for _ in range(n)]:
                future.result()
        t = time.perf_counter()
        for _ in range(overhead_tasks):
            pool.submit(workloads.noop).result()
        overhead = (time.perf_counter() - t) / overhead_tasks
        data = inputs(pool) if callable(inputs) else inputs
        stats = getattr(pool, "stats", None)
        before = stats() if stats else None
        t = time.perf_counter()
        results = runner(pool, fn, data)
        wall = time.perf_counter() - t
        moved = copied = None
        if count_bytes:
            moved, copied = _bytes_of_run(kind, fn, data, results, stats, before)
        del data
    finally:
        pool.shutdown(wait=True)
    return (startup, overhead, wall, moved, copied, getattr(pool, "cluster", None)), results


def _median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def _row(kind, n, tasks, samples):
    """The Row of one kind and worker count from its runs' samples: medians of the times."""
    startups = [x[0] for x in samples if x[0] is not None]
    overheads = [x[1] for x in samples if x[1] is not None]
    walls = [x[2] for x in samples]
    moved, copied = samples[0][3], samples[0][4]  # counted in the first run only
    row = Row(kind, n, tasks, _median(startups) if startups else None, _median(walls),
              _median(overheads) if overheads else None, moved, copied,
              cluster=samples[0][5])
    row.wall_runs = walls
    return row


def _bytes_of_run(kind, fn, data, results, stats, before):
    """(bytes moved, bytes copied) of one run; None where not known."""
    if before is not None:
        after = stats()
        moved = (after["bytes_sent"] - before["bytes_sent"]
                 + after["bytes_received"] - before["bytes_received"])
        return moved, after["bytes_copied"] - before["bytes_copied"]
    if kind in ("serial", "threads"):
        return 0, None
    if kind == "processes-pickle":
        try:
            moved = sum(_pickled_size((fn, (x,), {})) for x in data)
            return moved + sum(_pickled_size(r) for r in results), None
        except Exception:
            return None, None
    return None, None


def _plain(obj):
    """A form of a result that compares by value: buffers become (format, shape, list)."""
    if isinstance(obj, (list, tuple)):
        return type(obj).__name__, [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return "dict", {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, float) and obj != obj:
        return "nan"
    if isinstance(obj, (str, bytes, int, float, complex, bool, type(None))):
        return obj
    try:
        view = memoryview(obj)
    except TypeError:
        return obj
    with view:
        return "buffer", view.shape, view.tolist()


def _check_same(reference, other):
    (ref_kind, ref_n, ref), (kind, n, got) = reference, other
    if len(ref) != len(got):
        raise ResultsDiffer(f"{kind} with {n} workers returned {len(got)} results, "
                            f"{ref_kind} returned {len(ref)}")
    for i, (a, b) in enumerate(zip(ref, got)):
        if _plain(a) != _plain(b):
            raise ResultsDiffer(
                f"results differ by kind: task {i} gave {_short(a)} with {ref_kind} "
                f"({ref_n} worker{'s' if ref_n > 1 else ''}) but {_short(b)} with {kind} "
                f"({n} worker{'s' if n > 1 else ''})")


def _short(value):
    text = repr(value)
    return text if len(text) < 120 else text[:117] + "..."


def compare(fn, inputs, kinds=DEFAULT_KINDS, workers=(1, 2), *, runner=None, name=None,
            description="", repeat=1, overhead_tasks=100, mp_context=None, startup=False,
            progress=None, dask=None, ray=None):
    """Run ``fn`` over ``inputs`` each way in ``kinds`` with each worker count in
    ``workers``; raise ResultsDiffer unless every way returns the same results; return a
    Comparison (``.rows``, ``.table()``, ``.plot(path)``).

    ``fn`` must be importable by module and qualified name (workers import it).
    ``inputs``: a list, or a callable ``inputs(pool) -> list`` called once per run before
    the timed part (a memchannel pool has ``reserve()``, to build inputs in its memory).
    ``runner(pool, fn, inputs) -> results`` replaces ``list(pool.map(fn, inputs))``.
    ``repeat``: runs per kind and worker count, each on a fresh pool, taken round robin
    across the configurations; times reported are medians (``Row.wall_runs`` has every
    wall time).
    ``mp_context``: the multiprocessing context of both process pools (default: the
    platform's).  ``startup=True`` also measures worker start-up (``measure_startup``).
    ``progress``: called with a line of text before each run.
    ``dask``, ``ray``: where the cluster kinds run (the module docstring): "local", an
    address, or for ``dask`` a ``distributed.Client``.
    """
    if "ideal" in kinds and (runner is not None or not hasattr(os, "fork")):
        raise ValueError("the 'ideal' control needs os.fork and the default runner")
    runner = runner or _default_runner
    pool_kwargs = {} if mp_context is None else {"mp_context": mp_context}
    configs = []
    for kind in _expand_kinds(kinds):
        size = _cluster_size(kind, dask, ray) if kind in CLUSTER_KINDS else None
        counts = (1,) if kind == "serial" else (size,) if size else tuple(workers)
        configs.extend((kind, n) for n in counts)
    repeat = max(1, int(repeat))
    samples = {config: [] for config in configs}
    results, reference = {}, None
    # Round robin: run r of every configuration before run r+1 of any, so that a slow
    # spell of the machine does not land on one configuration only.
    for run in range(repeat):
        for kind, n in configs:
            if progress:
                progress(f"{kind}, {n} worker{'s' if n > 1 else ''}"
                         + (f" (run {run + 1} of {repeat})" if repeat > 1 else "") + " ...")
            kwargs = pool_kwargs if kind.startswith("processes") else {}
            sample, got = _run_one(kind, n, fn, inputs, runner, overhead_tasks, kwargs,
                                   count_bytes=run == 0, clusters=(dask, ray))
            samples[(kind, n)].append(sample)
            if kind == "ideal":
                continue  # a control: it returns no results
            if reference is None:
                reference = (kind, n, got)
            else:
                _check_same(reference, (kind, n, got))
            if run == 0:
                results[(kind, n)] = got
            del got
    tasks = len(reference[2]) if reference is not None else 0
    rows = [_row(kind, n, tasks, samples[(kind, n)]) for kind, n in configs]
    serial = next((r for r in rows if r.kind == "serial"), None)
    if serial is not None:
        for row in rows:
            row.speedup = serial.wall_s / row.wall_s if row.wall_s > 0 else None
    report = Comparison(name or getattr(fn, "__qualname__", str(fn)), description, rows,
                        results, machine=machine_description())
    if startup:
        report.startup = measure_startup(kinds=_expand_kinds(kinds))
    return report


BARE_PREFIX = "bare "


def measure_startup(kinds=KINDS, repeat=3, start_methods=None, bare=True):
    """Worker start-up in seconds (median of ``repeat``), by label.

    Pools: from creating a pool of one worker to its first no-op result, per kind, and
    per multiprocessing start method for the memchannel process pool (fork, forkserver,
    spawn where available).  This is what a program pays before its first task.

    ``bare`` (labels starting with "bare "): the worker alone, no pool, no memchannel in
    it: an interpreter made and destroyed (``interpreters.create()`` then ``close()``;
    create returns once the interpreter has run its bootstrap), against a process started
    and joined (``multiprocessing`` ``Process(target=os.getpid)``, ``start()`` then
    ``join()``), per start method.  The difference between a pool row and its bare row is
    the pool's own start-up: its threads and channels, and importing memchannel in the
    worker (for processes with fork, already imported).
    """
    import multiprocessing
    import statistics

    from . import workloads
    from .executor import make_executor

    methods = start_methods or [m for m in ("fork", "forkserver", "spawn")
                                if m in multiprocessing.get_all_start_methods()]
    plans = []
    for kind in kinds:
        if kind in ("serial", "ideal") or kind in CLUSTER_KINDS:
            continue  # a cluster's start-up is its rows' start-up
        if kind == "processes":
            for method in methods:
                plans.append((f"process ({method})", kind,
                              {"mp_context": multiprocessing.get_context(method)}))
        elif kind == "processes-pickle":
            method = multiprocessing.get_start_method()
            plans.append((f"stdlib process ({method})", kind, {}))
        else:
            plans.append(({"threads": "thread", "interpreters": "interpreter"}[kind], kind, {}))
    out = {}
    for label, kind, kwargs in plans:
        samples = []
        for _ in range(repeat):
            t = time.perf_counter()
            pool = make_executor(kind, 1, **kwargs)
            try:
                pool.submit(workloads.noop).result()
                samples.append(time.perf_counter() - t)
            finally:
                pool.shutdown(wait=True)
        out[label] = statistics.median(samples)
    if bare:
        if "interpreters" in kinds:
            out[BARE_PREFIX + "interpreter (create+close)"] = statistics.median(
                _time_bare_interpreter() for _ in range(repeat))
        if any(kind.startswith("processes") for kind in kinds):
            for method in methods:
                context = multiprocessing.get_context(method)
                out[BARE_PREFIX + f"process, {method} (start+join)"] = statistics.median(
                    _time_bare_process(context) for _ in range(repeat))
    return out


def _time_bare_interpreter():
    from . import interpreters

    t = time.perf_counter()
    interpreters.create().close()
    return time.perf_counter() - t


def _time_bare_process(context):
    t = time.perf_counter()
    process = context.Process(target=os.getpid)
    process.start()
    process.join()
    elapsed = time.perf_counter() - t
    if process.exitcode != 0:
        raise RuntimeError(f"a bare {context.get_start_method()} process exited with code "
                           f"{process.exitcode}")
    return elapsed


def main(argv=None) -> int:
    """``python -m memchannel compare ...``; returns the exit status."""
    import argparse

    from . import workloads

    parser = argparse.ArgumentParser(
        prog="python -m memchannel compare",
        description="Run one workload serially, in threads, in isolated subinterpreters "
                    "and in processes (memchannel transport, and the stdlib process pool "
                    "with pickling as the reference); check the results agree; print a "
                    "table and optionally write a PNG chart.")
    parser.add_argument("--workload", default="cpu",
                        help="cpu, arrays, pipeline, or FILE:FUNC (default: cpu)")
    parser.add_argument("--workers", default="1,2", help="worker counts (default: 1,2)")
    parser.add_argument("--kinds",
                        help=f"comma-separated, from {', '.join(KINDS)}; 'processes' runs "
                             "both process pools; 'ideal' is a control: forked copies of "
                             "this process sharing the tasks, no transport (default: "
                             f"{','.join(DEFAULT_KINDS)}, and the cluster kinds of --dask "
                             "and --ray)")
    parser.add_argument("--dask", metavar="ADDRESS|local",
                        help="also run on a Dask cluster: a scheduler address "
                             "(tcp://host:8786; kinds dask, dask-interpreters) or 'local' "
                             "(a LocalCluster on 127.0.0.1 per worker count; kinds dask, "
                             "dask-processes, dask-interpreters)")
    parser.add_argument("--ray", metavar="ADDRESS|local",
                        help="also run as Ray tasks: 'local' (ray.init on this machine, "
                             "num_cpus per worker count) or a Ray address")
    parser.add_argument("--tasks", type=int, help="number of tasks (default: per workload)")
    parser.add_argument("--png", help="write a bar chart to this PNG file")
    parser.add_argument("--json", help="write the rows as JSON to this file")
    parser.add_argument("--repeat", type=int,
                        help="timed runs per kind and worker count; the median is reported "
                             "(default: 3, or 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--copy-inputs", action="store_true",
                        help="arrays: give memchannel pools numpy arrays (copied into "
                             "channel memory) instead of Buffers written in their memory")
    parser.add_argument("--start-method", choices=("fork", "spawn", "forkserver"),
                        help="multiprocessing start method of both process pools")
    parser.add_argument("--startup", choices=("auto", "yes", "no"), default="auto",
                        help="measure worker start-up per kind (auto: unless --quick)")
    args = parser.parse_args(argv)

    try:
        counts = tuple(int(x) for x in args.workers.split(",") if x.strip())
        if not counts or min(counts) < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--workers: comma-separated positive integers, not {args.workers!r}")
    if args.kinds is not None:
        kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    else:
        kinds = DEFAULT_KINDS
        if args.dask:
            kinds += ("dask",) + (("dask-processes",) if args.dask == "local" else ()) + (
                "dask-interpreters",)
        if args.ray:
            kinds += ("ray",)
    for option, names in (("--dask", ("dask", "dask-processes", "dask-interpreters")),
                          ("--ray", ("ray",))):
        wanted = [k for k in kinds if k in names]
        if wanted and not getattr(args, option[2:]):
            parser.error(f"kind {wanted[0]!r} needs {option} ADDRESS or {option} local")
    try:
        _expand_kinds(kinds)
        workload = workloads.get_workload(args.workload, tasks=args.tasks, quick=args.quick,
                                          copy_inputs=args.copy_inputs)
    except (ValueError, ImportError) as exc:
        parser.error(str(exc))
    mp_context = None
    if args.start_method:
        import multiprocessing
        mp_context = multiprocessing.get_context(args.start_method)

    def progress(text):
        print(f"  running {text}", file=sys.stderr, flush=True)

    try:
        report = compare(workload.fn, workload.make_inputs, kinds, counts,
                         runner=workload.runner, name=workload.name,
                         description=workload.description, mp_context=mp_context,
                         repeat=args.repeat or (1 if args.quick else 3),
                         overhead_tasks=20 if args.quick else 200, progress=progress,
                         dask=args.dask, ray=args.ray)
    except ResultsDiffer as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, ImportError) as exc:  # e.g. the ideal control with the pipeline's
        parser.error(str(exc))                # own runner; Dask or Ray not installed
    if args.startup == "yes" or (args.startup == "auto" and not args.quick):
        progress("worker start-up ...")
        report.startup = measure_startup(_expand_kinds(kinds), repeat=1 if args.quick else 3)
    print(report.table())
    if args.json:
        import json
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"workload": report.name, "description": report.description,
                       "machine": report.machine,
                       "rows": [r.as_dict() for r in report.rows],
                       "startup_s": report.startup}, out, indent=2)
        print(f"wrote {args.json}")
    if args.png:
        report.plot(args.png)
        print(f"wrote {args.png}")
    return 0


# The package exports the function `compare` under this module's own name, so
# `memchannel.compare` and `from memchannel import compare` (what `python -m memchannel
# compare` does) give the function, not this module: it carries the module's other public
# names.  (`from memchannel.compare import ResultsDiffer` reads this module as usual.)
for _name in ("main", "ResultsDiffer", "Comparison", "Row", "measure_startup", "KINDS",
              "DEFAULT_KINDS"):
    setattr(compare, _name, globals()[_name])
del _name
