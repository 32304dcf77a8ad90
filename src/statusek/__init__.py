"""statusek: the neutral record of which task is done, failed or stuck.

    from statusek import Client, InstanceFinishedError, NoAnswerError

The exceptions import without aio-pika; `Client` and `Heartbeat` are loaded
on first use, so importing the pure core does not import aio-pika.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from statusek.exceptions import (
    BrokerUnreachable,
    InstanceFinishedError,
    InstanceNotFound,
    InvalidRequest,
    InvalidURL,
    MessageIdReused,
    NoAnswerError,
    NotAllowed,
    NotificationsInterrupted,
    StatusekClientError,
    StatusekRejected,
    StatusNotReady,
    TokenConflict,
    TopologyNotFound,
    WaitTimeoutError,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from statusek.client import Client as Client
    from statusek.client import Created as Created
    from statusek.client import Heartbeat as Heartbeat

__all__ = [
    "BrokerUnreachable",
    "Client",
    "Created",
    "Heartbeat",
    "InstanceFinishedError",
    "InstanceNotFound",
    "InvalidRequest",
    "InvalidURL",
    "MessageIdReused",
    "NoAnswerError",
    "NotAllowed",
    "NotificationsInterrupted",
    "StatusNotReady",
    "StatusekClientError",
    "StatusekRejected",
    "TokenConflict",
    "TopologyNotFound",
    "WaitTimeoutError",
]

_LAZY = {"Client", "Created", "Heartbeat"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from statusek import client

        return getattr(client, name)
    raise AttributeError(f"module 'statusek' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
