"""The worker's and the gateway's event loop: by default the worker's asyncio's own, the gateway's uvloop."""

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


def test_a_program_without_the_setting_runs_on_its_default_loop() -> None:
    """Without STATUSEK_UVLOOP, each program runs on the loop it defaults to."""
    assert loop_runner(Settings(uvloop=None), uvloop_by_default=False) is asyncio.run
    assert loop_runner(Settings(uvloop=None), uvloop_by_default=True) is uvloop.run


@pytest.mark.parametrize("default", [False, True])
def test_the_setting_overrides_a_programs_default(default: bool) -> None:
    """STATUSEK_UVLOOP=true or false chooses the loop whatever the program's default."""
    assert loop_runner(Settings(uvloop=True), uvloop_by_default=default) is uvloop.run
    assert loop_runner(Settings(uvloop=False), uvloop_by_default=default) is asyncio.run


def test_an_unset_variable_leaves_the_choice_to_each_program(monkeypatch: pytest.MonkeyPatch) -> None:
    """STATUSEK_UVLOOP unset reads as no choice (None), not as false."""
    monkeypatch.delenv("STATUSEK_UVLOOP", raising=False)
    assert Settings().uvloop is None
    monkeypatch.setenv("STATUSEK_UVLOOP", "false")
    assert Settings().uvloop is False


@pytest.mark.parametrize(
    ("module", "run", "uvloop_by_default"),
    [("statusek.worker.worker", "run_worker", False), ("statusek.gateway.server", "run_gateway", True)],
)
def test_the_worker_runs_on_asyncio_and_the_gateway_on_uvloop_unless_set(
    module: str, run: str, uvloop_by_default: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both programs hand their main coroutine to `loop_runner`, each with its own default loop."""
    target = importlib.import_module(module)
    asked: list[tuple[Settings, bool]] = []

    def runner(settings: Settings, *, uvloop_by_default: bool) -> Callable[[Coroutine[Any, Any, None]], None]:
        asked.append((settings, uvloop_by_default))
        return lambda coroutine: coroutine.close()  # nothing is started

    monkeypatch.setattr(target, "loop_runner", runner)
    settings = Settings(uvloop=True)
    getattr(target, run)(settings)
    assert asked == [(settings, uvloop_by_default)]


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
