"""The test backends: how one is chosen, and the local images the containers backend runs.

The image tests start containers of local/statusek-rabbitmq:test and local/statusek-postgres:test
(deploy/docker/build-images.sh); without Docker or the images they skip, or fail when
STATUSEK_REQUIRE_DOCKER=1.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import aio_pika
import asyncpg
import pytest

from statusek.adapters.rabbitmq.endpoints import Connection
from statusek.testing import (
    POSTGRES_IMAGE,
    RABBITMQ_IMAGE,
    RabbitAdmin,
    amqp_answers,
    choose_backend,
    docker_answers,
    docker_client,
)
from tests.helpers import eventually


def never() -> bool:
    raise AssertionError("probed although the choice was made")


def test_local_is_forced() -> None:
    """STATUSEK_TEST_BACKEND=local uses the local services without probing anything."""
    assert choose_backend("local", never, never) == "local"


def test_containers_are_forced() -> None:
    """STATUSEK_TEST_BACKEND=containers starts containers without probing anything."""
    assert choose_backend("containers", never, never) == "containers"


def test_local_services_win_by_default() -> None:
    """Unset, the local services are used when they answer, Docker or not."""
    assert choose_backend(None, lambda: True, never) == "local"


def test_containers_when_only_docker_answers() -> None:
    """Unset, containers are started when the local services are down and Docker answers."""
    assert choose_backend("", lambda: False, lambda: True) == "containers"


def test_local_when_nothing_answers() -> None:
    """With neither, the local backend is kept, so the failure names the local services."""
    assert choose_backend(None, lambda: False, lambda: False) == "local"


def test_unknown_backend_is_refused() -> None:
    """A misspelt STATUSEK_TEST_BACKEND is an error, not a silent default."""
    with pytest.raises(ValueError, match="STATUSEK_TEST_BACKEND"):
        choose_backend("container", never, never)


# --- the images -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docker_images() -> None:
    problem = None
    if not docker_answers():
        problem = "no Docker engine answers (deploy/docker/install-docker.sh)"
    else:
        client = docker_client()
        try:
            missing = [i for i in (RABBITMQ_IMAGE, POSTGRES_IMAGE) if not client.images.list(name=i)]
        finally:
            client.close()
        if missing:
            problem = f"images missing: {', '.join(missing)} (deploy/docker/build-images.sh)"
    if problem and os.environ.get("STATUSEK_REQUIRE_DOCKER") == "1":
        pytest.fail(f"STATUSEK_REQUIRE_DOCKER=1 but {problem}", pytrace=False)
    if problem:
        pytest.skip(problem)


@contextmanager
def container(image: str, port: int, **env: str) -> Iterator[tuple[str, int]]:
    """A started container of `image` (id, host port of `port` on 127.0.0.1), removed afterwards."""
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer

    testcontainers_config.ryuk_disabled = True  # its image comes from a registry
    c = DockerContainer(image).with_envs(**env)
    c.ports[f"{port}/tcp"] = ("127.0.0.1", None)  # type: ignore[assignment]
    try:
        c.start()
        yield c.get_container_id(), c.get_exposed_port(port)
    finally:
        c.stop()


def stopped(container_id: str) -> int:
    """The exit code after `docker stop` (the image's stop signal, SIGKILL only after 30 s)."""
    client = docker_client()
    try:
        c = client.containers.get(container_id)
        c.stop(timeout=30)
        c.reload()
        return int(c.attrs["State"]["ExitCode"])
    finally:
        client.close()


T = TypeVar("T")


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.usefixtures("docker_images")
async def test_rabbitmq_image_honours_default_user_and_has_consistent_hash() -> None:
    """RABBITMQ_DEFAULT_USER/PASS make the only user, and x-consistent-hash exchanges exist."""
    with container(RABBITMQ_IMAGE, 5672, RABBITMQ_DEFAULT_USER="bob", RABBITMQ_DEFAULT_PASS="pw") as (
        cid,
        port,
    ):

        async def connect() -> aio_pika.abc.AbstractConnection:
            # Connection: each attempt refused while the broker boots is closed, not left to __del__.
            return await aio_pika.connect(
                f"amqp://bob:pw@127.0.0.1:{port}/", timeout=5, connection_class=Connection
            )

        connection = await eventually(connect, 90, ignoring=(Exception,), every=0.3, what="bob connecting")
        try:
            channel = await connection.channel()
            await channel.declare_exchange("ring", "x-consistent-hash")
        finally:
            await connection.close()
        users = RabbitAdmin(cid).rabbitmqctl("list_users", "--no-table-headers")
        assert [line.split()[0] for line in users.splitlines()] == ["bob"]
        assert stopped(cid) == 0


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.usefixtures("docker_images")
def test_rabbitmq_admin_manages_vhosts_in_the_container() -> None:
    """RabbitAdmin with a container runs rabbitmqctl there: vhosts, permissions, queues."""
    with container(RABBITMQ_IMAGE, 5672) as (cid, port):
        deadline = time.monotonic() + 90
        while not amqp_answers(port):
            assert time.monotonic() < deadline, "the broker did not answer"
            time.sleep(0.3)
        admin = RabbitAdmin(cid)
        admin.add_vhost("v 1")
        admin.set_permissions("v 1", "guest")
        assert admin.list_queues("v 1") == {}
        admin.delete_vhost("v 1")
        assert "v 1" not in admin.rabbitmqctl("list_vhosts").splitlines()


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.usefixtures("docker_images")
async def test_postgres_image_honours_user_password_and_database() -> None:
    """POSTGRES_USER/PASSWORD/DB make the role and the database; a wrong password is refused."""
    env = {"POSTGRES_USER": "app", "POSTGRES_PASSWORD": "s3cret", "POSTGRES_DB": "appdb"}
    with container(POSTGRES_IMAGE, 5432, **env) as (cid, port):

        async def connect() -> asyncpg.Connection:
            return await asyncpg.connect(f"postgresql://app:s3cret@127.0.0.1:{port}/appdb", timeout=5)

        conn = await eventually(connect, 90, ignoring=(Exception,), every=0.3, what="app connecting")
        try:
            assert await conn.fetchval("SELECT current_user || '@' || current_database()") == "app@appdb"
        finally:
            await conn.close()
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(f"postgresql://app:wrong@127.0.0.1:{port}/appdb", timeout=5)
        assert stopped(cid) == 0


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.usefixtures("docker_images")
async def test_postgres_image_stops_fast_on_sigterm_with_a_client_connected() -> None:
    """SIGTERM is a fast shutdown: an idle client (a worker's pool) does not hold the server up."""
    with container(POSTGRES_IMAGE, 5432, POSTGRES_HOST_AUTH_METHOD="trust") as (cid, port):

        async def connect() -> asyncpg.Connection:
            return await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", timeout=5)

        conn = await eventually(connect, 90, ignoring=(Exception,), every=0.3, what="postgres connecting")
        client = docker_client()
        try:
            client.containers.get(cid).kill(signal="SIGTERM")
            exit_code = client.containers.get(cid).wait(timeout=15)["StatusCode"]
        finally:
            client.close()
        assert exit_code == 0
        conn.terminate()
