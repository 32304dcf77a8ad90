"""Passwords out of every URL, log line and error message.

A URL's password is replaced with `***`; the user, host, port and vhost stay,
because they are what an operator needs to tell which broker was meant.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

# scheme://user:password@host — the password ends at the last '@' before the host.
_CREDENTIALS = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)(?P<password>[^\s@/]*)@")
MASK = "***"


def mask_url(url: str) -> str:
    """`amqp://guest:secret@host/` -> `amqp://guest:***@host/`."""
    return mask_secrets(url)


def mask_secrets(text: str) -> str:
    """Mask the password of every URL in `text`."""
    return _CREDENTIALS.sub(lambda m: f"{m['head']}{MASK}@", text)


# The port a URL without one means, so that logs and messages name the one really used.
_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671, "postgresql": 5432, "postgres": 5432}


def url_location(url: str) -> dict[str, str]:
    """Host, port and vhost (or database) of a URL, for log context; never the credentials."""
    parts = urlsplit(url)
    try:
        port = str(parts.port or _DEFAULT_PORTS.get(parts.scheme) or "")
    except ValueError:
        port = ""
    location = {"host": parts.hostname or "", "port": port}
    path = unquote(parts.path[1:]) if parts.path else ""
    return {**location, "path": path}
