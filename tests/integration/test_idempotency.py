"""message_id scope and fingerprint, and deadlines: a reply is true whatever the sender repeats."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote, urlsplit

import asyncpg
import pytest

from statusek.adapters.postgres.store import PARTITION_FENCE
from statusek.client import Client, NoAnswerError
from statusek.core.messages import DEADLINE_HEADER
from statusek.core.partitions import routing_headers
from statusek.worker.worker import Worker
from tests.helpers import TASK, command_partitions
from tests.integration.wire import Wire

pytestmark = pytest.mark.integration


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def instances(db: asyncpg.Connection, *tokens: str) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM instances WHERE token = ANY($1::uuid[])", [uuid.UUID(t) for t in tokens]
    )
    return count


def with_deadline(body: Mapping[str, object], deadline: datetime) -> dict[str, object]:
    return {**routing_headers(body), DEADLINE_HEADER: deadline.isoformat()}


async def test_a_reused_message_id_for_another_create_is_refused(wire: Wire, db: asyncpg.Connection) -> None:
    """A second create with a used message_id is MESSAGE_ID_REUSED and creates nothing."""
    message_id, first, second = uuid.uuid4().hex, str(uuid.uuid4()), str(uuid.uuid4())
    created = await wire.request(
        "create", {"object_name": TASK, "instance_token": first}, message_id=message_id
    )
    reused = await wire.request(
        "create", {"object_name": TASK, "instance_token": second}, message_id=message_id
    )
    assert created["code"] == "SUCCESS"
    assert (reused["code"], reused["status"]) == ("MESSAGE_ID_REUSED", False)
    assert message_id in reused["message"] and "not applied" in reused["message"]
    assert (await instances(db, first), await instances(db, second)) == (1, 0)


async def test_a_reused_message_id_for_another_kind_of_command_is_refused(
    wire: Wire, db: asyncpg.Connection
) -> None:
    """A set-status carrying a create's message_id is refused, and the status is not set."""
    message_id, token = uuid.uuid4().hex, str(uuid.uuid4())
    await wire.request("create", {"object_name": TASK, "instance_token": token}, message_id=message_id)
    body = {"instance_token": token, "status_name": "STARTED"}
    reply = await wire.request("set-status", body, message_id=message_id)
    assert reply["code"] == "MESSAGE_ID_REUSED"
    events = await db.fetchval("SELECT count(*) FROM events WHERE instance_token = $1", uuid.UUID(token))
    assert events == 1  # created only


async def test_the_first_command_keeps_its_reply_after_a_reuse(wire: Wire) -> None:
    """After a refused reuse, a repeat of the first command still gets the first reply."""
    message_id, token = uuid.uuid4().hex, str(uuid.uuid4())
    body = {"object_name": TASK, "instance_token": token}
    first = await wire.request("create", body, message_id=message_id)
    await wire.request("cancel", {"instance_token": token}, message_id=message_id)
    assert await wire.request("create", body, message_id=message_id) == first


async def test_a_repeat_serialised_differently_is_the_same_command(
    wire: Wire, db: asyncpg.Connection
) -> None:
    """Key order and spacing do not make a repeat a different command."""
    message_id, token = uuid.uuid4().hex, str(uuid.uuid4())
    first = await wire.request(
        "create", f'{{"object_name": "{TASK}", "instance_token": "{token}"}}'.encode(), message_id=message_id
    )
    again = await wire.request(
        "create", f'{{"instance_token":"{token}","object_name":"{TASK}"}}'.encode(), message_id=message_id
    )
    assert first == again and first["code"] == "SUCCESS"
    assert await instances(db, token) == 1


async def test_message_ids_are_scoped_by_sender(wire: Wire, db: asyncpg.Connection, amqp_url: str) -> None:
    """The same message_id from another sender (user_id) is another command, applied."""
    user = unquote(urlsplit(amqp_url).username or "guest")
    message_id, mine, theirs = uuid.uuid4().hex, str(uuid.uuid4()), str(uuid.uuid4())
    anonymous = await wire.request(
        "create", {"object_name": TASK, "instance_token": mine}, message_id=message_id
    )
    as_guest = await wire.request(
        "create", {"object_name": TASK, "instance_token": theirs}, message_id=message_id, user_id=user
    )
    assert (anonymous["code"], as_guest["code"]) == ("SUCCESS", "SUCCESS")
    assert await instances(db, mine, theirs) == 2


async def test_a_command_past_its_deadline_is_expired_and_not_applied(
    wire: Wire, db: asyncpg.Connection
) -> None:
    """A deadline already passed gets EXPIRED, and the instance is not created."""
    token = str(uuid.uuid4())
    body = {"object_name": TASK, "instance_token": token}
    past = datetime.now(UTC) - timedelta(seconds=1)
    reply = await wire.request("create", body, message_id=uuid.uuid4().hex, headers=with_deadline(body, past))
    assert (reply["code"], reply["status"]) == ("EXPIRED", False)
    assert DEADLINE_HEADER in reply["message"]
    assert await instances(db, token) == 0


async def test_an_expired_command_applies_when_retried_in_time(wire: Wire, db: asyncpg.Connection) -> None:
    """EXPIRED is not recorded: the same message_id with a later deadline is applied once."""
    message_id, token = uuid.uuid4().hex, str(uuid.uuid4())
    body = {"object_name": TASK, "instance_token": token}
    past, future = datetime.now(UTC) - timedelta(seconds=1), datetime.now(UTC) + timedelta(seconds=30)
    await wire.request("create", body, message_id=message_id, headers=with_deadline(body, past))
    retried = await wire.request("create", body, message_id=message_id, headers=with_deadline(body, future))
    again = await wire.request("create", body, message_id=message_id, headers=with_deadline(body, past))
    assert retried["code"] == "SUCCESS"
    assert again == retried  # a repeat of an applied command gets its reply, deadline or not
    assert await instances(db, token) == 1


async def test_refused_commands_are_not_counted_as_applied(wire: Wire, worker: Worker) -> None:
    """An EXPIRED command and a reused message_id leave the worker's count of applied commands as it was."""
    message_id, token = uuid.uuid4().hex, str(uuid.uuid4())
    body = {"object_name": TASK, "instance_token": token}
    await wire.request("create", body, message_id=message_id)
    before = worker.partitions.applied
    past = datetime.now(UTC) - timedelta(seconds=1)
    other = {"object_name": TASK, "instance_token": str(uuid.uuid4())}
    expired = await wire.request(
        "create", other, message_id=uuid.uuid4().hex, headers=with_deadline(other, past)
    )
    reused = await wire.request("create", other, message_id=message_id)
    assert (expired["code"], reused["code"]) == ("EXPIRED", "MESSAGE_ID_REUSED")
    assert worker.partitions.applied == before


async def test_a_deadline_without_offset_is_invalid(wire: Wire) -> None:
    """A deadline with no UTC offset is INVALID_MESSAGE naming the header."""
    body = {"object_name": TASK}
    headers = {DEADLINE_HEADER: "2030-01-01T00:00:00"}
    reply = await wire.request("create", body, message_id=uuid.uuid4().hex, headers=headers)
    assert reply["code"] == "INVALID_MESSAGE" and DEADLINE_HEADER in reply["message"]


async def test_a_nul_in_message_id_is_invalid(wire: Wire) -> None:
    """A NUL in message_id is INVALID_MESSAGE, not a store failure."""
    reply = await wire.request("create", {"object_name": TASK}, message_id="a\x00b")
    assert reply["code"] == "INVALID_MESSAGE" and "message_id" in reply["message"]
    assert reply["data"]["reason"] == "schema-violation"


async def test_commands_held_past_the_clients_timeout_are_never_applied(
    worker: object, amqp_url: str, db: asyncpg.Connection
) -> None:
    """Creates delivered but held (fence taken) until after the client gave up are all EXPIRED."""
    client = await Client.connect(amqp_url)
    holder = db
    tokens = [str(uuid.uuid4()) for _ in range(5)]
    try:
        # Every partition's windows wait on their fence: delivered to the worker, not applied.
        partitions = command_partitions()
        async with holder.transaction():
            await holder.execute(
                "SELECT pg_advisory_xact_lock($1, p) FROM generate_series(0, $2 - 1) AS p",
                PARTITION_FENCE,
                partitions,
            )
            results = await asyncio.gather(
                *(client.create(TASK, instance_token=t, timeout=1.5) for t in tokens), return_exceptions=True
            )
        assert all(isinstance(r, NoAnswerError) for r in results), results
        await asyncio.sleep(2)  # the held windows now apply: past their deadline
    finally:
        await client.close()
    assert await instances(db, *tokens) == 0
