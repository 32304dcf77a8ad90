"""The worker's and the gateway's event loop: uvloop by default, asyncio's own with STATUSEK_UVLOOP=false."""

from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from statusek.event_loop import loop_runner
from statusek.settings import Settings


def test_the_worker_runs_on_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the setting, the worker's coroutine runs on uvloop."""
    monkeypatch.delenv("STATUSEK_UVLOOP", raising=False)
    assert loop_runner(Settings()) is uvloop.run


def test_the_setting_false_runs_the_worker_on_asyncios_loop() -> None:
    """STATUSEK_UVLOOP=false runs the worker on asyncio's own loop."""
    assert loop_runner(Settings(uvloop=False)) is asyncio.run


@pytest.mark.parametrize(
    ("module", "run"),
    [("statusek.worker.worker", "run_worker"), ("statusek.gateway.server", "run_gateway")],
)
def test_the_worker_and_the_gateway_run_on_the_loop_the_settings_choose(
    module: str, run: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both programs hand their main coroutine to `loop_runner`, so STATUSEK_UVLOOP reaches each."""
    target = importlib.import_module(module)
    asked: list[Settings] = []

    def runner(settings: Settings) -> Callable[[Coroutine[Any, Any, None]], None]:
        asked.append(settings)
        return lambda coroutine: coroutine.close()  # nothing is started

    monkeypatch.setattr(target, "loop_runner", runner)
    settings = Settings(uvloop=False)
    getattr(target, run)(settings)
    assert asked == [settings]


def test_collect_less_freezes_what_was_imported_and_raises_the_thresholds() -> None:
    """After collect_less, the imported modules' objects are frozen and young collections wait for 10,000."""
    probe = (
        "import gc; import statusek.worker.worker; from statusek.event_loop import collect_less; "
        "collect_less(); print(gc.get_freeze_count(), *gc.get_threshold())"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    frozen, *thresholds = map(int, out.split())
    assert frozen > 20_000
    assert thresholds == [10_000, 20, 20]
