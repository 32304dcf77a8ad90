"""Bounded stops: a drain that outlasts its bounds leaves the stacks of what still waits, then
exits; a second stop signal exits at once."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from statusek.settings import Settings
from statusek.worker.worker import EXIT_UNFINISHED, Worker, cancel_and_wait, report_if_stuck, stop_on_signal


async def test_a_stuck_drain_logs_the_stack_of_every_waiting_task() -> None:
    """Each task still waiting is logged by name, with the line it waits on."""
    never = asyncio.Event()

    async def waits_forever_on_an_event() -> None:
        await never.wait()

    stuck = asyncio.create_task(waits_forever_on_an_event(), name="stuck component")
    await asyncio.sleep(0)
    try:
        with capture_logs() as logs:
            await report_if_stuck(0, exit=lambda _status: None)
    finally:
        stuck.cancel()
    reported = [e for e in logs if e["event"] == "shutdown stuck: a task still waits"]
    stuck_entry = next(e for e in reported if e["task"] == "stuck component")
    assert stuck_entry["log_level"] == "error"
    assert "waits_forever_on_an_event" in stuck_entry["stack"]


async def test_a_stuck_drain_exits_after_reporting() -> None:
    """Once the stacks are logged the process leaves with EXIT_UNFINISHED instead of hanging on."""
    exits: list[int] = []
    with capture_logs() as logs:
        await report_if_stuck(0, exit=exits.append)
    assert exits == [EXIT_UNFINISHED]
    assert logs[-1]["event"] == "exiting with the drain unfinished"


async def test_the_first_stop_signal_drains_and_the_second_exits_at_once() -> None:
    """One SIGTERM asks for the drain; another while it drains exits without waiting for it."""
    worker = Worker(Settings())
    exits: list[int] = []
    stop_on_signal(worker, "SIGTERM", exit=exits.append)
    assert (worker.stop_requested, exits) == (True, [])
    stop_on_signal(worker, "SIGINT", exit=exits.append)
    assert exits == [EXIT_UNFINISHED]


async def test_a_task_that_loses_a_cancel_is_cancelled_again() -> None:
    """A loop that swallowed its first cancel (as 3.11's wait_for can) ends at the next one."""
    cancels_seen = 0

    async def loop_losing_the_first_cancel() -> None:
        nonlocal cancels_seen
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancels_seen += 1
                if cancels_seen > 1:
                    raise

    task = asyncio.create_task(loop_losing_the_first_cancel())
    await asyncio.sleep(0)
    await cancel_and_wait([task], every=0.01)
    assert task.cancelled() and cancels_seen == 2


async def test_a_task_that_never_ends_is_reported_after_the_last_cancel() -> None:
    """Cancels are bounded: a task ignoring all of them is named in an error, and left."""
    deaf = True

    async def ignores_every_cancel() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if not deaf:
                    raise

    task = asyncio.create_task(ignores_every_cancel(), name="deaf")
    await asyncio.sleep(0)
    with capture_logs() as logs:
        await cancel_and_wait([task], every=0.01, cancels=3)
    assert not task.done()
    assert logs[-1] == {
        "event": "tasks still running after every cancel",
        "tasks": ["deaf"],
        "log_level": "error",
    }
    deaf = False
    task.cancel()
    await asyncio.wait({task})
