"""The context manager both adapters wrap driver calls in, to raise statusek's errors instead.

Each adapter gives it a function from a driver's exception to the error statusek acts on
(`StoreUnavailable`, `BrokerUnavailable`, ...), or None to let the exception through; the new
error is raised `from` the driver's. A class rather than an `asynccontextmanager`: it wraps every
statement and publish, and a generator-based context manager costs an async generator and two
resumptions each time.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

__all__ = ["Translating"]


class Translating:
    """`async with` it: an exception that `translate` maps is raised as what it maps to."""

    __slots__ = ("_translate",)

    def __init__(self, translate: Callable[[BaseException], BaseException | None]) -> None:
        self._translate = translate

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, kind: type[BaseException] | None, e: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if e is not None and (error := self._translate(e)) is not None:
            raise error from e
