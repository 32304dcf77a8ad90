"""Where the client connects: AMQP URLs checked, or found in the environment."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from statusek.adapters.rabbitmq.endpoints import split_urls
from statusek.exceptions import InvalidURL
from statusek.redact import mask_url

DEFAULT_URL = "amqp://guest:guest@localhost:5672/"


def check_url(url: str) -> None:
    """Raise InvalidURL unless `url` is an AMQP URL with a host."""
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname or not port_ok:
        raise InvalidURL(
            f"{mask_url(url)!r} is not an AMQP URL: expected amqp://user:password@host:5672/vhost"
        )


def check_urls(value: str) -> list[str]:
    """The URLs of a comma-separated list (one URL is a list of one), each checked by `check_url`.

    Raises InvalidURL for an empty entry, a URL that is not AMQP, or URLs that
    differ in user or vhost: they must be addresses of the same broker cluster.
    """
    try:
        urls = split_urls(value, variable="the AMQP URL")
    except ValueError as e:
        raise InvalidURL(str(e)) from None
    for url in urls:
        check_url(url)
    first = urlsplit(urls[0])
    for url in urls[1:]:
        parts = urlsplit(url)
        if (parts.username, parts.path.rstrip("/")) != (first.username, first.path.rstrip("/")):
            raise InvalidURL(
                f"{mask_url(url)!r} and {mask_url(urls[0])!r} differ in user or vhost: "
                "the URLs of a list are addresses of one broker cluster"
            )
    return urls


def _url_from_environment() -> str:
    """$STATUSEK_AMQP_URL, else the content of the file $STATUSEK_AMQP_URL_FILE (a mounted secret),
    else the local broker."""
    if url := os.environ.get("STATUSEK_AMQP_URL"):
        return url
    if path := os.environ.get("STATUSEK_AMQP_URL_FILE"):
        try:
            with open(path, encoding="utf-8") as secret:
                return secret.read().rstrip("\r\n")
        except OSError as e:
            raise InvalidURL(f"STATUSEK_AMQP_URL_FILE: cannot read {path!r}: {e.strerror or e}") from None
    return DEFAULT_URL
