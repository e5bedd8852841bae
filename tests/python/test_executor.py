"""memchannel.InterpreterPoolExecutor: the behaviours CPython's test_concurrent_futures
checks for executors (submit, map, exceptions, shutdown, initializer, context manager,
max_workers), plus what is particular to isolated subinterpreters (arrays as memoryviews,
Buffers moved without a copy, no interpreter left behind), on CPython 3.12 and 3.13.

The module-level functions below are the tasks: worker interpreters import this module
by name to find them, so it imports nothing that cannot load in an isolated
subinterpreter (numpy is imported inside tests only).
"""

import gc
import logging
import os
import pickle
import sys
import threading
import time
import weakref
from concurrent import futures

import pytest

import memchannel as mc
from memchannel import executor as mc_executor
from memchannel import interpreters

pytestmark = pytest.mark.timeout(120)


# --- tasks (run in worker interpreters) -------------------------------------------------

def mul(x, y):
    return x * y


def capture(*args, **kwargs):
    return args, kwargs


def interpreter_id():
    return interpreters.get_current().id


def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return value


class MyObject:
    def my_method(self):
        pass


def make_dummy_object(_):
    return MyObject()


class CustomError(Exception):
    def __init__(self, message, code):
        super().__init__(message, code)
        self.code = code


def raise_custom(code):
    raise CustomError("custom failure", code)


class UnpicklableError(Exception):
    def __init__(self, first, second):
        super().__init__(f"{first}-{second}")  # args hold one value: unpickling fails


def raise_unpicklable():
    raise UnpicklableError("a", "b")


def exit_task():
    sys.exit(3)


def return_a_lock():
    return threading.Lock()


def describe_view(view):
    return type(view).__name__, view.format, view.shape, view.readonly, view.tolist()


def sum_buffer(buf):
    with memoryview(buf) as view:
        return type(buf).__name__, view.format, view.shape, sum(view)


def double_in_place(view):
    """Returns a new memoryview (results travel back out of band)."""
    import array
    out = array.array("d", (2 * x for x in view))
    return memoryview(out)


def wait_for_release(handle):
    channel = mc.Channel.attach(handle)
    channel.recv().release()
    return interpreters.get_current().id


def numpy_version():
    import numpy
    return numpy.__version__


def wait_and_raise(handle):
    wait_for_release(handle)
    raise Exception("this is an exception")


def get_current_name():
    return __name__


def raise_with_a_comment():
    raise RuntimeError(123)  # some comment


def raise_chained():
    try:
        {}["missing"]
    except KeyError as exc:
        raise ValueError("lookup failed") from exc


def raiser(exception, message="std"):
    raise exception(message)


def timeout_on_one(x):
    if x == 1:
        raise TimeoutError
    return x


class FalseyBoolException(Exception):
    def __bool__(self):
        return False


class FalseyLenException(Exception):
    def __len__(self):
        return 0


class FailsToUnpickle:
    """Pickles here; unpickling it in the worker raises (CPython gh-125864)."""

    def __init__(self, value):
        if value == 1:
            raise RuntimeError("gotcha")

    def __reduce__(self):
        return (self.__class__, (1,))

    def __call__(self):
        return "called"


INITIALIZER_STATUS = "uninitialized"


def init(value):
    global INITIALIZER_STATUS
    INITIALIZER_STATUS = value


def get_init_status():
    return INITIALIZER_STATUS


def init_fail():
    time.sleep(0.1)  # let some futures be scheduled
    raise ValueError("error in initializer")


# --- helpers ----------------------------------------------------------------------------

def interpreter_ids():
    return {interp.id for interp in interpreters.list_all()}


@pytest.fixture
def no_leaked_interpreters():
    before = interpreter_ids()
    yield
    gc.collect()
    assert interpreter_ids() == before


@pytest.fixture
def pool(no_leaked_interpreters):
    executor = mc.InterpreterPoolExecutor(max_workers=2)
    yield executor
    executor.shutdown(wait=True)


def worker_traceback(exc):
    """The worker's traceback text of a task's exception: as in 3.14, its ``__cause__`` is
    an ExecutionFailed whose ``excinfo.formatted`` holds it."""
    cause = exc.__cause__
    assert type(cause) is interpreters.ExecutionFailed, type(cause)
    return cause.excinfo.formatted


# --- submit -----------------------------------------------------------------------------

def test_submit_runs_in_another_interpreter(pool):
    assert pool.submit(pow, 2, 8).result() == 256
    assert pool.submit(interpreter_id).result() != interpreters.get_current().id


def test_submit_keyword_arguments(pool):
    assert pool.submit(mul, 2, y=8).result() == 16
    assert pool.submit(capture, 1, self=2, fn=3).result() == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        pool.submit(fn=capture, arg=1)
    with pytest.raises(TypeError):
        pool.submit(arg=1)


def test_idle_worker_is_reused(no_leaked_interpreters):
    before = interpreter_ids()
    executor = mc.InterpreterPoolExecutor()
    try:
        ids = {executor.submit(interpreter_id).result() for _ in range(3)}
        assert len(ids) == 1
        assert len(interpreter_ids() - before) == 1
    finally:
        executor.shutdown(wait=True)


def test_workers_are_started_up_to_max_workers_only(no_leaked_interpreters):
    before = interpreter_ids()
    blocker = mc.Channel(backend="heap")
    executor = mc.InterpreterPoolExecutor(max_workers=3)
    try:
        fs = [executor.submit(wait_for_release, blocker.handle) for _ in range(15)]
        time.sleep(0.5)
        assert len(interpreter_ids() - before) == 3
        for _ in fs:
            blocker.send(b"go")
        assert len({f.result(timeout=60) for f in fs}) == 3
    finally:
        executor.shutdown(wait=True)


def test_unpicklable_argument_fails_the_future_not_the_pool(pool):
    future = pool.submit(mul, threading.Lock(), 2)
    with pytest.raises(interpreters.NotShareableError, match="lock") as info:
        future.result()  # as in 3.14, caused by pickle's own error
    assert isinstance(info.value.__cause__, TypeError)
    assert pool.submit(mul, 3, 4).result() == 12


def test_stateless_functions_and_lambdas_are_sent_by_value_as_in_3_14(pool):
    # 3.14's InterpreterPoolExecutor sends a function without a closure by value: its code
    # runs in the worker with the worker's __main__ as globals.
    assert pool.submit(lambda: 1).result() == 1
    assert pool.submit(lambda a, b=2, *, c=0: a * b + c, 20, c=2).result() == 42
    assert list(pool.map(lambda v: v * v, range(5), chunksize=2)) == [0, 1, 4, 9, 16]

    def nested(n):
        import math  # globals are the worker's __main__: a nested function imports its own
        return math.factorial(n)

    assert pool.submit(nested, 5).result() == 120
    with pytest.raises(interpreters.NotShareableError, match="closure"):
        pool.submit(lambda: pool).result()  # refers to the closure cell: not stateless


def test_lambdas_are_refused_by_the_process_pool_as_by_the_stdlibs():
    with mc_executor.ProcessPoolExecutor(max_workers=1) as processes:
        with pytest.raises(pickle.PicklingError, match="cannot be sent to a worker"):
            processes.submit(lambda: 1).result()
        assert processes.submit(mul, 2, 3).result() == 6


def test_local_functions_classes_and_their_methods_cannot_be_sent(pool):
    spam = True

    def closure():
        return spam

    class Local:
        def run(self):
            return True

    for fn in (closure, Local, Local().run):
        with pytest.raises(interpreters.NotShareableError,
                           match="module and qualified name") as info:
            pool.submit(fn).result()
        assert fn.__qualname__ in str(info.value)
        assert isinstance(info.value.__cause__, pickle.PicklingError)  # saying what to do
    with pytest.raises(interpreters.NotShareableError, match="closure"):
        list(pool.map(closure, [1, 2], chunksize=2))
    assert pool.submit(mul, 2, 3).result() == 6  # the pool is unharmed


def test_bound_method_of_a_module_level_class_can_be_sent(pool):
    assert pool.submit(MyObject().my_method).result() is None


def test_function_runs_with_its_own_module_globals(pool):
    # CPython's test_submit_func_globals: the function's module is imported in the
    # worker under its own name, not run as the worker's __main__.
    assert pool.submit(get_current_name).result() == __name__ != "__main__"


def test_callable_that_fails_to_unpickle_in_the_worker_fails_its_future(pool):
    # CPython gh-125864: an error while unpickling in the worker must not hang.
    with pytest.raises(RuntimeError, match="gotcha") as info:
        pool.submit(FailsToUnpickle(0)).result(timeout=60)
    assert "gotcha" in str(info.value.__cause__)
    assert pool.submit(mul, 3, 4).result() == 12


def test_run_in_executor_of_an_asyncio_loop(pool):
    import asyncio

    async def main():
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, interpreter_id)

    assert asyncio.run(main()) != interpreters.get_current().id


def test_unpicklable_result_is_reported(pool):
    with pytest.raises(TypeError, match="lock"):
        pool.submit(return_a_lock).result()


def test_no_stale_references(pool):
    my_object = MyObject()
    collected = threading.Event()
    ref = weakref.ref(my_object, lambda obj: collected.set())
    pool.submit(my_object.my_method)  # the future is deliberately dropped
    del my_object
    for _ in range(100):
        gc.collect()
        if collected.wait(0.1):
            break
    assert ref() is None


# --- map --------------------------------------------------------------------------------

def test_map_keeps_order(pool):
    assert list(pool.map(pow, range(10), range(10))) == list(map(pow, range(10), range(10)))


@pytest.mark.parametrize("chunksize", [1, 2, 3, 7, 50])
def test_map_with_chunksize_keeps_order(pool, chunksize):
    got = list(pool.map(pow, range(40), range(40), chunksize=chunksize))
    assert got == list(map(pow, range(40), range(40)))


@pytest.mark.parametrize("chunksize", [40, 6])
def test_map_with_chunksize_and_several_iterables(pool, chunksize):
    got = list(pool.map(pow, range(40), range(40), chunksize=chunksize))
    assert got == list(map(pow, range(40), range(40)))


@pytest.mark.parametrize("chunksize", [0, -1])
def test_map_rejects_chunksize_below_one(pool, chunksize):
    with pytest.raises(ValueError, match="chunksize"):
        list(pool.map(pow, range(3), range(3), chunksize=chunksize))


def test_map_exception_arrives_at_its_position(pool):
    results = pool.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(results) == (0, 1)
    assert next(results) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_map_exception_with_chunksize(pool):
    # As ProcessPoolExecutor on 3.12 and 3.13: a chunk is one task, so the calls of a
    # chunk in which one raised give no results.
    results = pool.map(divmod, [5, 5, 5, 5], [2, 3, 0, 5], chunksize=2)
    assert next(results) == (2, 1)
    assert next(results) == (1, 2)
    with pytest.raises(ZeroDivisionError) as info:
        next(results)
    assert "ZeroDivisionError" in worker_traceback(info.value)


def test_map_timeout(pool):
    results = []
    iterator = pool.map(sleep_then, [0, 0, 3], timeout=1.5)
    with pytest.raises(futures.TimeoutError):
        for value in iterator:
            results.append(value)
    # A slow start of the first worker may eat into the timeout (CPython gh-110097).
    assert results in ([None, None], [None], [])
    # The remaining calls are cancelled: the iterator is exhausted.
    with pytest.raises(StopIteration):
        next(iterator)


@pytest.mark.parametrize("chunksize", [1, 2])
def test_map_timeout_raised_by_the_function_is_its_result(pool, chunksize):
    # A TimeoutError from the callable is not the map() timeout, with or without one.
    for timeout in (None, 60):
        results = pool.map(timeout_on_one, [0, 1, 2, 3], timeout=timeout, chunksize=chunksize)
        if chunksize == 1:
            assert next(results) == 0
        with pytest.raises(TimeoutError) as info:
            next(results)
        assert "timeout_on_one" in worker_traceback(info.value)


@pytest.mark.parametrize("chunksize", [1, 2])
def test_map_close(pool, chunksize):
    results = pool.map(divmod, [5, 5, 5, 5], [2, 3, 0, 5], chunksize=chunksize)
    assert next(results) == (2, 1)
    results.close()
    with pytest.raises(StopIteration):
        next(results)
    with pytest.raises(StopIteration):
        next(results)


def test_map_of_nothing(pool):
    assert list(pool.map(abs, [])) == []
    assert list(pool.map(abs, [], chunksize=4)) == []


def test_map_does_not_keep_results_alive(pool):
    for obj in pool.map(make_dummy_object, range(10)):
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert ref() is None


def test_wait_and_as_completed_work_with_the_futures(pool):
    fs = [pool.submit(sleep_then, 0.01 * i, i) for i in range(6)]
    fs.append(pool.submit(divmod, 1, 0))
    done, not_done = futures.wait(fs, timeout=60, return_when=futures.ALL_COMPLETED)
    assert not not_done and len(done) == 7
    assert sorted(f.result() for f in futures.as_completed(fs[:6])) == list(range(6))


# CPython's test_wait, with a memchannel channel for the event (threading.Event does not
# cross interpreters): a task waiting for it is released by sending it a message.

@pytest.fixture
def event():
    channel = mc.Channel(backend="heap")
    yield channel
    channel.close()


def test_wait_same_future_twice(pool):
    future = pool.submit(mul, 1, 2)
    done, not_done = futures.wait([future, future], return_when=futures.ALL_COMPLETED)
    assert (done, not_done) == ({future}, set())


def test_wait_first_completed(pool, event):
    future1 = pool.submit(mul, 21, 2)
    future2 = pool.submit(wait_for_release, event.handle)
    try:
        done, not_done = futures.wait([future1, future2], timeout=60,
                                      return_when=futures.FIRST_COMPLETED)
        assert (done, not_done) == ({future1}, {future2})
    finally:
        event.send(b"go")
    future2.result(timeout=60)


def test_wait_first_exception(pool, event):
    release_second = mc.Channel(backend="heap")
    future1 = pool.submit(mul, 2, 21)
    future2 = pool.submit(wait_and_raise, event.handle)
    future3 = pool.submit(wait_for_release, release_second.handle)

    def after_future1():
        future1.result()
        event.send(b"go")

    thread = threading.Thread(target=after_future1)
    thread.start()
    try:
        done, not_done = futures.wait([future1, future2, future3], timeout=60,
                                      return_when=futures.FIRST_EXCEPTION)
        assert (done, not_done) == ({future1, future2}, {future3})
        with pytest.raises(Exception, match="this is an exception"):
            future2.result()
    finally:
        thread.join()
        release_second.send(b"go")
    future3.result(timeout=60)
    release_second.close()


def test_wait_timeout(pool, event):
    future = pool.submit(wait_for_release, event.handle)
    try:
        done, not_done = futures.wait([future], timeout=0.05,
                                      return_when=futures.ALL_COMPLETED)
        assert (done, not_done) == (set(), {future})
    finally:
        event.send(b"go")
    future.result(timeout=60)


def test_as_completed_timeout(pool, event):
    quick = pool.submit(mul, 6, 7)
    slow = pool.submit(wait_for_release, event.handle)
    seen = []
    try:
        with pytest.raises(futures.TimeoutError, match=r"1 \(of 2\) futures unfinished"):
            for future in futures.as_completed([quick, slow], timeout=1):
                seen.append(future)
    finally:
        event.send(b"go")
    assert seen == [quick]
    slow.result(timeout=60)


# --- exceptions -------------------------------------------------------------------------

def test_exception_keeps_its_type_and_carries_the_worker_traceback(pool):
    with pytest.raises(CustomError) as info:
        pool.submit(raise_custom, 7).result()
    assert info.value.code == 7
    text = worker_traceback(info.value)
    assert "raise_custom" in text and 'raise CustomError("custom failure", code)' in text
    assert "CustomError: ('custom failure', 7)" in text
    assert "_worker_loop" not in text  # the executor's own frames are hidden


def test_remote_traceback_shows_the_source_line_and_reaches_excepthook(pool, capsys):
    # CPython's test_traceback for the process pool.
    with pytest.raises(Exception) as info:
        pool.submit(raise_with_a_comment).result()
    exc = info.value
    assert type(exc) is RuntimeError and exc.args == (123,)
    assert "raise RuntimeError(123)  # some comment" in worker_traceback(exc)
    sys.excepthook(type(exc), exc, exc.__traceback__)
    assert "raise RuntimeError(123)  # some comment" in capsys.readouterr().err


def test_chained_exception_keeps_the_whole_chain_in_the_worker_traceback(pool):
    with pytest.raises(ValueError, match="lookup failed") as info:
        pool.submit(raise_chained).result()
    text = worker_traceback(info.value)
    assert "KeyError: 'missing'" in text
    assert "The above exception was the direct cause of the following exception" in text
    assert text.index("KeyError") < text.index("ValueError: lookup failed")


def test_falsey_exceptions_are_not_swallowed(pool):
    # CPython gh-132063.
    with pytest.raises(FalseyBoolException, match="boolbool"):
        pool.submit(raiser, FalseyBoolException, "boolbool").result()
    with pytest.raises(FalseyLenException, match="lenlen"):
        pool.submit(raiser, FalseyLenException, "lenlen").result()


def test_exception_of_exactly_the_base_type(pool):
    # CPython's test_submit_exception_in_func (3.14 puts an ExecutionFailed in
    # __cause__, and so does this pool).
    with pytest.raises(Exception) as info:
        pool.submit(raiser, Exception, "spam").result()
    assert type(info.value) is Exception and str(info.value) == "spam"
    assert "Exception: spam" in worker_traceback(info.value)


def test_builtin_exception_type_is_kept(pool):
    with pytest.raises(ZeroDivisionError) as info:
        pool.submit(divmod, 1, 0).result()
    assert "ZeroDivisionError" in str(info.value.__cause__)


def test_exception_that_does_not_unpickle_becomes_remote_error(pool):
    with pytest.raises(mc_executor.RemoteError) as info:
        pool.submit(raise_unpicklable).result()
    assert info.value.type_name.endswith("UnpicklableError")
    assert "a-b" in str(info.value)
    assert "raise_unpicklable" in str(info.value.__cause__)


def test_system_exit_in_a_task_is_reported_and_the_worker_lives_on(pool):
    with pytest.raises(SystemExit):
        pool.submit(exit_task).result()
    assert pool.submit(mul, 6, 7).result() == 42


def test_a_module_the_worker_cannot_import_gives_an_error_naming_it(pool, tmp_path):
    pool.submit(pow, 1, 1).result()  # the worker starts with today's sys.path
    module_name = "late_module_%s" % os.getpid()
    (tmp_path / f"{module_name}.py").write_text("def triple(x):\n    return 3 * x\n")
    sys.path.insert(0, str(tmp_path))
    try:
        module = __import__(module_name)
        with pytest.raises(ModuleNotFoundError, match=module_name) as info:
            pool.submit(module.triple, 2).result()
        assert info.value.name == module_name
        assert "triple" in str(info.value)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module_name, None)


def test_numpy_in_a_task_gives_a_clear_import_error(pool):
    pytest.importorskip("numpy")
    with pytest.raises(ImportError) as info:
        pool.submit(numpy_version).result()
    assert "numpy" in str(info.value) or "numpy" in str(info.value.__cause__)


# --- arrays and buffers -----------------------------------------------------------------

def test_numpy_array_arrives_as_memoryview_with_format_and_shape(pool):
    np = pytest.importorskip("numpy")
    arr = np.arange(12, dtype=np.float64).reshape(3, 4)
    kind, fmt, shape, readonly, values = pool.submit(describe_view, arr).result()
    assert (kind, fmt, shape, readonly) == ("memoryview", "d", (3, 4), False)
    assert values == arr.tolist()
    readonly_arr = np.arange(4, dtype=np.int32)
    readonly_arr.flags.writeable = False
    assert pool.submit(describe_view, readonly_arr).result()[1:4] == ("i", (4,), True)


def test_memoryview_result_comes_back_as_memoryview(pool):
    import array
    src = memoryview(array.array("d", [1.0, 2.5, -3.0]))
    result = pool.submit(double_in_place, src).result()
    assert isinstance(result, memoryview)
    assert (result.format, result.tolist()) == ("d", [2.0, 5.0, -6.0])


def test_reserved_buffer_is_moved_to_the_worker_without_a_copy(pool):
    n = 1 << 20  # 8 MiB of float64
    buf = pool.reserve(shape=(n,), format="d")
    with memoryview(buf) as view:
        for i in range(0, n, 4096):
            view[i] = 1.0
    copied_before = pool.stats()["bytes_copied"]
    kind, fmt, shape, total = pool.submit(sum_buffer, buf).result()
    assert (kind, fmt, shape, total) == ("Buffer", "d", (n,), n // 4096)
    assert buf.released  # ownership moved to the worker
    assert pool.stats()["bytes_copied"] - copied_before < 4096  # only the small task message


def test_buffers_moved_from_many_threads_at_once_reach_the_right_tasks(pool):
    def submit_some(thread_index, out):
        for i in range(20):
            buf = pool.reserve(shape=(64,), format="d")
            with memoryview(buf) as view:
                view[0] = thread_index * 1000 + i
            out.append((thread_index * 1000 + i, pool.submit(sum_buffer, buf)))

    submitted = []
    threads = [threading.Thread(target=submit_some, args=(t, submitted)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(submitted) == 80
    for expected, future in submitted:
        assert future.result(timeout=60) == ("Buffer", "d", (64,), expected)


def test_buffer_still_viewed_cannot_be_moved(pool):
    buf = pool.reserve(16)
    view = memoryview(buf)
    with pytest.raises(BufferError, match="still viewed"):
        pool.submit(sum_buffer, buf).result()
    view.release()
    assert pool.submit(sum_buffer, buf).result()[0] == "Buffer"


# --- initializer ------------------------------------------------------------------------

def test_initializer_runs_in_every_worker(no_leaked_interpreters):
    executor = mc.InterpreterPoolExecutor(max_workers=2, initializer=init,
                                          initargs=("initialized",))
    try:
        fs = [executor.submit(get_init_status) for _ in range(4)]
        assert [f.result() for f in fs] == ["initialized"] * 4
    finally:
        executor.shutdown(wait=True)
    assert INITIALIZER_STATUS == "uninitialized"  # it ran in the workers, not here


def test_failing_initializer_breaks_the_pool(no_leaked_interpreters, caplog):
    executor = mc.InterpreterPoolExecutor(max_workers=2, initializer=init_fail)
    try:
        with caplog.at_level(logging.CRITICAL, logger="concurrent.futures"):
            try:
                future = executor.submit(get_init_status)
            except futures.BrokenExecutor:
                pass
            else:
                with pytest.raises(mc_executor.BrokenInterpreterPool) as info:
                    future.result(timeout=60)
                assert "error in initializer" in str(info.value.__cause__)
            deadline = time.monotonic() + 60
            while not executor._broken and time.monotonic() < deadline:
                time.sleep(0.01)
        assert executor._broken
        with pytest.raises(futures.BrokenExecutor):
            executor.submit(get_init_status)
        assert any("ValueError: error in initializer" in r.getMessage() for r in caplog.records)
    finally:
        executor.shutdown(wait=True)


def test_failing_initializer_gives_each_future_its_own_error(no_leaked_interpreters, caplog):
    # CPython's test_broken_process_pool_traceback: one shared exception would gather a
    # traceback entry per result() call.
    executor = mc.InterpreterPoolExecutor(max_workers=1, initializer=init_fail)
    try:
        with caplog.at_level(logging.CRITICAL, logger="concurrent.futures"):
            fs = [executor.submit(get_init_status) for _ in range(4)]
            errors = [f.exception(timeout=60) for f in fs]
        assert all(isinstance(e, mc_executor.BrokenInterpreterPool) for e in errors)
        assert len({id(e) for e in errors}) == len(errors)
        assert "initializer" in str(errors[0])
    finally:
        executor.shutdown(wait=True)


def test_initializer_runs_before_the_first_task(no_leaked_interpreters):
    read_fd, write_fd = os.pipe()
    try:
        executor = mc.InterpreterPoolExecutor(max_workers=1, initializer=os.write,
                                              initargs=(write_fd, b"init;"))
        try:
            future = executor.submit(os.write, write_fd, b"task;")
            future.result(timeout=60)
        finally:
            executor.shutdown(wait=True)
        assert os.read(read_fd, 100) == b"init;task;"
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_initializer_must_be_callable():
    with pytest.raises(TypeError, match="initializer"):
        mc.InterpreterPoolExecutor(initializer=42)


def test_initializer_that_cannot_be_sent_fails_at_construction(no_leaked_interpreters):
    # 3.14 logs NotShareableError and breaks the pool at the first submit; here the
    # initializer is pickled once, by the constructor, so the same error comes at once.
    count = 0

    def closure():
        assert count == 0

    class Spam:
        def initializer(self):
            raise NotImplementedError

    for initializer in (closure, Spam().initializer):
        with pytest.raises(interpreters.NotShareableError,
                           match="the initializer .* cannot be sent"):
            mc.InterpreterPoolExecutor(initializer=initializer)


# --- max_workers ------------------------------------------------------------------------

@pytest.mark.parametrize("number", [0, -1])
def test_max_workers_must_be_positive(number):
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        mc.InterpreterPoolExecutor(max_workers=number)


def test_max_workers_must_be_a_number():
    with pytest.raises(TypeError):
        mc.InterpreterPoolExecutor(max_workers="2")


def test_max_workers_defaults_as_the_thread_pool_as_in_3_14():
    executor = mc.InterpreterPoolExecutor()
    try:
        cpus = getattr(os, "process_cpu_count", os.cpu_count)() or 1
        assert executor._max_workers == min(32, cpus + 4)
    finally:
        executor.shutdown()
