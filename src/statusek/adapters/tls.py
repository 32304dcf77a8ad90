"""One line for a TLS failure, whichever driver (aiormq, asyncpg) met it.

The drivers raise `ssl` errors, sometimes wrapped (aiormq: `AMQPConnectionError`
from an `SSLCertVerificationError`); the line says that it is TLS, what failed,
and which URL parameter to look at. It names no URL, so it carries no password.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator

# OpenSSL's X509_V_ERR_* codes that the hint depends on.
_HOSTNAME_MISMATCH = {62, 64}  # host name, IP address
_VALIDITY = {9, 10}  # not yet valid, expired


def _causes(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        # Only what was raised `from` it: an error handled on the way (asyncpg's missing
        # default root.crt) is not the one to report.
        current = current.__cause__


def tls_failure(e: BaseException, *, server: str, parameters: tuple[str, ...]) -> str | None:
    """What went wrong with TLS in `e` or its causes, for a person; None when TLS is not the problem.

    `server` names the peer ("RabbitMQ"); `parameters` are the URL parameters naming the TLS files,
    the CA's first (("cafile", "certfile", "keyfile")).
    """
    ca = parameters[0]
    for cause in _causes(e):
        if isinstance(cause, ssl.SSLCertVerificationError):
            why = getattr(cause, "verify_message", None) or getattr(cause, "reason", None) or "rejected"
            code = getattr(cause, "verify_code", None)
            if code in _HOSTNAME_MISMATCH:
                hint = "connect by a host name or IP address that the certificate names"
            elif code in _VALIDITY:
                hint = "the server's certificate must be renewed"
            else:
                hint = f"the URL's {ca} must name the CA that signed the server's certificate"
            return (
                f"TLS certificate verification failed: the certificate of {server} is not trusted "
                f"({why}): {hint}"
            )
        if isinstance(cause, ssl.SSLError):
            # reason and library are set by OpenSSL's side of the ssl module, not by every raiser.
            why = getattr(cause, "reason", None) or str(cause)
            if getattr(cause, "library", None) in ("PEM", "X509"):
                return (
                    f"cannot load a TLS certificate or key ({why}): check the URL's {', '.join(parameters)}"
                )
            return f"TLS handshake with {server} failed ({why}): does this port take TLS connections?"
        if isinstance(cause, FileNotFoundError) and cause.filename is None:
            # ssl's loaders name no file; nothing else looks for one while connecting (a socket's
            # PermissionError may be a firewall, so that one is left as it is).
            return f"cannot read a TLS file named in the URL ({', '.join(parameters)}): {cause.strerror}"
    return None
