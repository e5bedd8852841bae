"""Import CPython's own test suites (the ``test`` package shipped with the interpreter)
with the module they test replaced by memchannel's, without copying their text.

``load(suite_module, {"test.support.interpreters": memchannel.interpreters, ...})`` imports
``suite_module`` afresh while ``sys.modules`` maps each replaced name to memchannel's
module, then restores ``sys.modules``: the suite keeps the references it took at import.
"""

import importlib
import importlib.util
import sys

import pytest


def available(module_name):
    """Whether this Python ships ``module_name`` (the test package is optional)."""
    try:
        return importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        return False


def load(module_name, replacements, *, fresh=()):
    """Import ``module_name`` with ``replacements`` ({name: module}) in sys.modules.
    ``fresh``: other modules of the suite to import again too (helpers that also import
    the replaced names)."""
    if not available(module_name):
        pytest.skip(f"{module_name} is not installed with Python "
                    f"{sys.version_info.major}.{sys.version_info.minor}",
                    allow_module_level=True)
    saved = {name: sys.modules.get(name) for name in (*replacements, *fresh, module_name)}
    parents = {}
    try:
        for name, module in replacements.items():
            sys.modules[name] = module
            parent_name, _, child = name.rpartition(".")
            parent = sys.modules.get(parent_name)
            if parent is not None:
                parents[(parent_name, child)] = getattr(parent, child, None)
                setattr(parent, child, module)
        for name in (*fresh, module_name):
            sys.modules.pop(name, None)
        for name in fresh:
            importlib.import_module(name)
        return importlib.import_module(module_name)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for (parent_name, child), value in parents.items():
            parent = sys.modules[parent_name]
            if value is None:
                delattr(parent, child)
            else:
                setattr(parent, child, value)


def expect_failures(module, table):
    """Mark the tests of ``module`` named in ``table`` ({"Class.test": reason}) as expected
    failures, strict: a listed test that passes fails the run, so the table stays true.

    A listed test runs without ``subTest``: its first failing part fails it (pytest's
    subtest reports would otherwise count each part apart from the expected failure)."""
    for name, reason in table.items():
        class_name, method_name = name.split(".")
        cls = getattr(module, class_name)
        method = _without_subtests(getattr(cls, method_name))
        setattr(cls, method_name, pytest.mark.xfail(reason=reason, strict=True)(method))


def _without_subtests(method):
    import contextlib
    import functools

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        self.subTest = lambda *_args, **_kwargs: contextlib.nullcontext()
        return method(self, *args, **kwargs)

    return run
