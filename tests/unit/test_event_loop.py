"""The worker's and the gateway's event loop: asyncio's own by default, uvloop with STATUSEK_UVLOOP=true."""

from __future__ import annotations

import asyncio

import uvloop

from statusek.event_loop import loop_runner
from statusek.settings import Settings


def test_the_worker_runs_on_asyncios_loop_by_default() -> None:
    """Without the setting, the worker's coroutine runs on asyncio's own loop."""
    assert loop_runner(Settings()) is asyncio.run


def test_the_setting_runs_the_worker_on_uvloop() -> None:
    """STATUSEK_UVLOOP=true runs the worker on uvloop."""
    assert loop_runner(Settings(uvloop=True)) is uvloop.run
