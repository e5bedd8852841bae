"""CPython's generic ``test_concurrent_futures`` suites (executor.ExecutorTest, WaitTests,
AsCompletedTests, the initializer mixins, ExecutorShutdownTest) against
``memchannel.InterpreterPoolExecutor``, imported from the ``test`` package of the running
Python (3.13 ships the package; 3.12 has a single-module test_concurrent_futures that
imports as a whole test run: skipped there).  As 3.14's test_interpreter_pool.py does,
each mixin is combined with an executor mixin pointing at memchannel's pool.  Deliberate
differences are listed in ``EXPECTED_FAILURES`` (docs/interpreters.md gives the counts).
"""

import importlib
import sys

import pytest

import memchannel as mc

from _stdlib_suites import available, expect_failures

pytestmark = pytest.mark.timeout(60)

_PACKAGE = "test.test_concurrent_futures"
if not available(_PACKAGE + ".util"):
    pytest.skip(f"{_PACKAGE} is not a package in Python "
                f"{sys.version_info.major}.{sys.version_info.minor} (3.13 ships it)",
                allow_module_level=True)

_util = importlib.import_module(_PACKAGE + ".util")
_SUITES = {
    "executor": ("ExecutorTest",),
    "test_wait": ("WaitTests",),
    "test_as_completed": ("AsCompletedTests",),
    "test_init": ("InitializerMixin", "FailingInitializerMixin"),
    "test_shutdown": ("ExecutorShutdownTest",),
}


class InterpreterPoolMixin(_util.ExecutorMixin):
    executor_type = mc.InterpreterPoolExecutor


_SUBPROCESS = ("the test starts a child Python that imports the executor by its name from "
               "concurrent.futures (`from concurrent.futures import InterpreterPoolExecutor`), "
               "which only 3.14's stdlib has")
EXPECTED_FAILURES = {
    "InterpreterPoolExecutorShutdownTest.test_hang_gh83386": _SUBPROCESS,
    "InterpreterPoolExecutorShutdownTest.test_interpreter_shutdown": _SUBPROCESS,
    "InterpreterPoolExecutorShutdownTest.test_submit_after_interpreter_shutdown": _SUBPROCESS,
}

for _module_name, _mixins in _SUITES.items():
    _module = importlib.import_module(f"{_PACKAGE}.{_module_name}")
    for _mixin_name in _mixins:
        _name = "InterpreterPool" + _mixin_name.removesuffix("Mixin").removesuffix("Tests") \
            .removesuffix("Test") + "Test"
        globals()[_name] = type(_name, (getattr(_module, _mixin_name), InterpreterPoolMixin,
                                        _util.BaseTestCase), {"__module__": __name__})

expect_failures(sys.modules[__name__], EXPECTED_FAILURES)
