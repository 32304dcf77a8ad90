"""statusek.client's public face: the names users import, over private modules."""

from __future__ import annotations

import importlib

import pytest

import statusek.client

# What users import from statusek.client today (README, docs, tests, benchmarks, src).
PUBLIC = {
    "BrokerUnreachable",
    "Client",
    "Created",
    "Heartbeat",
    "InstanceFinishedError",
    "InstanceNotFound",
    "InvalidRequest",
    "InvalidURL",
    "NoAnswerError",
    "NotAllowed",
    "NotificationsInterrupted",
    "StatusNotReady",
    "StatusekClientError",
    "StatusekRejected",
    "TokenConflict",
    "TopologyNotFound",
    "WaitTimeoutError",
    "check_url",
    "check_urls",
    "expiration_for",
    "rejection",
}


def test_all_lists_the_public_names() -> None:
    """__all__ is exactly the names users import from statusek.client."""
    assert set(statusek.client.__all__) == PUBLIC
    assert len(statusek.client.__all__) == len(PUBLIC)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_each_public_name_is_importable(name: str) -> None:
    """Every public name imports from statusek.client itself, as `from statusek.client import name`."""
    module = importlib.import_module("statusek.client")
    assert getattr(module, name) is not None


def test_no_public_name_is_private() -> None:
    """No name of __all__ starts with an underscore."""
    assert [name for name in statusek.client.__all__ if name.startswith("_")] == []


def test_the_lazy_names_of_statusek_are_the_clients() -> None:
    """statusek.Client, Created and Heartbeat are statusek.client's."""
    import statusek

    assert statusek.Client is statusek.client.Client
    assert statusek.Created is statusek.client.Created
    assert statusek.Heartbeat is statusek.client.Heartbeat
