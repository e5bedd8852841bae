"""Pickling across interpreters, used on both sides of every cross-interpreter call.

memchannel.interpreters (``Interpreter.call()``, ``prepare_main()``) and the pools of
memchannel.executor send callables, arguments, results and exceptions as pickles.  This
module is what both use, so a pool's task and a ``call()`` resolve ``__main__`` and report
failures alike:

* ``CallerSideUnpickler`` unpickles replies in the caller: an object a target found in the
  caller's main script (``__memchannel_main__``, or multiprocessing's ``__mp_main__``)
  points back at this interpreter's ``__main__``.
* ``TargetSideUnpickler`` unpickles requests in the target: ``__main__.name`` means the
  *caller's* main script, imported lazily under ``MAIN_ALIAS`` (``load_callers_main``), the
  way multiprocessing's spawn start method does it.  Anything that cannot be imported raises
  ``ImportFailure``, which ``import_error`` turns into the ImportError the caller sees.
* ``describe_exception`` is how a target reports an exception: type, message, traceback
  text and the pickled exception.
* ``remember_main`` records where the caller's main script is, for interpreters created
  after CPython has deleted ``__main__.__file__``.

It imports only the standard library: an interpreter made by ``interpreters.create()`` runs
a copy of this file (module ``_memchannel_crossinterp``, shipped with the worker of
memchannel/_worker.py) without loading memchannel's C extension.  In such an interpreter,
``memchannel._crossinterp`` imported through the package *is* that copy (see the end of this
file), so the executor's workers there see the caller's main script too.
"""

import pickle
import sys
import threading
import types

# Name of the copy of this file in an interpreter made by interpreters.create().
SHIPPED_NAME = "_memchannel_crossinterp"

# Name the caller's __main__ module gets when it is imported inside a target
# interpreter, whose own __main__ is a different module.
MAIN_ALIAS = "__memchannel_main__"

PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL


def loads(unpickler_class, data, buffers=None):
    """Unpickle ``data`` (with out-of-band ``buffers``, if any) with ``unpickler_class``."""
    import io
    if buffers is None:
        # No keyword argument: on CPython 3.12.0-3.12.3 the first keyword call of an
        # extension function made in a subinterpreter crashes the process at exit
        # (gh-119213; see warm_argument_parsers).
        return unpickler_class(io.BytesIO(data)).load()
    return unpickler_class(io.BytesIO(data), buffers=buffers).load()


class CallerSideUnpickler(pickle.Unpickler):
    """Unpickles replies: objects the target found in the caller's main script point
    back at this interpreter's ``__main__`` (so do multiprocessing's spawned workers',
    found under ``__mp_main__``)."""

    def find_class(self, module_name, qualname):
        if module_name in (MAIN_ALIAS, "__mp_main__"):
            module_name = "__main__"
        return super().find_class(module_name, qualname)


class ImportFailure(Exception):
    """Raised by ``TargetSideUnpickler`` when a pickle names something that cannot be
    imported here; ``import_error`` turns it into the ImportError the caller sees."""

    def __init__(self, module, name, error):
        super().__init__(module, name, error)
        self.module, self.name, self.error = module, name, error


def _resolve_qualname(module, qualname):
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class TargetSideUnpickler(pickle.Unpickler):
    """Unpickles requests in the target.  In an interpreter made by ``create()``,
    ``__main__.name`` means the *caller's* main script (imported here on first use).
    Anything that cannot be imported raises ``ImportFailure``.  (memchannel.executor's
    workers, interpreters and processes, unpickle their tasks with this class too; in a
    process it only does the reporting.)"""

    def find_class(self, module_name, qualname):
        try:
            if module_name == "__main__" and _callers_main is not None:
                callers_main = load_callers_main()
                if callers_main is not None:
                    try:
                        return _resolve_qualname(callers_main, qualname)
                    except AttributeError:
                        pass  # maybe defined by exec() in this interpreter's own __main__
            return super().find_class(module_name, qualname)
        except Exception as exc:
            raise ImportFailure(module_name, qualname, exc) from exc


# ---------------------------------------------------------------------------------------
# Stateless functions travel by value (as in 3.14's concurrent.interpreters)

def rebuild_function(code, name, qualname, defaults, kwdefaults):
    """The receiving end of a stateless function sent by value: the same code, with this
    interpreter's ``__main__`` as its globals."""
    import marshal
    function = types.FunctionType(marshal.loads(code), sys.modules["__main__"].__dict__,
                                  name, defaults)
    function.__qualname__ = qualname
    function.__kwdefaults__ = kwdefaults
    return function


def _by_reference(function):
    module = sys.modules.get(getattr(function, "__module__", None) or "")
    try:
        return _resolve_qualname(module, function.__qualname__) is function
    except AttributeError:
        return False


def reduce_stateless_function(obj):
    """The by-value reduction of ``obj`` when it is a function that cannot be found by module
    and qualified name and uses no closure (for ``Pickler.reducer_override``), else
    ``NotImplemented``."""
    if type(obj) is types.FunctionType and not obj.__closure__ and not _by_reference(obj):
        import marshal
        return rebuild_function, (marshal.dumps(obj.__code__), obj.__name__,
                                  obj.__qualname__, obj.__defaults__, obj.__kwdefaults__)
    return NotImplemented


class Pickler(pickle.Pickler):
    """Pickles like ``pickle.dumps`` except for functions that cannot be found by module and
    qualified name (lambdas, functions defined in a function) and use no closure: those
    travel by value, their code object and defaults, and run in the target with its
    ``__main__`` as globals."""

    def reducer_override(self, obj):
        return reduce_stateless_function(obj)


def dumps(obj):
    """``obj`` pickled for another interpreter (stateless functions by value)."""
    import io
    file = io.BytesIO()
    Pickler(file, protocol=PICKLE_PROTOCOL).dump(obj)
    return file.getvalue()


def _root_cause(exc):
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        deeper = exc.__cause__ if exc.__cause__ is not None else exc.__context__
        if deeper is None:
            break
        exc = deeper
    return exc


def _one_line(exc):
    try:
        text = str(exc)
    except Exception:
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def import_error(failure, where):
    """The ImportError (ModuleNotFoundError when a module is missing) to raise when
    ``where`` (e.g. "worker interpreter 3") cannot import what a pickle names: it names
    the module and the object, says why, and what to do about it."""
    module, name, error = failure.module, failure.name, failure.error
    root = _root_cause(error)
    if "subinterpreter" in str(root):
        hint = ("an extension module that cannot be loaded in an isolated subinterpreter "
                "(numpy is one) was imported on the way: import it only inside the "
                "functions that need it, not at the top of a module the worker imports "
                "(in the main script, under `if __name__ == '__main__':`), pass arrays as "
                "arguments (they arrive as memoryview), or use processes")
    elif module in ("__main__", MAIN_ALIAS):
        hint = ("functions of the main script are found by importing the script again in "
                "the worker, without running its `if __name__ == '__main__':` block, so "
                "they must be defined at its top level; this cannot work for an "
                "interactive session or `python -c`: put them in a module or a script file")
    else:
        hint = ("functions and classes sent to a worker must be importable there by module "
                "and qualified name (no local classes, and no lambdas or nested functions "
                "with a closure), from "
                "the sys.path the worker started with")
    cls = ModuleNotFoundError if isinstance(error, ModuleNotFoundError) else ImportError
    return cls(f"{where} could not import {name!r} from module {module!r} "
               f"({_one_line(root)}); {hint}", name=module)


def describe_exception(exc, hide):
    """(type name, qualname, module, message, traceback text, pickled exception or None)
    of an exception about to be reported to another interpreter or process.

    Frames at the top of the traceback whose globals are ``hide`` (the reporting module's
    ``globals()``) are left out: the user's code starts below them.  Never raises.
    """
    import traceback
    exc_type = type(exc)
    try:
        message = str(exc)
    except BaseException:
        message = "<str() of the exception failed>"
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_globals is hide:
        tb = tb.tb_next
    try:
        formatted = "".join(traceback.format_exception(exc_type, exc, tb))
    except BaseException:
        formatted = f"{exc_type.__name__}: {message}\n"
    try:
        pickled = pickle.dumps(exc, protocol=PICKLE_PROTOCOL)
    except BaseException:
        pickled = None
    return (exc_type.__name__, exc_type.__qualname__, exc_type.__module__,
            message, formatted, pickled)


def warm_argument_parsers():
    """CPython 3.12.0-3.12.3 (gh-119213, fixed in 3.12.4): the keyword-name tuple of an
    extension function's argument parser is created the first time the function is called
    with keywords, from the allocator of the interpreter calling it, and kept for the
    process.  If that first call happens in an isolated subinterpreter, the process
    crashes at exit ("free(): invalid pointer").  So call, here in the main interpreter,
    every such function the workers call with keywords (pickling, in memchannel._objects,
    memchannel._engine and memchannel._worker): ``interpreters.create()`` and the pools do,
    in the main interpreter.  A task's own first keyword call to an extension function (not
    one of Python's core builtins) can still hit the bug: use 3.12.4+."""
    if sys.version_info[:2] != (3, 12) or sys.version_info >= (3, 12, 4):
        return
    import _pickle
    import io

    buffers: list = []
    data = _pickle.dumps(pickle.PickleBuffer(b"x"), protocol=PICKLE_PROTOCOL,
                         buffer_callback=buffers.append)
    _pickle.loads(data, buffers=buffers)
    _pickle.Pickler(io.BytesIO(), protocol=PICKLE_PROTOCOL, buffer_callback=None)
    _pickle.Unpickler(io.BytesIO(data), buffers=buffers)


# ---------------------------------------------------------------------------------------
# Where the caller's __main__ is

def _describe_main_module():
    """What the target needs to re-import this interpreter's __main__ (see
    load_callers_main): (module name, None) for ``-m``, (None, path) for a script,
    (None, None) when it cannot be seen (interactive, ``-c``, or the script has ended:
    CPython deletes ``__main__.__file__`` once the main script has run)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return spec.name, None
    path = getattr(main, "__file__", None)
    if isinstance(path, str):
        import os
        return None, os.path.abspath(path)
    return None, None


# The main module that interpreters created from here resolve ``__main__`` references
# against, as last seen (see remember_main).
_main_seen = (None, None)
_main_seen_lock = threading.Lock()


def remember_main():
    """Record where this interpreter's ``__main__`` comes from, if that can be seen now,
    and return the last record: (module name, path), or (None, None).

    Called when memchannel.interpreters is imported, by every ``create()``, and by
    memchannel.executor when a pool is made.  An interpreter created after the main
    script has ended (a pool finishing, at exit, work submitted without waiting) can no
    longer see ``__main__.__file__`` and uses the record.  In an interpreter made by
    ``create()``, whose own ``__main__`` has no script, the record is the caller's main
    script (``set_callers_main``), so interpreters it creates resolve ``__main__`` the
    same way.
    """
    global _main_seen
    with _main_seen_lock:
        described = _describe_main_module()
        if described != (None, None):
            _main_seen = described
        return _main_seen


# Set by set_callers_main() in a target interpreter: (name, path) of the caller's main
# module, as _describe_main_module gave it; None outside interpreters made by create().
_callers_main = None
_callers_main_lock = threading.Lock()


def set_callers_main(main_name, main_path):
    """In a new target interpreter: the caller's main module is (name, path)."""
    global _callers_main, _main_seen
    _callers_main = _main_seen = (main_name, main_path)


def load_callers_main():
    """Import the caller's main script here as ``__memchannel_main__`` (once); None if the
    caller's main cannot be imported (interactive session, ``-c``, a package's __main__)."""
    with _callers_main_lock:
        module = sys.modules.get(MAIN_ALIAS)
        if module is not None:
            return module
        if _callers_main is None:
            return None
        import importlib.machinery
        import importlib.util
        name, path = _callers_main
        if name is not None:
            # Like multiprocessing: never re-run a package's __main__ (e.g. "pytest").
            if name == "__main__" or name.endswith(".__main__"):
                return None
            spec = importlib.util.find_spec(name)
            if spec is None or not hasattr(spec.loader, "get_code"):
                return None
            code = spec.loader.get_code(name)
        elif path is not None:
            # An explicit loader also accepts scripts whose name does not end in .py.
            loader = importlib.machinery.SourceFileLoader(MAIN_ALIAS, path)
            spec = importlib.util.spec_from_file_location(MAIN_ALIAS, path, loader=loader)
            code = loader.get_code(MAIN_ALIAS)
        else:
            return None
        # Run the code in a module of our own, as runpy does: a __name__ other than
        # "__main__" keeps the script's main guard closed, while __spec__ and
        # __package__ stay the real ones so relative imports in a -m module resolve.
        module = types.ModuleType(MAIN_ALIAS)
        module.__spec__ = spec
        module.__loader__ = spec.loader
        module.__file__ = spec.origin
        module.__package__ = spec.parent
        sys.modules[MAIN_ALIAS] = module
        try:
            exec(code, module.__dict__)
        except BaseException as exc:
            del sys.modules[MAIN_ALIAS]
            raise ImportError(
                f"could not import the caller's main module ({name or path}) "
                f"as {MAIN_ALIAS!r}: {type(exc).__name__}: {exc}") from exc
        return module


# In an interpreter made by interpreters.create(), the copy its bootstrap loaded holds the
# caller's main script: the package's name for this module then means that copy (the
# import system returns what sys.modules holds once a module's code has run).
# Everywhere else this module is registered under the shipped name too, so that what
# pickles refer to by that name (rebuild_function) resolves in the caller and the target.
_shipped = sys.modules.get(SHIPPED_NAME)
if _shipped is not None and _shipped.__dict__ is not globals():
    sys.modules[__name__] = _shipped
else:
    sys.modules[SHIPPED_NAME] = sys.modules[__name__]
    remember_main()  # usually imported while the main script runs
del _shipped
rebuild_function.__module__ = SHIPPED_NAME


# --- sys._current_frames() while subinterpreters run --------------------------------------------
# CPython 3.12/3.13 build the frame objects of every interpreter's threads with the calling
# interpreter's allocator, so sys._current_frames() (and sys._current_exceptions()) with a
# memchannel subinterpreter alive corrupts the heap and aborts the process later ("double
# free or corruption"). Once this process has created one, an audit hook makes both calls raise
# RuntimeError instead (test_interpreters_module.py,
# test_current_frames_raises_instead_of_aborting_the_process).

CURRENT_FRAMES_REFUSED = (
    "{event}() is refused in this process: it has created memchannel subinterpreters, and "
    "CPython would build their threads' frames with this interpreter's allocator, which "
    "aborts the process (tools that call it: Dask's profiler, pytest-timeout's thread "
    "method; see docs/interpreters.md)")
_refusing_current_frames = False
_refusing_lock = threading.Lock()


def _current_frames_hook(event, args):
    if event in ("sys._current_frames", "sys._current_exceptions"):
        raise RuntimeError(CURRENT_FRAMES_REFUSED.format(event=event))


def refuse_current_frames() -> None:
    """From now on in this interpreter, sys._current_frames() and sys._current_exceptions()
    raise RuntimeError (an audit hook: it cannot be removed). Called by interpreters.create()."""
    global _refusing_current_frames
    with _refusing_lock:
        if not _refusing_current_frames:
            sys.addaudithook(_current_frames_hook)
            _refusing_current_frames = True
