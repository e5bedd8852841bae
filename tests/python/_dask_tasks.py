"""Task functions of tests/python/test_dask*.py: Dask workers (processes) and their
subinterpreters import this module by name, so it imports nothing that cannot load in an
isolated subinterpreter (no numpy, no pytest, no Dask)."""

import os
import sys
import time


class TaskFailed(Exception):
    """Raised by ``fail``: a task's own exception type."""


def square(x):
    return x * x


def add(a, b=0):
    return a + b


def where():
    """(process id, interpreter id, whether distributed and dask are imported here)."""
    from memchannel import interpreters

    return (os.getpid(), interpreters.get_current().id, "distributed" in sys.modules,
            "dask" in sys.modules)


def fail(x):
    raise TaskFailed(f"task failed on {x}")


def import_numpy():
    import numpy

    return numpy.__version__


def rendezvous(directory, me, others, timeout=60):
    """Write ``me`` in ``directory``, then wait until every name in ``others`` is there
    too: True, or False after ``timeout`` (the others never ran at the same time).
    Returns (arrived, interpreter id)."""
    from memchannel import interpreters

    open(os.path.join(directory, me), "w").close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(os.path.exists(os.path.join(directory, name)) for name in others):
            return True, interpreters.get_current().id
        time.sleep(0.01)
    return False, interpreters.get_current().id


def slow_square_once(x, directory, seconds=30):
    """x * x.  The first attempt records its process id in ``directory`` and sleeps (to
    be killed by the test); a later attempt records its own and returns at once."""
    attempts = [name for name in os.listdir(directory) if name.startswith(f"{x}-")]
    with open(os.path.join(directory, f"{x}-{os.getpid()}-{len(attempts)}"), "w"):
        pass
    if not attempts:
        time.sleep(seconds)
    return x * x


def hold_memory(nbytes, seconds):
    """Keep ``nbytes`` of written memory for ``seconds`` (written, so it is resident)."""
    block = b"x" * nbytes
    time.sleep(seconds)
    return len(block)


def make_bytes(nbytes):
    return b"y" * nbytes
