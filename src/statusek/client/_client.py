"""The Client: connecting, commands, queries, notifications and the heartbeat helper in one object."""

from __future__ import annotations

from types import TracebackType

from statusek.client._commands import _Commands
from statusek.client._heartbeat import Heartbeat
from statusek.client._notifications import _Notifications
from statusek.client._urls import _url_from_environment


class Client(_Commands, _Notifications):
    """A client of statusek (see the package's docstring).

    Its methods are defined by the classes it is made of, one module each: the link in
    `_connection`, requests in `_rpc`, then `_commands`, `_queries` and `_notifications`.
    """

    @classmethod
    async def connect(
        cls,
        url: str | None = None,
        *,
        timeout: float = 10,
        commands_exchange: str = "statusek.commands",
        queries_exchange: str = "statusek.queries",
        events_exchange: str = "statusek.events",
    ) -> Client:
        """Connect to `url`, else $STATUSEK_AMQP_URL (or $STATUSEK_AMQP_URL_FILE's file), else the
        local broker, within `timeout` seconds.

        Raises InvalidURL for a URL that is not AMQP, TopologyNotFound when
        the vhost has no statusek exchanges, and BrokerUnreachable when the
        broker cannot be reached or refuses the login or the vhost.
        """
        client = cls(
            url or _url_from_environment(),
            commands_exchange=commands_exchange,
            queries_exchange=queries_exchange,
            events_exchange=events_exchange,
            connect_timeout=timeout,
        )
        await client._start(timeout)
        return client

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def heartbeat(self, token: str, every: float, message: str | None = None) -> Heartbeat:
        """Ping `token` every `every` seconds while the block runs (see `Heartbeat`)."""
        return Heartbeat(self, str(token), every, message)
