"""CPython 3.13's own ``test_interpreters/test_api.py`` against memchannel.interpreters.

The suite is imported from the ``test`` package of the running Python with
``test.support.interpreters`` (3.13's draft of 3.14's ``concurrent.interpreters``) replaced
by ``memchannel.interpreters``.  Python 3.12 ships a different, older
``test_interpreters.py`` (a single module for an earlier API): skipped there.  Each
deliberate difference is listed with its reason in ``EXPECTED_FAILURES`` (docs/interpreters.md
gives the counts against the stdlib baseline).
"""

import sys

import pytest

from memchannel import interpreters

from _stdlib_suites import expect_failures, load

pytestmark = pytest.mark.timeout(60)

if sys.version_info[:2] != (3, 13):
    pytest.skip("3.13's test_interpreters/test_api.py is the suite of this API; Python "
                f"{sys.version_info.major}.{sys.version_info.minor} ships a different one",
                allow_module_level=True)

_suite = load("test.test_interpreters.test_api",
              {"test.support.interpreters": interpreters},
              fresh=("test.test_interpreters.utils",))

_CAPI = ("the interpreter is made by the C API, not by create(): memchannel's Interpreter "
         "for it is a view, which cannot exec(), prepare_main() or call() (no memchannel "
         "worker runs in it)")
EXPECTED_FAILURES = {
    # 3.13's test.support.interpreters is a draft of 3.14's module; where they differ,
    # memchannel follows 3.14.
    "TestInterpreterCall.test_call":
        "3.13's draft discards call()'s return value (the test asserts None); memchannel "
        "returns it, as 3.14 does",
    "TestInterpreterPrepareMain.test_not_shareable":
        "3.13's draft refuses values that are not shareable (ValueError); memchannel "
        "pickles them, as 3.14 does",
    "TestInterpreterClose.test_created_with_capi": _CAPI,
    "TestInterpreterIsRunning.test_created_with_capi": _CAPI,
    "TestInterpreterExec.test_created_with_capi": _CAPI,
    "TestInterpreterPrepareMain.test_created_with_capi": _CAPI,
}

expect_failures(_suite, EXPECTED_FAILURES)
for _name in dir(_suite):
    if _name.endswith("Tests") or _name.startswith("Test"):
        globals()[_name] = getattr(_suite, _name)


