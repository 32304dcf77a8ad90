"""Who calls the gateway: HTTP Basic against the users file, each request published as its caller.

A worker of its own (groups: alice is a reviewer of the shipped DOCUMENT
REVIEW), a gateway whose RabbitMQ user has the impersonator tag, and three
HTTP users, none of them a RabbitMQ user: the worker sees each as the sender.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp
import pytest

from statusek.adapters.rabbitmq.impersonation import impersonation_problem
from statusek.cli.remote import EXIT_USAGE
from statusek.client import Client
from statusek.gateway.users import Authenticator, Users, hash_password, users_line
from statusek.settings import Settings
from statusek.testing import Services, fresh_database, fresh_vhost, running_worker
from statusek.worker.worker import Worker
from tests.integration.gateways import Reply, ask, basic, running_gateway
from tests.log_secrets import new_password, with_credentials

pytestmark = pytest.mark.integration

HTTP_USERS = ("billing", "alice", "mallory")


@dataclass(frozen=True)
class Stack:
    admin_url: str  # the vhost, as the broker's administrator
    gateway_amqp_url: str  # the vhost, as the gateway's user (impersonator)
    base: str  # the gateway's HTTP base URL
    passwords: dict[str, str]  # HTTP user -> password


@pytest.fixture(scope="module")
def impersonator(services: Services) -> Iterator[tuple[str, str]]:
    """A RabbitMQ user with the impersonator tag (and no other): name and password.

    The stack gives it statusek-client's permissions, which a gateway needs.
    """
    name, secret = f"statusek-gateway-{secrets.token_hex(3)}", new_password(16)
    services.rabbit.rabbitmqctl("add_user", name, secret)
    try:
        services.rabbit.rabbitmqctl("set_user_tags", name, "impersonator")
        yield name, secret
    finally:
        services.rabbit.rabbitmqctl("delete_user", name)


def users_file(folder: Path, passwords: dict[str, str]) -> Path:
    path = folder / "gateway-users"
    # Small scrypt parameters: the check is what is tested, not its cost.
    lines = [users_line(name, hash_password(secret, log_n=4, r=1, p=1)) for name, secret in passwords.items()]
    path.write_text("# the gateway's users\n" + "\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
async def stack(
    services: Services,
    impersonator: tuple[str, str],
    models_path: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    folder = tmp_path_factory.mktemp("gateway-auth")
    groups = folder / "groups.yaml"
    groups.write_text("groups:\n  reviewers: [alice]\n")
    passwords = {name: new_password(12) for name in HTTP_USERS}
    users = Users(users_file(folder, passwords))
    users.load()
    with fresh_vhost(services.amqp_url, admin=services.rabbit) as admin_url:
        # statusek-client's permissions (deploy/rabbitmq/definitions.json): no default exchange.
        services.rabbit.set_permissions(
            unquote(urlsplit(admin_url).path[1:]),
            impersonator[0],
            configure=r"^(amq\.gen-.*|statusek\.client\..*)$",
            write=r"^(statusek\.commands|statusek\.queries|amq\.gen-.*|statusek\.client\..*)$",
            read=r"^(statusek\.events|amq\.gen-.*|statusek\.client\..*)$",
        )
        gateway_amqp_url = with_credentials(admin_url, *impersonator)
        async with fresh_database(services.database_url) as database_url:
            settings = Settings(
                amqp_url=admin_url,
                database_url=database_url,
                models_path=models_path,
                groups_path=str(groups),
                log_level="WARNING",
                ops_port=0,
            )
            async with (
                running_worker(settings),
                running_gateway(gateway_amqp_url, authenticator=Authenticator(users)) as base,
            ):
                yield Stack(admin_url, gateway_amqp_url, base, passwords)


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def as_user(
    stack: Stack, http: aiohttp.ClientSession, user: str, path: str, body: object, **headers: str
) -> Reply:
    return await ask(http, stack.base + path, body, headers={**basic(user, stack.passwords[user]), **headers})


async def create_review(stack: Stack, http: aiohttp.ClientSession, user: str = "billing") -> str:
    reply = await as_user(stack, http, user, "/instance/create", {"object_name": "DOCUMENT REVIEW"})
    assert reply.json["status"] is True, reply.json
    return str(reply.json["data"]["instance_token"])


async def test_no_credentials_is_401_with_a_basic_challenge(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """Without credentials: 401, a Basic challenge, the envelope saying what to send."""
    reply = await ask(http, stack.base + "/instance/create", {"object_name": "DOCUMENT REVIEW"})
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"] == 'Basic realm="statusek", charset="UTF-8"'
    assert reply.json == {
        "status": False,
        "message": "ERROR: no credentials: send HTTP Basic credentials (Authorization: Basic ...)",
        "data": {},
        "code": "UNAUTHENTICATED",
    }


async def test_a_wrong_password_is_401(stack: Stack, http: aiohttp.ClientSession) -> None:
    """A wrong password: 401, and the message does not tell whether the user exists."""
    reply = await ask(
        http, stack.base + "/instance/create", {"object_name": "DOCUMENT REVIEW"}, headers=basic("alice", "x")
    )
    assert (reply.status, reply.json["message"]) == (401, "ERROR: unknown user or wrong password")


async def test_about_and_home_need_no_credentials(stack: Stack, http: aiohttp.ClientSession) -> None:
    """Health checks call GET /about (and /): they answer without credentials."""
    assert (await ask(http, stack.base + "/about", method="GET")).status == 200
    assert (await ask(http, stack.base + "/", method="GET")).status == 200


async def test_events_record_the_http_caller_as_actor(stack: Stack, http: aiohttp.ClientSession) -> None:
    """billing creates and submits over HTTP: the worker records billing, not the gateway's user."""
    token = await create_review(stack, http)
    body = {"instance_token": token, "status_name": "SUBMITTED"}
    assert (await as_user(stack, http, "billing", "/status/setStatus", body)).json["status"] is True
    async with await Client.connect(stack.admin_url) as client:
        events = await client.get_events(token)
    assert [(e["kind"], e["actor"]) for e in events] == [("created", "billing"), ("status", "billing")]


async def test_writer_lists_judge_the_http_caller(stack: Stack, http: aiohttp.ClientSession) -> None:
    """APPROVED is the reviewers': mallory is refused by name, alice (a reviewer) sets it."""
    token = await create_review(stack, http)
    await as_user(
        stack, http, "billing", "/status/setStatus", {"instance_token": token, "status_name": "SUBMITTED"}
    )
    body = {"instance_token": token, "status_name": "APPROVED"}
    refused = (await as_user(stack, http, "mallory", "/status/setStatus", body)).json
    assert (refused["status"], refused["code"]) == (False, "NOT_ALLOWED")
    assert "'mallory'" in refused["message"] and "'APPROVED'" in refused["message"]
    assert (await as_user(stack, http, "alice", "/status/setStatus", body)).json["status"] is True


async def test_ready_to_set_answers_for_the_http_caller(stack: Stack, http: aiohttp.ClientSession) -> None:
    """After SUBMITTED, APPROVED is ready for alice and not for mallory, who is told why."""
    token = await create_review(stack, http)
    await as_user(
        stack, http, "billing", "/status/setStatus", {"instance_token": token, "status_name": "SUBMITTED"}
    )
    body = {"instance_token": token, "status_name": "APPROVED"}
    alice = (await as_user(stack, http, "alice", "/status/checkStatusIsReadyToSet", body)).json
    mallory = (await as_user(stack, http, "mallory", "/status/checkStatusIsReadyToSet", body)).json
    assert alice["data"]["status_is_ready_to_set"] is True
    assert (mallory["status"], mallory["data"]["status_is_ready_to_set"]) == (True, False)
    assert "'mallory'" in mallory["data"]["status_is_ready_to_set_description"]


async def test_idempotency_keys_are_each_callers_own(stack: Stack, http: aiohttp.ClientSession) -> None:
    """billing and alice using the same Idempotency-Key make two instances: keys are per caller."""
    key = {"Idempotency-Key": str(uuid.uuid4())}
    body = {"object_name": "DOCUMENT REVIEW"}
    billing = (await as_user(stack, http, "billing", "/instance/create", body, **key)).json
    alice = (await as_user(stack, http, "alice", "/instance/create", body, **key)).json
    assert billing["status"] and alice["status"]
    assert billing["data"]["instance_token"] != alice["data"]["instance_token"]


async def test_a_user_without_the_impersonator_tag_is_found_out(amqp_url: str, stack: Stack) -> None:
    """The session's user (no tags) may not publish as another: the check says how to fix it."""
    problem = await impersonation_problem(amqp_url)
    assert problem is not None and "impersonator" in problem and "STATUSEK_GATEWAY_AUTH=none" in problem
    assert await impersonation_problem(stack.gateway_amqp_url) is None


async def run_gateway_command(env: dict[str, str], timeout: float = 30) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "statusek", "gateway", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        _out, err = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, err.decode()


async def test_a_gateway_user_without_the_tag_does_not_start(
    worker: Worker, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """Basic auth with a RabbitMQ user that may not impersonate: exit 2 (usage) saying to add the tag."""
    path = users_file(tmp_path, {"billing": new_password(12)})
    env = {**worker_env, "STATUSEK_HTTP_PORT": "0", "STATUSEK_GATEWAY_USERS_FILE": str(path)}
    code, err = await run_gateway_command(env)
    assert code == EXIT_USAGE, err
    assert "impersonator" in err and "set_user_tags" in err
