"""`statusek gateway`: the original Statusek's REST API, over HTTP, against the session's worker.

By default the gateway answers as Go Statusek v2.7.2 does; the first tests
check its shapes against v2.7.2's README and source (api/api.go, api/common.go).

With STATUSEK_GATEWAY_WIRE=readme it answers in the first README's shape. Those
tests replay the REST examples of the original Statusek README
(shared/seeds/statusek-README.md, copied below as printed there), request by
request, and compare each response with the README's field by field: every
key the README shows must be there; values that are the same on every run
(status, message, status names, types and descriptions) must be equal; the
others (tokens, ids, times) must have the README's type and form.

Two liberties, both documented in docs/migrating.md, "What differs":
the README's status RUN is STARTED here (the shipped 2-POINT LINE TASK names
it so, as the original did from 2021 on), and its "Getting all statuses"
example prints /instance/checkIsFinished where the route is /event/getEvents.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from statusek import Client
from statusek.adapters.rabbitmq.broker import Broker, Names
from statusek.gateway.server import GatewayServer
from statusek.gateway.wire import GO_SNIFFED_TEXT
from statusek.identity import version
from statusek.settings import Wire
from statusek.testing import Services, free_port, fresh_vhost
from statusek.worker.worker import Worker
from tests.helpers import TASK, eventually

pytestmark = pytest.mark.integration

README_TOKEN = "1d36bcdf-d776-4e7a-97a6-4431079d2b2e"

# The original README's examples: (route, request body, response), as printed there.
Example = tuple[str, dict[str, Any], dict[str, Any]]
README_CREATE: Example = (
    "/instance/create",
    {"object_name": "2-POINT LINE TASK", "instance_timeout": 600},
    {"instance_token": "1d36bcdf-d776-4e7a-97a6-4431079d2b2e", "message": "Success", "status": True},
)
README_SET_STATUS: Example = (
    "/status/setStatus",
    {"instance_token": "1d36bcdf-d776-4e7a-97a6-4431079d2b2e", "status_name": "RUN"},
    {"message": "Success", "status": True},
)
README_CHECK_STATUS_IS_SET: Example = (
    "/status/checkStatusIsSet",
    {"instance_token": "1d36bcdf-d776-4e7a-97a6-4431079d2b2e", "status_name": "FINISHED"},
    {"message": "Status is not set", "status": False},
)
README_CHECK_IS_FINISHED: Example = (
    "/instance/checkIsFinished",
    {"instance_token": "1d36bcdf-d776-4e7a-97a6-4431079d2b2e"},
    {"message": "Instance is finished", "status": True},
)
README_GET_EVENTS: Example = (
    "/event/getEvents",  # the README prints /instance/checkIsFinished here; its response is getEvents'
    {"instance_token": "1d36bcdf-d776-4e7a-97a6-4431079d2b2e"},
    {
        "events": [
            {
                "Status": {
                    "ObjectID": 2,
                    "StatusID": 2,
                    "StatusName": "RUN",
                    "StatusDesc": "Task is running",
                    "StatusType": "MANDATORY",
                },
                "EventCreationDt": "2020-06-15T02:22:05.38288+03:00",
            },
            {
                "Status": {
                    "ObjectID": 2,
                    "StatusID": 3,
                    "StatusName": "FINISHED",
                    "StatusDesc": "Task is finished",
                    "StatusType": "MANDATORY",
                },
                "EventCreationDt": "2020-06-15T02:22:08.998913+03:00",
            },
        ],
        "message": "Success",
        "status": True,
    },
)
# Between the README's "Check some status is set" (FINISHED is not set) and "Checking process is
# finished" (it is), FINISHED was set: the README does not show that request.
SET_FINISHED: Example = (
    "/status/setStatus",
    {"instance_token": README_TOKEN, "status_name": "FINISHED"},
    {"message": "Success", "status": True},
)
README_STORY: list[Example] = [
    README_CREATE,
    README_SET_STATUS,
    README_CHECK_STATUS_IS_SET,
    SET_FINISHED,
    README_CHECK_IS_FINISHED,
    README_GET_EVENTS,
]


def _is_uuid(value: object) -> bool:
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _is_time(value: object) -> bool:
    try:
        return isinstance(value, str) and datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# Values that differ from run to run: checked for the README's type and form, not equality.
VOLATILE: dict[str, Callable[[object], bool]] = {
    "instance_token": _is_uuid,
    "EventCreationDt": _is_time,
    "ObjectID": _is_id,
    "StatusID": _is_id,
}


def assert_like_readme(expected: Any, actual: Any, where: str = "response") -> None:
    """Every key of the README's `expected` is in `actual`, equal, or of its form where volatile."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not an object"
        for key, value in expected.items():
            assert key in actual, f"{where}: no {key!r} in {sorted(actual)}"
            check = VOLATILE.get(key)
            if check is not None:
                assert check(actual[key]), f"{where}.{key}: {actual[key]!r} is not of the README's form"
            else:
                assert_like_readme(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: {actual!r} is not a list"
        assert len(actual) == len(expected), f"{where}: {len(actual)} items, the README shows {len(expected)}"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            assert_like_readme(e, a, f"{where}[{i}]")
    else:
        assert type(actual) is type(expected) and actual == expected, f"{where}: {actual!r} != {expected!r}"


def as_here(value: Any, token: str) -> Any:
    """A README value with this run's token, and STARTED for the README's RUN."""
    if isinstance(value, dict):
        return {k: as_here(v, token) for k, v in value.items()}
    if isinstance(value, list):
        return [as_here(v, token) for v in value]
    if value == README_TOKEN:
        return token
    if value == "RUN":
        return "STARTED"
    return value


Post = Callable[..., Any]


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture(scope="module")
async def gateway(worker: Worker, amqp_url: str) -> AsyncIterator[str]:
    """The gateway (v2.7.2's wire, nobody asked) on a free port, before the session's worker; its URL."""
    async with await Client.connect(amqp_url) as client:
        server = GatewayServer(client, "127.0.0.1", 0)
        await server.start()
        try:
            yield f"http://127.0.0.1:{server.port}"
        finally:
            await server.stop()


@pytest.fixture(scope="module")
async def readme_gateway(worker: Worker, amqp_url: str) -> AsyncIterator[str]:
    """The gateway answering in the first README's shape (STATUSEK_GATEWAY_WIRE=readme); its URL."""
    async with await Client.connect(amqp_url) as client:
        server = GatewayServer(client, "127.0.0.1", 0, wire=Wire.README)
        await server.start()
        try:
            yield f"http://127.0.0.1:{server.port}"
        finally:
            await server.stop()


def poster(base: str, http: aiohttp.ClientSession, content_type: str) -> Post:
    async def post(path: str, body: Any = None, *, data: bytes | None = None) -> dict[str, Any]:
        payload = data if data is not None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        async with http.post(base + path, data=payload, headers=headers) as response:
            raw = await response.read()
            assert response.status == 200, raw
            assert response.headers["Content-Type"] == content_type
            answer: dict[str, Any] = json.loads(raw)
            return answer

    return post


@pytest.fixture
def post(gateway: str, http: aiohttp.ClientSession) -> Post:
    """POST to the v2.7.2 gateway: Go's sniffed text/plain type, its JSON body."""
    return poster(gateway, http, GO_SNIFFED_TEXT)


@pytest.fixture
def readme_post(readme_gateway: str, http: aiohttp.ClientSession) -> Post:
    """POST to the first README's gateway: application/json."""
    return poster(readme_gateway, http, "application/json")


async def replay(post: Post, example: Example, token: str) -> dict[str, Any]:
    """Sends an example's request (with this run's token) and checks the answer against the README's."""
    path, request, expected = example
    answer: dict[str, Any] = await post(path, as_here(request, token))
    assert_like_readme(as_here(expected, token), answer)
    return answer


async def replay_story_until(post: Post, example: Example) -> str:
    """Replays the README's story up to `example` (excluded) on a new instance; returns its token."""
    answer = await replay(post, README_CREATE, README_TOKEN)
    token = str(answer["instance_token"])
    for step in README_STORY[1 : README_STORY.index(example)]:
        await replay(post, step, token)
    return token


# v2.7.2's wire (the default)


async def new_instance(post: Post, *statuses: str) -> str:
    answer = await post("/instance/create", {"object_name": TASK})
    token = str(answer["data"]["instance_token"])
    for status in statuses:
        assert (await post("/status/setStatus", {"instance_token": token, "status_name": status}))["status"]
    return token


async def test_create_answers_as_v2_7_2(post: Post) -> None:
    """v2.7.2's README: status true, message "", the token in data."""
    answer = await post("/instance/create", {"object_name": TASK, "instance_timeout": 600})
    assert answer == {
        "status": True,
        "message": "",
        "data": {"instance_token": answer["data"]["instance_token"]},
        "code": "SUCCESS",
    }
    assert _is_uuid(answer["data"]["instance_token"])


async def test_answers_are_written_as_go_writes_them(gateway: str, http: aiohttp.ClientSession) -> None:
    """Byte for byte as Go's json.Encoder: compact, then a newline; Go's sniffed content type."""
    token = await new_instance(poster(gateway, http, GO_SNIFFED_TEXT))
    body = {"instance_token": token, "status_name": "STARTED"}
    async with http.post(gateway + "/status/setStatus", json=body) as response:
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert await response.read() == b'{"status":true,"message":"","data":{},"code":"SUCCESS"}\n'


async def test_unknown_object_is_refused_as_v2_7_2_shows(post: Post) -> None:
    """v2.7.2's README: status false, the original's message, empty data."""
    answer = await post("/instance/create", {"object_name": "2-POINT LINE TASK1"})
    assert answer == {
        "status": False,
        "message": "ERROR: Object name '2-POINT LINE TASK1' is not found",
        "data": {},
        "code": "OBJECT_NAME_IS_NOT_FOUND",
    }


async def test_open_instance_is_a_successful_answer_in_data(post: Post) -> None:
    """checkIsFinished of an open instance: status true, message "", the answer in data, both keys."""
    token = await new_instance(post, "STARTED")
    answer = await post("/instance/checkIsFinished", {"instance_token": token})
    assert answer == {
        "status": True,
        "message": "",
        "data": {
            "instance_is_finished": False,
            "instance_is_finished_description": "",
            "instanse_is_finished_description": "",
        },
        "code": "SUCCESS",
    }


async def test_finished_instance_names_its_reason_under_both_keys(post: Post) -> None:
    """instanse_… (sic, every release of the original) and instance_… both carry the finish reason."""
    token = await new_instance(post, "STARTED", "FINISHED")
    answer = await post("/instance/checkIsFinished", {"instance_token": token})
    assert (answer["status"], answer["data"]) == (
        True,
        {
            "instance_is_finished": True,
            "instance_is_finished_description": "ALL_MANDATORY_STATUSES_ARE_SET",
            "instanse_is_finished_description": "ALL_MANDATORY_STATUSES_ARE_SET",
        },
    )


async def test_status_not_set_is_a_successful_answer_in_data(post: Post) -> None:
    """checkStatusIsSet: status true either way, status_is_set in data."""
    token = await new_instance(post, "STARTED")
    for name, is_set in (("STARTED", True), ("FINISHED", False)):
        answer = await post("/status/checkStatusIsSet", {"instance_token": token, "status_name": name})
        assert (answer["status"], answer["message"], answer["data"]) == (True, "", {"status_is_set": is_set})


async def test_a_status_the_model_lacks_is_not_set(post: Post) -> None:
    """As in v2.7.2, which looks the name up and finds no event of it: status_is_set false."""
    token = await new_instance(post)
    answer = await post("/status/checkStatusIsSet", {"instance_token": token, "status_name": "RUN"})
    assert (answer["status"], answer["data"]) == (True, {"status_is_set": False})


async def test_set_status_refused_is_false_with_the_original_text(post: Post) -> None:
    """A rule rejection: status false, the original's message (its spelling), data {}."""
    token = await new_instance(post)
    answer = await post("/status/setStatus", {"instance_token": token, "status_name": "FINISHED"})
    assert answer == {
        "status": False,
        "message": "Not all previos mandatory statuses are set for status 'FINISHED'",
        "data": {},
        "code": "NOT_ALL_PREVIOUS_MANDATORY_STATUSES_ARE_SET",
    }


async def test_ready_to_set_answers_true_with_an_empty_description(post: Post) -> None:
    """checkStatusIsReadyToSet: a status that may be set is true with "" as its description."""
    token = await new_instance(post, "STARTED")
    answer = await post(
        "/status/checkStatusIsReadyToSet", {"instance_token": token, "status_name": "FINISHED"}
    )
    assert (answer["status"], answer["message"], answer["data"]) == (
        True,
        "",
        {"status_is_ready_to_set": True, "status_is_ready_to_set_description": ""},
    )


async def test_not_ready_to_set_is_a_successful_answer_with_the_reason(post: Post) -> None:
    """v2.7.2's README: an unmet rule is status true, ready false, the original's description."""
    token = await new_instance(post)
    answer = await post(
        "/status/checkStatusIsReadyToSet", {"instance_token": token, "status_name": "FINISHED"}
    )
    assert (answer["status"], answer["message"], answer["data"]) == (
        True,
        "",
        {
            "status_is_ready_to_set": False,
            "status_is_ready_to_set_description": (
                "Not all previos mandatory statuses are set for status 'FINISHED'"
            ),
        },
    )


async def test_ready_to_set_on_a_finished_instance_fails_with_its_reason(post: Post) -> None:
    """checkStatusIsReadyToSet on a finished instance: status false, finished by its reason."""
    token = await new_instance(post, "STARTED", "FINISHED")
    answer = await post(
        "/status/checkStatusIsReadyToSet", {"instance_token": token, "status_name": "FINISHED"}
    )
    assert (answer["status"], answer["message"], answer["data"]) == (
        False,
        f"Instance '{token}' is finished by 'ALL_MANDATORY_STATUSES_ARE_SET'",
        {},
    )


async def test_set_status_on_a_finished_instance_names_the_reason(post: Post) -> None:
    """setStatus on a finished instance: the original's message with the finish reason."""
    token = await new_instance(post, "STARTED", "FINISHED")
    answer = await post("/status/setStatus", {"instance_token": token, "status_name": "FINISHED"})
    assert (answer["status"], answer["message"], answer["code"]) == (
        False,
        f"Instance '{token}' is finished by 'ALL_MANDATORY_STATUSES_ARE_SET'",
        "INSTANCE_IS_FINISHED",
    )


async def test_a_status_set_twice_is_refused_with_the_original_message(post: Post) -> None:
    """A rule rejection: STATUS_IS_ALREADY_SET in the original's words."""
    token = await new_instance(post, "STARTED")
    answer = await post("/status/setStatus", {"instance_token": token, "status_name": "STARTED"})
    assert (answer["status"], answer["message"]) == (
        False,
        f"Status 'STARTED' is already set for instance '{token}'",
    )


async def test_unknown_token_is_not_found(post: Post) -> None:
    """An instance token nobody created: the original's not-found message."""
    token = str(uuid.uuid4())
    answer = await post("/instance/checkIsFinished", {"instance_token": token})
    assert answer == {
        "status": False,
        "message": f"ERROR: Instance token '{token}' is not found",
        "data": {},
        "code": "INSTANCE_TOKEN_IS_NOT_FOUND",
    }


async def test_a_token_that_is_not_a_uuid_is_not_found(post: Post) -> None:
    """A token that is no UUID is not found either (statusek is not asked)."""
    answer = await post("/event/getEvents", {"instance_token": "abc"})
    assert (answer["status"], answer["message"]) == (False, "ERROR: Instance token 'abc' is not found")


async def test_get_events_lists_status_events_in_the_original_shape(post: Post) -> None:
    """getEvents: Status with ids and names, EventMessage, EventCreationDt; no pings, no creation."""
    token = await new_instance(post)
    await post(
        "/status/setStatus", {"instance_token": token, "status_name": "STARTED", "status_message": "go"}
    )
    answer = await post("/event/getEvents", {"instance_token": token})
    assert (answer["status"], answer["message"], list(answer["data"])) == (True, "", ["events"])
    [event] = answer["data"]["events"]
    assert set(event) == {"Status", "EventMessage", "EventCreationDt"}
    assert event["Status"] == {
        "ID": 1,
        "ObjectID": event["Status"]["ObjectID"],
        "StatusID": 1,
        "StatusName": "STARTED",
        "StatusDesc": "Task is running",
        "StatusType": "MANDATORY",
    }
    assert _is_id(event["Status"]["ObjectID"])
    assert event["EventMessage"] == "go" and _is_time(event["EventCreationDt"])


async def test_get_events_of_an_instance_without_statuses_is_null(post: Post) -> None:
    """Go's nil slice: no status set yet is "events": null, as v2.7.2 writes it."""
    token = await new_instance(post)
    answer = await post("/event/getEvents", {"instance_token": token})
    assert (answer["status"], answer["data"]) == (True, {"events": None})


async def test_set_global_status_is_recorded(post: Post, amqp_url: str) -> None:
    """setGlobalStatus records a global event with its message."""
    name = f"NIGHTLY LOAD {uuid.uuid4().hex[:8]}"
    answer = await post("/status/setGlobalStatus", {"status_name": name, "status_message": "all rows"})
    assert answer == {"status": True, "message": "", "data": {}, "code": "SUCCESS"}
    async with await Client.connect(amqp_url) as client:
        page = await client.get_global_events(status_name=name)
    assert [(e["status_name"], e["message"]) for e in page["events"]] == [(name, "all rows")]


async def test_about_names_the_version_under_the_originals_keys(post: Post) -> None:
    """/about: the original's data keys ("home page", "version"), statusek's version."""
    answer = await post("/about")
    assert (answer["status"], answer["message"]) == (True, "")
    assert answer["data"] == {"home page": "https://github.com/aleksaan/statusek", "version": version()}


def queries_asked(worker: Worker) -> dict[str, float]:
    """The queries the session's worker answered so far, by routing key."""
    asked: dict[str, float] = {}
    for family in worker.metrics.queries.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = sample.labels["routing_key"]
                asked[key] = asked.get(key, 0.0) + sample.value
    return asked


async def queries_asked_since(worker: Worker, before: dict[str, float], at_least: int) -> dict[str, float]:
    """The queries answered since `before`, by routing key, once at least `at_least` are counted.

    The worker counts a query after its reply has left, so the count can trail the answer.
    """

    def grown() -> dict[str, float]:
        after = queries_asked(worker)
        return {key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key, 0.0)}

    await eventually(lambda: sum(grown().values()) >= at_least, 5)
    await asyncio.sleep(0.1)  # and nothing more comes
    return grown()


async def test_get_events_asks_the_worker_once(post: Post, worker: Worker) -> None:
    """getEvents is one get-events query (its reply carries the model): no get-instance besides."""
    token = await new_instance(post, "STARTED")
    before = queries_asked(worker)
    answer = await post("/event/getEvents", {"instance_token": token})
    assert answer["data"]["events"][0]["Status"]["StatusID"] == 1
    assert await queries_asked_since(worker, before, 1) == {"get-events": 1}


async def test_get_events_follows_the_pages(post: Post, amqp_url: str) -> None:
    """A status set after 1,000 pings (the first page of get-events) is listed too."""
    token = await new_instance(post, "STARTED")
    async with await Client.connect(amqp_url) as client:
        await asyncio.gather(*(client.ping(token) for _ in range(1000)))
        await client.set_status(token, "FINISHED")
    answer = await post("/event/getEvents", {"instance_token": token})
    assert [e["Status"]["StatusName"] for e in answer["data"]["events"]] == ["STARTED", "FINISHED"]


async def test_check_status_is_set_asks_the_worker_once(post: Post, worker: Worker) -> None:
    """checkStatusIsSet, set or not, is one is-set query each."""
    token = await new_instance(post, "STARTED")
    before = queries_asked(worker)
    for name in ("STARTED", "FINISHED", "RUN"):
        await post("/status/checkStatusIsSet", {"instance_token": token, "status_name": name})
    assert await queries_asked_since(worker, before, 3) == {"is-set": 3}


# Go's JSON decoding, end to end


async def test_keys_in_any_case_are_read_as_go_reads_them(post: Post) -> None:
    """{"OBJECT_NAME": …, "Instance_Timeout": 600} creates, as in Go."""
    answer = await post("/instance/create", {"OBJECT_NAME": TASK, "Instance_Timeout": 600})
    assert answer["status"] is True and _is_uuid(answer["data"]["instance_token"])


async def test_text_after_the_json_value_is_ignored(post: Post) -> None:
    """Go's decoder reads the first value: a trailing newline, or anything, changes nothing."""
    answer = await post("/instance/create", data=b'{"object_name": "2-POINT LINE TASK"}\nthen junk')
    assert answer["status"] is True


@pytest.mark.parametrize("timeout", [0, -600])
async def test_zero_or_negative_timeout_is_the_models(post: Post, amqp_url: str, timeout: int) -> None:
    """instance_timeout 0 or below is the model's timeout (Go timed such an instance out at once)."""
    answer = await post("/instance/create", {"object_name": TASK, "instance_timeout": timeout})
    token = answer["data"]["instance_token"]
    async with await Client.connect(amqp_url) as client:
        instance = await client.get_instance(token)
    assert instance["instance_is_finished"] is False
    created = datetime.fromisoformat(instance["created_at"])
    deadline = instance["instance_deadline"]
    expected = instance["model"].get("instance_timeout")
    if expected is None:
        assert deadline is None
    else:
        assert (datetime.fromisoformat(deadline) - created).total_seconds() == expected


# The first README's wire (STATUSEK_GATEWAY_WIRE=readme), its examples in order


async def test_readme_creating_instance_of_process(readme_post: Post) -> None:
    """README "Creating instance of process": instance_token, "Success", true."""
    answer = await replay(readme_post, README_CREATE, README_TOKEN)
    assert answer["data"] == {"instance_token": answer["instance_token"]}


async def test_readme_setting_statuses(readme_post: Post) -> None:
    """README "Setting statuses": "Success", true."""
    token = await replay_story_until(readme_post, README_SET_STATUS)
    await replay(readme_post, README_SET_STATUS, token)


async def test_readme_check_some_status_is_set(readme_post: Post) -> None:
    """README "Check some status is set": FINISHED is not set, "Status is not set", false."""
    token = await replay_story_until(readme_post, README_CHECK_STATUS_IS_SET)
    answer = await replay(readme_post, README_CHECK_STATUS_IS_SET, token)
    assert answer["data"] == {"status_is_set": False}


async def test_readme_checking_process_is_finished(readme_post: Post) -> None:
    """README "Checking process is finished": "Instance is finished", true."""
    token = await replay_story_until(readme_post, README_CHECK_IS_FINISHED)
    answer = await replay(readme_post, README_CHECK_IS_FINISHED, token)
    assert answer["data"] == {
        "instance_is_finished": True,
        "instance_is_finished_description": "ALL_MANDATORY_STATUSES_ARE_SET",
        "instanse_is_finished_description": "ALL_MANDATORY_STATUSES_ARE_SET",
    }


async def test_readme_getting_all_statuses_of_process(readme_post: Post) -> None:
    """README "Getting all statuses of process": both status events, in order, as the README nests them."""
    token = await replay_story_until(readme_post, README_GET_EVENTS)
    answer = await replay(readme_post, README_GET_EVENTS, token)
    assert answer["data"] == {"events": answer["events"]}


async def test_readme_status_is_set_answers_true(readme_post: Post) -> None:
    """README: "or status: true if checked status is set"."""
    token = await new_instance(readme_post, "STARTED")
    answer = await readme_post(
        "/status/checkStatusIsSet", {"instance_token": token, "status_name": "STARTED"}
    )
    assert (answer["status"], answer["message"], answer["data"]) == (
        True,
        "Status is set",
        {"status_is_set": True},
    )


async def test_readme_open_instance_is_not_finished(readme_post: Post) -> None:
    """README: "or status: false and message: Instance is not finished"."""
    token = await new_instance(readme_post, "STARTED")
    answer = await readme_post("/instance/checkIsFinished", {"instance_token": token})
    assert (answer["status"], answer["message"]) == (False, "Instance is not finished")
    assert answer["data"]["instance_is_finished"] is False
    assert answer["code"] == "SUCCESS"


async def test_readme_events_of_an_instance_without_statuses_are_a_list(readme_post: Post) -> None:
    """The README's shape lists no events as []."""
    token = await new_instance(readme_post)
    answer = await readme_post("/event/getEvents", {"instance_token": token})
    assert (answer["data"], answer["events"]) == ({"events": []}, [])


# HTTP and request mistakes


async def test_a_body_that_is_not_json_is_a_parsing_error(post: Post) -> None:
    """Not JSON: HTTP 200, status false, the original's parsing message and where."""
    answer = await post("/instance/create", data=b'{"object_name": ')
    assert answer["status"] is False and answer["code"] == "INVALID_MESSAGE"
    assert answer["message"].startswith("Error while parameters parsing: the body is not JSON (")


async def test_a_missing_field_is_named(post: Post) -> None:
    """A required field left out is named."""
    answer = await post("/status/setStatus", {"instance_token": str(uuid.uuid4())})
    assert (answer["status"], answer["message"]) == (
        False,
        "Error while parameters parsing: 'status_name' is required",
    )


async def test_a_field_of_the_wrong_type_is_named(post: Post) -> None:
    """instance_timeout must be an integer, as in the original (Go int)."""
    answer = await post("/instance/create", {"object_name": TASK, "instance_timeout": "600"})
    assert answer["message"] == "Error while parameters parsing: 'instance_timeout' must be an integer"


async def test_a_body_over_the_limit_is_refused(post: Post) -> None:
    """A body over STATUSEK_MAX_BODY_BYTES: status false, the limit named."""
    answer = await post("/instance/create", {"object_name": "x" * 70_000})
    assert (answer["status"], answer["message"]) == (
        False,
        "Error while parameters parsing: the body is over 65536 bytes",
    )


async def test_unknown_fields_are_ignored(post: Post) -> None:
    """Fields the original does not read are ignored, as Go's decoder does."""
    answer = await post("/instance/create", {"object_name": TASK, "priority": 5})
    assert answer["status"] is True


async def test_a_message_statusek_refuses_is_a_parsing_error(post: Post) -> None:
    """A value over statusek's limits (status_message over 4,096 characters) is refused, named."""
    token = await new_instance(post)
    body = {"instance_token": token, "status_name": "STARTED", "status_message": "m" * 5000}
    answer = await post("/status/setStatus", body)
    assert answer["status"] is False and answer["code"] == "INVALID_MESSAGE"
    assert (
        answer["message"].startswith("Error while parameters parsing: ")
        and "status_message" in answer["message"]
    )


# No worker, shutdown, the command


@pytest.fixture
async def idle_vhost(services: Services, amqp_url: str) -> AsyncIterator[str]:
    """A vhost of the session's user with statusek's exchanges and queues but no worker."""
    with fresh_vhost(amqp_url, admin=services.rabbit) as url:
        broker = await Broker.connect(url, Names())
        try:
            await broker.declare()
        finally:
            await broker.close()
        yield url


@pytest.fixture
async def idle_gateway(idle_vhost: str) -> AsyncIterator[GatewayServer]:
    """A gateway whose requests no worker answers, within 1 s."""
    async with await Client.connect(idle_vhost) as client:
        server = GatewayServer(client, "127.0.0.1", 0, answer_within=1.0, shutdown_timeout=5.0)
        await server.start()
        try:
            yield server
        finally:
            await server.stop()


async def test_no_worker_is_status_false_within_the_answer_time(
    idle_gateway: GatewayServer, http: aiohttp.ClientSession
) -> None:
    """No worker: status false after answer_within, saying the request was not applied."""
    started = time.monotonic()
    url = f"http://127.0.0.1:{idle_gateway.port}/instance/create"
    async with http.post(url, json={"object_name": TASK}) as response:
        answer = json.loads(await response.read())
    assert response.status == 200 and time.monotonic() - started < 3
    assert answer == {
        "status": False,
        "message": "ERROR: no statusek worker answered within 1 s;"
        " its deadline has passed, so it will not be applied later: try again",
        "data": {},
        "code": "NO_ANSWER",
    }


async def test_stop_lets_the_requests_under_way_finish(
    idle_gateway: GatewayServer, http: aiohttp.ClientSession
) -> None:
    """stop() while a request waits: the request still gets its answer, then the port closes."""
    url = f"http://127.0.0.1:{idle_gateway.port}/instance/create"

    async def ask() -> dict[str, Any]:
        async with http.post(url, json={"object_name": TASK}) as response:
            answer: dict[str, Any] = json.loads(await response.read())
            return answer

    request = asyncio.create_task(ask())
    await asyncio.sleep(0.3)
    await idle_gateway.stop()
    assert (await asyncio.wait_for(request, 5))["code"] == "NO_ANSWER"
    with pytest.raises(aiohttp.ClientConnectionError):
        await ask()


async def test_gateway_command_serves_until_sigterm(worker: Worker, worker_env: dict[str, str]) -> None:
    """`statusek gateway` answers GET /about, logs one line per request, exits 0 on SIGTERM.

    Unauthenticated (STATUSEK_GATEWAY_AUTH=none), it says so at start.
    """
    port = free_port()
    env = {
        **worker_env,
        "STATUSEK_HTTP_PORT": str(port),
        "STATUSEK_HTTP_HOST": "127.0.0.1",
        "STATUSEK_GATEWAY_AUTH": "none",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "statusek", "gateway", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        answer = None
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/about") as response:
                        answer = json.loads(await response.read())
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
        assert answer is not None and answer["status"] is True
        process.send_signal(signal.SIGTERM)
        _out, err = await asyncio.wait_for(process.communicate(), 20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    [request] = [line for line in lines if line.get("event") == "http"]
    assert (request["method"], request["path"], request["http_status"], request["status"]) == (
        "GET",
        "/about",
        200,
        True,
    )
    events = [str(line.get("event")) for line in lines]
    assert {"gateway listening", "gateway stopped"} <= set(events)
    [warning] = [line for line in lines if str(line.get("event")).startswith("gateway unauthenticated")]
    assert warning["level"] == "warning" and "trusted network" in str(warning["event"])
