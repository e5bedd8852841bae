"""The conformance suites: CPython's own tests run against memchannel's classes."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(items):
    for item in items:
        module = getattr(item, "module", None)
        table = getattr(module, "EXPECTED_FAILURES", None)
        if table is not None:
            from _stdlib import expect_failures
            expect_failures([item], table)
