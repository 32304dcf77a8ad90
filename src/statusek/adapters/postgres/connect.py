"""How statusek connects to Postgres: every connection bounded in time, and kept alive.

A black-holed database (packets dropped, nothing refused) must never hold a
worker: every connection attempt, statement and open transaction has a bound,
and TCP keepalives on both ends find a peer that vanished without a word.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import asyncpg

# The server's statement_timeout ends a slow statement with an error the worker can read; the
# client's command timeout, this much later, is only for a link that no longer answers at all.
CLIENT_MARGIN = 2.0


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """Timeouts (seconds) and TCP keepalives of every connection a worker opens.

    docs/operations.md, "Settings", lists them.
    """

    connect_timeout: float = 5.0
    statement_timeout: float = 10.0
    lock_timeout: float = 5.0
    idle_in_transaction_timeout: float = 10.0
    keepalives_idle: int = 10
    keepalives_interval: int = 5
    keepalives_count: int = 3

    @property
    def command_timeout(self) -> float:
        return self.statement_timeout + CLIENT_MARGIN

    def server_settings(self) -> dict[str, str]:
        """Session settings sent at connect (USERSET: any role may set them)."""
        return {
            "statement_timeout": _ms(self.statement_timeout),
            "lock_timeout": _ms(self.lock_timeout),
            # A client that vanished mid-transaction would otherwise hold its locks, and the
            # partition fence, until the server's keepalives give up: a standby waits for it.
            "idle_in_transaction_session_timeout": _ms(self.idle_in_transaction_timeout),
            "tcp_keepalives_idle": str(self.keepalives_idle),
            "tcp_keepalives_interval": str(self.keepalives_interval),
            "tcp_keepalives_count": str(self.keepalives_count),
        }

    def connect_kwargs(self) -> dict[str, Any]:
        """Arguments for `asyncpg.connect` and `asyncpg.create_pool`."""
        return {
            "timeout": self.connect_timeout,
            "command_timeout": self.command_timeout,
            "server_settings": self.server_settings(),
        }

    def keep_alive(self, conn: asyncpg.Connection) -> None:
        """Turn on the client's TCP keepalives on `conn`'s socket (nothing for a Unix socket).

        libpq's `keepalives_idle` and friends are not asyncpg options: the socket is set here.
        TCP_USER_TIMEOUT also ends a link whose sent data goes unacknowledged that long, which
        keepalives alone never do (they only probe an idle link).
        """
        transport = conn._transport  # asyncpg exposes no public handle on its socket
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", self.keepalives_idle),
            ("TCP_KEEPINTVL", self.keepalives_interval),
            ("TCP_KEEPCNT", self.keepalives_count),
            (
                "TCP_USER_TIMEOUT",
                1000 * (self.keepalives_idle + self.keepalives_interval * self.keepalives_count),
            ),
        ):
            option = getattr(socket, name, None)  # Linux has all four; others some
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _ms(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))


async def connect(dsn: str, options: ConnectOptions) -> asyncpg.Connection:
    """One connection outside the pool, bounded and kept alive like the pool's."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn, **options.connect_kwargs())
    try:
        options.keep_alive(conn)
    except OSError:
        conn.terminate()
        raise
    return conn
