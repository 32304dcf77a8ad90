"""statusek: the neutral record of which task is done, failed or stuck."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from statusek.client import Client as Client


def __getattr__(name: str) -> Any:
    # Lazy, so importing the pure core does not import aio-pika.
    if name == "Client":
        from statusek.client import Client

        return Client
    raise AttributeError(name)
