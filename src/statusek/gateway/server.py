"""`statusek gateway`: the original Go Statusek's REST API, answered by statusek's workers over AMQP.

Existing Statusek clients keep working against it: the same routes (any
method, as Go's router), the same request fields read as Go reads them, and
by default the responses of Go Statusek v2.7.2 byte for byte
(STATUSEK_GATEWAY_WIRE; `gateway.wire` says how each is shaped).

    /instance/create                  -> create
    /status/setStatus                 -> set-status
    /instance/checkIsFinished         -> is-finished
    /event/getEvents                  -> get-events
    /status/checkStatusIsSet          -> is-set
    /status/checkStatusIsReadyToSet   -> is-ready
    /status/setGlobalStatus           -> set-global-status
    /about, /                         -> (answered by the gateway)

Every request to a worker is one AMQP round trip on one `statusek.Client`
shared by all requests, with the client's guarantees (publisher confirms, a
bounded wait, an expiration so that a request no worker took in time is
never applied later). docs/migrating.md says what differs from
the original.

Callers authenticate with HTTP Basic against a users file
(STATUSEK_GATEWAY_AUTH=basic, `gateway.users`), and each request is
published with the caller as its AMQP user_id: writer lists judge the
caller, and events record the caller as their actor. RabbitMQ allows that
to a gateway user with the `impersonator` tag, checked at start.
STATUSEK_GATEWAY_AUTH=none asks nobody and publishes as the gateway's own
user, for a trusted network. An `Idempotency-Key` header becomes a
command's message_id: a retried create answers the first instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import structlog
from aiohttp import web

from statusek.adapters.rabbitmq.impersonation import impersonation_problem
from statusek.client import Client
from statusek.core.codes import Code
from statusek.core.messages import MAX_EVENTS_PAGE
from statusek.event_loop import collect_less, loop_runner
from statusek.exceptions import (
    BrokerUnreachable,
    InvalidURL,
    NoAnswerError,
    StatusekClientError,
    StatusekRejected,
    rejection,
)
from statusek.gateway.metrics import GatewayMetrics
from statusek.gateway.users import Authenticator, Unauthenticated, Users, UsersFileError
from statusek.gateway.wire import (
    GO_SNIFFED_TEXT,
    Answer,
    Params,
    ParamsError,
    decode_params,
    route_for,
)
from statusek.identity import version
from statusek.ops import OpsServer
from statusek.redact import mask_secrets
from statusek.settings import Settings, Wire

log = structlog.get_logger(__name__)

# /about's home page: the API the gateway speaks is the original Statusek's.
HOME_PAGE = "https://github.com/aleksaan/statusek"
HOME_TEXT = "Welcome home!"

COMMANDS_EXCHANGE = "statusek.commands"
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
# are failures (status false). NOT_ALLOWED is statusek's: the caller may not set the status.
NOT_READY = frozenset(
    {
        Code.STATUS_IS_ALREADY_SET,
        Code.NOT_ALL_PREVIOUS_MANDATORY_STATUSES_ARE_SET,
        Code.NO_PREVIOUS_OPTIONAL_STATUS_IS_SET,
        Code.NOT_ALLOWED,
    }
)

IDEMPOTENCY_HEADER = "Idempotency-Key"
# A key becomes an AMQP message_id: a short string of at most 255 bytes.
MAX_IDEMPOTENCY_KEY = 255
_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")

_PLACEHOLDER = re.compile(r"<(\w+)>")

# A path that is no route, as Go's http.NotFound answers it.
NOT_FOUND_TEXT = "404 page not found\n"


def original_message(code: str, params: Params, **more: str) -> str:
    """The original's message for `code`, with the request's values in its placeholders."""
    template = ORIGINAL_MESSAGES.get(code)
    if template is None:
        return ""
    values = {**params.placeholders(), **more}
    return _PLACEHOLDER.sub(lambda m: values.get(m[1], m[0]), template)


class GatewayConfigError(ValueError):
    """The gateway cannot start as configured; the message names the setting to fix."""


@dataclass(frozen=True, slots=True)
class Call:
    """What every request to a worker carries besides its body: who asks, and a command's key."""

    user_id: str | None = None  # None: the gateway's own AMQP user
    idempotency_key: str | None = None


Handler = Callable[[Params, Call], Awaitable[Answer]]


@dataclass(frozen=True, slots=True)
class Route:
    path: str
    required: tuple[str, ...]
    handler: Handler
    parses_body: bool = True
    authenticated: bool = True


def idempotency_key(value: str | None) -> str | None:
    """The key of an `Idempotency-Key` header (a bare token, or a structured-field string in quotes).

    ParamsError when it cannot be a message_id.
    """
    if value is None:
        return None
    key = value.strip()
    if len(key) >= 2 and key.startswith('"') and key.endswith('"'):
        key = re.sub(r"\\(.)", r"\1", key[1:-1])
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ParamsError(
            f"the {IDEMPOTENCY_HEADER} header must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
        )
    return key


class Gateway:
    """The aiohttp application: the original's routes over one shared `Client`."""

    def __init__(
        self,
        client: Client,
        *,
        answer_within: float = 10.0,
        max_body_bytes: int = 64 * 1024,
        wire: Wire = Wire.V2_7_2,
        authenticator: Authenticator | None = None,
        metrics: GatewayMetrics | None = None,
    ):
        if not answer_within > 0:
            raise ValueError(f"answer_within must be positive, got {answer_within}")
        self.client = client
        self.answer_within = answer_within
        self.max_body_bytes = max_body_bytes
        self.wire = wire
        self.authenticator = authenticator
        self.metrics = metrics or GatewayMetrics()
        routes = [
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
            # Health checks call /about; it tells nothing that needs credentials.
            Route("/about", (), self.about, parses_body=False, authenticated=False),
        ]
        self.routes = {route.path: route for route in routes}
        self._paths = frozenset([*self.routes, "/"])

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes)
        # One handler for every method and path: the routing is gorilla/mux's (route_for).
        app.router.add_route("*", "/{path:.*}", self.dispatch)
        return app

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """Answer one request, and count and log it."""
        started = time.perf_counter()
        self.metrics.in_flight.inc()
        label, code, answer, user = "other", "INTERNAL_ERROR", None, None
        response: web.StreamResponse | None = None
        try:
            target = route_for(request.path, self._paths)
            if target.kind in ("clean", "slash"):
                label, code = "redirect", "MOVED_PERMANENTLY"
                response = _moved(request, target.path, with_page=target.kind == "slash")
            elif target.kind == "not-found":
                label, code = "other", "NOT_FOUND"
                response = web.Response(
                    status=404,
                    body=NOT_FOUND_TEXT.encode(),
                    headers={"Content-Type": GO_SNIFFED_TEXT, "X-Content-Type-Options": "nosniff"},
                )
            elif target.path == "/":
                label, code = "/", "SUCCESS"
                response = web.Response(body=HOME_TEXT.encode(), headers={"Content-Type": GO_SNIFFED_TEXT})
            else:
                label = target.path
                answer, user = await self._answer(self.routes[target.path], request)
                code = answer.code
                response = self._respond(answer)
            return response
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            http_status = response.status if response is not None else 500
            self.metrics.requests.labels(route=label, http_status=str(http_status), code=code).inc()
            self.metrics.request_duration.labels(route=label).observe(elapsed)
            level = "warning" if code in ("NO_ANSWER", "UNAVAILABLE", "UNAUTHENTICATED") else "info"
            getattr(log, level)(
                "http",
                method=request.method,
                path=request.path,
                http_status=http_status,
                status=answer.status if answer is not None else None,
                code=code,
                user=user,
                remote=request.remote,
                duration_ms=round(elapsed * 1000, 2),
            )

    def _respond(self, answer: Answer) -> web.Response:
        body, content_type = answer.render(self.wire)
        headers = {"Content-Type": content_type}
        if answer.http_status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="statusek", charset="UTF-8"'
        return web.Response(status=answer.http_status, body=body, headers=headers)

    async def _answer(self, route: Route, request: web.Request) -> tuple[Answer, str | None]:
        """The answer to a request of `route`, and the caller it was published as."""
        params = Params()
        call = Call()
        try:
            if route.authenticated and self.authenticator is not None:
                try:
                    user = await self.authenticator.authenticate(request.headers.get("Authorization"))
                except Unauthenticated as e:
                    message = f"ERROR: {e}"
                    return Answer(False, message, code="UNAUTHENTICATED", http_status=401), None
                call = replace(call, user_id=user)
            try:
                call = replace(call, idempotency_key=idempotency_key(request.headers.get(IDEMPOTENCY_HEADER)))
            except ParamsError as e:
                answer = Answer(False, f"{PARSING_FAILED}: {e}", code=Code.INVALID_MESSAGE, http_status=400)
                return answer, call.user_id
            if route.parses_body:
                try:
                    body = await request.read()
                except web.HTTPRequestEntityTooLarge:
                    raise ParamsError(f"the body is over {self.max_body_bytes} bytes") from None
                params = decode_params(body, route.required)
                if "instance_token" in route.required:
                    try:
                        params = _with_canonical_token(params)
                    except ValueError:
                        # Not a UUID, so no instance has it: the original's answer, without asking.
                        code = Code.INSTANCE_TOKEN_IS_NOT_FOUND
                        return Answer(False, original_message(code, params), code=code), call.user_id
            return await route.handler(params, call), call.user_id
        except ParamsError as e:
            return Answer(False, f"{PARSING_FAILED}: {e}", code=Code.INVALID_MESSAGE), call.user_id
        except StatusekRejected as e:
            return await self._refusal(e, params, call), call.user_id
        except NoAnswerError:
            message = (
                f"ERROR: no statusek worker answered within {self.answer_within:g} s; "
                "its deadline has passed, so it will not be applied later: try again"
            )
            return Answer(False, message, code="NO_ANSWER"), call.user_id
        except BrokerUnreachable as e:
            applied = "it may have been applied" if e.maybe_applied else "it was not applied"
            log.warning("rabbitmq unreachable", error=mask_secrets(str(e)))
            message = f"ERROR: statusek is unavailable (RabbitMQ cannot be reached); {applied}"
            return Answer(False, message, code="UNAVAILABLE"), call.user_id
        except StatusekClientError as e:
            log.error("client error", error=mask_secrets(str(e)))
            return Answer(False, "ERROR: statusek is unavailable", code="UNAVAILABLE"), call.user_id
        except Exception:
            log.exception("request failed", path=request.path)
            answer = Answer(
                False, "ERROR: internal error of the gateway", code="INTERNAL_ERROR", http_status=500
            )
            return answer, call.user_id

    async def _refusal(self, error: StatusekRejected, params: Params, call: Call) -> Answer:
        """The original's answer to a refusal by statusek, else statusek's own message."""
        if error.code == Code.INVALID_MESSAGE:
            return Answer(False, f"{PARSING_FAILED}: {error.message}", code=error.code)
        if error.code == Code.MESSAGE_ID_REUSED:
            message = (
                f"ERROR: {IDEMPOTENCY_HEADER} '{call.idempotency_key}' was already used for a different"
                " request; this one was not applied: give every request its own key"
            )
            return Answer(False, message, code=error.code, http_status=422)
        if error.code == Code.INSTANCE_IS_FINISHED:
            reason = await self._reason(params, call)
            message = original_message(error.code, params, InstanceIsFinishedDescription=reason)
            return Answer(False, message, code=error.code)
        return Answer(
            False, original_message(error.code, params) or f"ERROR: {error.message}", code=error.code
        )

    async def _reason(self, params: Params, call: Call) -> str:
        """Why an instance finished (the original's InstanceIsFinishedDescription)."""
        try:
            data = await self._ask(call, QUERIES_EXCHANGE, "is-finished", {"instance_token": params.token})
        except StatusekClientError:
            return ""
        return str(data.get("instance_is_finished_description") or "")

    async def _ask(
        self,
        call: Call,
        exchange: str,
        routing_key: str,
        body: dict[str, Any],
        *,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """One request to a worker as the caller; its reply's data, or the refusal raised."""
        reply = await self.client.request(
            exchange,
            routing_key,
            body,
            timeout=timeout or self.answer_within,
            # The key of a command only: a query is never applied twice anyway.
            message_id=call.idempotency_key if exchange == COMMANDS_EXCHANGE else None,
            user_id=call.user_id,
        )
        if not reply.get("status"):
            raise rejection(str(reply.get("code")), str(reply.get("message")), reply.get("data"))
        return dict(reply.get("data") or {})

    # The routes

    async def create(self, p: Params, call: Call) -> Answer:
        assert p.object_name is not None
        body: dict[str, Any] = {"object_name": p.object_name}
        # Zero or less (and no value) is the model's timeout. Go timed such an instance out at the
        # first request that touched it, which no client can have wanted.
        if p.instance_timeout is not None and p.instance_timeout > 0:
            body["instance_timeout"] = p.instance_timeout
        data = await self._ask(call, COMMANDS_EXCHANGE, "create", body)
        return Answer(True, SUCCESS, {"instance_token": data["instance_token"]})

    async def set_status(self, p: Params, call: Call) -> Answer:
        body: dict[str, Any] = {"instance_token": p.token, "status_name": p.status}
        if p.status_message:
            body["status_message"] = p.status_message
        await self._ask(call, COMMANDS_EXCHANGE, "set-status", body)
        return Answer(True, SUCCESS)

    async def check_is_finished(self, p: Params, call: Call) -> Answer:
        data = await self._ask(call, QUERIES_EXCHANGE, "is-finished", {"instance_token": p.token})
        finished = bool(data.get("instance_is_finished"))
        reason = str(data.get("instance_is_finished_description") or "")
        answer = {
            "instance_is_finished": finished,
            "instance_is_finished_description": reason,
            # Every release of the original spells it so; its clients read this one.
            "instanse_is_finished_description": reason,
        }
        if self.wire is Wire.README:
            # The first README: status true "Instance is finished", else false "Instance is not finished".
            return Answer(
                finished, "Instance is finished" if finished else "Instance is not finished", answer
            )
        return Answer(True, SUCCESS, answer)

    async def check_status_is_set(self, p: Params, call: Call) -> Answer:
        # A status the model lacks is "not set", as in v2.7.2: one question, not two.
        body = {"instance_token": p.token, "status_name": p.status}
        is_set = bool((await self._ask(call, QUERIES_EXCHANGE, "is-set", body))["status_is_set"])
        if self.wire is Wire.README:
            # The first README: status true if the status is set, else false "Status is not set".
            return Answer(
                is_set, "Status is set" if is_set else "Status is not set", {"status_is_set": is_set}
            )
        return Answer(True, SUCCESS, {"status_is_set": is_set})

    async def check_status_is_ready_to_set(self, p: Params, call: Call) -> Answer:
        body = {"instance_token": p.token, "status_name": p.status}
        data = await self._ask(call, QUERIES_EXCHANGE, "is-ready", body)
        code = str(data.get("status_is_ready_to_set_code") or Code.SUCCESS)
        if data.get("status_is_ready_to_set"):
            return Answer(
                True, SUCCESS, {"status_is_ready_to_set": True, "status_is_ready_to_set_description": ""}
            )
        description = str(data.get("status_is_ready_to_set_description") or "")
        if code in NOT_READY:
            message = original_message(code, p) or description
            answer = {"status_is_ready_to_set": False, "status_is_ready_to_set_description": message}
            return Answer(True, SUCCESS, answer, code=code)
        if code == Code.INSTANCE_IS_FINISHED:
            reason = await self._reason(p, call)
            message = original_message(code, p, InstanceIsFinishedDescription=reason)
        else:
            message = original_message(code, p) or f"ERROR: {description}"
        return Answer(False, message, code=code)

    async def get_events(self, p: Params, call: Call) -> Answer:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.answer_within
        # The first page as a worker before paging answers it too; the next ones as large as allowed.
        body: dict[str, Any] = {"instance_token": p.token}
        data = await self._ask(call, QUERIES_EXCHANGE, "get-events", body)
        events = list(data["events"])
        model_version, model = data.get("model_version"), data.get("model")
        while data.get("next_after_seq") is not None:
            left = deadline - loop.time()
            if left <= 0:
                raise NoAnswerError("get-events", self.answer_within, self.client.vhost)
            body = {**body, "after_seq": data["next_after_seq"], "limit": MAX_EVENTS_PAGE}
            data = await self._ask(call, QUERIES_EXCHANGE, "get-events", body, timeout=left)
            events.extend(data["events"])
        if model is None or model_version is None:
            # A worker older than the gateway sends no model with the events.
            instance = await self._ask(call, QUERIES_EXCHANGE, "get-instance", {"instance_token": p.token})
            model_version, model = instance["model_version"], instance["model"]
        shaped: list[dict[str, Any]] | None = original_events(int(model_version), model, events)
        if not shaped and self.wire is Wire.V2_7_2:
            shaped = None  # Go's nil slice: an instance without statuses has "events": null
        return Answer(True, SUCCESS, {"events": shaped})

    async def set_global_status(self, p: Params, call: Call) -> Answer:
        body: dict[str, Any] = {"status_name": p.status}
        if p.status_message:
            body["status_message"] = p.status_message
        await self._ask(call, COMMANDS_EXCHANGE, "set-global-status", body)
        return Answer(True, SUCCESS)

    async def about(self, _p: Params, _call: Call) -> Answer:
        # The original's keys (a space in "home page"); the version is statusek's.
        return Answer(True, SUCCESS, {"home page": HOME_PAGE, "version": version()})


def _moved(request: web.Request, path: str, *, with_page: bool) -> web.Response:
    """A 301 to `path`, keeping the query, as gorilla/mux redirects.

    A path that needed cleaning gets a bare 301; a trailing-slash redirect goes
    through Go's http.Redirect, which adds a small page for GET (and its type for HEAD).
    """
    location = quote(path, safe="/$&+,:;=@-._~") + (
        f"?{request.query_string}" if request.query_string else ""
    )
    headers = {"Location": location}
    body = b""
    if with_page and request.method in ("GET", "HEAD"):
        headers["Content-Type"] = "text/html; charset=utf-8"
        if request.method == "GET":
            body = f'<a href="{_html_escape(location)}">Moved Permanently</a>.\n\n'.encode()
    return web.Response(status=301, body=body, headers=headers)


def _html_escape(text: str) -> str:
    for char, escaped in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&#34;"), ("'", "&#39;")):
        text = text.replace(char, escaped)
    return text


def _with_canonical_token(params: Params) -> Params:
    """`params` with its token as statusek writes UUIDs; ValueError when it is not a UUID."""
    return params.model_copy(update={"instance_token": str(uuid.UUID(params.token))})


def original_events(
    model_version: int, model: dict[str, Any], events: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The status events of an instance, shaped as the original's getEvents lists them.

    statusek has no numeric ids: `ObjectID` is the instance's model version and
    `StatusID` (and `ID`, its name in the original's later versions) the
    status's 1-based position in that version, both stable for the instance.
    Pings, the creation and the finish are not listed (the original had none).
    """
    positions = {s["name"]: i for i, s in enumerate(model["statuses"], start=1)}
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
                    "ObjectID": model_version,
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
        wire: Wire = Wire.V2_7_2,
        authenticator: Authenticator | None = None,
        metrics: GatewayMetrics | None = None,
    ):
        self.gateway = Gateway(
            client,
            answer_within=answer_within,
            max_body_bytes=max_body_bytes,
            wire=wire,
            authenticator=authenticator,
            metrics=metrics,
        )
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
            async with asyncio.timeout(delay):
                await stop.wait()
        delay = min(backoff_max, delay * 2)
    return None


def authenticator_for(settings: Settings) -> Authenticator | None:
    """The check of callers `settings` ask for (None: nobody is asked); GatewayConfigError if unusable."""
    if settings.gateway_auth == "none":
        return None
    if not settings.gateway_users_file:
        raise GatewayConfigError(
            "STATUSEK_GATEWAY_AUTH is basic but STATUSEK_GATEWAY_USERS_FILE is not set: give the users"
            " file (`statusek gateway-user NAME` makes its lines), or set STATUSEK_GATEWAY_AUTH=none"
            " on a trusted network"
        )
    users = Users(Path(settings.gateway_users_file))
    try:
        users.load()
    except UsersFileError as e:
        raise GatewayConfigError(f"STATUSEK_GATEWAY_USERS_FILE: {e}") from None
    return Authenticator(users)


@dataclass
class _Link:
    """The gateway's client once it serves: what readiness looks at."""

    client: Client | None = None
    stopping: bool = False

    async def problem(self) -> str | None:
        if self.stopping:
            return "stopping"
        if self.client is None:
            return "not connected to RabbitMQ yet"
        return None if self.client.connected else "the link to RabbitMQ is down; making it again"


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Connect, listen on `settings.http_host:http_port` until `stop`, then shut down gracefully.

    The ops server (`settings.ops_port`, 0: none) answers /livez from the start, and /readyz 200
    once the gateway's link to RabbitMQ is up.
    """
    authenticator = authenticator_for(settings)
    metrics = GatewayMetrics()
    link = _Link()
    ops = (
        OpsServer(settings.ops_host, settings.ops_port, metrics, {"rabbitmq": link.problem})
        if settings.ops_port
        else None
    )
    if ops is not None:
        await ops.start()
    try:
        client = await connect(settings.amqp_link_url, stop, backoff_max=settings.retry_backoff_max)
        if client is None:
            return
        try:
            if authenticator is None:
                log.warning(
                    "gateway unauthenticated: STATUSEK_GATEWAY_AUTH=none, callers are not asked who they"
                    " are and every request is published as the gateway's RabbitMQ user; run it only on"
                    " a trusted network",
                    amqp_user=client.user,
                )
            else:
                problem = await impersonation_problem(settings.amqp_link_url)
                if problem is not None:
                    raise GatewayConfigError(problem)
                log.info("gateway authenticates callers", users=len(authenticator.users))
            server = GatewayServer(
                client,
                settings.http_host,
                settings.http_port,
                max_body_bytes=settings.max_body_bytes,
                shutdown_timeout=settings.shutdown_timeout,
                wire=settings.gateway_wire,
                authenticator=authenticator,
                metrics=metrics,
            )
            await server.start()
            link.client = client
            log.info(
                "gateway listening", host=settings.http_host, port=server.port, wire=settings.gateway_wire
            )
            try:
                await stop.wait()
                log.info("gateway stopping")
            finally:
                link.stopping = True
                await server.stop()
        finally:
            await client.close()
    finally:
        if ops is not None:
            await ops.close()
    log.info("gateway stopped")


def run_gateway(settings: Settings) -> None:
    """`statusek gateway`: serve until SIGTERM or SIGINT."""
    collect_less()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    loop_runner(settings)(main())
