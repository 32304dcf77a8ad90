"""Seeded random schedules: which faults, when, and the commands to publish around them."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

MODEL = "2-POINT LINE TASK"

# Faults played against the processes and links, each at `at` seconds into the load for `duration`.
TIMED = (
    "sigkill",  # SIGKILL the active worker; a replacement starts `duration` later
    "sigstop",  # SIGSTOP the active worker, SIGCONT after `duration`
    "pg_blackhole",  # the workers' Postgres proxy stops forwarding (stall) without closing
    "pg_restart",  # stand-in for a Postgres restart: the proxy cuts every link and refuses new ones
    "broker_cut",  # the workers' RabbitMQ proxy cuts every link and refuses new ones
    # The workers' RabbitMQ proxy stops forwarding without closing; their links have 1 s heartbeats,
    # so one silent for more than about 6 s is given up by the worker and made again.
    "broker_blackhole",
    "queue_full",  # a subscriber queue (max-length, reject-publish) is not consumed for `duration`
)
# Faults in the workload itself.
WORKLOAD = (
    "dup_same",  # commands re-published with the same message_id and body
    "dup_diff",  # a different command published with a message_id already used
    "client_timeout",  # clients that wait briefly for their reply, then record "no answer"
)
FAULTS = TIMED + WORKLOAD

LOAD_SECONDS = 4.0
PATIENT = 45.0  # a client that waits as long as the run does


@dataclass(frozen=True)
class Fault:
    kind: str
    at: float
    duration: float


@dataclass
class Planned:
    """A command to publish at `at` seconds into the load."""

    at: float
    routing_key: str
    body: dict[str, Any]
    tag: str
    token: str | None
    message_id: str | None
    headered: bool
    patience: float = PATIENT
    duplicate: bool = False  # a re-publish of an earlier command: same message_id, same body
    reuses_id: bool = False  # a different command with an earlier command's message_id


@dataclass
class Schedule:
    seed: int
    workers: int
    faults: list[Fault]
    commands: list[Planned] = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        return sorted({f.kind for f in self.faults})


def generate(seed: int, *, instances: int = 12, kinds: tuple[str, ...] = FAULTS) -> Schedule:
    """The schedule of `seed`: 1-2 faults drawn from `kinds`, and `instances` instances' commands."""
    rng = random.Random(seed)
    chosen = rng.sample(kinds, k=min(len(kinds), rng.choice((1, 2))))
    faults = []
    for kind in chosen:
        at = round(rng.uniform(0.5, 2.5), 2)
        if kind == "sigkill":
            duration = rng.uniform(0.0, 1.0)
        elif kind in ("sigstop", "pg_blackhole"):
            duration = rng.uniform(2.0, 5.0)
        elif kind == "broker_blackhole":
            duration = rng.uniform(3.0, 9.0)
        elif kind == "queue_full":
            duration = rng.uniform(3.0, 6.0)
        elif kind in WORKLOAD:
            at, duration = 0.0, LOAD_SECONDS
        else:
            duration = rng.uniform(0.5, 3.0)
        faults.append(Fault(kind, at, round(duration, 2)))
    schedule = Schedule(seed, rng.choice((2, 3)), faults)
    _workload(schedule, rng, instances, set(chosen))
    schedule.commands.sort(key=lambda c: c.at)  # stable: one instance's commands keep their order
    return schedule


def _workload(schedule: Schedule, rng: random.Random, instances: int, chosen: set[str]) -> None:
    commands = schedule.commands
    counter = iter(range(1_000_000))

    def tag() -> str:
        return f"s{schedule.seed}-t{next(counter)}"

    def add(at: float, routing_key: str, body: dict[str, Any], token: str | None, marker: str) -> Planned:
        headered = rng.random() < 0.7
        patient = "client_timeout" not in chosen or rng.random() < 0.6
        planned = Planned(
            at=at,
            routing_key=routing_key,
            body=body,
            tag=marker,
            token=token,
            message_id=f"m-{marker}" if headered else None,
            headered=headered,
            patience=PATIENT if patient else round(rng.uniform(0.2, 1.0), 2),
        )
        commands.append(planned)
        if headered and "dup_same" in chosen and rng.random() < 0.3:
            again = replace(planned, at=at + rng.uniform(0.0, 0.3), duplicate=True, patience=PATIENT)
            commands.append(again)
        if headered and token and "dup_diff" in chosen and rng.random() < 0.2:
            other = tag()
            commands.append(
                Planned(
                    at=at + rng.uniform(0.0, 0.3),
                    routing_key="ping",
                    body={"instance_token": token, "message": other},
                    tag=other,
                    token=token,
                    message_id=planned.message_id,
                    headered=True,
                    reuses_id=True,
                )
            )
        return planned

    for _ in range(instances):
        token = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        at = rng.uniform(0.0, LOAD_SECONDS * 0.75)
        # Short heartbeats race the sweeper against pings and statuses held up by faults.
        heartbeat = rng.choice((3, 6))
        marker = tag()
        create = {
            "object_name": MODEL,
            "instance_token": token,
            "instance_timeout": 3600,
            "heartbeat_timeout": heartbeat,
            "labels": {"chaos": marker},
        }
        add(at, "create", create, token, marker)
        steps: list[tuple[str, str]] = [("set-status", "STARTED")]
        steps += [("ping", "")] * rng.choice((0, 1, 2))
        end = rng.random()
        if end < 0.55:
            steps.append(("set-status", "FINISHED"))
        elif end < 0.8:
            steps.append(("cancel", ""))
        for routing_key, status in steps:
            at += rng.uniform(0.02, 0.4)
            marker = tag()
            if routing_key == "set-status":
                body: dict[str, Any] = {
                    "instance_token": token,
                    "status_name": status,
                    "status_message": marker,
                }
            elif routing_key == "ping":
                body = {"instance_token": token, "message": marker}
            else:
                body = {"instance_token": token, "reason": marker}
            add(at, routing_key, body, token, marker)
    for _ in range(max(1, instances // 6)):
        # statusek chooses the token: a create applied twice would make a second instance.
        marker = tag()
        body = {
            "object_name": MODEL,
            "instance_timeout": 3600,
            "heartbeat_timeout": 3,
            "labels": {"chaos": marker},
        }
        add(rng.uniform(0.0, LOAD_SECONDS), "create", body, None, marker)
