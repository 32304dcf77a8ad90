"""The shutdown watchdog: a drain that outlasts its bounds leaves the stacks of what still waits."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from statusek.worker.worker import report_if_stuck


async def test_a_stuck_drain_logs_the_stack_of_every_waiting_task() -> None:
    """Each task still waiting is logged by name, with the line it waits on."""
    never = asyncio.Event()

    async def waits_forever_on_an_event() -> None:
        await never.wait()

    stuck = asyncio.create_task(waits_forever_on_an_event(), name="stuck component")
    await asyncio.sleep(0)
    try:
        with capture_logs() as logs:
            await report_if_stuck(0)
    finally:
        stuck.cancel()
    reported = [e for e in logs if e["event"] == "shutdown stuck: a task still waits"]
    stuck_entry = next(e for e in reported if e["task"] == "stuck component")
    assert stuck_entry["log_level"] == "error"
    assert "waits_forever_on_an_event" in stuck_entry["stack"]
