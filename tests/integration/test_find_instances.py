"""find-instances and `statusek ls` over a fleet of instances in a vhost and database of their own.

The fleet mixes objects, labels, open and finished instances (every finish reason) and
instances created in one window (so several share a created_at, told apart by token). Each
filter, alone and combined, is checked against what the test knows it made, read in small
pages so that every listing also crosses page boundaries.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from statusek.adapters.model_files import load_models
from statusek.adapters.postgres.store import Store
from statusek.client import Client
from statusek.core.messages import FindInstances, decode_cursor
from statusek.settings import Settings
from statusek.testing import Services, fresh_database, fresh_vhost, running_worker
from tests.helpers import statusek

TASK, EDGE, EXPORT = "2-POINT LINE TASK", "EDGE CASES", "DATA EXPORT"
FATES = ("open", "completed", "cancelled", "stopped", "timeout", "heartbeat")
REASONS = {
    "completed": "ALL_MANDATORY_STATUSES_ARE_SET",
    "cancelled": "CANCELLED",
    "stopped": "STOP_STATUS_IS_SET",
    "timeout": "TIMEOUT",
    "heartbeat": "HEARTBEAT_TIMEOUT",
}
# The statuses that finish each object by completion, and by a stop status.
COMPLETE = {TASK: ["STARTED", "FINISHED"], EDGE: ["START", "FAST_PATH", "MERGED"]}
STOP = {EDGE: ["START", "ABORTED"], EXPORT: ["QUEUED", "FAILED"]}


@dataclass(frozen=True)
class Made:
    token: str
    object_name: str
    labels: dict[str, str]
    reason: str | None
    created_at: datetime

    @property
    def key(self) -> tuple[datetime, uuid.UUID]:
        return self.created_at, uuid.UUID(self.token)


@dataclass
class Fleet:
    client: Client
    made: list[Made]
    env: dict[str, str]

    def expected(self, keep: Callable[[Made], bool]) -> list[str]:
        return [m.token for m in sorted(self.made, key=lambda m: m.key) if keep(m)]

    def boundary(self) -> datetime:
        """A created_at some instances have, with instances before and after it."""
        times = sorted({m.created_at for m in self.made})
        return times[len(times) // 2]


def plan(i: int) -> tuple[str, dict[str, str], str]:
    """Instance i's object, labels and fate: every combination the filters care about."""
    object_name = (TASK, EDGE, EXPORT)[i % 3]
    labels = [{}, {"team": "ops"}, {"team": "ops", "env": "prod"}, {"team": "billing", "env": "prod"}][i % 4]
    fate = FATES[(i // 3) % len(FATES)]
    if fate == "completed" and object_name not in COMPLETE:
        fate = "cancelled"
    if fate == "stopped" and object_name not in STOP:
        fate = "open"
    return object_name, labels, fate


async def make(client: Client, i: int) -> tuple[str, str | None]:
    object_name, labels, fate = plan(i)
    token = await client.create(
        object_name,
        labels=labels or None,
        instance_timeout=1 if fate == "timeout" else 3600,
        heartbeat_timeout=1 if fate == "heartbeat" else 3600,
    )
    for status in COMPLETE.get(object_name, []) if fate == "completed" else []:
        await client.set_status(token, status)
    for status in STOP.get(object_name, []) if fate == "stopped" else []:
        await client.set_status(token, status)
    if fate == "cancelled":
        await client.cancel(token, "not needed")
    return token, REASONS.get(fate)


@pytest.fixture(scope="module")
async def fleet(services: Services, models_path: str) -> AsyncIterator[Fleet]:
    async with fresh_database(services.database_url) as database_url:
        with fresh_vhost(services.amqp_url, admin=services.rabbit) as url:
            settings = Settings(
                amqp_url=url,
                database_url=database_url,
                models_path=models_path,
                sweep_max_sleep=2.0,
                log_level="WARNING",
                ops_port=0,
            )
            async with running_worker(settings), await Client.connect(url) as client:
                made: list[tuple[str, str | None]] = []
                for batch in range(6):  # creates published together share a window, and so a created_at
                    made += await asyncio.gather(*(make(client, batch * 12 + i) for i in range(12)))
                await asyncio.sleep(1.5)  # past the 1 s timeouts
                instances = await asyncio.gather(*(client.get_instance(t) for t, _ in made))
                env = {
                    **os.environ,
                    "STATUSEK_AMQP_URL": url,
                    "STATUSEK_DATABASE_URL": database_url,
                    "STATUSEK_MODELS_PATH": models_path,
                    "STATUSEK_OPS_PORT": "0",
                }
                yield Fleet(
                    client,
                    [
                        Made(
                            token,
                            i["object_name"],
                            i["labels"],
                            reason,
                            datetime.fromisoformat(i["created_at"]),
                        )
                        for (token, reason), i in zip(made, instances, strict=True)
                    ],
                    env,
                )


async def every_page(client: Client, limit: int = 7, **filters: Any) -> list[dict[str, Any]]:
    """Every instance matching `filters`, read `limit` at a time; each page but the last is full."""
    found: list[dict[str, Any]] = []
    after = None
    while True:
        page = await client.find_instances(after=after, limit=limit, **filters)
        found += page["instances"]
        after = page["next_after"]
        if after is None:
            return found
        assert len(page["instances"]) == limit


def tokens(found: list[dict[str, Any]]) -> list[str]:
    return [i["instance_token"] for i in found]


def test_the_fleet_has_what_the_filters_need(fleet: Fleet) -> None:
    """Every finish reason, open instances, and instances sharing a created_at are there."""
    assert {m.reason for m in fleet.made} == {None, *REASONS.values()}
    assert len({m.created_at for m in fleet.made}) < len(fleet.made)


FILTERS: dict[str, tuple[dict[str, Any], Callable[[Made], bool]]] = {
    "none": ({}, lambda m: True),
    "object": ({"object_name": EDGE}, lambda m: m.object_name == EDGE),
    "label": ({"labels": {"team": "ops"}}, lambda m: m.labels.get("team") == "ops"),
    "labels": (
        {"labels": {"team": "ops", "env": "prod"}},
        lambda m: m.labels.get("team") == "ops" and m.labels.get("env") == "prod",
    ),
    "finished": ({"finished": True}, lambda m: m.reason is not None),
    "open": ({"finished": False}, lambda m: m.reason is None),
    **{
        f"reason {reason}": ({"finish_reason": reason}, lambda m, r=reason: m.reason == r)  # type: ignore[misc]
        for reason in REASONS.values()
    },
    "object and labels and open": (
        {"object_name": TASK, "labels": {"env": "prod"}, "finished": False},
        lambda m: m.object_name == TASK and m.labels.get("env") == "prod" and m.reason is None,
    ),
    "object and reason": (
        {"object_name": EXPORT, "finished": True, "finish_reason": "HEARTBEAT_TIMEOUT"},
        lambda m: m.object_name == EXPORT and m.reason == "HEARTBEAT_TIMEOUT",
    ),
    "labels and finished": (
        {"labels": {"team": "billing"}, "finished": True},
        lambda m: m.labels.get("team") == "billing" and m.reason is not None,
    ),
}


@pytest.mark.parametrize("case", list(FILTERS))
async def test_each_filter_lists_exactly_its_instances_in_order(fleet: Fleet, case: str) -> None:
    """The filter's instances, every one once, in (created_at, token) order across pages."""
    filters, keep = FILTERS[case]
    expected = fleet.expected(keep)
    assert expected, f"the fleet has no instance for {case}"
    assert tokens(await every_page(fleet.client, **filters)) == expected


async def test_created_after_is_inclusive(fleet: Fleet) -> None:
    """created_after T lists the instances created at T and later."""
    at = fleet.boundary()
    found = await every_page(fleet.client, created_after=at)
    assert tokens(found) == fleet.expected(lambda m: m.created_at >= at)


async def test_created_before_is_exclusive(fleet: Fleet) -> None:
    """created_before T lists the instances created before T only."""
    at = fleet.boundary()
    found = await every_page(fleet.client, created_before=at)
    assert tokens(found) == fleet.expected(lambda m: m.created_at < at)


async def test_a_time_window_with_every_other_filter(fleet: Fleet) -> None:
    """All filters at once: object, label, finished, reason and a time window."""
    start, end = min(m.created_at for m in fleet.made), fleet.boundary()
    found = await every_page(
        fleet.client,
        limit=2,
        object_name=TASK,
        labels={"team": "ops"},
        finished=True,
        finish_reason="CANCELLED",
        created_after=start,
        created_before=end,
    )
    assert tokens(found) == fleet.expected(
        lambda m: (
            m.object_name == TASK
            and m.labels.get("team") == "ops"
            and m.reason == "CANCELLED"
            and start <= m.created_at < end
        )
    )


@pytest.mark.parametrize("limit", [1, 5, 72, 1000])
async def test_keyset_pages_have_no_gaps_and_no_repeats(fleet: Fleet, limit: int) -> None:
    """Any page size reads every instance exactly once, in order, ties in created_at included."""
    found = tokens(await every_page(fleet.client, limit=limit))
    assert len(found) == len(set(found)) == len(fleet.made)
    assert found == fleet.expected(lambda m: True)


async def test_the_cursor_is_the_last_instance_of_the_page(fleet: Fleet) -> None:
    """next_after decodes to the (created_at, token) of the page's last instance."""
    page = await fleet.client.find_instances(limit=3)
    last = page["instances"][-1]
    assert decode_cursor(page["next_after"]) == (
        datetime.fromisoformat(last["created_at"]),
        uuid.UUID(last["instance_token"]),
    )


async def test_an_instance_is_listed_as_get_instance_shows_it(fleet: Fleet) -> None:
    """A listed instance carries get-instance's token, object, version, labels, times, finish, statuses."""
    stopped = next(m for m in fleet.made if m.reason == "STOP_STATUS_IS_SET")
    [listed] = [
        i
        for i in await every_page(fleet.client, limit=1000, finish_reason="STOP_STATUS_IS_SET")
        if i["instance_token"] == stopped.token
    ]
    full = await fleet.client.get_instance(stopped.token)
    assert listed == {
        key: full[key]
        for key in (
            "instance_token",
            "object_name",
            "model_version",
            "labels",
            "created_at",
            "instance_is_finished",
            "finish_reason",
            "finished_at",
            "statuses",
        )
    }


async def test_ls_prints_a_table_and_the_next_cursor(fleet: Fleet) -> None:
    """`statusek ls` with filters prints a table, and a hint with --after when more follow."""
    expected = fleet.expected(lambda m: m.object_name == EDGE and m.labels.get("team") == "ops")
    first = await statusek(fleet.env, "ls", "--object", EDGE, "--label", "team=ops", "--limit", "2")
    assert first.returncode == 0, first.stderr
    header, *rows = first.stdout.splitlines()
    assert header.split() == ["TOKEN", "OBJECT", "CREATED", "FINISHED", "STATUSES", "LABELS"]
    assert [row.split()[0] for row in rows] == expected[:2]
    cursor = first.stderr.split("--after ")[1].split()[0]
    rest = await statusek(fleet.env, "ls", "--object", EDGE, "--label", "team=ops", "--after", cursor)
    assert [row.split()[0] for row in rest.stdout.splitlines()[1:]] == expected[2:]
    assert "--after" not in rest.stderr


async def test_ls_json_with_every_filter(fleet: Fleet) -> None:
    """`statusek ls --json` takes every filter and prints the reply data."""
    at = fleet.boundary()
    result = await statusek(
        fleet.env,
        "ls",
        "--object",
        TASK,
        "--label",
        "team=ops",
        "--label",
        "env=prod",
        "--finished",
        "--reason",
        "TIMEOUT",
        "--since",
        min(m.created_at for m in fleet.made).isoformat(),
        "--until",
        at.isoformat(),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert tokens(data["instances"]) == fleet.expected(
        lambda m: (
            m.object_name == TASK
            and m.labels.get("team") == "ops"
            and m.labels.get("env") == "prod"
            and m.reason == "TIMEOUT"
            and m.created_at < at
        )
    )
    assert data["next_after"] is None


async def test_ls_open_lists_open_instances(fleet: Fleet) -> None:
    """`statusek ls --open` lists what is still open, marked '-' under FINISHED."""
    result = await statusek(fleet.env, "ls", "--open", "--limit", "1000")
    rows = result.stdout.splitlines()[1:]
    assert [row.split()[0] for row in rows] == fleet.expected(lambda m: m.reason is None)
    assert not any(reason in row for row in rows for reason in REASONS.values())


@pytest.mark.parametrize(
    "args",
    [["--open", "--reason", "CANCELLED"], ["--after", "nonsense"], ["--limit", "1001"], ["--since", "soon"]],
)
async def test_ls_usage_errors_exit_2(fleet: Fleet, args: list[str]) -> None:
    """Contradictory or malformed ls arguments are usage errors, one line on stderr."""
    result = await statusek(fleet.env, "ls", *args)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr


async def test_past_a_deadline_counts_as_finished_before_a_sweeper_ran(
    services: Services, models_path: str
) -> None:
    """Unswept overdue instances (no worker runs here) are finished, by their earlier deadline."""
    async with fresh_database(services.database_url) as url:
        store = await Store.open(url)
        conn = await asyncpg.connect(url)
        try:
            models, _ = load_models([Path(p) for p in models_path.split(":")])
            await store.sync_models(models)
            # (instance deadline, heartbeat deadline) relative to now, in seconds
            deadlines = {"timeout": (-60, -10), "heartbeat": (600, -60), "open": (600, 60)}
            made = {}
            for name, (absolute, heartbeat) in deadlines.items():
                made[name] = await conn.fetchval(
                    "INSERT INTO instances (token, object_name, model_version, labels, create_args,"
                    " created_at, instance_deadline, heartbeat_timeout, heartbeat_deadline, next_deadline,"
                    " statuses, last_seq) SELECT gen_random_uuid(), $1, 1, '{}', '{}', now(), a, 60, h,"
                    " least(a, h), '{}', 1 FROM (SELECT now() + make_interval(secs => $2) AS a,"
                    " now() + make_interval(secs => $3) AS h) AS d RETURNING token",
                    TASK,
                    absolute,
                    heartbeat,
                )

            async def found(**filters: Any) -> list[uuid.UUID]:
                states, _ = await store.find_instances(FindInstances(**filters))
                return sorted(s.token for s in states)

            assert await found(finished=True) == sorted([made["timeout"], made["heartbeat"]])
            assert await found(finished=False) == [made["open"]]
            assert await found(finish_reason="TIMEOUT") == [made["timeout"]]
            assert await found(finish_reason="HEARTBEAT_TIMEOUT") == [made["heartbeat"]]
        finally:
            await conn.close()
            await store.close()
