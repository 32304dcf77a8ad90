"""The commands: requests to the commands exchange that change instances and record events."""

from __future__ import annotations

import uuid
from typing import Any, NamedTuple

from statusek.client._rpc import _data, _Rpc

# The message of a create answered for a token that exists with the same arguments.
ALREADY_EXISTS = "Instance already exists"


class Created(NamedTuple):
    """What `create_instance` returns."""

    token: str
    created: bool  # False: the token existed with the same arguments; nothing changed


class _Commands(_Rpc):
    """The typed commands."""

    async def create_instance(
        self,
        object_name: str,
        *,
        instance_token: uuid.UUID | str | None = None,
        instance_timeout: float | None = None,
        heartbeat_timeout: float | None = None,
        labels: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> Created:
        """Create an instance; `created` is False when `instance_token` existed with these arguments."""
        body: dict[str, Any] = {"object_name": object_name}
        if instance_token is not None:
            body["instance_token"] = str(instance_token)
        if instance_timeout is not None:
            body["instance_timeout"] = instance_timeout
        if heartbeat_timeout is not None:
            body["heartbeat_timeout"] = heartbeat_timeout
        if labels:
            body["labels"] = labels
        reply = await self.request(self._commands, "create", body, timeout=timeout)
        data = _data(reply)
        return Created(str(data["instance_token"]), reply.get("message") != ALREADY_EXISTS)

    async def create(
        self,
        object_name: str,
        *,
        instance_token: uuid.UUID | str | None = None,
        instance_timeout: float | None = None,
        heartbeat_timeout: float | None = None,
        labels: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> str:
        """Create an instance and return its token (idempotent with `instance_token`)."""
        created = await self.create_instance(
            object_name,
            instance_token=instance_token,
            instance_timeout=instance_timeout,
            heartbeat_timeout=heartbeat_timeout,
            labels=labels,
            timeout=timeout,
        )
        return created.token

    async def set_status(
        self, token: str, status_name: str, message: str | None = None, *, timeout: float = 10
    ) -> None:
        body: dict[str, Any] = {"instance_token": str(token), "status_name": status_name}
        if message is not None:
            body["status_message"] = message
        await self.call(self._commands, "set-status", body, timeout=timeout)

    async def ping(
        self, token: str, message: str | None = None, code: int | None = None, *, timeout: float = 10
    ) -> str | None:
        """Returns the instance's new deadline (ISO 8601), or None if it has none."""
        body: dict[str, Any] = {"instance_token": str(token)}
        if message is not None:
            body["message"] = message
        if code is not None:
            body["code"] = code
        data = await self.call(self._commands, "ping", body, timeout=timeout)
        deadline = data.get("deadline")
        return str(deadline) if deadline else None

    async def cancel(self, token: str, reason: str | None = None, *, timeout: float = 10) -> None:
        body: dict[str, Any] = {"instance_token": str(token)}
        if reason is not None:
            body["reason"] = reason
        await self.call(self._commands, "cancel", body, timeout=timeout)

    async def set_global_status(
        self, status_name: str, status_message: str | None = None, *, timeout: float = 10
    ) -> None:
        """Record a named event of no instance (the original Statusek's setGlobalStatus)."""
        body: dict[str, Any] = {"status_name": status_name}
        if status_message is not None:
            body["status_message"] = status_message
        await self.call(self._commands, "set-global-status", body, timeout=timeout)
