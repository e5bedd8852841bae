"""memchannel.InterpreterPoolExecutor and ProcessPoolExecutor: shutdown, whole programs
(the main script's functions, the pools at interpreter exit) and the process pool on the
same engine (memchannel/_engine.py).  The tasks and fixtures are test_executor's: workers
import that module by name to find them.
"""

import gc
import os
import subprocess
import sys
import textwrap
import time
from concurrent import futures

import pytest

import memchannel as mc
from memchannel import executor as mc_executor
from test_executor import (  # noqa: F401  (no_leaked_interpreters is a fixture)
    CustomError,
    get_init_status,
    init_fail,
    interpreter_ids,
    mul,
    no_leaked_interpreters,
    raise_custom,
    sleep_then,
)

pytestmark = pytest.mark.timeout(120)


# --- shutdown ---------------------------------------------------------------------------

def test_submit_after_shutdown_raises(no_leaked_interpreters):
    executor = mc.InterpreterPoolExecutor(max_workers=1)
    executor.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(pow, 2, 5)


def test_shutdown_waits_for_every_submitted_task(no_leaked_interpreters):
    executor = mc.InterpreterPoolExecutor(max_workers=2)
    fs = [executor.submit(sleep_then, 0.01, i) for i in range(50)]
    executor.shutdown(wait=True)
    assert all(f.done() for f in fs)
    assert [f.result() for f in fs] == list(range(50))


def test_shutdown_race_with_queued_work(no_leaked_interpreters):
    executor = mc.InterpreterPoolExecutor(max_workers=2)
    executor.map(str, [2] * 3)
    executor.shutdown()


def test_shutdown_cancel_futures(no_leaked_interpreters):
    executor = mc.InterpreterPoolExecutor(max_workers=2)
    fs = [executor.submit(sleep_then, 0.1) for _ in range(50)]
    executor.shutdown(cancel_futures=True)
    cancelled = [f for f in fs if f.cancelled()]
    assert len(cancelled) > 20
    others = [f for f in fs if not f.cancelled()]
    assert others
    for f in others:
        assert f.done() and f.exception() is None
    with pytest.raises(futures.CancelledError):
        cancelled[0].result()


def test_shutdown_without_wait_returns_at_once(no_leaked_interpreters):
    executor = mc.InterpreterPoolExecutor(max_workers=1)
    executor.submit(int).result()  # the worker is up
    future = executor.submit(sleep_then, 1.0, "done")
    started = time.monotonic()
    executor.shutdown(wait=False)
    assert time.monotonic() - started < 0.5
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(int)
    assert future.result(timeout=60) == "done"
    engine = executor._engine
    for thread in list(engine.threads) + [w.handle for w in engine.workers.values()]:
        thread.join(60)
        assert not thread.is_alive()


def test_shutdown_twice_and_after_cancel_futures(no_leaked_interpreters):
    executor = mc.InterpreterPoolExecutor(max_workers=1)
    fs = [executor.submit(sleep_then, 0.05, i) for i in range(6)]
    executor.shutdown(wait=False, cancel_futures=True)
    executor.shutdown(wait=True, cancel_futures=True)
    executor.shutdown()
    assert all(f.done() for f in fs)
    ran = [f.result() for f in fs if not f.cancelled()]
    assert ran == list(range(len(ran)))  # the first ones were sent; the rest cancelled


def test_shutdown_without_wait_lets_the_workers_finish(no_leaked_interpreters):
    executor = mc.InterpreterPoolExecutor(max_workers=2)
    results = executor.map(abs, range(-5, 5))
    executor.shutdown(wait=False)
    assert list(results) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
    threads = list(executor._engine.threads) + [w.handle for w in
                                                executor._engine.workers.values()]
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()


def test_shutdown_after_a_cancelled_future_does_not_hang(no_leaked_interpreters):
    executor = mc.InterpreterPoolExecutor(max_workers=1)
    executor.submit(int).result()
    executor.submit(int).cancel()
    executor.shutdown(wait=True)


def test_context_manager_shuts_down(no_leaked_interpreters):
    before = interpreter_ids()
    with mc.InterpreterPoolExecutor(max_workers=2) as executor:
        assert list(executor.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
        assert interpreter_ids() - before
    assert interpreter_ids() == before
    with pytest.raises(RuntimeError):
        executor.submit(abs, 1)


def test_dropped_executor_finishes_its_work(no_leaked_interpreters):
    executor = mc.InterpreterPoolExecutor(max_workers=2)
    results = executor.map(abs, range(-5, 5))
    engine = executor._engine
    del executor
    gc.collect()
    assert list(results) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
    for thread in list(engine.threads) + [w.handle for w in engine.workers.values()]:
        thread.join(60)


# --- whole programs ---------------------------------------------------------------------

def run_script(tmp_path, source):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    completed = subprocess.run([sys.executable, str(script)], cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)
    return completed


def test_functions_of_the_main_script_run_in_the_pool(tmp_path):
    completed = run_script(tmp_path, """\
        import memchannel as mc

        def square(x):
            return x * x

        class Box:
            def __init__(self, value):
                self.value = value

        def boxed(x):
            return Box(x)

        if __name__ == "__main__":
            with mc.InterpreterPoolExecutor(2) as pool:
                print(list(pool.map(square, range(5))))
                box = pool.submit(boxed, 7).result()
                print(type(box).__module__, type(box).__name__, box.value)
        """)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == ["[0, 1, 4, 9, 16]", "__main__ Box 7"]


def test_initializer_and_exceptions_of_the_main_script(tmp_path):
    # CPython's test_init_with___main___global, plus an exception class of the script.
    completed = run_script(tmp_path, """\
        import memchannel as mc

        INITIALIZER_STATUS = "uninitialized"

        def init(x):
            global INITIALIZER_STATUS
            INITIALIZER_STATUS = x

        def get_init_status():
            return INITIALIZER_STATUS

        class ScriptError(Exception):
            pass

        def fail():
            raise ScriptError("from the script")

        if __name__ == "__main__":
            with mc.InterpreterPoolExecutor(initializer=init, initargs=("initialized",)) as pool:
                print(pool.submit(get_init_status).result())
                try:
                    pool.submit(fail).result()
                except ScriptError as exc:
                    print(type(exc).__module__, type(exc).__name__, exc)
            print(INITIALIZER_STATUS)
        """)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == [
        "initialized", "__main__ ScriptError from the script", "uninitialized"]


def test_main_script_functions_are_found_once_main_file_is_gone(tmp_path):
    # CPython deletes __main__.__file__ when the script has run; interpreters created
    # after that (at exit) still find the script, remembered earlier.
    completed = run_script(tmp_path, """\
        import sys
        import memchannel as mc

        def square(x):
            return x * x

        if __name__ == "__main__":
            pool = mc.InterpreterPoolExecutor(2)
            del sys.modules["__main__"].__file__  # as at exit
            print(pool.submit(square, 7).result())
            pool.shutdown()
        """)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["49"]


def test_submit_after_interpreter_shutdown_raises(tmp_path):
    completed = run_script(tmp_path, """\
        import atexit
        import memchannel as mc

        @atexit.register
        def run_last():
            try:
                pool.submit(id, None)
            except RuntimeError:
                print("runtime-error")
                raise

        if __name__ == "__main__":
            pool = mc.InterpreterPoolExecutor(5)
            pool.submit(id, 42).result()
        """)
    assert "RuntimeError: cannot schedule new futures" in completed.stderr
    assert completed.stdout.strip() == "runtime-error"


def test_shutdown_without_wait_and_with_cancel_futures_at_exit(tmp_path):
    completed = run_script(tmp_path, """\
        import time
        import memchannel as mc

        def sleep_and_print(seconds, message):
            time.sleep(seconds)
            print(message, flush=True)

        if __name__ == "__main__":
            pool = mc.InterpreterPoolExecutor()
            pool.submit(sleep_and_print, 0.1, "apple")
            pool.shutdown(wait=False, cancel_futures=True)
        """)
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    assert completed.stdout.strip() in ("apple", "")


def test_pool_left_running_at_exit_finishes_its_work(tmp_path):
    completed = run_script(tmp_path, """\
        import time
        import memchannel as mc

        def sleep_and_print(seconds, message):
            time.sleep(seconds)
            print(message, flush=True)

        if __name__ == "__main__":
            pool = mc.InterpreterPoolExecutor(3)
            pool.submit(sleep_and_print, 0.5, "apple")
        """)
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    assert completed.stdout.strip() == "apple"


def test_shutdown_without_wait_at_exit_does_not_hang(tmp_path):
    completed = run_script(tmp_path, """\
        import time
        import memchannel as mc

        def sleep_and_print(seconds, message):
            time.sleep(seconds)
            print(message, flush=True)

        if __name__ == "__main__":
            pool = mc.InterpreterPoolExecutor(max_workers=3)
            pool.submit(sleep_and_print, 0.5, "apple")
            pool.shutdown(wait=False)
        """)
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    assert completed.stdout.strip() == "apple"


# --- the process pool with the same engine ----------------------------------------------

def crash_process():
    os._exit(7)


def test_process_pool_runs_tasks_and_moves_arrays_out_of_band():
    np = pytest.importorskip("numpy")
    with mc_executor.ProcessPoolExecutor(max_workers=2) as pool:
        assert list(pool.map(mul, range(10), range(10), chunksize=3)) == [i * i for i in range(10)]
        arr = np.arange(1 << 16, dtype=np.float64)
        assert pool.submit(np.sum, arr).result() == arr.sum()
        with pytest.raises(CustomError) as info:
            pool.submit(raise_custom, 3).result()
        assert "raise_custom" in str(info.value.__cause__)


def test_process_pool_initializer_failure_breaks_the_pool():
    from concurrent.futures.process import BrokenProcessPool
    pool = mc_executor.ProcessPoolExecutor(max_workers=2, initializer=init_fail)
    try:
        with pytest.raises(BrokenProcessPool):
            pool.submit(get_init_status).result(timeout=60)
        with pytest.raises(BrokenProcessPool):
            pool.submit(get_init_status)
    finally:
        pool.shutdown(wait=True)


def test_process_pool_worker_death_breaks_the_pool():
    from concurrent.futures.process import BrokenProcessPool
    pool = mc_executor.ProcessPoolExecutor(max_workers=2)
    try:
        with pytest.raises(BrokenProcessPool, match="ended abruptly"):
            pool.submit(crash_process).result(timeout=60)
    finally:
        pool.shutdown(wait=True)


def test_make_executor_switches_kind_with_one_argument():
    for kind in mc_executor.EXECUTOR_KINDS:
        with mc_executor.make_executor(kind, 2) as pool:
            assert list(pool.map(mul, range(5), range(5))) == [0, 1, 4, 9, 16], kind
    with pytest.raises(ValueError, match="unknown executor kind"):
        mc_executor.make_executor("fibers")
