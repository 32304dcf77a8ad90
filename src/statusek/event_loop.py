"""The event loop a program runs on: asyncio's own, or uvloop's when the settings ask for it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from statusek.settings import Settings

log = structlog.get_logger(__name__)


def loop_runner(settings: Settings) -> Callable[[Coroutine[Any, Any, None]], None]:
    """asyncio's `run`, or uvloop's with STATUSEK_UVLOOP=true (the worker and the gateway).

    Off by default: on the development machine uvloop saved no measurable CPU per window and
    cost 1.2 MiB of peak RSS (docs/development.md, "Benchmarks"). Imported only when asked for.
    """
    if not settings.uvloop:
        return asyncio.run
    try:
        import uvloop
    except ImportError:  # a dependency, on every platform but Windows
        log.warning("STATUSEK_UVLOOP is set but uvloop is not installed: running on asyncio's loop")
        return asyncio.run
    return uvloop.run
