"""The part of ``memchannel.dask`` that runs inside a worker's subinterpreters.

It imports nothing from Dask or distributed (neither needs to load in an isolated
subinterpreter): ``memchannel.dask`` turns a Dask task into plain calls of this module's
``Call`` in the worker's main interpreter, and ``evaluate`` runs them here.
"""

from __future__ import annotations

__all__ = ["Call", "evaluate", "container", "pairs_to_dict"]


class Call:
    """``func(*args, **kwargs)``, where any argument may itself be a Call (a nested task),
    evaluated first.  Other arguments are passed as they are, containers included (as
    Dask's own tasks do)."""

    __slots__ = ("func", "args", "kwargs")

    def __init__(self, func, args=(), kwargs=None):
        self.func, self.args, self.kwargs = func, tuple(args), dict(kwargs or {})

    def __reduce__(self):
        return Call, (self.func, self.args, self.kwargs)

    def __repr__(self):
        return f"Call({self.func!r}, {self.args!r}, {self.kwargs!r})"


def _value(obj):
    return evaluate(obj) if type(obj) is Call else obj


def evaluate(call):
    """The value of ``call``: its nested Calls first, then its own function."""
    args = [_value(a) for a in call.args]
    kwargs = {k: _value(v) for k, v in call.kwargs.items()}
    return call.func(*args, **kwargs)


def container(constructor, *items):
    """A list, tuple or set task of Dask's (``dask._task_spec.List`` and the others)."""
    return constructor(items)


def pairs_to_dict(*items):
    """A dict task of Dask's: keys and values alternate."""
    return dict(zip(items[0::2], items[1::2]))
