"""Who sent a command: RabbitMQ-validated user_id, the models' writer lists, the recorded actor."""

from __future__ import annotations

import json
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import aio_pika
import pytest

from statusek.client import Client, InstanceNotFound, NotAllowed
from statusek.settings import Settings
from statusek.testing import Services, fresh_database, fresh_vhost, running_worker
from tests.helpers import statusek
from tests.integration.wire import Wire
from tests.log_secrets import new_password, with_credentials

pytestmark = pytest.mark.integration

GUARDED_MODEL = """
object_name: GUARDED JOB
writers: [{author}]
statuses:
  - name: STARTED
    type: MANDATORY
  - name: DONE
    type: MANDATORY
    after: [STARTED]
"""


@dataclass(frozen=True)
class Party:
    """A RabbitMQ user of the test vhost, and its URL."""

    name: str
    url: str


@dataclass(frozen=True)
class Guarded:
    admin_url: str
    author: Party  # the only model-level writer of GUARDED JOB
    alice: Party  # in the reviewers group
    mallory: Party  # named nowhere


@pytest.fixture(scope="module")
def parties(services: Services) -> Iterator[tuple[str, dict[str, Party]]]:
    """A fresh vhost with three users of their own, removed afterwards."""
    suffix = secrets.token_hex(3)
    with fresh_vhost(services.amqp_url, admin=services.rabbit) as admin_url:
        vhost = unquote(urlsplit(admin_url).path[1:])
        made: dict[str, Party] = {}
        try:
            for role in ("author", "alice", "mallory"):
                name, secret = f"{role}-{suffix}", new_password(16)
                services.rabbit.rabbitmqctl("add_user", name, secret)
                made[role] = Party(name, with_credentials(admin_url, name, secret))
                services.rabbit.set_permissions(vhost, name)
            yield admin_url, made
        finally:
            for party in made.values():
                services.rabbit.rabbitmqctl("delete_user", party.name)


@pytest.fixture(scope="module")
async def guarded(
    services: Services,
    parties: tuple[str, dict[str, Party]],
    models_path: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Guarded]:
    """A worker whose groups make alice a reviewer, with GUARDED JOB written only by the author."""
    admin_url, made = parties
    folder = tmp_path_factory.mktemp("guarded")
    (folder / "models").mkdir()
    (folder / "models" / "guarded.yaml").write_text(GUARDED_MODEL.format(author=made["author"].name))
    groups = folder / "groups.yaml"
    groups.write_text(f"groups:\n  reviewers: [{made['alice'].name}]\n")
    async with fresh_database(services.database_url) as database_url:
        settings = Settings(
            amqp_url=admin_url,
            database_url=database_url,
            models_path=f"{models_path}:{folder / 'models'}",
            groups_path=str(groups),
            global_status_writers=["reviewers"],
            log_level="WARNING",
            ops_port=0,
        )
        async with running_worker(settings):
            yield Guarded(admin_url, made["author"], made["alice"], made["mallory"])


@pytest.fixture
async def as_user(guarded: Guarded) -> AsyncIterator[dict[str, Client]]:
    clients = {
        role: await Client.connect(getattr(guarded, role).url) for role in ("author", "alice", "mallory")
    }
    yield clients
    for client in clients.values():
        await client.close()


async def test_a_forged_user_id_is_refused_by_the_broker(
    guarded: Guarded, as_user: dict[str, Client]
) -> None:
    """mallory cannot publish as alice: RabbitMQ closes the channel and nothing is applied."""
    token = str(uuid.uuid4())
    connection = await aio_pika.connect(guarded.mallory.url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("statusek.commands", ensure=False)
        body = json.dumps({"object_name": "DOCUMENT REVIEW", "instance_token": token}).encode()
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed, match="user_id"):
            await exchange.publish(
                aio_pika.Message(body, user_id=guarded.alice.name, message_id=token), routing_key="create"
            )
    finally:
        await connection.close()
    with pytest.raises(InstanceNotFound):
        await as_user["alice"].get_instance(token)


async def test_only_a_reviewer_may_approve(as_user: dict[str, Client], guarded: Guarded) -> None:
    """The shipped DOCUMENT REVIEW keeps APPROVED for the reviewers group: NOT_ALLOWED for others."""
    token = await as_user["author"].create("DOCUMENT REVIEW")
    await as_user["author"].set_status(token, "SUBMITTED")
    with pytest.raises(NotAllowed) as refused:
        await as_user["mallory"].set_status(token, "APPROVED")
    assert refused.value.code == "NOT_ALLOWED"
    assert f"'{guarded.mallory.name}'" in str(refused.value) and "'APPROVED'" in str(refused.value)
    await as_user["alice"].set_status(token, "APPROVED")
    assert await as_user["author"].is_finished(token) == (True, "ALL_MANDATORY_STATUSES_ARE_SET")


async def test_is_ready_answers_for_the_asking_user(as_user: dict[str, Client], guarded: Guarded) -> None:
    """After SUBMITTED, APPROVED is ready for alice and not for mallory, who is told why."""
    token = await as_user["author"].create("DOCUMENT REVIEW")
    await as_user["author"].set_status(token, "SUBMITTED")
    assert (await as_user["alice"].is_ready(token, "APPROVED"))[0] is True
    ready, why = await as_user["mallory"].is_ready(token, "APPROVED")
    assert ready is False and guarded.mallory.name in why


async def test_events_and_notifications_record_the_actor(
    as_user: dict[str, Client], guarded: Guarded
) -> None:
    """get-events and both notifications name the user that caused each event."""
    wire = await Wire.open(guarded.admin_url)
    try:
        token = await as_user["author"].create("DOCUMENT REVIEW")
        await as_user["author"].set_status(token, "SUBMITTED")
        await as_user["alice"].set_status(token, "APPROVED")
        events = await as_user["mallory"].get_events(token)
        finished = await wire.finished(token)
        notifications = await wire.wait_notifications(token, 3)
    finally:
        await wire.close()
    author, alice = guarded.author.name, guarded.alice.name
    assert [(e["kind"], e["actor"]) for e in events] == [
        ("created", author),
        ("status", author),
        ("status", alice),
        ("finished", alice),
    ]
    assert [json.loads(m.body)["actor"] for m in notifications if m.type == "status-changed"] == [
        author,
        alice,
    ]
    assert json.loads(finished.body)["actor"] == alice


async def test_statusek_show_names_the_actor(as_user: dict[str, Client], guarded: Guarded) -> None:
    """The CLI's event table has a BY column with the user."""
    token = await as_user["author"].create("DOCUMENT REVIEW")
    await as_user["alice"].set_status(token, "SUBMITTED")
    env = {**os.environ, "STATUSEK_AMQP_URL": guarded.mallory.url}
    shown = (await statusek(env, "show", token)).stdout
    header, *rows = shown.split("SEQ", 1)[1].splitlines()
    assert "BY" in header
    assert guarded.author.name in rows[0] and guarded.alice.name in rows[1], shown


async def test_model_writers_guard_create_ping_and_cancel(
    as_user: dict[str, Client], guarded: Guarded
) -> None:
    """GUARDED JOB names only the author: mallory may neither create, ping nor cancel it."""
    with pytest.raises(NotAllowed, match="create"):
        await as_user["mallory"].create("GUARDED JOB")
    token = await as_user["author"].create("GUARDED JOB")
    with pytest.raises(NotAllowed, match="ping"):
        await as_user["mallory"].ping(token)
    with pytest.raises(NotAllowed, match="cancel"):
        await as_user["mallory"].cancel(token)
    await as_user["author"].cancel(token)
    assert await as_user["author"].is_finished(token) == (True, "CANCELLED")


async def test_a_command_without_user_id_is_anonymous(guarded: Guarded) -> None:
    """The management UI sends no user_id: open models record `anonymous`, guarded ones refuse it."""
    wire = await Wire.open(guarded.admin_url)
    try:
        refused = await wire.request("create", {"object_name": "GUARDED JOB"})
        created = await wire.request("create", {"object_name": "DOCUMENT REVIEW"})
        token = created["data"]["instance_token"]
        events = await wire.query("get-events", {"instance_token": token})
    finally:
        await wire.close()
    assert refused["code"] == "NOT_ALLOWED" and "'anonymous'" in refused["message"]
    assert [e["actor"] for e in events["data"]["events"]] == ["anonymous"]


async def test_global_status_writers_come_from_the_settings(
    as_user: dict[str, Client], guarded: Guarded
) -> None:
    """STATUSEK_GLOBAL_STATUS_WRITERS=["reviewers"]: alice may set one, mallory gets NOT_ALLOWED."""
    name = f"DEPLOYED {uuid.uuid4().hex[:6]}"
    with pytest.raises(NotAllowed, match=guarded.mallory.name):
        await as_user["mallory"].set_global_status(name)
    await as_user["alice"].set_global_status(name, "v2")
    page = await as_user["mallory"].get_global_events(status_name=name)
    assert [(e["message"], e["actor"]) for e in page["events"]] == [("v2", guarded.alice.name)]
