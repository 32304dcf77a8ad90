"""Translation of asyncpg's exceptions into statusek's action-based errors."""

from __future__ import annotations

import asyncio

import asyncpg

from statusek.adapters.tls import tls_failure
from statusek.adapters.translation import Translating
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


def _translate(e: BaseException) -> Exception | None:
    """What statusek raises for asyncpg's `e`, by the action it calls for; None for other errors."""
    if isinstance(e, _TRANSIENT):
        why = (
            tls_failure(e, server="Postgres", parameters=("sslrootcert", "sslcert", "sslkey"))
            or f"{type(e).__name__}: {e}"
        )
        return StoreUnavailable(mask_secrets(f"postgres unavailable: {why}"))
    if isinstance(e, asyncpg.PostgresError):
        return StoreFailure(mask_secrets(f"postgres refused: {type(e).__name__}: {e}"))
    return None


_TRANSLATED = Translating(_translate)


def translated() -> Translating:
    """`async with translated():` around asyncpg calls raises statusek's errors (`_translate`)."""
    return _TRANSLATED
