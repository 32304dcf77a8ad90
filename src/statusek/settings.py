"""The one settings object, read from the environment (and `.env`) in `main()`."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from statusek.adapters.rabbitmq.endpoints import split_urls, with_heartbeat
from statusek.core.model import optional_duration

BUILTIN_MODELS = Path(__file__).resolve().parent / "models"


class Wire(StrEnum):
    """The gateway's response shape (STATUSEK_GATEWAY_WIRE); gateway/wire.py writes both."""

    # What Go Statusek v2.7.2 sends: {"status", "message", "data"}, message "" on success, the
    # answer of checkIsFinished / checkStatusIsSet in `data` with status true.
    V2_7_2 = "v2.7.2"
    # The first README's: the answer in `status`, "Success" and the README's messages, `data`'s
    # keys also at the top level.
    README = "readme"


class SettingsFileError(SettingsError):
    """A `<VAR>_FILE` that cannot be used. The message names the variables and the path, never content."""


class FileSettingsSource(PydanticBaseSettingsSource):
    """Every setting `<VAR>` also from the file named by `<VAR>_FILE`: Docker and Kubernetes secrets.

    `STATUSEK_AMQP_URL_FILE=/run/secrets/amqp-url` sets `amqp_url` to that file's content, less its
    trailing newlines. `<VAR>_FILE` is looked up where `<VAR>` is (the environment, then `.env`);
    setting both is an error, as is a file that cannot be read.
    """

    def __init__(self, settings_cls: type[BaseSettings], *sources: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self.case_sensitive = bool(self.config.get("case_sensitive", False))
        self.prefix = str(self.config.get("env_prefix", ""))
        # The variables as the environment and `.env` sources read them (keys lower-cased unless
        # case-sensitive); the environment wins over `.env`, as it does for the settings themselves.
        self.variables: dict[str, str | None] = {}
        for source in reversed(sources):
            if isinstance(source, EnvSettingsSource):
                self.variables.update(source.env_vars)
        # A file's content is decoded as the variable's value would be (JSON for lists, also in unions).
        self.decoder = next((s for s in sources if isinstance(s, EnvSettingsSource)), None)

    def _lookup(self, name: str) -> str | None:
        return self.variables.get(name if self.case_sensitive else name.lower())

    def _variable(self, field_name: str) -> str:
        return f"{self.prefix}{field_name}".upper()

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        variable = self._variable(field_name)
        path = self._lookup(f"{variable}_FILE")
        if not path:  # unset, or set to nothing
            return None, field_name, False
        if self._lookup(variable) is not None:
            raise SettingsFileError(f"{variable} and {variable}_FILE are both set: set only one of them")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise SettingsFileError(f"{variable}_FILE: cannot read {path!r}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise SettingsFileError(f"{variable}_FILE: {path!r} is not UTF-8 text") from None
        return text.rstrip("\r\n"), field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        problems: list[str] = []
        for field_name, field in self.settings_cls.model_fields.items():
            try:
                value, key, is_complex = self.get_field_value(field, field_name)
            except SettingsFileError as e:
                problems.append(str(e))
                continue
            if value is None:
                continue
            try:
                decoder = self.decoder or self
                values[key] = decoder.prepare_field_value(field_name, field, value, is_complex)
            except ValueError:  # not JSON where JSON is needed; the content is never quoted
                variable = self._variable(field_name)
                problems.append(f"{variable}_FILE: the file does not hold {variable} as JSON")
        if problems:
            raise SettingsFileError("; ".join(problems))
        return values


def _checked_pattern(value: str | None) -> str | None:
    """A pattern that does not compile stops the worker at start, not at its first reply."""
    if value is not None:
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"not a regular expression: {e}") from e
    return value or None


def _checked_urls(value: str) -> str:
    split_urls(value)  # an empty entry is refused here, naming the variable, not at connect time
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STATUSEK_", env_file=".env", extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then `<VAR>_FILE`, the environment and `.env` (a variable and its _FILE never both)."""
        files = FileSettingsSource(settings_cls, env_settings, dotenv_settings)
        return init_settings, files, env_settings, dotenv_settings, file_secret_settings

    # Several nodes' URLs, comma-separated, to fail over between (docs/operations.md, "A RabbitMQ cluster").
    amqp_url: Annotated[str, AfterValidator(_checked_urls)] = "amqp://guest:guest@localhost:5672/"
    # Seconds; a link silent for (heartbeat + 1) * 3 s is dropped and made again, and the broker drops
    # a silent worker after about twice this. A URL's own `?heartbeat=` wins; 0 turns heartbeats off.
    amqp_heartbeat: int = Field(default=10, ge=0, le=3600)
    database_url: str = "postgresql://postgres@localhost:5432/statusek"
    migrate_on_start: bool = Field(
        default=True,
        description="Migrate a database found behind at start; off, the worker stops saying how to migrate.",
    )
    models_path: str = Field(
        default=str(BUILTIN_MODELS),
        description="Model files or folders, ':'-separated; the shipped models by default.",
    )
    global_status_writers: list[str] | None = Field(
        default=None, description='Who may set global statuses, a JSON list: ["ops", "deployer"]; unset: all.'
    )
    groups_path: str | None = Field(
        default=None, description="A YAML file `groups: {name: [user, ...]}` that writer lists may name."
    )

    # Wire limits (SPEC section 4). Text limits are the contract's defaults.
    max_body_bytes: int = Field(default=64 * 1024, gt=0)

    # Pipeline: how many deliveries one transaction may take.
    prefetch: int = Field(default=512, gt=0)
    window: int = Field(default=256, gt=0)
    query_concurrency: int = Field(default=32, gt=0)
    # docs/guarantees.md, "Partitions": more than one needs the rabbitmq_consistent_hash_exchange plugin, and
    # publishers that set the instance_token header to keep per-instance order.
    command_partitions: int = Field(
        default=1, ge=1, le=256, description="Command queues that replicas apply in parallel."
    )
    rebalance_every: float = Field(
        default=2.0, gt=0, description="Seconds between two hand-overs of one partition by a replica."
    )
    db_pool_size: int = Field(default=10, ge=4)
    # Postgres time bounds (docs/operations.md, "Settings"): a black-holed database must
    # never hold a worker, and a stalled worker hands its command queues to a standby.
    database_connect_timeout: float = Field(
        default=5.0, gt=0, description="Seconds for one connection attempt to Postgres."
    )
    database_statement_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds: the server's statement_timeout; the client gives up on a statement 2 s later.",
    )
    database_lock_timeout: float = Field(
        default=5.0,
        gt=0,
        description="Seconds a statement waits for a lock before it fails (and is retried).",
    )
    database_idle_in_transaction_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds the server keeps a transaction whose client went silent (its locks with it).",
    )
    database_keepalives_idle: int = Field(
        default=10, ge=1, description="Seconds of silence before TCP keepalive probes, on both ends."
    )
    database_keepalives_interval: int = Field(
        default=5, ge=1, description="Seconds between keepalive probes."
    )
    database_keepalives_count: int = Field(
        default=3, ge=1, description="Unanswered keepalive probes after which the link is dead."
    )
    database_stall_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds without an answer from Postgres after which a worker stops consuming commands"
        " (a standby takes over) and is unready; it consumes again once Postgres answers.",
    )

    default_instance_timeout: float | None = Field(
        default=None, gt=0, description="Seconds, for models and creates that give none."
    )
    sweep_batch: int = Field(default=500, gt=0)
    # A safety net only: sweepers are woken by deadlines, not by this period.
    sweep_max_sleep: float = Field(default=5.0, gt=0)
    # Retention (docs/retention.md): finished instances older than their model's `retention`, else
    # this (`30d`, `12h`, `3600` seconds; unset: kept forever), are folded into reports and purged.
    default_retention: Annotated[float | None, BeforeValidator(optional_duration)] = None
    purge_batch: int = Field(default=1000, gt=0, description="Instances per purge transaction.")
    purge_pause: float = Field(default=0.5, ge=0, description="Seconds between purge batches.")
    purge_every: float = Field(default=60.0, gt=0, description="Seconds between purge passes.")
    outbox_batch: int = Field(default=500, gt=0)
    outbox_poll: float = Field(default=1.0, gt=0)
    direct_publish: bool = Field(
        default=True, description="The applying worker publishes a window's notifications after commit."
    )
    outbox_grace: float = Field(
        default=2.0, gt=0, description="Seconds a relay leaves a directly published row to its worker."
    )
    idempotency_window: float = Field(default=7 * 24 * 3600, gt=0, description="Seconds.")
    # Also bounds how long a worker stays unready after RabbitMQ comes back.
    retry_backoff_max: float = Field(default=2.0, gt=0)
    shutdown_timeout: float = Field(default=10.0, gt=0)

    # Broker limits, declared as queue arguments (deploy/rabbitmq/definitions.json has the same as policies).
    command_delivery_limit: int = Field(
        default=20, gt=0, description="Deliveries of one command before the broker dead-letters it."
    )
    holding_max_length: int = Field(
        default=100_000, gt=0, description="Messages kept in statusek.dead-letter and statusek.rejected."
    )
    query_ttl: float = Field(default=60.0, gt=0, description="Seconds a query may wait in its queue.")
    dead_letter_body_bytes: int = Field(
        default=64 * 1024, ge=0, description="Bytes of a dead-lettered body kept; the rest is cut."
    )
    reply_queue_pattern: Annotated[str | None, AfterValidator(_checked_pattern)] = Field(
        default=None,
        description="Named queues replies may go to (a full-match regex), besides direct reply-to"
        " and server-named (amq.gen-) queues; a reply to any other reply_to is dropped and counted.",
    )

    # Health, readiness and metrics over HTTP; 0 turns the server off.
    ops_port: int = Field(default=9464, ge=0, le=65535)
    ops_host: str = "0.0.0.0"

    # `statusek gateway`: the original Statusek's REST API (0 lets the system pick a free port).
    # Its ops server (/livez, /readyz, /metrics) is STATUSEK_OPS_PORT's, as a worker's.
    http_port: int = Field(default=8080, ge=0, le=65535)
    http_host: str = "0.0.0.0"
    gateway_wire: Wire = Field(
        default=Wire.V2_7_2,
        description="The responses' shape: v2.7.2 (Go Statusek v2.7.2's, byte for byte) or readme"
        " (the first README's: the answer in `status`, data keys also at the top level).",
    )
    gateway_auth: Literal["basic", "none"] = Field(
        default="basic",
        description="basic: callers send HTTP Basic credentials of STATUSEK_GATEWAY_USERS_FILE, and each"
        " request is published as its caller; none: nobody is asked, everything is published as the"
        " gateway's own AMQP user (a trusted network only).",
    )
    gateway_users_file: str | None = Field(
        default=None, description="The gateway's users, `name:hash` a line (`statusek gateway-user NAME`)."
    )

    housekeeping_every: float = Field(default=600, gt=0, description="Seconds between expiry passes.")
    # Test-only: honour the x-statusek-test-fault header (crash between commit and ack).
    fault_hooks: bool = False

    uvloop: bool = Field(
        default=True,
        description=(
            "Run the worker's and the gateway's event loop on uvloop (a dependency); false: on asyncio's own."
        ),
    )

    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")
    log_level: str = "INFO"

    @property
    def amqp_link_url(self) -> str:
        """`amqp_url` as the worker and the gateway dial it: with `amqp_heartbeat`.

        The CLI dials `amqp_url` as given: its calls are short, and its errors name the URL as written.
        """
        return with_heartbeat(self.amqp_url, self.amqp_heartbeat)

    def model_paths(self) -> list[Path]:
        return [Path(p) for p in self.models_path.split(":") if p]
