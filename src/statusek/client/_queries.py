"""The queries: requests to the queries exchange that read instances, events and reports."""

from __future__ import annotations

import asyncio
from datetime import date, datetime
from typing import Any

from statusek.client._rpc import _Rpc
from statusek.core.messages import MAX_EVENTS_PAGE
from statusek.exceptions import NoAnswerError


def _instant(value: datetime | str | None, name: str) -> str | None:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{name}: give a time zone (a naive datetime is ambiguous)")
        return value.isoformat()
    return value


class _Queries(_Rpc):
    """The typed queries."""

    async def is_set(self, token: str, status_name: str, *, timeout: float = 10) -> bool:
        data = await self.call(
            self._queries,
            "is-set",
            {"instance_token": str(token), "status_name": status_name},
            timeout=timeout,
        )
        return bool(data["status_is_set"])

    async def is_ready(self, token: str, status_name: str, *, timeout: float = 10) -> tuple[bool, str]:
        data = await self.call(
            self._queries,
            "is-ready",
            {"instance_token": str(token), "status_name": status_name},
            timeout=timeout,
        )
        return bool(data["status_is_ready_to_set"]), str(data["status_is_ready_to_set_description"])

    async def is_finished(self, token: str, *, timeout: float = 10) -> tuple[bool, str | None]:
        data = await self.call(self._queries, "is-finished", {"instance_token": str(token)}, timeout=timeout)
        return bool(data["instance_is_finished"]), data.get("instance_is_finished_description")

    async def get_events(
        self, token: str, *, after_seq: int = 0, limit: int | None = None, timeout: float = 10
    ) -> list[dict[str, Any]]:
        """The events of `token` with a seq above `after_seq`, oldest first: all, or the first `limit`.

        Follows the pages of `get-events` for as many requests as it takes; `timeout` bounds them
        all. To read a long log page by page, pass the last seq seen as `after_seq` with a `limit`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        events: list[dict[str, Any]] = []
        body: dict[str, Any] = {"instance_token": str(token)}
        if after_seq:
            body["after_seq"] = after_seq
        while limit is None or len(events) < limit:
            if limit is not None:
                body["limit"] = min(MAX_EVENTS_PAGE, limit - len(events))
            left = deadline - loop.time()
            if left <= 0:
                raise NoAnswerError("get-events", timeout, self.vhost)
            data = await self.call(self._queries, "get-events", body, timeout=left)
            events.extend(data["events"])
            after = data.get("next_after_seq")
            if after is None:
                break
            # The first page had the worker's default size (a worker before paging takes no
            # paging fields, and answers with every event); the next ones are as large as allowed.
            body = {**body, "after_seq": after, "limit": MAX_EVENTS_PAGE}
        return events

    async def get_instance(self, token: str, *, timeout: float = 10) -> dict[str, Any]:
        return await self.call(self._queries, "get-instance", {"instance_token": str(token)}, timeout=timeout)

    async def get_report(
        self,
        object_name: str,
        *,
        since: date | str | None = None,
        until: date | str | None = None,
        timeout: float = 10,
    ) -> dict[str, Any]:
        """Timing figures of `object_name`'s instances finished from day `since` to day `until` (UTC,
        both inclusive; open-ended when None): counts by finish reason, create-to-finish and
        per-status durations (p50, p95, max, mean), SLA breaches."""
        body: dict[str, Any] = {"object_name": object_name}
        if since is not None:
            body["since"] = str(since)
        if until is not None:
            body["until"] = str(until)
        return await self.call(self._queries, "get-report", body, timeout=timeout)

    async def get_global_events(
        self,
        *,
        after_seq: int = 0,
        limit: int | None = None,
        status_name: str | None = None,
        timeout: float = 10,
    ) -> dict[str, Any]:
        """One page of global events, oldest first.

        The reply data: `events` (those with a seq above `after_seq`) and
        `next_after_seq`, to pass as `after_seq` for the next page (None after the last).
        """
        body: dict[str, Any] = {"after_seq": after_seq}
        if limit is not None:
            body["limit"] = limit
        if status_name is not None:
            body["status_name"] = status_name
        return await self.call(self._queries, "get-global-events", body, timeout=timeout)

    async def find_instances(
        self,
        *,
        object_name: str | None = None,
        labels: dict[str, str] | None = None,
        finished: bool | None = None,
        finish_reason: str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        after: str | None = None,
        limit: int | None = None,
        timeout: float = 10,
    ) -> dict[str, Any]:
        """One page of the instances matching every filter given, oldest first.

        The reply data: `instances` and `next_after`, to pass as `after` for the next page (None
        after the last). Times are ISO 8601 strings or datetimes with a time zone;
        `created_after` is inclusive, `created_before` exclusive.
        """
        body: dict[str, Any] = {}
        for name, value in (
            ("object_name", object_name),
            ("labels", labels),
            ("finished", finished),
            ("finish_reason", finish_reason),
            ("created_after", _instant(created_after, "created_after")),
            ("created_before", _instant(created_before, "created_before")),
            ("after", after),
            ("limit", limit),
        ):
            if value is not None:
                body[name] = value
        return await self.call(self._queries, "find-instances", body, timeout=timeout)
