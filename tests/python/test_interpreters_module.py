"""memchannel.interpreters: subinterpreters with the 3.14 ``concurrent.interpreters`` API
on CPython 3.12 and 3.13.

The module-level functions and classes below are what the tests pass to ``call()``:
subinterpreters import this module by name to find them, just as they would import any
user module.
"""

import gc
import math
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from memchannel import interpreters


# --- functions and classes called inside subinterpreters ------------------------------

counter = 0


def bump_counter():
    global counter
    counter += 1
    return counter


def read_main_global(name):
    import __main__
    return getattr(__main__, name)


def set_marker_in_main():
    # Run by exec() with __main__ as globals, so "global" means the interpreter's __main__.
    global marker
    marker = "set by a function passed to exec()"


def needs_an_argument(value):
    return value


def combine(number, data, *, scale=1, label="x"):
    return {"label": label, "number": number * scale, "data": data * scale,
            "types": (type(number).__name__, type(data).__name__)}


class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def __repr__(self):
        return f"Point({self.x}, {self.y})"


def scale_point(point, factor):
    return Point(point.x * factor, point.y * factor)


class Handle:
    """Pickles into a token and re-attaches on the other side, as memchannel.Channel does;
    remembers which interpreter did the attaching."""

    def __init__(self, token, attached_in):
        self.token = token
        self.attached_in = attached_in

    def __reduce__(self):
        return (attach_handle, (self.token,))


def attach_handle(token):
    return Handle(token, interpreters.get_current().id)


def where_attached(handle):
    return handle.token, handle.attached_in


def identity(value):
    return value


class CustomError(Exception):
    pass


def fail_with(message):
    raise CustomError(message)


class NotUnpicklableError(Exception):
    def __init__(self, first, second):
        super().__init__(f"{first}-{second}")  # args hold one value: unpickling fails


def fail_unpicklably():
    raise NotUnpicklableError("a", "b")


def count_primes_below(limit):
    """Deliberately slow pure-Python CPU work."""
    count = 0
    for candidate in range(2, limit):
        if all(candidate % divisor for divisor in range(2, math.isqrt(candidate) + 1)):
            count += 1
    return count


def cpu_work(limit):
    return interpreters.get_current().id, count_primes_below(limit)


def current_sys_path():
    return list(sys.path)


def wait_on_pipe(started_fd, release_fd):
    os.write(started_fd, b"s")
    return os.read(release_fd, 1)


# --- creation, listing, closing -------------------------------------------------------

def test_create_list_all_close():
    interp = interpreters.create()
    try:
        assert interp.isolated is True
        assert interp in interpreters.list_all()
        assert interpreters.get_main() in interpreters.list_all()
        assert interp != interpreters.get_main()
        assert interpreters.get_current() == interpreters.get_main()
        assert interpreters.Interpreter(interp.id) is interp
        assert repr(interp) == f"Interpreter(id={interp.id}, isolated=True)"
        assert interp.is_running() is False
    finally:
        interp.close()
    assert interp.id not in [other.id for other in interpreters.list_all()]
    assert "closed" in repr(interp)


def test_legacy_interpreter_runs_code():
    with interpreters.create(isolated=False) as interp:
        assert interp.isolated is False
        assert interp.call(math.factorial, 10) == 3628800


def test_context_manager_closes():
    with interpreters.create() as interp:
        interp_id = interp.id
        assert interp_id in [other.id for other in interpreters.list_all()]
    assert interp_id not in [other.id for other in interpreters.list_all()]


def test_closing_twice_raises_as_in_3_14_but_the_context_manager_does_not():
    interp = interpreters.create()
    interp.close()
    with pytest.raises(interpreters.InterpreterNotFoundError, match="has been closed"):
        interp.close()
    with interp:
        pass


def test_using_a_closed_interpreter_raises_a_clear_error():
    interp = interpreters.create()
    interp.close()
    attempts = [
        lambda: interp.exec("x = 1"),
        lambda: interp.call(math.factorial, 3),
        lambda: interp.prepare_main(x=1),
        lambda: interp.call_in_thread(math.factorial, 3),
        lambda: interp.is_running(),
    ]
    for attempt in attempts:
        with pytest.raises(interpreters.InterpreterNotFoundError, match="has been closed"):
            attempt()
    assert issubclass(interpreters.InterpreterNotFoundError, interpreters.InterpreterError)


def test_dropped_interpreter_is_destroyed():
    interp = interpreters.create()
    interp_id = interp.id
    del interp
    gc.collect()
    assert interp_id not in [other.id for other in interpreters.list_all()]


def test_main_interpreter_view_cannot_run_code_or_close():
    main = interpreters.get_main()
    assert repr(main) == f"Interpreter(id={main.id})"
    with pytest.raises(interpreters.InterpreterError, match="not made by"):
        main.exec("x = 1")
    with pytest.raises(interpreters.InterpreterError, match="cannot destroy"):
        main.close()  # as in 3.14: the main (here also the current) interpreter stays


def test_close_while_a_thread_runs_inside_raises():
    started_read, started_write = os.pipe()
    release_read, release_write = os.pipe()
    try:
        with interpreters.create() as interp:
            thread = interp.call_in_thread(wait_on_pipe, started_write, release_read)
            assert os.read(started_read, 1) == b"s"  # the call is inside the interpreter
            assert interp.is_running()
            with pytest.raises(interpreters.InterpreterError, match="running"):
                interp.close()
            os.write(release_write, b"r")
            thread.join()
            assert thread.exception is None
            assert thread.result == b"r"
    finally:
        for fd in (started_read, started_write, release_read, release_write):
            os.close(fd)


# --- exec and prepare_main ------------------------------------------------------------

def test_exec_and_prepare_main_share_simple_values():
    values = {"an_int": 7, "a_str": "text", "some_bytes": b"\x00\xff", "a_float": 2.5,
              "a_bool": True, "nothing": None, "a_tuple": (1, "two", (b"3", None))}
    with interpreters.create() as interp:
        interp.prepare_main(values, extra=1)
        interp.exec("total = an_int + extra\nkinds = tuple(type(v).__name__ for v in "
                    "(an_int, a_str, some_bytes, a_float, a_bool, nothing, a_tuple))")
        for name, value in values.items():
            assert interp.call(read_main_global, name) == value
        assert interp.call(read_main_global, "total") == 8
        assert interp.call(read_main_global, "kinds") == (
            "int", "str", "bytes", "float", "bool", "NoneType", "tuple")


def test_exec_of_a_function_runs_its_body_in_main():
    with interpreters.create() as interp:
        interp.exec(set_marker_in_main)
        assert interp.call(read_main_global, "marker") == "set by a function passed to exec()"
        with pytest.raises(ValueError, match="no arguments"):
            interp.exec(needs_an_argument)
        captured = 1
        with pytest.raises(ValueError, match="closure"):
            interp.exec(lambda: captured)


def test_exec_failure_reports_remote_type_message_and_traceback():
    with interpreters.create() as interp:
        source = textwrap.dedent("""
            def failing_helper():
                raise ValueError("bad value 42")
            failing_helper()
        """)
        with pytest.raises(interpreters.ExecutionFailed) as caught:
            interp.exec(source)
        failure = caught.value
        assert failure.excinfo.type_name == "ValueError"
        assert failure.excinfo.msg == "bad value 42"
        assert failure.excinfo.formatted.startswith("Traceback (most recent call last):")
        assert "failing_helper" in failure.excinfo.formatted
        assert "_serve" not in failure.excinfo.formatted  # the module's own frames are hidden
        assert "ValueError: bad value 42" in str(failure)
        assert isinstance(failure.remote_exception, ValueError)
        assert failure.remote_exception.args == ("bad value 42",)
        # The interpreter survives the failure.
        interp.exec("after_failure = True")
        assert interp.call(read_main_global, "after_failure") is True


def test_system_exit_in_an_interpreter_is_reported_not_obeyed():
    with interpreters.create() as interp:
        with pytest.raises(interpreters.ExecutionFailed) as caught:
            interp.exec("raise SystemExit(3)")
        assert caught.value.excinfo.type_name == "SystemExit"
        assert interp.call(math.factorial, 4) == 24


# --- call -----------------------------------------------------------------------------

def test_call_with_args_kwargs_and_return_values():
    with interpreters.create() as interp:
        assert interp.call(math.factorial, 20) == math.factorial(20)
        assert interp.call(divmod, 17, 5) == (3, 2)
        assert interp.call(combine, 3, b"ab", scale=2, label="L") == {
            "label": "L", "number": 6, "data": b"abab", "types": ("int", "bytes")}
        assert interp.call(identity, {"nested": [1, {2: b"3"}]}) == {"nested": [1, {2: b"3"}]}
        assert interp.call(scale_point, Point(1, -2), 3) == Point(3, -6)


def test_call_runs_functions_of_this_module_in_the_interpreter():
    with interpreters.create() as interp:
        assert interp.call(where_attached, Handle("token", None)) == ("token", interp.id)


def test_objects_with_reduce_reattach_on_each_side():
    main_id = interpreters.get_main().id
    with interpreters.create() as interp:
        returned = interp.call(identity, Handle("channel-handle", main_id))
        assert isinstance(returned, Handle)
        assert returned.token == "channel-handle"
        assert returned.attached_in == main_id  # re-attached here on the way back


def test_call_failure_surfaces_as_execution_failed():
    with interpreters.create() as interp:
        with pytest.raises(interpreters.ExecutionFailed, match="CustomError: it broke") as caught:
            interp.call(fail_with, "it broke")
        failure = caught.value
        assert failure.excinfo.type_name == "CustomError"
        assert failure.excinfo.type_module == __name__
        assert failure.excinfo.msg == "it broke"
        assert "in fail_with" in failure.excinfo.formatted
        assert isinstance(failure.remote_exception, CustomError)

        with pytest.raises(interpreters.ExecutionFailed) as caught:
            interp.call(fail_unpicklably)
        assert caught.value.excinfo.type_name == "NotUnpicklableError"
        assert caught.value.excinfo.msg == "a-b"
        assert caught.value.remote_exception is None


def test_unpicklable_argument_raises_not_shareable():
    with interpreters.create() as interp:
        with pytest.raises(interpreters.NotShareableError):
            interp.call(identity, threading.Lock())
        captured = 1
        with pytest.raises(interpreters.NotShareableError):
            interp.call(lambda: captured)  # a closure: not stateless
        assert interp.call(identity, 5) == 5  # nothing was left half-done


def test_stateless_functions_and_lambdas_are_sent_by_value_as_in_3_14():
    def local_function(x, scale=3):
        return x * scale

    with interpreters.create() as interp:
        interp.exec("offset = 100")
        assert interp.call(lambda: 1) == 1
        assert interp.call(local_function, 2) == 6
        # The function runs with the target's __main__ as its globals.
        assert interp.call(lambda: offset + 1) == 101  # noqa: F821 (defined over there)


def test_unpicklable_result_is_reported():
    with interpreters.create() as interp:
        with pytest.raises(interpreters.ExecutionFailed, match="could not be pickled"):
            interp.call(threading.Lock)


def test_a_new_interpreter_gets_only_the_worker_and_its_pickling():
    # create() ships the code of memchannel/_worker.py and memchannel/_crossinterp.py, not
    # of the package: the worker runs without memchannel (nor its C extension) imported.
    with interpreters.create() as interp:
        interp.exec(textwrap.dedent("""
            import sys
            loaded = sorted(name for name in sys.modules if "memchannel" in name)
            assert loaded == ["_memchannel_crossinterp", "_memchannel_interpreters_worker"], loaded
            worker = sys.modules["_memchannel_interpreters_worker"]
            assert worker.__file__.endswith("_worker.py"), worker.__file__
            assert sys.modules["_memchannel_crossinterp"].__file__.endswith("_crossinterp.py")
        """))


def test_sys_path_matches_the_caller():
    with interpreters.create() as interp:
        assert interp.call(current_sys_path) == [p for p in sys.path if isinstance(p, str)]


def test_a_callable_the_interpreter_cannot_import_gives_an_error_naming_its_module(tmp_path):
    module_name = f"made_after_create_{os.getpid()}"
    with interpreters.create() as interp:  # its sys.path is today's
        (tmp_path / f"{module_name}.py").write_text("def triple(x):\n    return 3 * x\n")
        sys.path.insert(0, str(tmp_path))
        try:
            module = __import__(module_name)
            with pytest.raises(interpreters.ExecutionFailed) as caught:
                interp.call(module.triple, 2)
        finally:
            sys.path.remove(str(tmp_path))
            sys.modules.pop(module_name, None)
    assert caught.value.excinfo.type_name == "ModuleNotFoundError"
    remote = caught.value.remote_exception
    assert isinstance(remote, ModuleNotFoundError) and remote.name == module_name
    assert f"could not import 'triple' from module {module_name!r}" in str(remote)
    assert f"interpreter {interp.id}" in str(remote)


def test_module_globals_are_isolated_between_interpreters():
    global counter
    counter = 0
    with interpreters.create() as first, interpreters.create() as second:
        assert [first.call(bump_counter) for _ in range(3)] == [1, 2, 3]
        assert second.call(bump_counter) == 1
        assert first.call(bump_counter) == 4
    assert counter == 0


def test_call_in_thread_four_interpreters_in_four_threads():
    limits = [20_000, 21_000, 22_000, 23_000]
    interps = [interpreters.create() for _ in limits]
    try:
        threads = [interp.call_in_thread(cpu_work, limit)
                   for interp, limit in zip(interps, limits)]
        for thread in threads:
            thread.join()
        for interp, limit, thread in zip(interps, limits, threads):
            assert isinstance(thread, threading.Thread)
            assert thread.exception is None
            assert thread.result == (interp.id, count_primes_below(limit))
    finally:
        for interp in interps:
            interp.close()


def test_call_in_thread_keeps_and_reports_the_failure(monkeypatch):
    reported = []
    monkeypatch.setattr(threading, "excepthook", reported.append)
    with interpreters.create() as interp:
        thread = interp.call_in_thread(fail_with, "in a thread")
        thread.join()
    assert isinstance(thread.exception, interpreters.ExecutionFailed)
    assert thread.exception.excinfo.type_name == "CustomError"
    assert thread.result is None
    assert [report.exc_value for report in reported] == [thread.exception]


def test_a_busy_interpreter_refuses_a_second_thread_as_in_3_14(tmp_path):
    started_r, started_w = os.pipe()
    release_r, release_w = os.pipe()
    try:
        with interpreters.create() as interp:
            busy = interp.call_in_thread(wait_on_pipe, started_w, release_r)
            assert os.read(started_r, 1) == b"s"
            for attempt in (lambda: interp.exec("x = 1"), lambda: interp.prepare_main(x=1),
                            lambda: interp.call(bump_counter)):
                with pytest.raises(interpreters.InterpreterError, match="already running"):
                    attempt()
            os.write(release_w, b"r")
            busy.join()
            assert busy.result == b"r"
            assert interp.call(bump_counter) == 1  # idle again: runs
    finally:
        for fd in (started_r, started_w, release_r, release_w):
            os.close(fd)


def test_threads_sharing_one_interpreter_one_after_the_other():
    with interpreters.create() as interp:
        for expected in range(1, 9):
            thread = interp.call_in_thread(bump_counter)
            thread.join()
            assert thread.result == expected


# --- functions defined in the caller's __main__ ---------------------------------------

MAIN_SCRIPT = '''
from memchannel import interpreters

print("top level ran as", __name__)

class Box:
    def __init__(self, value):
        self.value = value

def unbox_twice(box):
    return Box(box.value * 2)

if __name__ == "__main__":
    with interpreters.create() as interp:
        result = interp.call(unbox_twice, Box(21))
        print("result", type(result).__module__, type(result).__name__, result.value)
'''


def run_caller_script(tmp_path, *arguments):
    (tmp_path / "caller_script.py").write_text(MAIN_SCRIPT)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(interpreters.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    completed = subprocess.run([sys.executable, *arguments], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.splitlines()


EXPECTED_MAIN_SCRIPT_OUTPUT = [
    "top level ran as __main__",
    "top level ran as __memchannel_main__",  # imported again in the subinterpreter
    "result __main__ Box 42",                 # its class maps back to this __main__
]


def test_functions_of_the_callers_main_script_are_found(tmp_path):
    assert run_caller_script(tmp_path, "caller_script.py") == EXPECTED_MAIN_SCRIPT_OUTPUT


def test_functions_of_a_main_module_run_with_dash_m_are_found(tmp_path):
    assert run_caller_script(tmp_path, "-m", "caller_script") == EXPECTED_MAIN_SCRIPT_OUTPUT


AT_EXIT_SCRIPT = '''
import atexit
import sys
from memchannel import interpreters

def square(x):
    return x * x

def at_exit():
    print("main file at exit:", getattr(sys.modules["__main__"], "__file__", None))
    with interpreters.create() as interp:
        print("square at exit:", interp.call(square, 7))

if __name__ == "__main__":
    atexit.register(at_exit)
    print("script ran")
'''


def test_an_interpreter_created_after_the_script_ended_still_finds_its_functions(tmp_path):
    # CPython deletes __main__.__file__ once the script has run: create() uses where the
    # main script was seen earlier (at import of memchannel.interpreters, at each create).
    (tmp_path / "at_exit_script.py").write_text(AT_EXIT_SCRIPT)
    completed = subprocess.run([sys.executable, "at_exit_script.py"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    assert completed.stdout.splitlines() == [
        "script ran", "main file at exit: None", "square at exit: 49"]


def test_current_frames_raises_instead_of_aborting_the_process(tmp_path):
    # CPython builds other interpreters' frames with the caller's allocator: without the
    # refusal this script dies of "double free or corruption" (SIGABRT) after the second task.
    script = tmp_path / "frames.py"
    script.write_text(textwrap.dedent("""
        import sys
        from memchannel import InterpreterPoolExecutor

        def add_one(x):
            return x + 1

        if __name__ == "__main__":
            with InterpreterPoolExecutor(1) as pool:
                print(pool.submit(add_one, 1).result())
                for call in (sys._current_frames, sys._current_exceptions):
                    try:
                        call()
                    except RuntimeError as exc:
                        print("refused:", exc)
                print(pool.submit(add_one, 2).result())
            print("exit ok")
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "refused: sys._current_frames() is refused" in out
    assert "refused: sys._current_exceptions() is refused" in out
    assert out.splitlines()[-2:] == ["3", "exit ok"]
