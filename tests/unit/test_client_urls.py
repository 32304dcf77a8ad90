"""The client's list of broker addresses: each URL checked, one user and vhost for all."""

from __future__ import annotations

import pytest

from statusek.client import Client, check_urls
from statusek.exceptions import InvalidURL

A = "amqp://u:s3cret-a@127.0.0.1:5672/v"
B = "amqp://u:s3cret-a@127.0.0.1:5673/v"


def test_a_list_gives_each_url_and_the_first_is_current() -> None:
    """`a, b` is two addresses; the client names the first until a link is made."""
    client = Client(f"{A} , {B}")
    assert client.urls == [A, B] and client.url == A and client.user == "u"


@pytest.mark.parametrize("value", [f"{A},,{B}", f"{A},http://u:s3cret-a@h/v"])
def test_each_entry_of_a_list_is_checked(value: str) -> None:
    """An empty entry or a URL that is not AMQP makes the whole list invalid, password masked."""
    with pytest.raises(InvalidURL) as caught:
        check_urls(value)
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("other", ["amqp://w:x@127.0.0.1:5673/v", "amqp://u:s3cret-a@127.0.0.1:5673/other"])
def test_the_urls_of_a_list_share_user_and_vhost(other: str) -> None:
    """Addresses of one cluster log in as one user to one vhost: otherwise the list is refused."""
    with pytest.raises(InvalidURL, match="differ in user or vhost"):
        check_urls(f"{A},{other}")
