"""How a long-running program runs: on asyncio's loop or uvloop's, and how often it collects garbage."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from statusek.settings import Settings

log = structlog.get_logger(__name__)


Runner = Callable[[Coroutine[Any, Any, None]], None]


def loop_runner(settings: Settings, *, uvloop_by_default: bool) -> Runner:
    """asyncio's `run`, or uvloop's: as STATUSEK_UVLOOP says, else as the program's default says.

    The gateway defaults to uvloop: under `gateway_load` it spent less CPU per HTTP request on
    it in each of six alternating pairs (0.04 to 0.06 ms less at 8 connections, 0.01 to 0.05 at
    32). The worker defaults to asyncio's loop: uvloop lowered its CPU per command in some
    benchmarks and raised it in others (at a paced 300 commands/s), and costs 1.2 MiB of peak RSS
    (docs/development.md, "Benchmarks"). uvloop is imported only when used.
    """
    wanted = uvloop_by_default if settings.uvloop is None else settings.uvloop
    if not wanted:
        return asyncio.run
    try:
        import uvloop
    except ImportError:  # a dependency, on every platform but Windows
        log.warning("uvloop is not installed: running on asyncio's loop", asked_by_setting=settings.uvloop)
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
