"""Subinterpreters for CPython 3.12 and 3.13, shaped like 3.14's ``concurrent.interpreters``.

    from memchannel import interpreters

    with interpreters.create() as interp:            # isolated: own GIL, own obmalloc
        interp.prepare_main(n=10)
        interp.exec("total = sum(range(n))")
        result = interp.call(math.factorial, 20)      # any picklable callable and arguments
        thread = interp.call_in_thread(work, chunk)   # started; thread.result after join()

Mechanism
---------
CPython 3.12 and 3.13 ship only private, low-level modules (``_xxsubinterpreters`` and
``_xxinterpchannels`` on 3.12, ``_interpreters`` and ``_interpchannels`` on 3.13).  Their
common ground is small: run a *string* in an interpreter's ``__main__`` with a dict of
shareable values (str, bytes, int, None, channel ids) bound as globals, and move bytes
through a process-global channel.  Everything here is built from those two operations:

* At ``create()`` the new interpreter runs a bootstrap that loads this very file (its
  compiled code is passed in as marshal bytes) as the private module
  ``_memchannel_interpreters_worker``, and copies in the caller's ``sys.path`` and
  ``sys.argv`` so the same packages import there, and where the caller's main script is.
  That is read from ``__main__`` when this module is imported and at every ``create()``;
  CPython deletes ``__main__.__file__`` once the script has run, so an interpreter
  created later (at exit) uses the last place seen (``_remember_main``).
* Every operation (exec, prepare_main, call) is one request: the caller creates a
  low-level channel, binds the request bytes and the channel id in the target's
  ``__main__``, and runs a one-line script that calls the worker.  The worker does the
  work, catches *every* exception, and sends exactly one reply (marshal bytes) into the
  channel before the script returns; the caller then receives it and destroys the
  channel.  On 3.12 ``run_string`` cannot return a value and on 3.13 ``exec`` returns only
  an error summary, so the channel is the single return path on both.  Replies are
  received only after the script has returned, so the 3.13 send must not wait for the
  receiver (``blocking=False``).
* Callables, arguments, return values and ``prepare_main`` values travel as pickles, so
  objects whose classes define ``__reduce__`` (``memchannel.Channel`` pickles into a
  handle and re-attaches) cross in both directions.  Functions pickle by reference
  (module + qualified name) and are imported again in the target.  A reference to the
  caller's ``__main__`` is resolved the way multiprocessing's spawn start method does it:
  the caller's main script (or ``-m`` module) is imported lazily in the target under the
  name ``__memchannel_main__``, and that name is mapped back to ``__main__`` when results
  are unpickled in the caller.
* Failures come back as ``ExecutionFailed`` carrying the remote exception's type name,
  message and formatted traceback (``.excinfo``), plus the exception itself
  (``.remote_exception``) when it pickles and unpickles.  A callable or argument the
  target cannot import fails with an ImportError (ModuleNotFoundError) naming the module,
  the object and what to do.
* memchannel.executor's pools use the same pieces on both sides (``_TargetSideUnpickler``,
  ``_import_error``, ``_describe_exception``, ``_CallerSideUnpickler``), so a pool's task
  and ``call()`` resolve ``__main__`` and report failures alike.

Threads: each interpreter runs one request at a time (a per-interpreter lock makes a
second thread wait; CPython itself refuses to run one interpreter in two threads at once
on 3.12 and 3.13).  Different interpreters run in parallel in different threads; with
the default isolated config each has its own GIL.

Limits
------
* Values are copied, never shared: a list passed to ``call()`` or ``prepare_main()`` is a
  new list in the target.  Callables must be importable by name (no lambdas, closures or
  locally defined functions).  Functions from an interactive session or ``python -c``
  cannot be resolved in the target; put them in a module or script file.
* The caller's main script is executed again in the target (under a name other than
  ``"__main__"``) the first time one of its objects is needed there, exactly like
  multiprocessing's spawn: keep its side effects under ``if __name__ == "__main__":``.
* Extension modules that do not support subinterpreters (numpy, and on 3.12 ``_datetime``
  and ``_decimal``, whose pure-Python fallbacks load instead) cannot be imported in an
  isolated interpreter.  CPython 3.12.1 corrupts memory when destroying isolated
  interpreters that were the first in the process to try loading such a module (e.g.
  via ``datetime``, ``decimal``) or ``hashlib``; on 3.12 ``create()`` therefore loads
  those stdlib modules in the main interpreter once (see ``_PRELOAD_ON_312``).  Other
  single-phase extension modules first tried in a subinterpreter can still hit that bug.
* Ctrl-C reaches the main thread only after the interpreter it is running returns:
  signals are handled by the main interpreter only.
* An interpreter cannot be closed while a thread runs in it (``InterpreterError``); join
  the thread first.  ``close()`` otherwise is idempotent, and interpreters still open at
  exit, or no longer referenced, are destroyed automatically.
* Tested on CPython 3.12.1 and 3.13.0.  On 3.14+ prefer the standard
  ``concurrent.interpreters``; this module keeps using the 3.13 private modules there.
"""

import marshal
import pickle
import sys
import threading
import types
import weakref

if sys.version_info < (3, 12):
    raise RuntimeError(
        "memchannel.interpreters needs CPython 3.12 or newer: isolated subinterpreters "
        "with a per-interpreter GIL (PEP 684) do not exist in Python "
        f"{sys.version_info.major}.{sys.version_info.minor}")

__all__ = [
    "create", "list_all", "get_current", "get_main", "is_shareable",
    "Interpreter", "ExceptionInfo",
    "InterpreterError", "InterpreterNotFoundError", "ExecutionFailed", "NotShareableError",
]

# Name of the private module the worker side of this file lives under in every
# interpreter created here (never "memchannel.interpreters": importing that would run
# the package __init__, which loads the C extension, and the worker needs none of it).
_WORKER_MODULE_NAME = "_memchannel_interpreters_worker"

# Name the caller's __main__ module gets when it is imported inside a target
# interpreter, whose own __main__ is a different module.
_MAIN_ALIAS = "__memchannel_main__"

# Globals bound in the target's __main__ for one request; the worker pops them at once.
_REQUEST_KEY = "__memchannel_request__"
_REPLY_KEY = "__memchannel_reply_channel__"
_WORKER_CODE_KEY = "__memchannel_worker_code__"

_PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL


# ---------------------------------------------------------------------------------------
# Exceptions

class InterpreterError(Exception):
    """Base class for errors raised by this module."""


class InterpreterNotFoundError(InterpreterError):
    """The interpreter has been closed (destroyed) or never existed."""


class NotShareableError(ValueError):
    """A value could not be pickled for, or unpickled from, another interpreter."""


class ExceptionInfo:
    """A snapshot of an exception raised in another interpreter.

    ``type_name``, ``type_qualname`` and ``type_module`` name the exception's class,
    ``msg`` is ``str(exception)`` and ``formatted`` the full traceback text as the
    remote interpreter printed it.  ``type`` and ``errdisplay`` give the same data under
    the names 3.14's ``concurrent.interpreters`` uses.
    """

    __slots__ = ("type_name", "type_qualname", "type_module", "msg", "formatted")

    def __init__(self, type_name, type_qualname, type_module, msg, formatted):
        self.type_name = type_name
        self.type_qualname = type_qualname
        self.type_module = type_module
        self.msg = msg
        self.formatted = formatted

    @property
    def type(self):
        return types.SimpleNamespace(__name__=self.type_name,
                                     __qualname__=self.type_qualname,
                                     __module__=self.type_module)

    @property
    def errdisplay(self):
        return self.formatted

    def __reduce__(self):
        return (ExceptionInfo, (self.type_name, self.type_qualname, self.type_module,
                                self.msg, self.formatted))

    def __repr__(self):
        return f"ExceptionInfo(type_name={self.type_name!r}, msg={self.msg!r})"


class ExecutionFailed(InterpreterError):
    """An exception escaped the code run by ``exec()`` or ``call()`` in another interpreter.

    ``excinfo`` is an ``ExceptionInfo``; ``remote_exception`` is the exception object
    itself, re-created here by pickle (without its traceback), or None when it does not
    pickle.
    """

    def __init__(self, excinfo, remote_exception=None):
        summary = f"{excinfo.type_name}: {excinfo.msg}" if excinfo.msg else excinfo.type_name
        super().__init__(summary)
        self.excinfo = excinfo
        self.remote_exception = remote_exception

    def __str__(self):
        return (f"{self.args[0]}\n\nUncaught in the interpreter:\n\n"
                f"{self.excinfo.formatted.rstrip()}")

    def __reduce__(self):
        # The remote exception object is dropped: it may not pickle a second time.
        return (ExecutionFailed, (self.excinfo,))


# ---------------------------------------------------------------------------------------
# Low-level backends: the only code that knows which private CPython modules exist.

class _Backend313:
    """CPython 3.13+: ``_interpreters`` and ``_interpchannels``."""

    # _interpchannels unbound-item policy "remove": an item whose sending interpreter
    # is destroyed before it is received disappears.  Never happens here (replies are
    # received before close() can run), but create() requires a choice.
    _UNBOUND_REMOVE = 1

    def __init__(self):
        import _interpchannels
        import _interpreters
        self._interpreters = _interpreters
        self._channels = _interpchannels
        self.is_shareable = _interpreters.is_shareable

    def create(self, isolated):
        # With reqrefs=False the interpreter lives until destroy(); Interpreter owns that.
        return self._interpreters.create("isolated" if isolated else "legacy")

    def destroy(self, handle):
        try:
            self._interpreters.destroy(handle)
        except self._interpreters.InterpreterNotFoundError as exc:
            raise InterpreterNotFoundError(str(exc)) from None
        except self._interpreters.InterpreterError as exc:
            raise InterpreterError(str(exc)) from None

    def run(self, handle, script, shared):
        """Run script in the interpreter's __main__; return None or an error description."""
        try:
            excinfo = self._interpreters.exec(handle, script, shared)
        except self._interpreters.InterpreterNotFoundError as exc:
            raise InterpreterNotFoundError(str(exc)) from None
        if excinfo is None:
            return None
        return excinfo.errdisplay or excinfo.formatted

    def list_ids(self):
        return [int(interp_id) for interp_id, _whence in self._interpreters.list_all()]

    def current_id(self):
        return int(self._interpreters.get_current()[0])

    def main_id(self):
        return int(self._interpreters.get_main()[0])

    def is_running(self, handle):
        try:
            return self._interpreters.is_running(handle)
        except self._interpreters.InterpreterNotFoundError as exc:
            raise InterpreterNotFoundError(str(exc)) from None

    def create_channel(self):
        return self._channels.create(self._UNBOUND_REMOVE)

    def send(self, channel, data):
        # Not blocking: the caller receives only after the sending script has returned.
        self._channels.send(channel, data, blocking=False)

    def receive(self, channel):
        data, _unboundop = self._channels.recv(channel, (None, None))
        return data

    def destroy_channel(self, channel):
        self._channels.destroy(channel)


class _Backend312:
    """CPython 3.12: ``_xxsubinterpreters`` and ``_xxinterpchannels``."""

    def __init__(self):
        import _xxinterpchannels
        import _xxsubinterpreters
        self._interpreters = _xxsubinterpreters
        self._channels = _xxinterpchannels
        self.is_shareable = _xxsubinterpreters.is_shareable

    def create(self, isolated):
        # The returned InterpreterID object *is* the interpreter's lifetime on 3.12: when
        # the last InterpreterID referring to it is freed, CPython destroys it.  So the
        # handle kept by Interpreter is this object, not its int value.
        return self._interpreters.create(isolated=isolated)

    def destroy(self, handle):
        try:
            self._interpreters.destroy(handle)
        except RuntimeError as exc:  # 3.12 reports everything as RuntimeError
            if "unrecognized" in str(exc):
                raise InterpreterNotFoundError(str(exc)) from None
            raise InterpreterError(str(exc)) from None

    def run(self, handle, script, shared):
        """Run script in the interpreter's __main__; return None or an error description."""
        try:
            self._interpreters.run_string(handle, script, shared)
        except self._interpreters.RunFailedError as exc:
            return str(exc)
        except RuntimeError as exc:
            if "unrecognized" in str(exc):
                raise InterpreterNotFoundError(str(exc)) from None
            raise InterpreterError(str(exc)) from None
        return None

    def list_ids(self):
        return [int(interp_id) for interp_id in self._interpreters.list_all()]

    def current_id(self):
        return int(self._interpreters.get_current())

    def main_id(self):
        return int(self._interpreters.get_main())

    def is_running(self, handle):
        try:
            return self._interpreters.is_running(handle)
        except RuntimeError as exc:
            raise InterpreterNotFoundError(str(exc)) from None

    def create_channel(self):
        # Keep the ChannelID object: on 3.12 a channel whose last id object is freed is
        # destroyed, so an int would not keep it alive.
        return self._channels.create()

    def send(self, channel, data):
        self._channels.send(channel, data)

    def receive(self, channel):
        return self._channels.recv(channel, None)

    def destroy_channel(self, channel):
        self._channels.destroy(channel)


def _select_backend():
    try:
        return _Backend313()
    except ImportError:
        pass
    try:
        return _Backend312()
    except ImportError:
        raise RuntimeError(
            "memchannel.interpreters needs CPython's private subinterpreter modules "
            "(_interpreters/_interpchannels on 3.13, _xxsubinterpreters/_xxinterpchannels "
            "on 3.12); this Python has neither") from None


_backend = _select_backend()
is_shareable = _backend.is_shareable


# ---------------------------------------------------------------------------------------
# Pickling across interpreters (used on both sides)

def _resolve_qualname(module, qualname):
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class _CallerSideUnpickler(pickle.Unpickler):
    """Unpickles replies: objects the target found in the caller's main script point
    back at this interpreter's ``__main__`` (so do multiprocessing's spawned workers',
    found under ``__mp_main__``)."""

    def find_class(self, module_name, qualname):
        if module_name in (_MAIN_ALIAS, "__mp_main__"):
            module_name = "__main__"
        return super().find_class(module_name, qualname)


class _ImportFailure(Exception):
    """Raised by ``_TargetSideUnpickler`` when a pickle names something that cannot be
    imported here; ``_import_error`` turns it into the ImportError the caller sees."""

    def __init__(self, module, name, error):
        super().__init__(module, name, error)
        self.module, self.name, self.error = module, name, error


class _TargetSideUnpickler(pickle.Unpickler):
    """Unpickles requests in the target.  In an interpreter made by ``create()``,
    ``__main__.name`` means the *caller's* main script (imported here on first use).
    Anything that cannot be imported raises ``_ImportFailure``.  (memchannel.executor's
    workers, interpreters and processes, unpickle their tasks with this class too; in a
    process it only does the reporting.)"""

    def find_class(self, module_name, qualname):
        try:
            if module_name == "__main__" and _callers_main is not None:
                callers_main = _load_callers_main()
                if callers_main is not None:
                    try:
                        return _resolve_qualname(callers_main, qualname)
                    except AttributeError:
                        pass  # maybe defined by exec() in this interpreter's own __main__
            return super().find_class(module_name, qualname)
        except Exception as exc:
            raise _ImportFailure(module_name, qualname, exc) from exc


def _loads(unpickler_class, data):
    import io
    return unpickler_class(io.BytesIO(data)).load()


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


def _import_error(failure, where):
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
    elif module in ("__main__", _MAIN_ALIAS):
        hint = ("functions of the main script are found by importing the script again in "
                "the worker, which cannot work for an interactive session or `python -c`: "
                "put them in a module or a script file")
    else:
        hint = ("functions and classes sent to a worker must be importable there by module "
                "and qualified name (no lambdas, nested functions or local classes), from "
                "the sys.path the worker started with")
    cls = ModuleNotFoundError if isinstance(error, ModuleNotFoundError) else ImportError
    return cls(f"{where} could not import {name!r} from module {module!r} "
               f"({_one_line(root)}); {hint}", name=module)


def _describe_exception(exc, hide=None):
    """(type name, qualname, module, message, traceback text, pickled exception or None)
    of an exception about to be reported to another interpreter or process.

    Frames at the top of the traceback whose globals are ``hide`` (default: this
    module's) are left out: the user's code starts below them.  Never raises.
    """
    import traceback
    exc_type = type(exc)
    try:
        message = str(exc)
    except BaseException:
        message = "<str() of the exception failed>"
    tb = exc.__traceback__
    hidden = globals() if hide is None else hide
    while tb is not None and tb.tb_frame.f_globals is hidden:
        tb = tb.tb_next
    try:
        formatted = "".join(traceback.format_exception(exc_type, exc, tb))
    except BaseException:
        formatted = f"{exc_type.__name__}: {message}\n"
    try:
        pickled = pickle.dumps(exc, protocol=_PICKLE_PROTOCOL)
    except BaseException:
        pickled = None
    return (exc_type.__name__, exc_type.__qualname__, exc_type.__module__,
            message, formatted, pickled)


def _describe_main_module():
    """What the target needs to re-import this interpreter's __main__ (see
    _load_callers_main): (module name, None) for ``-m``, (None, path) for a script,
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
# against, as last seen (see _remember_main).
_main_seen = (None, None)
_main_seen_lock = threading.Lock()


def _remember_main():
    """Record where this interpreter's ``__main__`` comes from, if that can be seen now,
    and return the last record: (module name, path), or (None, None).

    Called when this module is imported, by every ``create()``, and by
    memchannel.executor when a pool is made.  An interpreter created after the main
    script has ended (a pool finishing, at exit, work submitted without waiting) can no
    longer see ``__main__.__file__`` and uses the record.  In an interpreter made by
    ``create()``, whose own ``__main__`` has no script, the record is the caller's main
    script, so interpreters it creates resolve ``__main__`` the same way.
    """
    global _main_seen
    with _main_seen_lock:
        described = _describe_main_module()
        if described != (None, None):
            _main_seen = described
        return _main_seen


_remember_main()  # this module is usually imported while the main script runs


# ---------------------------------------------------------------------------------------
# Worker side: runs inside the target interpreter, in the module _WORKER_MODULE_NAME.

# Set by _worker_bootstrap() in a target interpreter: (name, path) of the caller's main
# module, as _describe_main_module gave it; None outside interpreters made by create().
_callers_main = None
_callers_main_lock = threading.Lock()


def _load_callers_main():
    """Import the caller's main script here as ``__memchannel_main__`` (once); None if the
    caller's main cannot be imported (interactive session, ``-c``, a package's __main__)."""
    with _callers_main_lock:
        module = sys.modules.get(_MAIN_ALIAS)
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
            loader = importlib.machinery.SourceFileLoader(_MAIN_ALIAS, path)
            spec = importlib.util.spec_from_file_location(_MAIN_ALIAS, path, loader=loader)
            code = loader.get_code(_MAIN_ALIAS)
        else:
            return None
        # Run the code in a module of our own, as runpy does: a __name__ other than
        # "__main__" keeps the script's main guard closed, while __spec__ and
        # __package__ stay the real ones so relative imports in a -m module resolve.
        module = types.ModuleType(_MAIN_ALIAS)
        module.__spec__ = spec
        module.__loader__ = spec.loader
        module.__file__ = spec.origin
        module.__package__ = spec.parent
        sys.modules[_MAIN_ALIAS] = module
        try:
            exec(code, module.__dict__)
        except BaseException as exc:
            del sys.modules[_MAIN_ALIAS]
            raise ImportError(
                f"could not import the caller's main module ({name or path}) "
                f"as {_MAIN_ALIAS!r}: {type(exc).__name__}: {exc}") from exc
        return module


def _worker_bootstrap(request):
    """The first request in a new interpreter: the caller's sys.path, sys.argv and main
    module (see create())."""
    global _callers_main, _main_seen
    path, argv, main_name, main_path = marshal.loads(request)
    sys.path[:] = path
    sys.argv = argv  # a script imported again by _load_callers_main may read it
    _callers_main = _main_seen = (main_name, main_path)
    return None


def _where():
    return f"interpreter {_backend.current_id()}"


def _worker_exec(request):
    kind, code = marshal.loads(request)
    if kind == "source":
        code = compile(code, "<string>", "exec")
    exec(code, sys.modules["__main__"].__dict__)
    return None


def _worker_prepare_main(request):
    try:
        namespace = _loads(_TargetSideUnpickler, request)
    except _ImportFailure as failure:
        raise _import_error(failure, f"prepare_main() in {_where()}") from failure.error
    except Exception as exc:
        raise pickle.UnpicklingError(
            f"prepare_main(): could not unpickle the values here: {exc}") from exc
    sys.modules["__main__"].__dict__.update(namespace)
    return None


def _worker_call(request):
    try:
        function, args, kwargs = _loads(_TargetSideUnpickler, request)
    except _ImportFailure as failure:
        raise _import_error(failure, f"call() in {_where()}") from failure.error
    except Exception as exc:
        raise pickle.UnpicklingError(
            f"call(): could not unpickle the callable or its arguments here: {exc}") from exc
    result = function(*args, **kwargs)
    try:
        return pickle.dumps(result, protocol=_PICKLE_PROTOCOL)
    except Exception as exc:
        raise pickle.PicklingError(
            f"call(): the result of {function!r} ({type(result).__name__}) "
            f"could not be pickled: {exc}") from exc


_WORKER_OPERATIONS = {
    "bootstrap": _worker_bootstrap,
    "exec": _worker_exec,
    "prepare_main": _worker_prepare_main,
    "call": _worker_call,
}


def _serve(operation):
    """Entry point of every request script: do one operation, send exactly one reply."""
    main_namespace = sys.modules["__main__"].__dict__
    request = main_namespace.pop(_REQUEST_KEY)
    reply_channel = main_namespace.pop(_REPLY_KEY)
    try:
        reply = ("ok", _WORKER_OPERATIONS[operation](request))
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: report, never exit
        reply = ("error",) + _describe_exception(exc)
    _backend.send(reply_channel, marshal.dumps(reply))


def _request_script(operation):
    # One expression statement: binds no name in the target's __main__.
    return f"__import__('sys').modules[{_WORKER_MODULE_NAME!r}]._serve({operation!r})"


# Run once in a new interpreter: turn the marshalled code of this file into the worker
# module, then serve the bootstrap request like any other.
_BOOTSTRAP_SCRIPT = f"""\
def __memchannel_bootstrap__():
    import marshal, sys, types
    main_namespace = sys.modules['__main__'].__dict__
    code = marshal.loads(main_namespace.pop({_WORKER_CODE_KEY!r}))
    worker = types.ModuleType({_WORKER_MODULE_NAME!r})
    worker.__file__ = code.co_filename
    sys.modules[worker.__name__] = worker
    exec(code, worker.__dict__)
    worker._serve('bootstrap')
__memchannel_bootstrap__()
del __memchannel_bootstrap__
"""

_worker_code_bytes = None


def _worker_code():
    """This file's compiled code, marshalled once per process."""
    global _worker_code_bytes
    if _worker_code_bytes is None:
        spec = globals().get("__spec__")
        source = None
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "get_source"):
            source = spec.loader.get_source(spec.name)
        if source is None:
            with open(__file__, encoding="utf-8") as source_file:
                source = source_file.read()
        _worker_code_bytes = marshal.dumps(compile(source, __file__, "exec"))
    return _worker_code_bytes


# ---------------------------------------------------------------------------------------
# Caller side: the public API

_registry_lock = threading.Lock()
# id -> Interpreter created here.  Weak: dropping the last reference closes it.
_owned_interpreters = weakref.WeakValueDictionary()
try:
    threading._register_atexit(lambda: _cancel_on_keyboard_interrupt())
except RuntimeError:  # pragma: no cover - imported while threading shuts down
    pass


# How long close() and interpreter exit wait for a busy interpreter to stop once its
# memchannel waits are cancelled (a cancelled wait raises WaitCancelled within 0.1 s).
_STOP_TIMEOUT = 2.0
_stopping_at_exit = False  # set once exit had to stop a running interpreter


def _cancel_waits(interp_id):
    from . import _memchannel
    _memchannel._cancel_waits(interp_id)


def _uncancel_waits(interp_id):
    from . import _memchannel
    _memchannel._uncancel_waits(interp_id)


def _destroy_quietly(handle, request_lock=None):
    """Finalizer for an Interpreter dropped without close(), or still open at exit.

    At exit an interpreter may still run code in a daemon thread, for example blocked in
    ``recv()``: its memchannel waits are cancelled first, so it stops and can be destroyed
    (CPython aborts the process when it has to end an interpreter that is still running).
    """
    global _stopping_at_exit
    interp_id = int(handle)
    locked = request_lock is None or request_lock.acquire(blocking=False)
    if not locked:
        _stopping_at_exit = True
        _cancel_waits(interp_id)
        locked = request_lock.acquire(timeout=_STOP_TIMEOUT)
    try:
        if locked:
            _backend.destroy(handle)
    except InterpreterError:
        pass  # already gone, or a thread still runs in it: nothing safe left to do
    finally:
        if locked and request_lock is not None:
            request_lock.release()
        _uncancel_waits(interp_id)


def _cancel_on_keyboard_interrupt():
    """Ctrl-C ended the main thread: stop subinterpreters blocked in memchannel calls.

    Runs when the main interpreter shuts down, before it joins non-daemon threads (such as
    the threads of ``call_in_thread``). Only when the program is ending because of a
    KeyboardInterrupt: a normal end of the main thread lets other threads finish their work.
    """
    if not isinstance(getattr(sys, "last_exc", None), KeyboardInterrupt):
        return
    with _registry_lock:
        owned = list(_owned_interpreters.values())
    stopped = False
    for interp in owned:
        if not interp._closed and interp._request_lock.locked():
            interp._closing = True
            _cancel_waits(interp._id)
            stopped = True
    if stopped:
        # The stopped interpreters run a little more code, which can make CPython forget
        # that the exit is a Ctrl-C one (exit code 1 instead of death by SIGINT).
        from . import _memchannel
        _memchannel._exit_by_sigint_at_exit()


# Stdlib C modules that CPython 3.12 cannot load in an isolated interpreter (single-phase
# init), plus hashlib.  On 3.12.1, when the first attempt to load one of them in the
# process happens inside an isolated interpreter, destroying that interpreter later
# corrupts memory and aborts the process (seen with datetime, decimal and hashlib; 3.13
# is not affected).  Loading them once in the main interpreter first avoids it.  Modules
# with side effects on import (readline, curses, tkinter) are left out.
_PRELOAD_ON_312 = ("hashlib", "_datetime", "_decimal", "pyexpat", "_elementtree",
                   "_ctypes", "_lsprof")
_preloaded_for_312 = False


def _preload_for_312():
    global _preloaded_for_312
    if _preloaded_for_312 or not isinstance(_backend, _Backend312):
        return
    # Only the main interpreter can load them; a failed attempt elsewhere is the bug.
    if _backend.current_id() != _backend.main_id():
        return
    import importlib
    for module_name in _PRELOAD_ON_312:
        try:
            importlib.import_module(module_name)
        except ImportError:
            pass  # not built into this Python: then no interpreter can load it either
    _preloaded_for_312 = True


def create(*, isolated=True):
    """Create a new interpreter and return its ``Interpreter``.

    isolated=True (default): the "isolated" config, with its own GIL and allocator, so it
    runs in parallel with other interpreters; single-phase extension modules cannot be
    imported in it.  isolated=False: the "legacy" config, sharing the main GIL.
    Concurrency: any thread.
    """
    _preload_for_312()
    main_name, main_path = _remember_main()
    handle = _backend.create(isolated)
    interp = Interpreter._new_owned(handle, isolated)
    try:
        bootstrap = marshal.dumps((
            [entry for entry in sys.path if isinstance(entry, str)],
            [arg for arg in getattr(sys, "argv", []) if isinstance(arg, str)],
            main_name,
            main_path,
        ))
        interp._request("bootstrap", bootstrap, script=_BOOTSTRAP_SCRIPT,
                        extra_shared={_WORKER_CODE_KEY: _worker_code()})
    except BaseException:
        interp.close()
        raise
    return interp


def list_all():
    """Return an ``Interpreter`` for every interpreter in the process (including main)."""
    return [Interpreter(interp_id) for interp_id in _backend.list_ids()]


def get_current():
    """Return the interpreter running the calling thread."""
    return Interpreter(_backend.current_id())


def get_main():
    """Return the main interpreter."""
    return Interpreter(_backend.main_id())


class _CallThread(threading.Thread):
    """The started thread ``Interpreter.call_in_thread()`` returns.

    After ``join()``, ``result`` holds the call's return value and ``exception`` the
    exception it raised (usually ``ExecutionFailed``), or None.  A raised exception is
    also reported through ``threading.excepthook``, as for any thread.
    """

    def __init__(self, interp, function, args, kwargs):
        super().__init__(name=f"{interp!r}.call({getattr(function, '__qualname__', function)})")
        self._interp = interp
        self._call = (function, args, kwargs)
        self.result = None
        self.exception = None

    def run(self):
        function, args, kwargs = self._call
        try:
            self.result = self._interp.call(function, *args, **kwargs)
        except ExecutionFailed as exc:
            self.exception = exc
            if ((self._interp._closing or _stopping_at_exit)
                    and exc.excinfo.type_name == "WaitCancelled"):
                return  # close() (or Ctrl-C) stopped it on purpose: not an error to report
            raise
        except BaseException as exc:
            self.exception = exc
            raise
        finally:
            del self._interp, self._call


class Interpreter:
    """One CPython interpreter in this process.

    Only interpreters made by ``create()`` can run code (``exec``, ``prepare_main``,
    ``call``, ``call_in_thread``) and be closed; the others (main, or made by other
    code) are views with an ``id`` and ``is_running()``.  ``Interpreter(id)`` returns the
    object ``create()`` returned while it is alive.

    Invariants: an owned interpreter runs one request at a time (``_request_lock``); it
    is destroyed exactly once, by ``close()`` or, if never closed, by its finalizer when
    this object is freed or at interpreter exit.
    Concurrency: any thread; requests on one interpreter are serialized, requests on
    different interpreters run in parallel.
    """

    def __new__(cls, id):
        interp_id = int(id)
        with _registry_lock:
            owned = _owned_interpreters.get(interp_id)
        if owned is not None:
            return owned
        view = super().__new__(cls)
        view._id = interp_id
        view._handle = None
        view._isolated = None
        view._closed = False
        view._finalizer = None
        view._request_lock = None
        view._closing = False
        return view

    @classmethod
    def _new_owned(cls, handle, isolated):
        interp = super().__new__(cls)
        interp._id = int(handle)
        interp._handle = handle
        interp._isolated = isolated
        interp._closed = False
        interp._closing = False
        interp._request_lock = threading.Lock()
        interp._finalizer = weakref.finalize(interp, _destroy_quietly, handle, interp._request_lock)
        with _registry_lock:
            _owned_interpreters[interp._id] = interp
        return interp

    # -- identity -----------------------------------------------------------------------

    @property
    def id(self):
        """The process-wide interpreter id (an int)."""
        return self._id

    @property
    def isolated(self):
        """True for an own-GIL interpreter made by ``create()``; None if not made here."""
        return self._isolated

    def __eq__(self, other):
        if not isinstance(other, Interpreter):
            return NotImplemented
        return self._id == other._id

    def __hash__(self):
        return hash(self._id)

    def __repr__(self):
        if self._handle is None:
            return f"Interpreter(id={self._id})"
        if self._closed:
            return f"Interpreter(id={self._id}, closed)"
        return f"Interpreter(id={self._id}, isolated={self._isolated})"

    def __reduce__(self):
        # Another interpreter gets a view: ownership never travels.
        return (Interpreter, (self._id,))

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- state --------------------------------------------------------------------------

    def is_running(self):
        """Whether some thread is running code in this interpreter right now."""
        self._check_open()
        return _backend.is_running(self._handle if self._handle is not None else self._id)

    def close(self):
        """Destroy the interpreter.  Idempotent.

        If a thread is running in it, every memchannel call it is blocked in (``recv()``,
        ``send()``, ``Queue.get()``, ...) raises ``memchannel.WaitCancelled`` there, and
        close() waits up to 2 s for the running code to end.  Raises InterpreterError if
        it is still running then (code that is not waiting in memchannel cannot be
        interrupted), or if the interpreter was not made by ``create()``.
        """
        self._check_owned("close")
        if not self._request_lock.acquire(blocking=False):
            self._closing = True
            _cancel_waits(self._id)
            try:
                stopped = self._request_lock.acquire(timeout=_STOP_TIMEOUT)
            finally:
                _uncancel_waits(self._id)
            if not stopped:
                self._closing = False
                raise InterpreterError(
                    f"cannot close {self!r}: a thread is running in it and did not stop "
                    f"within {_STOP_TIMEOUT:g} s (it is not waiting in a memchannel call)")
        try:
            if self._closed:
                return
            try:
                _backend.destroy(self._handle)
            except InterpreterNotFoundError:
                pass  # destroyed behind our back: closed all the same
            self._closed = True
            self._finalizer.detach()
            self._handle = int(self._handle)  # on 3.12: release the InterpreterID object
        finally:
            self._request_lock.release()

    # -- running code -------------------------------------------------------------------

    def prepare_main(self, ns=None, /, **kwargs):
        """Bind names in the interpreter's ``__main__`` (copies of the values).

        Simple values (bytes, str, int, float, bool, None, tuples of them) always work;
        any other value is passed by pickle, like 3.14 does for values it cannot share.
        """
        namespace = dict(ns or {}, **kwargs)
        for name in namespace:
            if not isinstance(name, str):
                raise TypeError(f"prepare_main(): names must be str, got {name!r}")
        self._check_owned("prepare_main")
        self._request("prepare_main", self._pickle(namespace, "prepare_main() values"))

    def exec(self, code, /):
        """Run ``code`` in the interpreter's ``__main__``, like the builtin ``exec``.

        ``code`` is source text, or a function (or code object) taking no arguments and
        using no closure; only its code runs, with ``__main__`` as its globals.  Blocks
        until done.  An uncaught exception raises ``ExecutionFailed``.
        """
        if isinstance(code, str):
            request = ("source", code)
        else:
            request = ("code", _code_of_argless_function(code))
        self._check_owned("exec")
        self._request("exec", marshal.dumps(request))

    def call(self, callable, /, *args, **kwargs):
        """Call ``callable(*args, **kwargs)`` in the interpreter and return its result.

        The callable, the arguments and the result travel by pickle: functions must be
        importable by module and qualified name (functions of the caller's main script
        are found by importing that script, as multiprocessing's spawn does).  An
        uncaught exception raises ``ExecutionFailed``.
        """
        self._check_owned("call")
        request = self._pickle((callable, args, kwargs), f"call({callable!r}, ...)")
        reply = self._request("call", request)
        try:
            return _loads(_CallerSideUnpickler, reply)
        except Exception as exc:
            raise NotShareableError(
                f"the result of {callable!r} in {self!r} could not be unpickled here: "
                f"{type(exc).__name__}: {exc}") from exc

    def call_in_thread(self, callable, /, *args, **kwargs):
        """Start a thread that runs ``self.call(callable, *args, **kwargs)`` and return it.

        The thread's ``result`` and ``exception`` attributes hold the outcome after
        ``join()``.
        """
        self._check_owned("call_in_thread")
        self._check_open()
        thread = _CallThread(self, callable, args, kwargs)
        thread.start()
        return thread

    # -- internals ----------------------------------------------------------------------

    def _check_owned(self, what):
        if self._handle is None:
            raise InterpreterError(
                f"{what}(): {self!r} was not made by memchannel.interpreters.create()")

    def _check_open(self):
        if self._closed:
            raise InterpreterNotFoundError(f"{self!r} has been closed")

    def _pickle(self, obj, what):
        try:
            return pickle.dumps(obj, protocol=_PICKLE_PROTOCOL)
        except Exception as exc:
            raise NotShareableError(
                f"{what}: cannot be sent to {self!r}: {type(exc).__name__}: {exc}") from exc

    def _request(self, operation, request, *, script=None, extra_shared=None):
        """Run one worker operation in the interpreter and return its reply payload."""
        shared = {_REQUEST_KEY: request}
        if extra_shared:
            shared.update(extra_shared)
        with self._request_lock:
            self._check_open()
            reply_channel = _backend.create_channel()
            try:
                shared[_REPLY_KEY] = reply_channel
                run_error = _backend.run(self._handle, script or _request_script(operation),
                                         shared)
                reply = _backend.receive(reply_channel)
            finally:
                _backend.destroy_channel(reply_channel)
        if reply is None:
            # The worker itself failed before replying (e.g. it could not be loaded).
            raise InterpreterError(
                f"{operation} in {self!r} ended without a reply"
                + (f":\n{run_error}" if run_error else ""))
        status, *details = marshal.loads(reply)
        if status == "ok":
            return details[0]
        type_name, type_qualname, type_module, msg, formatted, pickled = details
        excinfo = ExceptionInfo(type_name, type_qualname, type_module, msg, formatted)
        remote_exception = None
        if pickled is not None:
            try:
                remote_exception = _loads(_CallerSideUnpickler, pickled)
            except Exception:
                pass  # e.g. its class exists only in the other interpreter
        raise ExecutionFailed(excinfo, remote_exception)


_CO_VARARGS = 0x04
_CO_VARKEYWORDS = 0x08
_CO_GENERATOR_LIKE = 0x20 | 0x80 | 0x200  # generator, coroutine, async generator


def _code_of_argless_function(function):
    """The code object ``exec()`` may run: no parameters, no closure, not a generator."""
    if isinstance(function, types.CodeType):
        code = function
    elif isinstance(function, types.FunctionType):
        code = function.__code__
        if function.__closure__:
            raise ValueError(f"exec(): {function.__qualname__} is a closure; "
                             "pass a function without free variables")
    else:
        raise TypeError(f"exec() takes source text or a function, not {type(function).__name__}")
    if (code.co_argcount or code.co_posonlyargcount or code.co_kwonlyargcount
            or code.co_flags & (_CO_VARARGS | _CO_VARKEYWORDS)):
        raise ValueError(f"exec(): {code.co_name} must take no arguments; use call() instead")
    if code.co_freevars:
        raise ValueError(f"exec(): {code.co_name} uses a closure")
    if code.co_flags & _CO_GENERATOR_LIKE:
        raise ValueError(f"exec(): {code.co_name} is a generator or coroutine function")
    return code
