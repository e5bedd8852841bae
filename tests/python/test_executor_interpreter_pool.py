"""memchannel.InterpreterPoolExecutor against the behaviours CPython 3.14's
test_concurrent_futures/test_interpreter_pool.py checks (3.12 and 3.13 do not ship it): the
constructor, defaults, ThreadPoolExecutor subclassing and asyncio, exception chaining,
NotShareableError, BrokenInterpreterPool, map(buffersize=).  The tasks are test_executor's
(workers import that module by name)."""

import asyncio
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.thread import BrokenThreadPool

import pytest

import memchannel as mc
from memchannel import executor as mc_executor
from memchannel import interpreters
from test_executor import (  # noqa: F401  (no_leaked_interpreters is a fixture)
    CustomError,
    get_init_status,
    init,
    init_fail,
    mul,
    no_leaked_interpreters,
    raise_custom,
    sleep_then,
)

pytestmark = pytest.mark.timeout(120)


def test_constructor_takes_3_14s_positional_arguments(no_leaked_interpreters):
    with mc.InterpreterPoolExecutor(2, "spam", init, ("initialized",)) as pool:
        assert pool._max_workers == 2
        assert pool.submit(get_init_status).result() == "initialized"
        names = {t.name for t in threading.enumerate()}
        assert any(name.startswith("spam_") for name in names), names


def test_is_a_thread_pool_executor_and_broken_pool_a_broken_thread_pool():
    assert issubclass(mc.InterpreterPoolExecutor, ThreadPoolExecutor)
    assert issubclass(mc_executor.BrokenInterpreterPool, BrokenThreadPool)


def test_asyncio_takes_it_as_default_executor(no_leaked_interpreters):
    pool = mc.InterpreterPoolExecutor(2)

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_default_executor(pool)  # refuses anything but a ThreadPoolExecutor
        return await asyncio.gather(*(loop.run_in_executor(None, mul, i, i)
                                      for i in range(5)))

    assert asyncio.run(main()) == [0, 1, 4, 9, 16]  # asyncio.run shuts the pool down
    with pytest.raises(RuntimeError):
        pool.submit(mul, 1, 1)


def test_task_exception_is_chained_from_execution_failed(no_leaked_interpreters):
    with mc.InterpreterPoolExecutor(1) as pool:
        with pytest.raises(CustomError) as info:
            pool.submit(raise_custom, 5).result()
    cause = info.value.__cause__
    assert isinstance(cause, interpreters.ExecutionFailed)
    assert cause.excinfo.type.__name__ == "CustomError"
    assert "raise_custom" in cause.excinfo.formatted


def test_pickling_errors_arrive_as_not_shareable(no_leaked_interpreters):
    with mc.InterpreterPoolExecutor(1) as pool:
        with pytest.raises(interpreters.NotShareableError):
            pool.submit(mul, threading.Lock(), 1).result()
        assert pool.submit(mul, 2, 2).result() == 4


def test_failing_initializer_breaks_with_a_broken_thread_pool(no_leaked_interpreters, caplog):
    with mc.InterpreterPoolExecutor(1, initializer=init_fail) as pool:
        with pytest.raises(BrokenThreadPool):
            pool.submit(mul, 1, 1).result()


def test_map_buffersize_keeps_that_many_in_flight_and_reads_lazily(no_leaked_interpreters):
    with mc.InterpreterPoolExecutor(2) as pool:
        endless = itertools.count()
        results = pool.map(mul, endless, itertools.repeat(2), buffersize=3)
        assert [next(results) for _ in range(10)] == [2 * i for i in range(10)]
        # 10 yielded, 3 more submitted at most: the endless iterable was read lazily.
        assert next(endless) <= 10 + 3 + 1
        assert list(pool.map(mul, [1, 2, 3], [4, 5, 6], buffersize=1, chunksize=2)) == [4, 10, 18]


def test_map_buffersize_is_checked():
    with mc.InterpreterPoolExecutor(1) as pool:
        with pytest.raises(TypeError):
            pool.map(mul, [1], [1], buffersize=2.0)
        with pytest.raises(ValueError):
            pool.map(mul, [1], [1], buffersize=0)


def test_map_buffersize_with_timeout(no_leaked_interpreters):
    from concurrent.futures import TimeoutError as FuturesTimeout
    with mc.InterpreterPoolExecutor(1) as pool:
        results = pool.map(sleep_then, [0, 5], buffersize=2, timeout=1)
        assert next(results) is None
        with pytest.raises(FuturesTimeout):
            next(results)
