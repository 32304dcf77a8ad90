"""`Idempotency-Key`: a command's message_id, so a retried request is applied once and answered the same."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest

from statusek.client import Client
from statusek.worker.worker import Worker
from tests.integration.gateways import Reply, ask, running_gateway

pytestmark = pytest.mark.integration

TASK = "2-POINT LINE TASK"


@pytest.fixture(scope="module")
async def base(worker: Worker, amqp_url: str) -> AsyncIterator[str]:
    async with running_gateway(amqp_url) as url:
        yield url


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, body: object, key: str | None) -> Reply:
    return await ask(http, url, body, headers={"Idempotency-Key": key} if key is not None else None)


async def test_a_retried_create_answers_the_first_instance(base: str, http: aiohttp.ClientSession) -> None:
    """The same key and body twice: one instance, its token both times."""
    key = str(uuid.uuid4())
    first = await post(http, base + "/instance/create", {"object_name": TASK}, key)
    again = await post(http, base + "/instance/create", {"object_name": TASK}, key)
    assert first.json["status"] is True and again.json == first.json


async def test_without_a_key_each_create_is_new(base: str, http: aiohttp.ClientSession) -> None:
    """No key: two requests, two instances (as in the original)."""
    first = await post(http, base + "/instance/create", {"object_name": TASK}, None)
    again = await post(http, base + "/instance/create", {"object_name": TASK}, None)
    assert first.json["data"]["instance_token"] != again.json["data"]["instance_token"]


async def test_a_key_reused_for_another_request_is_422(base: str, http: aiohttp.ClientSession) -> None:
    """The same key with another body: 422, MESSAGE_ID_REUSED, nothing applied."""
    key = str(uuid.uuid4())
    await post(http, base + "/instance/create", {"object_name": TASK}, key)
    reply = await post(http, base + "/instance/create", {"object_name": TASK, "instance_timeout": 60}, key)
    assert reply.status == 422
    assert reply.json == {
        "status": False,
        "message": f"ERROR: Idempotency-Key '{key}' was already used for a different request;"
        " this one was not applied: give every request its own key",
        "data": {},
        "code": "MESSAGE_ID_REUSED",
    }


async def test_a_retried_set_status_succeeds_once(
    base: str, http: aiohttp.ClientSession, amqp_url: str
) -> None:
    """setStatus retried with its key: success both times (not "already set"), one status event."""
    token = (await post(http, base + "/instance/create", {"object_name": TASK}, None)).json["data"][
        "instance_token"
    ]
    key = str(uuid.uuid4())
    body = {"instance_token": token, "status_name": "STARTED"}
    answers = [(await post(http, base + "/status/setStatus", body, key)).json for _ in range(2)]
    assert [a["status"] for a in answers] == [True, True]
    async with await Client.connect(amqp_url) as client:
        events = await client.get_events(token)
    assert [e["status_name"] for e in events if e["kind"] == "status"] == ["STARTED"]


async def test_a_quoted_key_is_the_same_key(base: str, http: aiohttp.ClientSession) -> None:
    """A structured-field string ("…", as the IETF draft writes it) and the bare key are one key."""
    key = str(uuid.uuid4())
    bare = await post(http, base + "/instance/create", {"object_name": TASK}, key)
    quoted = await post(http, base + "/instance/create", {"object_name": TASK}, f'"{key}"')
    assert quoted.json == bare.json


async def test_a_key_sent_with_a_query_is_not_used_up(base: str, http: aiohttp.ClientSession) -> None:
    """Queries are not applied, so their key is ignored: the same key still creates afterwards."""
    key = str(uuid.uuid4())
    await post(http, base + "/instance/checkIsFinished", {"instance_token": str(uuid.uuid4())}, key)
    assert (await post(http, base + "/instance/create", {"object_name": TASK}, key)).json["status"] is True


async def test_a_key_that_cannot_be_a_message_id_is_400(base: str, http: aiohttp.ClientSession) -> None:
    """Over 255 characters (an AMQP message_id's limit): 400, naming the header."""
    reply = await post(http, base + "/instance/create", {"object_name": TASK}, "k" * 256)
    assert reply.status == 400
    assert reply.json["code"] == "INVALID_MESSAGE"
    assert reply.json["message"] == (
        "Error while parameters parsing:"
        " the Idempotency-Key header must be 1 to 255 printable ASCII characters"
    )
