"""CPython's ``_test_multiprocessing`` queue tests (``_TestQueue``, ``TestSimpleQueue``)
against ``memchannel.Queue``, ``JoinableQueue`` and ``SimpleQueue``, for the fork, spawn
and forkserver start methods, imported from the ``test`` package of the running Python
(3.12 and 3.13 ship it).  The suite's processes mixin is pointed at memchannel's queues
and at the start method's context; ``TestSimpleQueue`` builds ``multiprocessing.SimpleQueue``
itself, so that name is memchannel's while its tests run.  Deliberate differences are
listed in ``EXPECTED_FAILURES`` (docs/interpreters.md gives the counts).
"""

import multiprocessing
import sys
import unittest

import pytest

import memchannel as mc

from _stdlib_suites import available, expect_failures

pytestmark = pytest.mark.timeout(120)

if not available("test._test_multiprocessing"):
    pytest.skip("test._test_multiprocessing is not installed with Python "
                f"{sys.version_info.major}.{sys.version_info.minor}", allow_module_level=True)

from test import _test_multiprocessing as _suite  # noqa: E402

_CONTEXT_NAMES = ("Process", "Event", "Lock", "RLock", "Condition", "Semaphore",
                  "BoundedSemaphore", "Barrier", "Value", "Array", "Pipe")


def _mixin(method):
    ctx = multiprocessing.get_context(method)
    attrs = {name: staticmethod(getattr(ctx, name)) for name in _CONTEXT_NAMES}
    attrs["Process"] = ctx.Process
    attrs.update(TYPE="processes", start_method=method,
                 Queue=staticmethod(mc.Queue), JoinableQueue=staticmethod(mc.JoinableQueue),
                 current_process=staticmethod(multiprocessing.current_process),
                 active_children=staticmethod(multiprocessing.active_children))
    return type(f"Memchannel{method.capitalize()}Mixin", (_suite.BaseMixin,), attrs)


class _MemchannelSimpleQueue:
    """Runs TestSimpleQueue with multiprocessing.SimpleQueue being memchannel's, and
    multiprocessing.Process and .Event the start method's."""

    start_method = "fork"

    def setUp(self):
        super().setUp()
        ctx = multiprocessing.get_context(self.start_method)
        saved = multiprocessing.SimpleQueue, multiprocessing.Process, multiprocessing.Event
        multiprocessing.SimpleQueue = mc.SimpleQueue
        multiprocessing.Process, multiprocessing.Event = ctx.Process, ctx.Event

        def restore():
            multiprocessing.SimpleQueue, multiprocessing.Process, multiprocessing.Event = saved
        self.addCleanup(restore)


_METHODS = [m for m in ("fork", "spawn", "forkserver")
            if m in multiprocessing.get_all_start_methods()]
for _method in _METHODS:
    _name = f"MemchannelQueue{_method.capitalize()}Test"
    globals()[_name] = type(_name, (_suite._TestQueue, _mixin(_method), unittest.TestCase),
                            {"__module__": __name__})
    _name = f"MemchannelSimpleQueue{_method.capitalize()}Test"
    globals()[_name] = type(_name, (_MemchannelSimpleQueue, _suite.TestSimpleQueue),
                            {"__module__": __name__, "start_method": _method})

_FEEDER = ("memchannel's Queue pickles in put() itself, with no feeder thread: an object "
           "that cannot be pickled raises there (the test expects put() to return and the "
           "feeder thread to print the error and drop the object)")
_READER = "the test reads the private attribute SimpleQueue._reader (a Connection)"
EXPECTED_FAILURES = {}
for _method in _METHODS:
    _kind = _method.capitalize()
    EXPECTED_FAILURES[f"MemchannelQueue{_kind}Test.test_queue_feeder_donot_stop_onexc"] = _FEEDER
    EXPECTED_FAILURES[f"MemchannelSimpleQueue{_kind}Test.test_closed"] = _READER

expect_failures(sys.modules[__name__], EXPECTED_FAILURES)
