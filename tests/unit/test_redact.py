"""Passwords never leave the process in a URL."""

from __future__ import annotations

import pytest

from statusek.redact import mask_secrets, mask_url, url_location


def test_mask_url_hides_the_password() -> None:
    """The password of an AMQP URL becomes ***; user, host and vhost stay."""
    assert mask_url("amqp://worker:s3cret@rabbit:5672/statusek") == "amqp://worker:***@rabbit:5672/statusek"


def test_mask_secrets_masks_every_url_in_a_text() -> None:
    """Each URL in a message is masked, whatever the scheme."""
    text = "cannot reach amqps://a:b@h1/ nor postgresql://u:p%40ss@db:5432/x"
    assert mask_secrets(text) == "cannot reach amqps://a:***@h1/ nor postgresql://u:***@db:5432/x"


def test_a_url_without_password_is_unchanged() -> None:
    """A URL without credentials, or with a user only, is left as it is."""
    for url in ("amqp://rabbit/", "postgresql://postgres@127.0.0.1:5432/statusek"):
        assert mask_secrets(url) == url


def test_url_location_names_host_port_and_vhost() -> None:
    """Log context gets where a URL points, not who logs in."""
    assert url_location("amqp://u:p@rabbit:5673/statusek%2Fa") == {
        "host": "rabbit",
        "port": "5673",
        "path": "statusek/a",
    }


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("amqp://u:p@h/v", "5672"),
        ("amqps://u:p@h/v", "5671"),
        ("postgresql://u@h/db", "5432"),
        ("amqps://h:1/", "1"),
    ],
)
def test_a_url_without_port_is_located_at_its_scheme_default(url: str, port: str) -> None:
    """amqps:// without a port means 5671, not 5672."""
    assert url_location(url)["port"] == port
