# Types of memchannel.Channel, Arena and Buffer (_channel.py over the extension's classes).
from typing import Any, Self

from . import _memchannel
from ._memchannel import _Backend, _Timeout

Buffer = _memchannel.Buffer

class Channel(_memchannel.Channel):
    @classmethod
    def attach(cls, handle: bytes | bytearray | memoryview) -> Self: ...
    def __reduce__(self) -> tuple[Any, tuple[bytes]]: ...

class Arena(_memchannel.Arena):
    def __init__(self, capacity: int | None = None, backend: _Backend = "shm") -> None: ...
    def channel(self, maxsize: int = 0, *, maxbytes: int = 0) -> Channel: ...
    def reserve(
        self,
        nbytes: int | None = None,
        *,
        format: str = "B",
        shape: tuple[int, ...] | list[int] | None = None,
        timeout: _Timeout = None,
    ) -> Buffer: ...
