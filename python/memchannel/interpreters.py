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

* At ``create()`` the new interpreter runs a bootstrap that loads the worker
  (memchannel/_worker.py, plus the pickling of memchannel/_crossinterp.py it needs; their
  compiled code is passed in as marshal bytes) as private modules, and copies in the
  caller's ``sys.path`` and ``sys.argv`` so the same packages import there, and where the
  caller's main script is.  That is read from ``__main__`` when this module is imported
  and at every ``create()``; CPython deletes ``__main__.__file__`` once the script has
  run, so an interpreter created later (at exit) uses the last place seen
  (``_crossinterp.remember_main``).
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
* memchannel.executor's pools use the same pieces on both sides (memchannel/_crossinterp.py),
  so a pool's task and ``call()`` resolve ``__main__`` and report failures alike.

Threads: each interpreter runs one request at a time: as in 3.14, ``exec()``, ``call()``
or ``prepare_main()`` on an interpreter another thread is running raises
InterpreterError ("already running").  Different interpreters run in parallel in
different threads; with the default isolated config each has its own GIL.

Queues: ``create_queue()`` / ``Queue`` (memchannel/_queues.py) are 3.14's cross-interpreter
queue on memchannel channels: blocking ``get()``/``put()`` wait on a futex, with no
polling, and honour float timeouts on the monotonic clock.

As 3.14's ``concurrent.interpreters``, name for name (docs/interpreters.md lists the
conformance counts).  Deliberate differences:

* ``call()``, ``prepare_main()`` and queues pickle every value (3.14 shares some types
  natively and pickles the rest): the same values arrive, as copies.
* ``exec()``, ``call()`` and ``prepare_main()`` run only in interpreters made by this
  module's ``create()``; for others (main, or made by the C API) the ``Interpreter`` is
  a view (``id``, ``whence``, ``is_running()``, ``close()``).
* 3.12 does not record how an interpreter was made: ``whence`` is "runtime init" for the
  main interpreter, "_interpreters module" for those made here, else "unknown".
* A queue is known to an interpreter once the queue object has reached it (created there
  or passed to it): ``Queue(id)`` elsewhere raises QueueNotFoundError; the unbound-item
  rule applies when an item is got, so ``qsize()`` counts items ``UNBOUND_REMOVE`` skips.
* ``Interpreter`` also works as a context manager (closes on exit), has ``isolated``,
  ``call_in_thread()`` gives the thread ``result``/``exception`` attributes, and
  ``ExecutionFailed`` carries ``remote_exception`` (the exception itself, when it pickles).

Limits
------
* Values are copied, never shared: a list passed to ``call()`` or ``prepare_main()`` is a
  new list in the target.  Callables are pickled by module and qualified name, except
  stateless functions (lambdas and local functions without a closure), which travel by
  value, as in 3.14, and run with the target's ``__main__`` as globals.  Closures cannot
  be sent.  Functions from an interactive session or ``python -c`` cannot be resolved in
  the target; put them in a module or script file.
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
* An interpreter cannot be closed while a thread runs in it (``InterpreterError``) unless
  that thread waits in memchannel; join the thread first.  Closing it again raises
  InterpreterNotFoundError, as in 3.14; interpreters still open at exit, or no longer
  referenced, are destroyed automatically.
* Tested on CPython 3.12.1 and 3.13.0.  On 3.14+ prefer the standard
  ``concurrent.interpreters``; this module keeps using the 3.13 private modules there.
"""

import marshal
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
    "create_queue", "Queue", "QueueEmpty", "QueueFull",
]

from . import _atexit, _crossinterp, _worker  # noqa: E402  (after the version check)
from ._queues import (  # noqa: E402  (3.14's concurrent.interpreters queue names)
    UNBOUND,
    UNBOUND_ERROR,
    UNBOUND_REMOVE,
    ItemInterpreterDestroyed,
    Queue,
    QueueEmpty,
    QueueError,
    QueueFull,
    QueueNotFoundError,
)
from ._queues import create as create_queue  # noqa: E402



# ---------------------------------------------------------------------------------------
# Exceptions

if sys.version_info >= (3, 13):
    # The classes code written for 3.14's concurrent.interpreters catches: the low-level
    # module's, which 3.14 re-exports.
    from _interpreters import InterpreterError, InterpreterNotFoundError, NotShareableError
else:
    class InterpreterError(Exception):
        """A subinterpreter could not be created, closed or run (3.14's name)."""

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
        # excinfo may also be 3.14's (or the low-level module's) snapshot: .type, .msg.
        type_name = getattr(getattr(excinfo, "type", None), "__name__", None) or "Exception"
        summary = f"{type_name}: {excinfo.msg}" if excinfo.msg else type_name
        super().__init__(summary)
        self.excinfo = excinfo
        self.remote_exception = remote_exception

    def __str__(self):
        formatted = (getattr(self.excinfo, "formatted", None)
                     or getattr(self.excinfo, "errdisplay", None) or "")
        return f"{self.args[0]}\n\nUncaught in the interpreter:\n\n{formatted.rstrip()}"

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

    current_id = staticmethod(_worker.current_id)  # one implementation for both sides

    _WHENCE = {0: "unknown", 1: "runtime init", 2: "legacy C-API", 3: "C-API",
               4: "cross-interpreter C-API", 5: "_interpreters module"}

    def whence(self, interp_id):
        """Where interpreter ``interp_id`` was created, as 3.14 names it; ValueError for a
        negative id, InterpreterNotFoundError for one that does not exist."""
        return self._WHENCE.get(self._interpreters.whence(interp_id), "unknown")

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

    current_id = staticmethod(_worker.current_id)  # one implementation for both sides

    def whence(self, interp_id):
        """As _Backend313.whence; 3.12 records only which interpreter is the main one."""
        if interp_id < 0:
            raise ValueError(f"interpreter ID must be a non-negative int, got {interp_id}")
        if interp_id not in self.list_ids():
            raise InterpreterNotFoundError(f"unrecognized interpreter ID {interp_id}")
        return "runtime init" if interp_id == self.main_id() else "unknown"

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
# Caller side: the public API

_registry_lock = threading.Lock()
# id -> Interpreter created here.  Weak: dropping the last reference closes it.
_owned_interpreters = weakref.WeakValueDictionary()
# id -> Interpreter for the others (views), so that Interpreter(id) is Interpreter(id).
_views = weakref.WeakValueDictionary()


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


_atexit.register("stop", _cancel_on_keyboard_interrupt)


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
    _crossinterp.warm_argument_parsers()
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
    _crossinterp.refuse_current_frames()
    main_name, main_path = _crossinterp.remember_main()
    handle = _backend.create(isolated)
    interp = Interpreter._new_owned(handle, isolated)
    try:
        bootstrap = marshal.dumps((
            [entry for entry in sys.path if isinstance(entry, str)],
            [arg for arg in getattr(sys, "argv", []) if isinstance(arg, str)],
            main_name,
            main_path,
        ))
        interp._request("bootstrap", bootstrap, script=_worker.BOOTSTRAP_SCRIPT,
                        extra_shared={_worker.CODE_KEY: _worker.shipped_code()})
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

    def __new__(cls, id, /):
        # As 3.14: an int id of an existing interpreter, one object per interpreter.
        if not isinstance(id, int):
            raise TypeError(f"id must be an int, got {id!r}")
        interp_id = int(id)
        with _registry_lock:
            known = _owned_interpreters.get(interp_id) or _views.get(interp_id)
        if known is not None:
            return known
        whence = _backend.whence(interp_id)  # ValueError / InterpreterNotFoundError
        view = super().__new__(cls)
        view._id = interp_id
        view._whence = whence
        view._handle = None
        view._isolated = None
        view._closed = False
        view._finalizer = None
        view._request_lock = None
        view._closing = False
        with _registry_lock:
            return _views.setdefault(interp_id, view)

    @classmethod
    def _new_owned(cls, handle, isolated):
        interp = super().__new__(cls)
        interp._id = int(handle)
        interp._whence = "_interpreters module"  # 3.14's name for "made by create()"
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
    def whence(self):
        """Where the interpreter was created, with 3.14's names: "_interpreters module"
        (by ``create()``), "runtime init" (the main interpreter), "unknown", ..."""
        return self._whence

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
        if not self._closed:
            self.close()

    # -- state --------------------------------------------------------------------------

    def is_running(self):
        """Whether some thread is running code in this interpreter right now."""
        self._check_open()
        return _backend.is_running(self._handle if self._handle is not None else self._id)

    def close(self):
        """Destroy the interpreter.  As in 3.14, closing it again raises
        InterpreterNotFoundError, and the main or current interpreter cannot be closed
        (InterpreterError).

        If a thread is running in it, every memchannel call it is blocked in (``recv()``,
        ``send()``, ``Queue.get()``, ...) raises ``memchannel.WaitCancelled`` there, and
        close() waits up to 2 s for the running code to end.  Raises InterpreterError if
        it is still running then (code that is not waiting in memchannel cannot be
        interrupted).  An interpreter not made by ``create()`` is destroyed if it is idle.
        """
        if self._handle is None:
            _backend.destroy(self._id)  # a view: InterpreterError if main, current, running
            self._closed = True
            return
        self._check_open()
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
            self._check_open()  # closed by another thread meanwhile
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
        if not namespace:
            raise ValueError("prepare_main(): no names to bind")  # as 3.14
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
            return _crossinterp.loads(_crossinterp.CallerSideUnpickler, reply)
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
            return _crossinterp.dumps(obj)
        except Exception as exc:
            raise NotShareableError(
                f"{what}: cannot be sent to {self!r}: {type(exc).__name__}: {exc}") from exc

    def _request(self, operation, request, *, script=None, extra_shared=None):
        """Run one worker operation in the interpreter and return its reply payload."""
        shared = {_worker.REQUEST_KEY: request}
        if extra_shared:
            shared.update(extra_shared)
        # As in 3.14: a busy interpreter is an error, not something to wait for.
        if not self._request_lock.acquire(blocking=False):
            self._check_open()
            raise InterpreterError(f"interpreter {self._id} is already running")
        try:
            self._check_open()
            reply_channel = _backend.create_channel()
            try:
                shared[_worker.REPLY_KEY] = reply_channel
                run_error = _backend.run(self._handle, script or _worker.request_script(operation),
                                         shared)
                reply = _backend.receive(reply_channel)
            finally:
                _backend.destroy_channel(reply_channel)
        finally:
            self._request_lock.release()
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
                remote_exception = _crossinterp.loads(_crossinterp.CallerSideUnpickler, pickled)
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
