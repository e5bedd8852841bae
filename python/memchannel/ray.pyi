# Types of memchannel.ray's public names.
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

__all__ = ["RayExecutor"]

class RayExecutor(Executor):
    workers: int
    cluster: str
    def __init__(self, max_workers: int | None = None, *, address: str | None = None) -> None: ...
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]: ...
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None: ...
