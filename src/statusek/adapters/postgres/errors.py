"""Translation of asyncpg's exceptions into statusek's action-based errors."""

from __future__ import annotations

import asyncio
from types import TracebackType

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


class _Translated:
    """`async with translated():` raises asyncpg's errors as statusek's, by the action they call for.

    A class rather than an `asynccontextmanager`: it wraps every statement, and a generator-based
    context manager costs an async generator and two resumptions each time.
    """

    __slots__ = ()

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, kind: type[BaseException] | None, e: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if isinstance(e, _TRANSIENT):
            why = (
                tls_failure(e, server="Postgres", parameters=("sslrootcert", "sslcert", "sslkey"))
                or f"{type(e).__name__}: {e}"
            )
            raise StoreUnavailable(mask_secrets(f"postgres unavailable: {why}")) from e
        if isinstance(e, asyncpg.PostgresError):
            raise StoreFailure(mask_secrets(f"postgres refused: {type(e).__name__}: {e}")) from e


_TRANSLATED = _Translated()


def translated() -> _Translated:
    return _TRANSLATED
