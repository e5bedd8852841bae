"""The same workloads on Ray, for ``memchannel.compare`` (``pip install memchannel[ray]``).

Ray has ``ray.util.multiprocessing.Pool`` but no ``concurrent.futures.Executor`` (ray#29456);
``RayExecutor`` is one, made of Ray tasks: ``submit(fn, *args)`` runs
``ray.remote(fn).remote(*args)`` (one CPU per task) and returns the ObjectRef's own
``concurrent.futures.Future`` (``ObjectRef.future()``).  Arguments and results go through
Ray's object store (pickled by Ray); a task that raises fails its future with the task's
exception (Ray wraps it: the exception is an instance of both ``RayTaskError`` and the
task's own type, its text the worker's traceback).

    from memchannel.ray import RayExecutor
    with RayExecutor(2) as pool:             # ray.init(num_cpus=2) on this machine
        print(list(pool.map(count_primes, ranges)))

docs/guide-cluster.md says where Ray fits beside Dask.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import Executor

try:
    import ray
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("memchannel.ray needs Ray: pip install 'memchannel[ray]' "
                      "(or pip install ray)") from exc

__all__ = ["RayExecutor"]

# Ray's local start-up settings for compare: no dashboard, and an object store sized for
# the workloads rather than 30% of the machine's memory.
_LOCAL_OBJECT_STORE_BYTES = 512 << 20


class RayExecutor(Executor):
    """A ``concurrent.futures.Executor`` of Ray tasks.

    ``RayExecutor(max_workers=None, *, address=None)``: with no address, starts Ray on
    this machine (``ray.init(num_cpus=max_workers)``; default: all CPUs) and stops it at
    ``shutdown``; with an address ("auto" or "HEAD_HOST:6379"), connects
    to that cluster (``max_workers`` is not used: the cluster's CPUs are; the task's
    module must be installed on its nodes) and only disconnects.  Ray's local workers get
    this process's ``sys.path`` (as ``PYTHONPATH``), as spawned processes do.  If Ray is already initialised in this process, uses it as it is and
    leaves it running.  ``workers``: CPUs Ray offers; ``cluster``: that, in words.
    Concurrency: any thread may submit.
    """

    def __init__(self, max_workers=None, *, address=None):
        if max_workers is not None and max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._owned = not ray.is_initialized()
        if self._owned:
            if address is None:
                # Ray's workers start with their own sys.path: give them this process's
                # (as multiprocessing's spawn does), so that they import what it imports.
                path = os.pathsep.join(p for p in sys.path if isinstance(p, str) and p
                                       and os.path.isdir(p))
                ray.init(num_cpus=max_workers, include_dashboard=False,
                         object_store_memory=_LOCAL_OBJECT_STORE_BYTES,
                         log_to_driver=False, configure_logging=False,
                         runtime_env={"env_vars": {"PYTHONPATH": path}})
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
        resources = ray.cluster_resources()
        self.workers = int(resources.get("CPU", 0))
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        where = "local Ray" if address is None else f"Ray at {address}"
        self.cluster = (f"{where}: {nodes} node{'s' if nodes != 1 else ''}, "
                        f"{self.workers} CPU{'s' if self.workers != 1 else ''}")
        self._remote = {}
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn, /, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` as a Ray task; its Future."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        with self._lock:
            remote = self._remote.get(fn)
            if remote is None:  # one Ray function per Python function: exported once
                remote = self._remote[fn] = ray.remote(num_cpus=1)(fn)
        return remote.remote(*args, **kwargs).future()

    def shutdown(self, wait=True, *, cancel_futures=False):
        """No new tasks; stop Ray if this executor started it (tasks still running are
        ended with it)."""
        if self._shutdown:
            return
        self._shutdown = True
        if self._owned:
            ray.shutdown()
