"""The CLI at its edges (issue 11): one row per item, the command, its exit code and first line.

Each row runs `statusek` as a person would, against the real broker and
database, and checks the exit code and the first line of what it prints
(stderr when there is any, else stdout). The table of every row is printed
at the end of the session ("CLI edges").
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pika
import pytest

from statusek.testing import fresh_vhost
from statusek.worker.faults import FAULT_HEADER
from tests.helpers import TASK, eventually, statusek
from tests.integration.conftest import Cluster
from tests.integration.faults import TcpProxy, proxied
from tests.log_secrets import with_password


@dataclass
class Ran:
    """One command as run: what a person typed, and what came back."""

    command: str
    returncode: int
    stdout: str
    stderr: str
    elapsed: float

    @property
    def first_line(self) -> str:
        lines = (self.stderr or self.stdout).splitlines()
        return lines[0] if lines else ""


@dataclass
class Edges:
    """What a row needs: the session worker's environment and, on demand, other fixtures."""

    env: dict[str, str]
    request: pytest.FixtureRequest | None = None
    # A vhost and a database with the topology declared and no worker (until started).
    given_cluster: Cluster | None = None
    ran: list[Ran] = field(default_factory=list)

    @property
    def cluster(self) -> Cluster:
        assert self.given_cluster is not None, "the row needs needs_cluster=True"
        return self.given_cluster

    def fixture(self, name: str) -> Any:
        """A synchronous fixture (asynchronous ones cannot be set up from a running test)."""
        assert self.request is not None
        return self.request.getfixturevalue(name)

    async def run(
        self, *args: str, env: dict[str, str] | None = None, shown: str = "", timeout: float = 60
    ) -> Ran:
        """`statusek ARGS` with `env` (the session worker's by default); `shown` prefixes the command."""
        started = time.monotonic()
        done = await statusek(env or self.env, *args, timeout=timeout)
        command = " ".join(part for part in (shown, shlex.join(["statusek", *args])) if part)
        ran = Ran(command, done.returncode, done.stdout, done.stderr, time.monotonic() - started)
        self.ran.append(ran)
        return ran

    async def python(self, code: str) -> Ran:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        ran = Ran(
            f"python -c {shlex.quote(code)}",
            done.returncode,
            done.stdout,
            done.stderr,
            time.monotonic() - started,
        )
        self.ran.append(ran)
        return ran

    async def token(self, *statuses: str, env: dict[str, str] | None = None) -> str:
        """A new instance (with `statuses` set), made outside the table."""
        created = await self.run("create", TASK, env=env)
        token = created.stdout.strip()
        for status in statuses:
            assert (await self.run("set", token, status, env=env)).returncode == 0
        del self.ran[-1 - len(statuses) :]
        return token


def with_url(env: dict[str, str], url: str) -> dict[str, str]:
    return {**env, "STATUSEK_AMQP_URL": url}


def with_vhost(url: str, vhost: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + vhost))


# The rows. Each returns nothing: it runs commands through `edges` and checks them.


async def stale_create_is_never_applied(edges: Edges) -> None:
    """1: a create nobody answered within --answer-within expires; a worker started later never applies it."""
    cluster = edges.cluster
    token = str(uuid.uuid4())
    create = await edges.run("create", TASK, "--token", token, "--answer-within", "2", env=cluster.env)
    assert create.returncode == 3 and create.elapsed < 4
    await eventually(lambda: cluster.messages("statusek.dead-letter"), 10, equals=1)  # expired by the broker
    assert await cluster.messages("statusek.commands") == 0
    cluster.start()
    await cluster.wait_for_consumers(1)
    show = await edges.run("show", token, env=cluster.env)
    assert show.returncode == 1


async def negative_bound_is_a_usage_error(edges: Edges) -> None:
    """1: a negative --answer-within is a usage error."""
    await edges.run("create", TASK, "--answer-within", "-1")


async def wrong_vhost(edges: Edges) -> None:
    """2: a vhost without statusek, and a vhost that does not exist, each say which and what to set."""
    services: Any = edges.fixture("services")
    with fresh_vhost(services.amqp_url, admin=services.rabbit) as empty:
        await edges.run(
            "show", str(uuid.uuid4()), env=with_url(edges.env, empty), shown="STATUSEK_AMQP_URL=<empty>"
        )
    missing = with_vhost(edges.env["STATUSEK_AMQP_URL"], f"statusek-missing-{secrets.token_hex(4)}")
    await edges.run(
        "show", str(uuid.uuid4()), env=with_url(edges.env, missing), shown="STATUSEK_AMQP_URL=<missing>"
    )


async def password_is_masked(edges: Edges) -> None:
    """3: a wrong password is never printed."""
    url = with_password(edges.env["STATUSEK_AMQP_URL"], "hunter2-secret")
    ran = await edges.run("show", str(uuid.uuid4()), env=with_url(edges.env, url), shown="<wrong password>")
    assert "hunter2" not in ran.stdout + ran.stderr


async def bad_arguments(edges: Edges) -> None:
    """4: a label without `=` and a URL that is not AMQP are usage errors, at once."""
    await edges.run("create", TASK, "--label", "team")
    ran = await edges.run(
        "show", str(uuid.uuid4()), env=with_url(edges.env, "localhost"), shown="<localhost>"
    )
    assert ran.elapsed < 5


async def wait_tells_no_worker_from_not_finished(edges: Edges) -> None:
    """5: `wait` without a worker ends at its --timeout (exit 3); with one, an open instance exits 5."""
    cluster = edges.cluster
    nobody = await edges.run(
        "wait", str(uuid.uuid4()), "--timeout", "3", env=cluster.env, shown="<no worker>"
    )
    assert nobody.elapsed < 7  # the 3 s timeout plus the start of a Python process on a busy machine
    token = await edges.token()
    await edges.run("wait", token, "--timeout", "2")


async def existing_token_is_said(edges: Edges) -> None:
    """6: creating an existing token again with the same arguments exits 0 and says so."""
    token = str(uuid.uuid4())
    for _ in range(2):
        ran = await edges.run("create", TASK, "--token", token, "--label", "team=ops")
    assert ran.stdout.strip() == token
    del edges.ran[-2]


async def exceptions_import_from_the_root(edges: Edges) -> None:
    """7: the exceptions import from `statusek`."""
    await edges.python(
        "from statusek import InstanceFinishedError, NoAnswerError; "
        "print(InstanceFinishedError.__name__, NoAnswerError.__name__, 'import from statusek')"
    )


async def unknown_names_get_a_suggestion(edges: Edges) -> None:
    """8: an unknown object or status name is answered with the closest one."""
    await edges.run("create", "2-point line task")
    token = await edges.token()
    await edges.run("set", token, "started")
    await edges.run("graph", "DATA EXPOT")


async def models_check_prints_every_problem(edges: Edges) -> None:
    """9: `models check` lists each problem of a model, not only the first."""
    bad = Path(str(edges.fixture("tmp_path"))) / "bad.yaml"
    bad.write_text(
        "object_name: X\ncolour: red\nstatuses:\n  - {name: A, type: MANDATRY}\n  - {name: B, after: [Z]}\n"
    )
    ran = await edges.run("models", "check", str(bad))
    assert sum(line.startswith("error ") for line in ran.stdout.splitlines()) == 4


async def library_logs_only_with_verbose(edges: Edges) -> None:
    """10: without --verbose, an unreachable broker prints one line; with it, the library's lines too."""
    env = with_url(edges.env, "amqp://guest:guest@127.0.0.1:1/")
    quiet = await edges.run("show", str(uuid.uuid4()), env=env, shown="<port 1>")
    assert quiet.stderr.count("\n") == 1 and not quiet.stdout
    loud = await edges.run("show", str(uuid.uuid4()), "--verbose", env=env, shown="<port 1>")
    assert loud.stderr.count("\n") > 1


async def wait_resumes_after_a_cut(edges: Edges) -> None:
    """12: `wait` through a broker cut, during which the instance finishes, still prints the reason."""
    proxy, url = await proxied(edges.env["STATUSEK_AMQP_URL"], 5672)
    try:
        token = await edges.token("STARTED")
        waiter = asyncio.create_task(
            edges.run("wait", token, "--timeout", "30", env=with_url(edges.env, url), shown="<through a cut>")
        )
        await eventually(lambda: links(proxy) > 0, 15)
        await asyncio.sleep(1)
        proxy.block()
        await edges.run("set", token, "FINISHED")
        del edges.ran[-1]
        await asyncio.sleep(0.5)
        proxy.unblock()
        await asyncio.wait_for(waiter, 40)
    finally:
        await proxy.close()


async def message_without_id_takes_effect_once(edges: Edges) -> None:
    """13: a ping without message_id whose worker crashed between commit and ack is recorded once."""
    cluster = edges.cluster
    (first,) = cluster.start(1, STATUSEK_FAULT_HOOKS="true")
    await cluster.wait_for_consumers(1)
    token = await edges.token(env=cluster.env)
    await without_message_id(
        cluster, "ping", {"instance_token": token, "message": "no id"}, {FAULT_HEADER: "crash-after-commit"}
    )
    await eventually(lambda: first.poll() is not None, 30)
    assert first.returncode == 70  # it died between commit and ack
    cluster.start(1, STATUSEK_FAULT_HOOKS="true")
    await cluster.wait_for_consumers(1)
    await eventually(lambda: cluster.messages("statusek.commands", unacked=True), 30, equals=0)
    shown = await edges.run("show", token, env=cluster.env)
    assert [line.split()[1] for line in shown.stdout.splitlines() if line[:1].isdigit()] == [
        "created",
        "ping",
    ]


async def without_message_id(
    cluster: Cluster, routing_key: str, body: dict[str, str], headers: dict[str, str] | None = None
) -> None:
    """Publish as the management UI or pika do: no message_id (aio-pika would always add one)."""

    def publish() -> None:
        connection = pika.BlockingConnection(pika.URLParameters(cluster.env["STATUSEK_AMQP_URL"]))
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            channel.basic_publish(
                "statusek.commands",
                routing_key,
                json.dumps(body).encode(),
                pika.BasicProperties(headers=headers, delivery_mode=2),
            )
        finally:
            connection.close()

    await asyncio.to_thread(publish)


def links(proxy: TcpProxy) -> int:
    """Open links through the proxy (a test helper's own bookkeeping)."""
    return len(proxy._links)


TOKEN = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@dataclass(frozen=True)
class Row:
    item: str
    scenario: Callable[[Edges], Awaitable[None]]
    expected: list[tuple[int, str]]  # (exit code, first line as a regex), one per command run
    needs_cluster: bool = False


ROWS = [
    Row(
        "1",
        stale_create_is_never_applied,
        [
            (
                3,
                r"statusek: no answer within 2 s: no worker is running on vhost '[^']+'; "
                r"the request expires unapplied: start one \('statusek worker'\), "
                r"or point STATUSEK_AMQP_URL at the worker's vhost$",
            ),
            (1, rf"statusek: INSTANCE_TOKEN_IS_NOT_FOUND: Instance {TOKEN} is not found$"),
        ],
        needs_cluster=True,
    ),
    Row(
        "1",
        negative_bound_is_a_usage_error,
        [
            (
                2,
                r"statusek create: argument --answer-within: '-1' is not a positive number of seconds "
                r"\(see 'statusek create --help'\)$",
            )
        ],
    ),
    Row(
        "2",
        wrong_vhost,
        [
            (
                69,
                r"statusek: vhost 'statusek-test-[0-9a-f]+' on 127\.0\.0\.1:\d+ has no statusek exchanges "
                r"\(no worker ever ran there\): set STATUSEK_AMQP_URL to the worker's vhost, "
                r"amqp://user:password@host:5672/VHOST$",
            ),
            (
                69,
                r"statusek: cannot reach RabbitMQ at "
                r"amqp://statusek-test-user-\w+:\*\*\*@127\.0\.0\.1:\d+/statusek-missing-\w+: "
                r"the broker refused vhost 'statusek-missing-\w+': it does not exist, "
                r"or user 'statusek-test-user-\w+' may not use it; check STATUSEK_AMQP_URL$",
            ),
        ],
    ),
    Row(
        "3",
        password_is_masked,
        [
            (
                69,
                r"statusek: cannot reach RabbitMQ at "
                r"amqp://statusek-test-user-\w+:\*\*\*@127\.0\.0\.1:\d+/statusek-test-\w+: "
                r"the broker refused the login of user 'statusek-test-user-\w+': wrong user or password; "
                r"check STATUSEK_AMQP_URL$",
            )
        ],
    ),
    Row(
        "4",
        bad_arguments,
        [
            (
                2,
                r"statusek create: argument --label: 'team' is not KEY=VALUE \(e\.g\. --label team=ops\) "
                r"\(see 'statusek create --help'\)$",
            ),
            (
                2,
                r"statusek: STATUSEK_AMQP_URL: 'localhost' is not an AMQP URL: "
                r"expected amqp://user:password@host:5672/vhost$",
            ),
        ],
    ),
    Row(
        "5",
        wait_tells_no_worker_from_not_finished,
        [
            (
                3,
                r"statusek: no answer within 3 s: no worker is running on vhost '[^']+'; the request expires "
                r"unapplied: start one",
            ),
            (5, rf"statusek: instance {TOKEN} is still open after 2 s: wait longer with --timeout$"),
        ],
        needs_cluster=True,
    ),
    Row(
        "6",
        existing_token_is_said,
        [(0, rf"statusek: instance {TOKEN} already exists with these arguments; nothing was changed$")],
    ),
    Row(
        "7",
        exceptions_import_from_the_root,
        [(0, r"InstanceFinishedError NoAnswerError import from statusek$")],
    ),
    Row(
        "8",
        unknown_names_get_a_suggestion,
        [
            (
                1,
                r"statusek: OBJECT_NAME_IS_NOT_FOUND: Object '2-point line task' is not found: did you mean "
                r"'2-POINT LINE TASK'\? \(names are case-sensitive\); models in STATUSEK_MODELS_PATH: "
                r"2-POINT LINE TASK, ",
            ),
            (
                1,
                r"statusek: STATUS_NAME_IS_NOT_FOUND_FOR_OBJECT: Status 'started' is not a status of object "
                r"'2-POINT LINE TASK' \(version \d+\): did you mean 'STARTED'\? "
                r"\(names are case-sensitive\); known: STARTED, FINISHED$",
            ),
            (
                1,
                r"statusek: no model named 'DATA EXPOT' in STATUSEK_MODELS_PATH: "
                r"did you mean 'DATA EXPORT'\?; known: ",
            ),
        ],
    ),
    Row(
        "9",
        models_check_prints_every_problem,
        [(1, r"error .*/bad\.yaml: model 'X': colour: unknown field")],
    ),
    Row(
        "10",
        library_logs_only_with_verbose,
        [
            (
                69,
                r"statusek: cannot reach RabbitMQ at amqp://guest:\*\*\*@127\.0\.0\.1:1/: connection refused",
            ),
            (69, r"\{\"event\": \"error when creating transport"),
        ],
    ),
    Row("12", wait_resumes_after_a_cut, [(0, r"ALL_MANDATORY_STATUSES_ARE_SET$")]),
    Row("13", message_without_id_takes_effect_once, [(0, rf"instance   {TOKEN}$")], needs_cluster=True),
]

TABLE: list[tuple[str, Ran]] = []


class _TablePrinter:
    """Prints the table of every row run, after the tests."""

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not TABLE:
            return
        terminalreporter.section("CLI edges (issue 11)")
        terminalreporter.write_line("| item | command | exit | first line |")
        terminalreporter.write_line("|---|---|---|---|")
        for item, ran in TABLE:
            cells = [item, f"`{normal(ran.command)}`", str(ran.returncode), f"`{normal(ran.first_line)}`"]
            terminalreporter.write_line("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")


def normal(text: str) -> str:
    """Tokens, vhosts and temporary paths made stable for the table."""
    text = re.sub(TOKEN, "<token>", text)
    text = re.sub(r"statusek-test-user-[0-9a-f]{8}", "<test user>", text)
    text = re.sub(r"statusek-(test|missing)-[0-9a-f]{8}", r"<\1 vhost>", text)
    text = re.sub(r"\"pid\": \d+", '"pid": …', text)
    return re.sub(r"/tmp/\S+/bad\.yaml", "bad.yaml", text)


@pytest.fixture(scope="module", autouse=True)
def _table(request: pytest.FixtureRequest) -> Iterator[None]:
    manager = request.config.pluginmanager
    if not manager.has_plugin("statusek-cli-edges"):
        manager.register(_TablePrinter(), "statusek-cli-edges")
    yield


@pytest.fixture
def edges(request: pytest.FixtureRequest, worker_env: dict[str, str], worker: object) -> Edges:
    """The session worker's environment, and a cluster of its own for the rows that need one."""
    row: Row = request.node.callspec.params["row"]
    cluster = request.getfixturevalue("cluster") if row.needs_cluster else None
    return Edges(env={**worker_env, "STATUSEK_LOG_FORMAT": "json"}, request=request, given_cluster=cluster)


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.item}-{r.scenario.__name__}" for r in ROWS])
async def test_cli_edge(row: Row, edges: Edges) -> None:
    """Each item's commands exit with the documented code and print the expected first line."""
    await row.scenario(edges)
    TABLE.extend((row.item, ran) for ran in edges.ran)
    assert [r.returncode for r in edges.ran] == [code for code, _ in row.expected], edges.ran
    for ran, (_, pattern) in zip(edges.ran, row.expected, strict=True):
        assert re.match(pattern, ran.first_line), (pattern, ran.first_line)
        if ran.stderr and "--verbose" not in ran.command:
            assert ran.stderr.count("\n") == 1, ran.stderr  # one line, nothing else


async def test_a_create_that_got_no_answer_is_never_applied(cluster: Cluster) -> None:
    """A create that expired unanswered is never applied by a later worker; one without expiration is."""
    expired, control = str(uuid.uuid4()), str(uuid.uuid4())
    edges = Edges(env=cluster.env, request=None)
    create = await edges.run("create", TASK, "--token", expired, "--answer-within", "2")
    assert create.returncode == 3
    # What the client did before: the same create without an expiration stays queued.
    await cluster.wire.send("create", {"object_name": TASK, "instance_token": control}, reply=False)
    channel = await cluster.wire.connection.channel()
    dead = await channel.declare_queue("statusek.dead-letter", passive=True)
    deadline = time.monotonic() + 10
    while (message := await dead.get(no_ack=True, fail=False)) is None:
        assert time.monotonic() < deadline, "the expired create was not dead-lettered"
        await asyncio.sleep(0.1)
    assert (message.headers or {})["x-first-death-reason"] == "expired"
    assert await cluster.messages("statusek.commands") == 1  # only the control is left
    cluster.start()
    await cluster.wait_for_consumers(1)
    applied = await edges.run("show", control)
    assert applied.returncode == 0
    never = await edges.run("show", expired)
    assert never.returncode == 1 and "INSTANCE_TOKEN_IS_NOT_FOUND" in never.stderr


async def test_identical_messages_without_id_both_take_effect(cluster: Cluster) -> None:
    """Two identical pings without message_id, each delivered once, are both recorded."""
    cluster.start()
    await cluster.wait_for_consumers(1)
    edges = Edges(env=cluster.env, request=None)
    token = await edges.token()
    for _ in range(2):
        await without_message_id(cluster, "ping", {"instance_token": token})
    await eventually(lambda: cluster.messages("statusek.commands", unacked=True), 10, equals=0)
    shown = await edges.run("show", token)
    assert [line.split()[1] for line in shown.stdout.splitlines() if line[:1].isdigit()] == [
        "created",
        "ping",
        "ping",
    ]


async def test_watch_says_when_it_reconnects(worker_env: dict[str, str], worker: object) -> None:
    """`watch` through a cut prints one line on stderr and carries on with new notifications."""
    proxy, url = await proxied(worker_env["STATUSEK_AMQP_URL"], 5672)
    edges = Edges(env=worker_env, request=None)
    try:
        token = await edges.token()
        watcher = asyncio.create_task(
            edges.run("watch", "--token", token, "--count", "1", "--for", "30", env=with_url(worker_env, url))
        )
        await eventually(lambda: links(proxy) > 0, 15)
        await asyncio.sleep(1)
        proxy.block()
        await asyncio.sleep(0.5)
        proxy.unblock()
        await asyncio.sleep(3)  # reconnected and subscribed again
        await edges.run("set", token, "STARTED")
        watched = await asyncio.wait_for(watcher, 40)
    finally:
        await proxy.close()
    assert watched.returncode == 0
    assert watched.stderr == (
        "statusek: lost the link to RabbitMQ; reconnecting (notifications sent meanwhile are missing)\n"
    )
    assert watched.stdout.split()[:4] == ["status-changed", token, "#2", "STARTED"]


async def test_watch_for_ends_in_time(worker_env: dict[str, str], worker: object) -> None:
    """`watch --count 1 --for 1` with nothing happening exits 5 after about a second."""
    edges = Edges(env=worker_env, request=None)
    ran = await edges.run("watch", "--token", str(uuid.uuid4()), "--count", "1", "--for", "1")
    assert (ran.returncode, ran.stderr) == (
        5,
        "statusek: only 0 of 1 notification(s) within 1 s: wait longer with --for\n",
    )
    assert ran.elapsed < 4


async def test_create_existing_token_in_json_says_not_created(
    worker_env: dict[str, str], worker: object
) -> None:
    """With --json, a repeated create reports `created: false`, and nothing on stderr."""
    edges = Edges(env=worker_env, request=None)
    token = str(uuid.uuid4())
    first = await edges.run("create", TASK, "--token", token, "--json")
    again = await edges.run("create", TASK, "--token", token, "--json")
    assert first.stdout == f'{{"instance_token": "{token}", "created": true}}\n'
    assert again.stdout == f'{{"instance_token": "{token}", "created": false}}\n'


async def test_a_conflicting_create_is_refused(worker_env: dict[str, str], worker: object) -> None:
    """The same token with other arguments exits 1 with INSTANCE_TOKEN_CONFLICT."""
    edges = Edges(env=worker_env, request=None)
    token = str(uuid.uuid4())
    await edges.run("create", TASK, "--token", token)
    other = await edges.run("create", TASK, "--token", token, "--label", "a=b")
    assert other.returncode == 1
    assert other.stderr.startswith("statusek: INSTANCE_TOKEN_CONFLICT: ")


async def test_worker_log_says_the_vhost_does_not_exist(cluster: Cluster) -> None:
    """A worker pointed at a missing vhost logs, while it waits, that the vhost does not exist."""
    missing = with_vhost(cluster.env["STATUSEK_AMQP_URL"], f"statusek-missing-{secrets.token_hex(4)}")
    (worker,) = cluster.start(1, STATUSEK_AMQP_URL=missing)
    await asyncio.sleep(4)
    assert worker.poll() is None  # it waits for the broker rather than dying
    cluster.stop()
    lines = cluster.log_lines()
    waiting = [line for line in lines if line.get("event") == "waiting for rabbitmq"]
    assert waiting, lines
    assert all(
        "the vhost does not exist or the user may not use it" in str(line["error"]) for line in waiting
    )
    assert not any("Connection.Close" in str(line) for line in lines)
