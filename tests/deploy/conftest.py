"""The compose stack of deploy/compose.yaml, brought up per test module with the locally built images.

Without a Docker engine, a compose binary or the images, the tests skip, or fail when
STATUSEK_REQUIRE_DOCKER=1 (CI), so a broken Docker setup cannot pass for green.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from statusek.testing import free_ports
from tests.log_secrets import password

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"

# Overridable with the same variables compose.yaml reads, e.g. to try the official images.
IMAGES = {
    "RABBITMQ_IMAGE": os.environ.get("RABBITMQ_IMAGE", "local/statusek-rabbitmq:test"),
    "POSTGRES_IMAGE": os.environ.get("POSTGRES_IMAGE", "local/statusek-postgres:test"),
    "STATUSEK_IMAGE": os.environ.get("STATUSEK_IMAGE", "local/statusek:test"),
}
# Passwords the stack is given, registered for the password grep (tests/log_secrets.py).
POSTGRES_PASSWORD = password("compose-test")
ADMIN = ("statusek-admin", password("admin-secret"))  # deploy/rabbitmq/definitions.json
password("worker-secret")  # the workers' and migrate's, in deploy/compose.yaml
password("gateway-secret")  # the gateway's AMQP user, in deploy/compose.yaml
GATEWAY_CALLER = ("statusek-caller", password("caller-secret"))  # deploy/gateway/users

REPORT_LINES: list[str] = []


def _run(
    *args: str, timeout: float = 60, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=check, **kwargs)


def compose_command() -> list[str] | None:
    """docker-compose (1.29 on Debian) if installed, else the Compose v2 plugin, else None."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and _run("docker", "compose", "version", check=False).returncode == 0:
        return ["docker", "compose"]
    return None


def docker_problem() -> str | None:
    """Why the stack cannot run here, or None."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed (deploy/docker/install-docker.sh)"
    if compose_command() is None:
        return "neither docker-compose nor the docker compose plugin is installed"
    try:
        info = _run("docker", "info", "--format", "{{.ServerVersion}}", check=False, timeout=20)
    except subprocess.TimeoutExpired:
        return "the Docker engine did not answer `docker info` within 20 s"
    if info.returncode != 0:
        return f"the Docker engine is not reachable: {info.stderr.strip()}"
    missing = [
        image
        for image in IMAGES.values()
        if _run("docker", "image", "inspect", image, check=False).returncode != 0
    ]
    if missing:
        return f"images missing: {', '.join(missing)} (build them with deploy/docker/build-images.sh)"
    return None


class Stack:
    """A compose project of its own: unique name, free host ports, removed with its volumes."""

    def __init__(self, logs: Path):
        self.project = f"statusek-test-{uuid.uuid4().hex[:8]}"
        self.amqp_port, self.management_port, self.postgres_port, self.gateway_port = free_ports(4)
        self.logs = logs
        self.compose = [*(compose_command() or []), "-f", str(COMPOSE_FILE), "-p", self.project]
        self.env = {
            **os.environ,
            **IMAGES,
            "POSTGRES_PASSWORD": POSTGRES_PASSWORD,
            "RABBITMQ_PORT": str(self.amqp_port),
            "RABBITMQ_MANAGEMENT_PORT": str(self.management_port),
            "POSTGRES_PORT": str(self.postgres_port),
            "STATUSEK_GATEWAY_PORT": str(self.gateway_port),
        }

    def run(self, *args: str, timeout: float = 120) -> str:
        out = _run(*self.compose, *args, env=self.env, timeout=timeout, check=False)
        if out.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}\n{self.tail()}"
            )
        return out.stdout

    def up(self) -> None:
        # `up` waits for the depends_on conditions (healthy broker and database, migrate exited 0).
        self.run("up", "-d", timeout=300)

    def down(self) -> None:
        self.save_logs()
        _run(
            *self.compose, "down", "-v", "--remove-orphans", "-t", "5", env=self.env, timeout=120, check=False
        )

    def save_logs(self) -> None:
        out = _run(*self.compose, "logs", "--no-color", "-t", env=self.env, timeout=60, check=False)
        self.logs.write_text(out.stdout + out.stderr)

    def tail(self, lines: int = 60) -> str:
        out = _run(*self.compose, "logs", "--no-color", "--tail", str(lines), env=self.env, check=False)
        return out.stdout[-6000:]

    def containers(self, service: str) -> list[str]:
        return self.run("ps", "-q", service).split()

    def inspect(self, container: str, part: str) -> Any:
        """One part of `docker inspect` (`State`, `NetworkSettings`): never `Config`, whose
        environment holds the URLs with their passwords (this output is under the password grep)."""
        return json.loads(_run("docker", "inspect", "--format", f"{{{{json .{part}}}}}", container).stdout)

    def health(self, container: str) -> str:
        state = self.inspect(container, "State")
        return str(state.get("Health", {}).get("Status") or state["Status"])

    def wait_healthy(self, service: str, count: int, timeout: float = 180) -> list[str]:
        """Containers of `service` once `count` of them report healthy."""
        deadline = time.monotonic() + timeout
        while True:
            containers = self.containers(service)
            states = {c[:12]: self.health(c) for c in containers}
            if len(containers) >= count and list(states.values()).count("healthy") >= count:
                return containers
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{service}: {states} after {timeout:.0f} s, want {count} healthy\n{self.tail()}"
                )
            time.sleep(1)

    def amqp_url(self, user: str, password: str) -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.amqp_port}/statusek"

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres:{POSTGRES_PASSWORD}@127.0.0.1:{self.postgres_port}/statusek"

    def management(self, path: str) -> Any:
        """GET on the broker's HTTP API as the administrator of definitions.json."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.management_port}/api/{path}",
            headers={"Authorization": "Basic " + b64encode(":".join(ADMIN).encode()).decode()},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def ip(self, container: str) -> set[str]:
        networks = self.inspect(container, "NetworkSettings")["Networks"].values()
        return {n["IPAddress"] for n in networks if n.get("IPAddress")}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """deploy/compose.yaml up, both workers healthy; torn down with its volumes whatever happens."""
    problem = docker_problem()
    if problem:
        if os.environ.get("STATUSEK_REQUIRE_DOCKER") == "1":
            pytest.fail(f"STATUSEK_REQUIRE_DOCKER=1 but {problem}", pytrace=False)
        pytest.skip(problem)
    stack = Stack(tmp_path_factory.mktemp("compose") / "compose.log")
    try:
        stack.up()
        stack.wait_healthy("worker", 2)
        yield stack
    finally:
        stack.down()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the counts of the compose scenarios that ran."""
    if REPORT_LINES:
        terminalreporter.section("compose stack report")
        for line in REPORT_LINES:
            terminalreporter.write_line(line)
