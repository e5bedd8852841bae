# Types of memchannel._dask_call (internal: what memchannel.dask runs in subinterpreters).
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["Call", "evaluate", "container", "pairs_to_dict"]

class Call:
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    def __init__(self, func: Callable[..., Any], args: Iterable[Any] = (),
                 kwargs: Mapping[str, Any] | None = None) -> None: ...

def evaluate(call: Call) -> Any: ...
def container(constructor: Callable[[tuple[Any, ...]], Any], *items: Any) -> Any: ...
def pairs_to_dict(*items: Any) -> dict[Any, Any]: ...
