"""The package's work at interpreter exit that must run before ``threading`` joins the
non-daemon threads, in a fixed order whatever order the modules were imported in.

* "stop": memchannel.interpreters stops subinterpreters blocked in memchannel calls when the
  program ends by Ctrl-C (else the next stage would wait for them forever);
* "finish": memchannel.executor's pools finish the work already submitted and stop.

``threading`` runs its exit hooks last registered first, so one hook registered here runs
the stages in order (tests/python/test_exit.py covers both stages).
"""

import threading

_STAGES = ("stop", "finish")
_hooks: dict = {stage: [] for stage in _STAGES}


def register(stage, hook):
    """Run ``hook()`` at exit in ``stage`` ("stop" or "finish")."""
    _hooks[stage].append(hook)


def _run():
    for stage in _STAGES:
        for hook in list(_hooks[stage]):
            hook()


try:
    threading._register_atexit(_run)
except RuntimeError:  # pragma: no cover - imported while threading shuts down
    pass
