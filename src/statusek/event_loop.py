"""How a long-running program runs: on asyncio's loop or uvloop's, and how often it collects garbage."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from statusek.settings import Settings

log = structlog.get_logger(__name__)


def loop_runner(settings: Settings) -> Callable[[Coroutine[Any, Any, None]], None]:
    """uvloop's `run` (the worker's and the gateway's default), or asyncio's with STATUSEK_UVLOOP=false.

    On the development machine uvloop lowered both programs' CPU per command or request in most
    alternating pairs, and the worker's latency at 300 commands/s and at half load
    (docs/development.md, "Benchmarks"). It costs the worker 1.2 MiB of peak RSS, less than the
    ops server's move off aiohttp saved. Imported only when used.
    """
    if not settings.uvloop:
        return asyncio.run
    try:
        import uvloop
    except ImportError:  # a dependency, on every platform but Windows
        log.warning("uvloop is not installed: running on asyncio's loop")
        return asyncio.run
    return uvloop.run


# Young collections every 10,000 net container allocations (700 by default), older generations
# after 20 younger ones (10): garbage cycles wait longer, pauses come far less often.
GC_THRESHOLDS = (10_000, 20, 20)


def collect_less() -> None:
    """Keep what the program has imported out of every later collection, and collect less often.

    Call once, after the imports. With CPython's defaults the worker ran a full collection about
    once per 4,000 commands under load, each scanning the ~65,000 objects of its modules: 20 to
    100 ms with every window stalled behind it, and 1,300 young collections in a 24-second
    `gateway_load` run (docs/development.md, "Benchmarks"). Frozen, those objects are never
    scanned again; they live as long as the process anyway.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
