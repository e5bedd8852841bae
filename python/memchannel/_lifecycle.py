"""Process lifetime hooks for shared-memory arenas.

A process that exits normally detaches from every shared-memory arena, and the last process
to detach removes the segments from /dev/shm. ``atexit`` covers ordinary exits (and spawn /
forkserver children, which exit through ``sys.exit``); children started by multiprocessing
with ``fork`` leave through ``os._exit`` after running multiprocessing's own finalizers, so
they register a finalizer there. A process killed outright cannot run any hook: its share
is reclaimed by the survivors (liveness checks) or by ``python -m memchannel cleanup``.
"""

import atexit

from . import _memchannel


def _detach_all() -> None:
    _memchannel._detach_all()


class _ForkHook:
    """multiprocessing keeps after-fork callbacks in a weak dictionary: this object anchors ours."""


_FORK_HOOK = _ForkHook()


def _register_in_fork_child(_hook) -> None:
    from multiprocessing import util

    util.Finalize(None, _detach_all, exitpriority=-100)


def install() -> None:
    atexit.register(_detach_all)
    try:
        from multiprocessing import util
    except ImportError:  # pragma: no cover - multiprocessing is part of the stdlib
        return
    util.register_after_fork(_FORK_HOOK, _register_in_fork_child)
