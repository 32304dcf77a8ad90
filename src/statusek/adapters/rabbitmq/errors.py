"""What went wrong with the broker: aio-pika and aiormq errors described for a person, and
translated to `BrokerUnavailable`.

The broker, the endpoints that dial it, impersonation and the client all say their failures
the same way, from here.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import aio_pika
import aiormq

from statusek.adapters.tls import tls_failure
from statusek.adapters.translation import Translating
from statusek.core.errors import BrokerUnavailable
from statusek.redact import mask_secrets, url_location

_BROKER_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    aio_pika.exceptions.AMQPException,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    RuntimeError,  # aio-pika raises it for "channel closed" in a few places
)


def _translate(e: BaseException) -> Exception | None:
    """`BrokerUnavailable` (retry later) for aiormq's and aio-pika's link errors; None for others."""
    if isinstance(e, _BROKER_ERRORS) or link_dropped(e):
        return BrokerUnavailable(mask_secrets(f"rabbitmq unavailable: {describe(e)}"))
    return None


class LinkDropped(aiormq.exceptions.AMQPConnectionError):
    """aiormq dropped a connection without the broker's last word (a link error)."""


_DROPPED = (
    "the link to the broker was dropped without its answer (silent past the heartbeat grace, "
    "or closed while the broker did not answer)"
)


def link_dropped(e: BaseException) -> bool:
    """Whether `e` is aiormq dropping a link, not a cancellation of the task that sees it.

    When aiormq's reader task of a connection ends cancelled, it closes the connection with that
    `CancelledError`, and every future on the connection (a confirm, a write's drain, an ack)
    raises it in whoever awaits it. The reader is cancelled when the link sent nothing for its
    heartbeat grace ((heartbeat + 1) * 3 s), and when the connection is closed and the broker
    does not answer the close within 2 s (a broker going away, a black-holed link): a client that
    drops a bad link and makes another does exactly that. Nobody cancelled the task that sees it,
    and it must not stop as if someone had: it is told the link is gone, as for a reset.
    """
    if not isinstance(e, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0


def _as_link_error(e: BaseException) -> Exception | None:
    return LinkDropped(_DROPPED) if link_dropped(e) else None


_DROPPED_LINK_AS_ERROR = Translating(_as_link_error)


def dropped_link_as_error() -> Translating:
    """`async with` it around a wait on the broker whose caller catches link errors itself (the
    client's requests): a `CancelledError` from a link aiormq dropped is raised as `LinkDropped`."""
    return _DROPPED_LINK_AS_ERROR


_TRANSLATED = Translating(_translate)


def translated() -> Translating:
    """`async with translated():` around aio-pika and aiormq calls raises `BrokerUnavailable`."""
    return _TRANSLATED


def describe(e: BaseException, url: str | None = None) -> str:
    """One line for an aiormq error; its repr of a Connection.Close frame says nothing to a person.

    Given the URL that was dialled, the line names the user, vhost, host and
    port concerned (never the password).
    """
    where = url_location(url) if url else None
    # Each gives None (never an empty line) when `e` is not its kind: the first that knows `e` tells.
    if link_dropped(e) or isinstance(e, LinkDropped):
        return _DROPPED
    line = (
        tls_failure(e, server="RabbitMQ", parameters=("cafile", "certfile", "keyfile"))
        or _login_refused(e, url, where)
        or _vhost_refused(e, url, where)
        or _unreachable(e, where)
        or _cut_off(e)
    )
    return line or f"{type(e).__name__}: {e}"


def _login_refused(e: BaseException, url: str | None, where: dict[str, str] | None) -> str | None:
    """The broker ended the connection during the login (aiormq's ProbableAuthenticationError)."""
    if not isinstance(e, aiormq.exceptions.ProbableAuthenticationError):
        return None
    if where is not None:
        return f"the broker refused the login of user {_user(url)!r}: wrong user or password"
    return "the broker closed the connection during login: wrong user or password, or no access to the vhost"


def _vhost_refused(e: BaseException, url: str | None, where: dict[str, str] | None) -> str | None:
    """The broker refused the vhost: an incompatible-protocol error or a Connection.Close frame."""
    if not (isinstance(e, aiormq.exceptions.IncompatibleProtocolError) or "Connection.Close" in str(e)):
        return None
    if where is not None:
        vhost = where["path"] or "/"
        return f"the broker refused vhost {vhost!r}: it does not exist, or user {_user(url)!r} may not use it"
    return "the broker refused the connection: the vhost does not exist or the user may not use it"


def _user(url: str | None) -> str:
    """The user the URL logs in as; none is RabbitMQ's default."""
    return urlsplit(url or "").username or "guest"


def _unreachable(e: BaseException, where: dict[str, str] | None) -> str | None:
    """No broker reached: no answer, nothing listening, or no such host."""
    if isinstance(e, asyncio.TimeoutError):
        return "no answer from the broker in time (a firewall, or the wrong host or port?)"
    errno = e.args[0] if isinstance(e, aiormq.exceptions.AMQPConnectionError) and e.args else None
    if errno == 111 or isinstance(e, ConnectionRefusedError):
        return "connection refused: nothing listens there (is RabbitMQ running, and is the port right?)"
    if errno in (-2, -3, -5):
        host = where["host"] if where is not None else "the host"
        return f"{host!r} is not a known host name"
    return None


def _cut_off(e: BaseException) -> str | None:
    """A connection that was made, then ended by the other side or something in between."""
    if "connection reset" in str(e).lower():
        return "the connection was reset (the broker went away, or something in between cut the link)"
    if "unexpectedly closed" in str(e):
        return "the server closed the connection at once: is this RabbitMQ's AMQP port (5672)?"
    return None
