"""`statusek gateway`: the original Statusek's REST API, answered by statusek's workers over AMQP.

Existing Statusek clients keep working against it: the same eight POST
routes, the same request fields, the same response envelope and messages.

    POST /instance/create                  -> create
    POST /status/setStatus                 -> set-status
    POST /instance/checkIsFinished         -> is-finished
    POST /event/getEvents                  -> get-instance, get-events
    POST /status/checkStatusIsSet          -> is-set (and get-instance when not set)
    POST /status/checkStatusIsReadyToSet   -> is-ready
    POST /status/setGlobalStatus           -> set-global-status
    POST /about                            -> (answered by the gateway)

Every answer is HTTP 200 with `{"status": bool, "message": str, "data": {...}}`,
as the original's source sends it, with its messages (those its README shows,
else its return codes). Each key of `data` is also at the top level, where
the original README's responses have them (`instance_token`, `events`), and
`code` carries statusek's reply code for clients that would rather not read
messages. docs/migrating.md, "What differs", lists what differs.

The gateway holds no state and writes nothing to Postgres: it is one
`statusek.Client` shared by every request, with the client's guarantees
(publisher confirms, a bounded wait, an expiration so that a request no
worker took in time is never applied later). It publishes as its own AMQP
user: HTTP callers are not authenticated, so writer lists judge the gateway's
user, and the gateway belongs behind whatever guards your HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import json
import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from statusek.app.identity import version
from statusek.app.settings import Settings
from statusek.client import Client
from statusek.core.codes import Code
from statusek.exceptions import (
    BrokerUnreachable,
    InvalidURL,
    NoAnswerError,
    StatusekClientError,
    StatusekRejected,
)
from statusek.redact import mask_secrets

log = structlog.get_logger(__name__)

# /about's home page: the API the gateway speaks is the original Statusek's.
HOME_PAGE = "https://github.com/aleksaan/statusek"

# Where is-ready goes: its reply's code is needed, which Client.is_ready does not return.
QUERIES_EXCHANGE = "statusek.queries"

SUCCESS = "Success"
PARSING_FAILED = "Error while parameters parsing"

# The original's messages (returncodes/returncodes.go), by statusek's code. <Name> is replaced
# by the request's field of that name, as the original does.
ORIGINAL_MESSAGES: dict[str, str] = {
    Code.INSTANCE_TOKEN_IS_NOT_FOUND: "ERROR: Instance token '<InstanceToken>' is not found",
    Code.OBJECT_NAME_IS_NOT_FOUND: "ERROR: Object name '<ObjectName>' is not found",
    Code.STATUS_NAME_IS_NOT_FOUND_FOR_OBJECT: (
        "ERROR: Status name '<StatusName>' is not found for instance '<InstanceToken>'"
    ),
    Code.NOT_ALL_PREVIOUS_MANDATORY_STATUSES_ARE_SET: (
        "Not all previos mandatory statuses are set for status '<StatusName>'"
    ),
    Code.NO_PREVIOUS_OPTIONAL_STATUS_IS_SET: (
        "No one previos optional statuses are sets for status '<StatusName>'"
    ),
    Code.INSTANCE_IS_FINISHED: "Instance '<InstanceToken>' is finished by '<InstanceIsFinishedDescription>'",
    Code.STATUS_IS_ALREADY_SET: "Status '<StatusName>' is already set for instance '<InstanceToken>'",
    Code.AT_LEAST_ONE_NEXT_STATUS_IS_SET: (
        "At least one next status is set for optional status '<StatusName>'"
    ),
}

# checkStatusIsReadyToSet answers these as "not ready" (status true); the original's other codes
# are failures (status false). NOT_ALLOWED is statusek's: the gateway's user may not set the status.
NOT_READY = frozenset(
    {
        Code.STATUS_IS_ALREADY_SET,
        Code.NOT_ALL_PREVIOUS_MANDATORY_STATUSES_ARE_SET,
        Code.NO_PREVIOUS_OPTIONAL_STATUS_IS_SET,
        Code.NOT_ALLOWED,
    }
)

_PLACEHOLDER = re.compile(r"<(\w+)>")


class ParamsError(ValueError):
    """The request body cannot be read as the route's parameters; the message says why."""


@dataclass(frozen=True, slots=True)
class Params:
    """The original's request fields (api/structs.go); unknown fields are ignored, as Go does."""

    object_name: str | None = None
    instance_timeout: int | None = None
    instance_token: str | None = None
    status_name: str | None = None
    status_message: str | None = None

    @property
    def token(self) -> str:
        assert self.instance_token is not None
        return self.instance_token

    @property
    def status(self) -> str:
        assert self.status_name is not None
        return self.status_name

    def placeholders(self) -> dict[str, str]:
        return {
            "ObjectName": self.object_name or "",
            "InstanceToken": self.instance_token or "",
            "StatusName": self.status_name or "",
        }


_TYPES: dict[str, type] = {
    "object_name": str,
    "instance_timeout": int,
    "instance_token": str,
    "status_name": str,
    "status_message": str,
}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_params(body: bytes, required: tuple[str, ...]) -> Params:
    """The route's parameters from a JSON body; raises ParamsError naming what is wrong."""
    if not body.strip():
        raise ParamsError("the body is empty: send a JSON object")
    try:
        raw = json.loads(body, parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise ParamsError("the body is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise ParamsError(f"the body is not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except ValueError as e:
        raise ParamsError(f"the body is not JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ParamsError("the body is not a JSON object")
    values: dict[str, Any] = {}
    for name, kind in _TYPES.items():
        value = raw.get(name)
        if value is None:  # absent or null: Go leaves the zero value
            continue
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ParamsError(f"'{name}' must be an integer")
        if kind is str and not isinstance(value, str):
            raise ParamsError(f"'{name}' must be a string")
        values[name] = value
    for name in required:
        if not values.get(name):
            raise ParamsError(f"'{name}' is required")
    return Params(**values)


def original_message(code: str, params: Params, **more: str) -> str:
    """The original's message for `code`, with the request's values in its placeholders."""
    template = ORIGINAL_MESSAGES.get(code)
    if template is None:
        return ""
    values = {**params.placeholders(), **more}
    return _PLACEHOLDER.sub(lambda m: values.get(m[1], m[0]), template)


@dataclass(frozen=True, slots=True)
class Answer:
    """One response: `status`, `message` and `data` as the original sends them, and statusek's code."""

    status: bool
    message: str
    data: dict[str, Any] = field(default_factory=dict)
    code: str = Code.SUCCESS
    http_status: int = 200

    def body(self) -> dict[str, Any]:
        # The data keys also at the top level, where the original README's responses have them.
        return {
            "status": self.status,
            "message": self.message,
            "data": self.data,
            "code": self.code,
            **self.data,
        }


Handler = Callable[[Params], Awaitable[Answer]]


@dataclass(frozen=True, slots=True)
class Route:
    path: str
    required: tuple[str, ...]
    handler: Handler
    parses_body: bool = True


class Gateway:
    """The aiohttp application: the original's routes over one shared `Client`."""

    def __init__(self, client: Client, *, answer_within: float = 10.0, max_body_bytes: int = 64 * 1024):
        if not answer_within > 0:
            raise ValueError(f"answer_within must be positive, got {answer_within}")
        self.client = client
        self.answer_within = answer_within
        self.max_body_bytes = max_body_bytes
        self.routes = [
            Route("/instance/create", ("object_name",), self.create),
            Route("/status/setStatus", ("instance_token", "status_name"), self.set_status),
            Route("/instance/checkIsFinished", ("instance_token",), self.check_is_finished),
            Route("/event/getEvents", ("instance_token",), self.get_events),
            Route("/status/checkStatusIsSet", ("instance_token", "status_name"), self.check_status_is_set),
            Route(
                "/status/checkStatusIsReadyToSet",
                ("instance_token", "status_name"),
                self.check_status_is_ready_to_set,
            ),
            Route("/status/setGlobalStatus", ("status_name",), self.set_global_status),
            Route("/about", (), self.about, parses_body=False),
        ]

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes, middlewares=[_log_requests])
        for route in self.routes:
            app.router.add_post(route.path, self._endpoint(route))
        return app

    def _endpoint(self, route: Route) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def endpoint(request: web.Request) -> web.Response:
            answer = await self._answer(route, request)
            _ANSWER.set(answer)  # for the log line of `_log_requests`, which runs in this context
            return web.json_response(answer.body(), status=answer.http_status)

        return endpoint

    async def _answer(self, route: Route, request: web.Request) -> Answer:
        params = Params()
        try:
            if route.parses_body:
                try:
                    body = await request.read()
                except web.HTTPRequestEntityTooLarge:
                    raise ParamsError(f"the body is over {self.max_body_bytes} bytes") from None
                params = parse_params(body, route.required)
                if "instance_token" in route.required:
                    try:
                        params = _with_canonical_token(params)
                    except ValueError:
                        # Not a UUID, so no instance has it: the original's answer, without asking.
                        code = Code.INSTANCE_TOKEN_IS_NOT_FOUND
                        return Answer(False, original_message(code, params), code=code)
            return await route.handler(params)
        except ParamsError as e:
            return Answer(False, f"{PARSING_FAILED}: {e}", code=Code.INVALID_MESSAGE)
        except StatusekRejected as e:
            return Answer(False, await self._refusal(e, params), code=e.code)
        except NoAnswerError:
            return Answer(
                False,
                f"ERROR: no statusek worker answered within {self.answer_within:g} s; "
                "its deadline has passed, so it will not be applied later: try again",
                code="NO_ANSWER",
            )
        except BrokerUnreachable as e:
            applied = "it may have been applied" if e.maybe_applied else "it was not applied"
            log.warning("rabbitmq unreachable", error=mask_secrets(str(e)))
            return Answer(
                False,
                f"ERROR: statusek is unavailable (RabbitMQ cannot be reached); {applied}",
                code="UNAVAILABLE",
            )
        except StatusekClientError as e:
            log.error("client error", error=mask_secrets(str(e)))
            return Answer(False, "ERROR: statusek is unavailable", code="UNAVAILABLE")
        except Exception:
            log.exception("request failed", path=request.path)
            return Answer(
                False, "ERROR: internal error of the gateway", code="INTERNAL_ERROR", http_status=500
            )

    async def _refusal(self, error: StatusekRejected, params: Params) -> str:
        """The original's message for a refusal by statusek, else statusek's own."""
        if error.code == Code.INVALID_MESSAGE:
            return f"{PARSING_FAILED}: {error.message}"
        if error.code == Code.INSTANCE_IS_FINISHED:
            return original_message(
                error.code, params, InstanceIsFinishedDescription=await self._reason(params)
            )
        return original_message(error.code, params) or f"ERROR: {error.message}"

    async def _reason(self, params: Params) -> str:
        """Why an instance finished (the original's InstanceIsFinishedDescription)."""
        try:
            _finished, reason = await self.client.is_finished(params.token, timeout=self.answer_within)
        except StatusekClientError:
            return ""
        return reason or ""

    # The routes

    async def create(self, p: Params) -> Answer:
        assert p.object_name is not None
        token = await self.client.create(
            p.object_name,
            # 0, like no value, is the model's timeout (in the original it timed the instance out at once).
            instance_timeout=p.instance_timeout or None,
            timeout=self.answer_within,
        )
        return Answer(True, SUCCESS, {"instance_token": token})

    async def set_status(self, p: Params) -> Answer:
        await self.client.set_status(p.token, p.status, p.status_message, timeout=self.answer_within)
        return Answer(True, SUCCESS)

    async def check_is_finished(self, p: Params) -> Answer:
        finished, reason = await self.client.is_finished(p.token, timeout=self.answer_within)
        data = {"instance_is_finished": finished, "instance_is_finished_description": reason or ""}
        # The original README: status true "Instance is finished", else status false.
        return Answer(finished, "Instance is finished" if finished else "Instance is not finished", data)

    async def check_status_is_set(self, p: Params) -> Answer:
        is_set = await self.client.is_set(p.token, p.status, timeout=self.answer_within)
        if not is_set:
            # is-set answers "not set" for a name the model lacks; the original said so.
            instance = await self.client.get_instance(p.token, timeout=self.answer_within)
            names = {s["name"] for s in instance["model"]["statuses"]}
            if p.status not in names:
                code = Code.STATUS_NAME_IS_NOT_FOUND_FOR_OBJECT
                return Answer(False, original_message(code, p), code=code)
        # The original README: status true if the status is set, else "Status is not set".
        return Answer(is_set, "Status is set" if is_set else "Status is not set", {"status_is_set": is_set})

    async def check_status_is_ready_to_set(self, p: Params) -> Answer:
        data = await self.client.call(
            QUERIES_EXCHANGE,
            "is-ready",
            {"instance_token": p.token, "status_name": p.status},
            timeout=self.answer_within,
        )
        code = str(data.get("status_is_ready_to_set_code") or Code.SUCCESS)
        if data.get("status_is_ready_to_set"):
            return Answer(
                True, SUCCESS, {"status_is_ready_to_set": True, "status_is_ready_to_set_description": ""}
            )
        description = str(data.get("status_is_ready_to_set_description") or "")
        if code in NOT_READY:
            message = original_message(code, p) or description
            data = {"status_is_ready_to_set": False, "status_is_ready_to_set_description": message}
            return Answer(True, SUCCESS, data, code=code)
        if code == Code.INSTANCE_IS_FINISHED:
            message = original_message(code, p, InstanceIsFinishedDescription=await self._reason(p))
        else:
            message = original_message(code, p) or f"ERROR: {description}"
        return Answer(False, message, code=code)

    async def get_events(self, p: Params) -> Answer:
        instance = await self.client.get_instance(p.token, timeout=self.answer_within)
        events = await self.client.get_events(p.token, timeout=self.answer_within)
        return Answer(True, SUCCESS, {"events": original_events(instance, events)})

    async def set_global_status(self, p: Params) -> Answer:
        await self.client.set_global_status(p.status, p.status_message, timeout=self.answer_within)
        return Answer(True, SUCCESS)

    async def about(self, _p: Params) -> Answer:
        return Answer(True, SUCCESS, {"home_page": HOME_PAGE, "app_version": version()})


def _with_canonical_token(params: Params) -> Params:
    """`params` with its token as statusek writes UUIDs; ValueError when it is not a UUID."""
    return dataclasses.replace(params, instance_token=str(uuid.UUID(params.token)))


def original_events(instance: dict[str, Any], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The status events of an instance, shaped as the original README shows them.

    statusek has no numeric ids: `ObjectID` is the instance's model version and
    `StatusID` (and `ID`, its name in the original's later versions) the
    status's 1-based position in that version, both stable for the instance.
    Pings, the creation and the finish are not listed (the original had none).
    """
    positions = {s["name"]: i for i, s in enumerate(instance["model"]["statuses"], start=1)}
    shaped = []
    for event in events:
        if event.get("kind") != "status":
            continue
        name = str(event["status_name"])
        status_id = positions.get(name, 0)
        shaped.append(
            {
                "Status": {
                    "ID": status_id,
                    "ObjectID": int(instance["model_version"]),
                    "StatusID": status_id,
                    "StatusName": name,
                    "StatusDesc": event.get("status_description") or "",
                    "StatusType": event.get("status_type") or "",
                },
                "EventMessage": event.get("message") or "",
                "EventCreationDt": event["occurred_at"],
            }
        )
    return shaped


_ANSWER: contextvars.ContextVar[Answer | None] = contextvars.ContextVar("statusek_gateway_answer")


@web.middleware
async def _log_requests(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """One log line per request: route, HTTP status, the answer's status and code, duration."""
    started = time.perf_counter()
    _ANSWER.set(None)
    http_status = 500
    try:
        response = await handler(request)
        http_status = response.status
        return response
    except web.HTTPException as e:  # 404 and 405 from aiohttp's routing
        http_status = e.status
        raise
    finally:
        answer = _ANSWER.get()
        level = "warning" if answer is not None and answer.code in ("NO_ANSWER", "UNAVAILABLE") else "info"
        getattr(log, level)(
            "http",
            method=request.method,
            path=request.path,
            http_status=http_status,
            status=answer.status if answer else None,
            code=answer.code if answer else None,
            remote=request.remote,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )


class GatewayServer:
    """The gateway listening on `host:port`; `stop()` finishes the requests under way first."""

    def __init__(
        self,
        client: Client,
        host: str,
        port: int,
        *,
        answer_within: float = 10.0,
        max_body_bytes: int = 64 * 1024,
        shutdown_timeout: float = 10.0,
    ):
        self.gateway = Gateway(client, answer_within=answer_within, max_body_bytes=max_body_bytes)
        self.host = host
        self._port = port
        # Requests under way at stop() get up to shutdown_timeout (plus their answer_within) to finish.
        self._runner = web.AppRunner(
            self.gateway.app(), access_log=None, shutdown_timeout=shutdown_timeout + answer_within
        )

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port)
        await site.start()

    @property
    def port(self) -> int:
        """The port listened on (the one the system chose for port 0)."""
        for address in self._runner.addresses:
            if isinstance(address, tuple):
                return int(address[1])
        return self._port

    async def stop(self) -> None:
        """Stop accepting, let the requests under way finish, then close."""
        await self._runner.cleanup()


async def connect(url: str, stop: asyncio.Event, *, backoff_max: float = 2.0) -> Client | None:
    """A client of the broker at `url`, waiting for it (and for a worker's exchanges) until `stop`.

    Returns None when `stop` is set first; raises InvalidURL for a URL that is not AMQP.
    """
    delay = 0.5
    while not stop.is_set():
        try:
            return await Client.connect(url)
        except InvalidURL:
            raise
        except BrokerUnreachable as e:  # TopologyNotFound too: no worker has run on that vhost yet
            log.warning("waiting for rabbitmq", error=mask_secrets(str(e)), retry_in=delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(backoff_max, delay * 2)
    return None


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Connect, listen on `settings.http_host:http_port` until `stop`, then shut down gracefully."""
    client = await connect(settings.amqp_url, stop, backoff_max=settings.retry_backoff_max)
    if client is None:
        return
    try:
        server = GatewayServer(
            client,
            settings.http_host,
            settings.http_port,
            max_body_bytes=settings.max_body_bytes,
            shutdown_timeout=settings.shutdown_timeout,
        )
        await server.start()
        log.info("gateway listening", host=settings.http_host, port=server.port)
        try:
            await stop.wait()
            log.info("gateway stopping")
        finally:
            await server.stop()
    finally:
        await client.close()
    log.info("gateway stopped")


def run_gateway(settings: Settings) -> None:
    """`statusek gateway`: serve until SIGTERM or SIGINT."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    asyncio.run(main())
