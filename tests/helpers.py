"""What tests share, defined once: waiting for a condition, free ports, processes and the CLI,
the ops server's HTTP, and builders.

Test modules import these from here, never from one another. Fixtures stay in the conftest.py
files; the non-fixture constants they need live here too, so that no test module imports a
conftest for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

from statusek.core.access import ANONYMOUS_SENDER, Sender
from statusek.core.decide import decide
from statusek.core.instance import Event, InstanceState
from statusek.core.messages import Create, Reply
from statusek.core.model import StatusModel

if TYPE_CHECKING:
    from statusek.testing import RabbitAdmin
    from tests.integration.wire import Wire

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
TEST_MODELS = ROOT / "tests" / "models"
SHIPPED_MODELS = ROOT / "src" / "statusek" / "models"

# The shipped model most tests create instances of: STARTED -> FINISHED.
TASK = "2-POINT LINE TASK"
# The clock of the pure core's tests.
T0 = datetime(2026, 1, 1, tzinfo=UTC)

_TRUE = object()


def command_partitions() -> int:
    """The partition count every worker of this session runs with (STATUSEK_TEST_COMMAND_PARTITIONS)."""
    return int(os.environ.get("STATUSEK_TEST_COMMAND_PARTITIONS", "1"))


# --- waiting --------------------------------------------------------------------------------------


@overload
async def eventually(
    check: Callable[[], Awaitable[T]],
    timeout: float = ...,
    *,
    equals: object = ...,
    ignoring: tuple[type[Exception], ...] = ...,
    every: float = ...,
    what: str = ...,
) -> T: ...
@overload
async def eventually(
    check: Callable[[], T],
    timeout: float = ...,
    *,
    equals: object = ...,
    ignoring: tuple[type[Exception], ...] = ...,
    every: float = ...,
    what: str = ...,
) -> T: ...
async def eventually(
    check: Callable[[], T | Awaitable[T]],
    timeout: float = 5.0,
    *,
    equals: object = _TRUE,
    ignoring: tuple[type[Exception], ...] = (),
    every: float = 0.1,
    what: str = "condition",
) -> T:
    """The first result of `check()` that is true (or `== equals`), asked every `every` seconds.

    `check` may be a function or a coroutine function. Exceptions of the `ignoring` types count
    as "not yet". After `timeout` seconds, AssertionError naming `what` and the last result.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            value: Any = await result if isinstance(result, Awaitable) else result
        except ignoring as e:
            value = e
        else:
            if value == equals if equals is not _TRUE else bool(value):
                return value  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            wanted = "" if equals is _TRUE else f" (wanted {equals!r})"
            raise AssertionError(f"{what} not met within {timeout:g} s: last {value!r}{wanted}")
        await asyncio.sleep(every)


# --- the garbage collector ------------------------------------------------------------------------


@contextlib.contextmanager
def collector_held_off() -> Iterator[None]:
    """No automatic garbage collection inside the block (an explicit `gc.collect()` still runs)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# --- ports and processes --------------------------------------------------------------------------


async def run(*command: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`command` to its end (at most `timeout` s), its output read through pipes (and so grepped
    for passwords at the end of the session)."""
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return subprocess.CompletedProcess(list(command), process.returncode, out.decode(), err.decode())


async def statusek(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`statusek ARGS` as a subprocess with `env`: the CLI as a user runs it."""
    return await run(sys.executable, "-m", "statusek", *args, env=env, timeout=timeout)


# --- the broker ------------------------------------------------------------------------------------


@contextlib.contextmanager
def broker_max_message_size(rabbit: RabbitAdmin, size: int) -> Iterator[None]:
    """The broker's limit set for the block (channels opened meanwhile), then put back."""
    before = re.search(
        r"\{ok,(\d+)\}", rabbit.rabbitmqctl("eval", "application:get_env(rabbit, max_message_size).")
    )
    rabbit.rabbitmqctl("eval", f"application:set_env(rabbit, max_message_size, {size}).")
    try:
        yield
    finally:
        if before is not None:
            rabbit.rabbitmqctl("eval", f"application:set_env(rabbit, max_message_size, {before.group(1)}).")


# --- the ops server -------------------------------------------------------------------------------


def _ops_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


async def ops_get(port: int, path: str) -> tuple[int, bytes]:
    """GET `path` of the ops server on `port`: (status, body), (0, b"") when nothing answers."""
    return await asyncio.to_thread(_ops_get, port, path)


async def wait_status(port: int, status: int, timeout: float) -> tuple[float, bytes]:
    """Poll /readyz until it answers `status`; returns the seconds it took and the body."""
    started = time.monotonic()
    while True:
        code, body = await ops_get(port, "/readyz")
        if code == status:
            return time.monotonic() - started, body
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"/readyz did not answer {status} within {timeout} s (last {code} {body!r})")
        await asyncio.sleep(0.1)


# --- builders -------------------------------------------------------------------------------------


def token() -> str:
    return str(uuid.uuid4())


async def create(wire: Wire, object_name: str = TASK, **fields: object) -> str:
    """A new instance, created through a running worker; its token."""
    reply = await wire.request("create", {"object_name": object_name, **fields})
    assert reply["code"] == "SUCCESS", reply
    return str(reply["data"]["instance_token"])


@dataclass(frozen=True, slots=True)
class Created:
    """An accepted create `Decision`: the same fields, its state known to be there."""

    reply: Reply
    state: InstanceState
    events: list[Event]


def created(
    model: StatusModel, *, at: datetime = T0, sender: Sender = ANONYMOUS_SENDER, **create: object
) -> Created:
    """The pure core's decision to create an instance of `model` (asserted accepted)."""
    decision = decide(
        Create(object_name=model.object_name, **create),
        None,
        {model.object_name: model},
        at,
        new_token=uuid.uuid4(),
        sender=sender,
    )
    assert decision.state is not None, decision.reply
    return Created(decision.reply, decision.state, decision.events)
