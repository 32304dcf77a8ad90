"""Translation of asyncpg's exceptions into statusek's action-based errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from statusek.adapters.tls import tls_failure
from statusek.core.errors import StoreFailure, StoreUnavailable
from statusek.redact import mask_secrets

# Errors after which the same transaction will succeed once retried.
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,  # includes a connection closed under us
    # A server error outside any query (a FATAL whose close has not arrived yet) leaves asyncpg's
    # protocol refusing every statement with "another operation is in progress": the link is dead.
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.LockNotAvailableError,
    asyncpg.QueryCanceledError,
)


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    try:
        yield
    except _TRANSIENT as e:
        why = (
            tls_failure(e, server="Postgres", parameters=("sslrootcert", "sslcert", "sslkey"))
            or f"{type(e).__name__}: {e}"
        )
        raise StoreUnavailable(mask_secrets(f"postgres unavailable: {why}")) from e
    except asyncpg.PostgresError as e:
        raise StoreFailure(mask_secrets(f"postgres refused: {type(e).__name__}: {e}")) from e
