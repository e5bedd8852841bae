# Types of memchannel.compare's public names.
from collections.abc import Callable, Sequence
from multiprocessing.context import BaseContext
from os import PathLike
from typing import Any

__all__ = ["compare", "Comparison", "Row", "ResultsDiffer", "measure_startup", "main",
           "DEFAULT_KINDS", "KINDS"]

KINDS: tuple[str, ...]
DEFAULT_KINDS: tuple[str, ...]
CLUSTER_KINDS: tuple[str, ...]
BARE_PREFIX: str

class ResultsDiffer(Exception): ...

class Row:
    FIELDS: tuple[str, ...]
    kind: str
    workers: int
    tasks: int
    startup_s: float | None
    wall_s: float | None
    overhead_s: float | None
    bytes_moved: int | None
    bytes_copied: int | None
    speedup: float | None
    wall_runs: list[float | None]
    cluster: str | None
    def __init__(
        self,
        kind: str,
        workers: int,
        tasks: int,
        startup_s: float | None,
        wall_s: float | None,
        overhead_s: float | None,
        bytes_moved: int | None,
        bytes_copied: int | None,
        speedup: float | None = None,
        cluster: str | None = None,
    ) -> None: ...
    def as_dict(self) -> dict[str, Any]: ...

class Comparison:
    name: str
    description: str
    rows: list[Row]
    results: dict[tuple[str, int], list[Any]]
    startup: dict[str, float]
    machine: str
    def __init__(
        self,
        name: str,
        description: str,
        rows: list[Row],
        results: dict[tuple[str, int], list[Any]],
        startup: dict[str, float] | None = None,
        machine: str = "",
    ) -> None: ...
    def row(self, kind: str, workers: int) -> Row: ...
    def table(self) -> str: ...
    def plot(self, path: str | PathLike[str]) -> str | PathLike[str]: ...

def compare(
    fn: Callable[[Any], Any],
    inputs: Sequence[Any] | Callable[[Any], Sequence[Any]],
    kinds: Sequence[str] = ...,
    workers: Sequence[int] = (1, 2),
    *,
    runner: Callable[[Any, Callable[[Any], Any], Sequence[Any]], Sequence[Any]] | None = None,
    name: str | None = None,
    description: str = "",
    repeat: int = 1,
    overhead_tasks: int = 100,
    mp_context: BaseContext | None = None,
    startup: bool = False,
    progress: Callable[[str], object] | None = None,
    dask: str | Any | None = None,
    ray: str | None = None,
) -> Comparison: ...
def measure_startup(
    kinds: Sequence[str] = ...,
    repeat: int = 3,
    start_methods: Sequence[str] | None = None,
    bare: bool = True,
) -> dict[str, float]: ...
def main(argv: Sequence[str] | None = None) -> int: ...
