"""The worker's event loop: uvloop by default, asyncio's own with STATUSEK_UVLOOP=false."""

from __future__ import annotations

import asyncio

import uvloop

from statusek.app.settings import Settings
from statusek.app.worker import loop_runner


def test_the_worker_runs_on_uvloop_by_default() -> None:
    """Without the setting, the worker's coroutine runs on uvloop."""
    assert loop_runner(Settings()) is uvloop.run


def test_the_setting_turns_uvloop_off() -> None:
    """STATUSEK_UVLOOP=false runs the worker on asyncio's own loop."""
    assert loop_runner(Settings(uvloop=False)) is asyncio.run
