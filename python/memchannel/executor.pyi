# Types of memchannel.executor's public names (the pools; their engine, memchannel._engine,
# is private).
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future as _StdFuture
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.thread import BrokenThreadPool
from multiprocessing.context import BaseContext
from typing import Any, Literal, ParamSpec, TypeVar

from ._channel import Channel
from ._memchannel import Buffer, _Timeout

__all__ = [
    "InterpreterPoolExecutor", "ProcessPoolExecutor", "SerialExecutor", "make_executor",
    "BrokenInterpreterPool", "RemoteTraceback", "RemoteError", "EXECUTOR_KINDS",
]

_P = ParamSpec("_P")
_T = TypeVar("_T")

class BrokenInterpreterPool(BrokenThreadPool): ...

class RemoteTraceback(Exception):
    tb: str
    def __init__(self, tb: str) -> None: ...

class RemoteError(Exception):
    type_name: str
    def __init__(self, type_name: str, message: str) -> None: ...

class Future(_StdFuture[_T]): ...

class _Executor(Executor):
    # Stub only: what every executor of this module has (the pools and SerialExecutor).
    def __init__(
        self,
        max_workers: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None: ...
    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]: ...
    def map(
        self,
        fn: Callable[..., _T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[_T]: ...
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None: ...

class _ChannelPoolExecutor(_Executor):
    def map(
        self,
        fn: Callable[..., _T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[_T]: ...
    def reserve(
        self,
        nbytes: int | None = None,
        *,
        format: str = "B",
        shape: tuple[int, ...] | list[int] | None = None,
        timeout: _Timeout = None,
    ) -> Buffer: ...
    def channel(self, maxsize: int = 0, *, maxbytes: int = 0) -> Channel: ...
    def stats(self) -> dict[str, Any]: ...

class InterpreterPoolExecutor(_ChannelPoolExecutor, ThreadPoolExecutor):  # type: ignore[misc]
    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None: ...

class ProcessPoolExecutor(_ChannelPoolExecutor):
    def __init__(
        self,
        max_workers: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        mp_context: BaseContext | None = None,
    ) -> None: ...

class SerialExecutor(_Executor): ...

EXECUTOR_KINDS: tuple[str, ...]

def make_executor(
    kind: Literal["serial", "threads", "interpreters", "processes", "processes-pickle"],
    max_workers: int | None = None,
    **kwargs: Any,
) -> Executor: ...
