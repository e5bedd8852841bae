"""The worker side of memchannel.interpreters: what runs inside an interpreter made by
``create()`` to serve the caller's requests.

``create()`` runs ``BOOTSTRAP_SCRIPT`` in the new interpreter with ``shipped_code()`` bound
in its ``__main__``: the compiled code of this file and of memchannel/_crossinterp.py (the
pickling both sides share), and nothing else.  The script turns them into the private
modules ``_memchannel_crossinterp`` and ``_memchannel_interpreters_worker`` (never
"memchannel...": importing the package would load the C extension, which the worker
needs none of) and serves the first request, "bootstrap".

Every request after that is the one-line script of ``request_script()``: the caller binds
the request bytes under ``REQUEST_KEY`` and a low-level reply channel under ``REPLY_KEY``
in the target's ``__main__``; ``serve()`` pops both, does the work, catches *every*
exception and sends exactly one reply (marshal bytes: ``("ok", payload)`` or
``("error", *crossinterp.describe_exception(...))``) before the script returns.  The
caller receives it after the script has returned, so the 3.13 send must not wait for the
receiver (``blocking=False``).

It imports only the standard library and the shipped copy of _crossinterp.
"""

import marshal
import sys

try:  # in an interpreter made by create(): the copy shipped with this module
    import _memchannel_crossinterp as crossinterp
except ImportError:  # in the caller, which only reads the constants and the scripts
    from . import _crossinterp as crossinterp

MODULE_NAME = "_memchannel_interpreters_worker"

# Globals bound in the target's __main__ for one request; serve() pops them at once.
REQUEST_KEY = "__memchannel_request__"
REPLY_KEY = "__memchannel_reply_channel__"
CODE_KEY = "__memchannel_worker_code__"

try:  # CPython 3.13
    import _interpchannels as _lowlevel_channels
    import _interpreters as _lowlevel_interpreters

    def _send_reply(channel, data):
        _lowlevel_channels.send(channel, data, blocking=False)

    def current_id():
        """The id of the interpreter running the calling thread."""
        return int(_lowlevel_interpreters.get_current()[0])

    def interpreter_exists(interp_id):
        """Whether interpreter ``interp_id`` exists (ids are never reused)."""
        try:
            _lowlevel_interpreters.whence(interp_id)
        except _lowlevel_interpreters.InterpreterNotFoundError:
            return False
        return True
except ImportError:  # CPython 3.12
    import _xxinterpchannels as _lowlevel_channels
    import _xxsubinterpreters as _lowlevel_interpreters

    def _send_reply(channel, data):
        _lowlevel_channels.send(channel, data)

    def current_id():
        """The id of the interpreter running the calling thread."""
        return int(_lowlevel_interpreters.get_current())

    def interpreter_exists(interp_id):
        """Whether interpreter ``interp_id`` exists (ids are never reused)."""
        try:
            _lowlevel_interpreters.is_running(interp_id)
        except RuntimeError:
            return False
        return True


def _where():
    return f"interpreter {current_id()}"


def _bootstrap(request):
    """The first request in a new interpreter: the caller's sys.path, sys.argv and main
    module (see interpreters.create())."""
    path, argv, main_name, main_path = marshal.loads(request)
    sys.path[:] = path
    sys.argv = argv  # a script imported again by load_callers_main may read it
    crossinterp.set_callers_main(main_name, main_path)
    return None


def _exec(request):
    kind, code = marshal.loads(request)
    if kind == "source":
        code = compile(code, "<string>", "exec")
    exec(code, sys.modules["__main__"].__dict__)
    return None


def _unpickle_request(request, what, contents):
    import pickle
    try:
        return crossinterp.loads(crossinterp.TargetSideUnpickler, request)
    except crossinterp.ImportFailure as failure:
        raise crossinterp.import_error(failure, f"{what} in {_where()}") from failure.error
    except Exception as exc:
        raise pickle.UnpicklingError(
            f"{what}: could not unpickle {contents} here: {exc}") from exc


def _prepare_main(request):
    namespace = _unpickle_request(request, "prepare_main()", "the values")
    sys.modules["__main__"].__dict__.update(namespace)
    return None


def _call(request):
    import pickle
    function, args, kwargs = _unpickle_request(
        request, "call()", "the callable or its arguments")
    result = function(*args, **kwargs)
    try:
        return pickle.dumps(result, protocol=crossinterp.PICKLE_PROTOCOL)
    except Exception as exc:
        raise pickle.PicklingError(
            f"call(): the result of {function!r} ({type(result).__name__}) "
            f"could not be pickled: {exc}") from exc


_OPERATIONS = {
    "bootstrap": _bootstrap,
    "exec": _exec,
    "prepare_main": _prepare_main,
    "call": _call,
}


def serve(operation):
    """Entry point of every request script: do one operation, send exactly one reply."""
    main_namespace = sys.modules["__main__"].__dict__
    request = main_namespace.pop(REQUEST_KEY)
    reply_channel = main_namespace.pop(REPLY_KEY)
    try:
        reply = ("ok", _OPERATIONS[operation](request))
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: report, never exit
        reply = ("error",) + crossinterp.describe_exception(exc, hide=globals())
    _send_reply(reply_channel, marshal.dumps(reply))


def request_script(operation):
    """The script that runs one request (one expression statement: binds no name in the
    target's ``__main__``)."""
    return f"__import__('sys').modules[{MODULE_NAME!r}].serve({operation!r})"


# Run once in a new interpreter: turn the shipped code into the two modules, then serve
# the bootstrap request like any other.
BOOTSTRAP_SCRIPT = f"""\
def __memchannel_bootstrap__():
    import marshal, sys, types
    main_namespace = sys.modules['__main__'].__dict__
    for name, code in marshal.loads(main_namespace.pop({CODE_KEY!r})):
        module = types.ModuleType(name)
        module.__file__ = code.co_filename
        sys.modules[name] = module
        exec(code, module.__dict__)
    sys.modules[{MODULE_NAME!r}].serve('bootstrap')
__memchannel_bootstrap__()
del __memchannel_bootstrap__
"""

_shipped_code = None


def _compiled(module):
    spec = getattr(module, "__spec__", None)
    source = None
    if spec is not None and spec.loader is not None and hasattr(spec.loader, "get_source"):
        source = spec.loader.get_source(spec.name)
    if source is None:
        with open(module.__file__, encoding="utf-8") as source_file:
            source = source_file.read()
    return compile(source, module.__file__, "exec")


def shipped_code():
    """Marshal bytes of ((name, code), ...) for BOOTSTRAP_SCRIPT: _crossinterp's code, then
    this file's.  Compiled once per process."""
    global _shipped_code
    if _shipped_code is None:
        _shipped_code = marshal.dumps((
            (crossinterp.SHIPPED_NAME, _compiled(crossinterp)),
            (MODULE_NAME, _compiled(sys.modules[__name__])),
        ))
    return _shipped_code
