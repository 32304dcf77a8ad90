"""The one settings object, read from the environment (and `.env`) in `main()`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from statusek.core.model import optional_duration

BUILTIN_MODELS = Path(__file__).resolve().parent.parent / "models"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STATUSEK_", env_file=".env", extra="ignore")

    amqp_url: str = "amqp://guest:guest@localhost:5672/"
    database_url: str = "postgresql://postgres@localhost:5432/statusek"
    migrate_on_start: bool = Field(
        default=True,
        description="Migrate a database found behind at start; off, the worker stops saying how to migrate.",
    )
    models_path: str = Field(
        default=str(BUILTIN_MODELS),
        description="Model files or folders, ':'-separated; the shipped models by default.",
    )

    # Wire limits (SPEC section 4). Text limits are the contract's defaults.
    max_body_bytes: int = Field(default=64 * 1024, gt=0)

    # Pipeline: how many deliveries one transaction may take.
    prefetch: int = Field(default=512, gt=0)
    window: int = Field(default=256, gt=0)
    query_concurrency: int = Field(default=32, gt=0)
    db_pool_size: int = Field(default=10, ge=4)

    default_instance_timeout: float | None = Field(
        default=None, gt=0, description="Seconds, for models and creates that give none."
    )
    sweep_batch: int = Field(default=500, gt=0)
    # A safety net only: sweepers are woken by deadlines, not by this period.
    sweep_max_sleep: float = Field(default=5.0, gt=0)
    # Retention (README "Retention"): finished instances older than their model's `retention`, else
    # this (`30d`, `12h`, `3600` seconds; unset: kept forever), are folded into reports and purged.
    default_retention: Annotated[float | None, BeforeValidator(optional_duration)] = None
    purge_batch: int = Field(default=1000, gt=0, description="Instances per purge transaction.")
    purge_pause: float = Field(default=0.5, ge=0, description="Seconds between purge batches.")
    purge_every: float = Field(default=60.0, gt=0, description="Seconds between purge passes.")
    outbox_batch: int = Field(default=500, gt=0)
    outbox_poll: float = Field(default=1.0, gt=0)
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

    # Health, readiness and metrics over HTTP; 0 turns the server off.
    ops_port: int = Field(default=9464, ge=0, le=65535)
    ops_host: str = "0.0.0.0"

    # `statusek gateway`: the original Statusek's REST API (0 lets the system pick a free port).
    http_port: int = Field(default=8080, ge=0, le=65535)
    http_host: str = "0.0.0.0"

    housekeeping_every: float = Field(default=600, gt=0, description="Seconds between expiry passes.")
    # Test-only: honour the x-statusek-test-fault header (crash between commit and ack).
    fault_hooks: bool = False

    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")
    log_level: str = "INFO"

    def model_paths(self) -> list[Path]:
        return [Path(p) for p in self.models_path.split(":") if p]
