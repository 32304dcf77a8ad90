"""The randomized fault checker over many seeds: anomalies per fault kind (never a test).

Each schedule gets a fresh vhost and database and 2-3 `statusek worker` processes that
reach RabbitMQ and Postgres through proxies of their own; one or two faults drawn from
`random.Random(seed)` hit them during about 4 seconds of load (creates, statuses, pings,
cancels, with and without message_id and headers), then the run waits for replies and
notifications and `tests.chaos.checker.check` reads the log and every subscriber's record.
See tests/chaos/ for the schedules, the runner and what each anomaly kind means.

    .venv/bin/python benchmarks/fault_checker.py --schedules 200 --seed 1
    .venv/bin/python benchmarks/fault_checker.py --schedules 20 --seed 1000 --faults sigkill,pg_blackhole

Prints one line per schedule, then a table: per fault kind, the schedules that drew it and
the anomalies found in them (a schedule with two faults counts under both), then the
details of every anomaly (with its seed, to replay it with --schedules 1 --seed SEED).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chaos.checker import Verdict, check, table  # noqa: E402
from tests.chaos.runner import run_schedule  # noqa: E402
from tests.chaos.schedule import FAULTS, generate  # noqa: E402
from tests.integration.conftest import Cluster  # noqa: E402
from tests.integration.wire import Wire  # noqa: E402

from statusek.adapters.rabbitmq.broker import Broker, Names  # noqa: E402
from statusek.logs import configure as configure_logging  # noqa: E402
from statusek.testing import (  # noqa: E402
    LOCAL_ADMIN_DATABASE_URL,
    LOCAL_AMQP_URL,
    RabbitAdmin,
    fresh_database,
    fresh_vhost,
)

AMQP = os.environ.get("STATUSEK_TEST_AMQP_URL", LOCAL_AMQP_URL)
PG = os.environ.get("STATUSEK_TEST_DATABASE_URL", LOCAL_ADMIN_DATABASE_URL)
MODELS = ROOT / "src" / "statusek" / "models"


async def one(seed: int, args: argparse.Namespace, logs: Path) -> tuple[Verdict, float, dict[str, object]]:
    """Play and check the schedule of `seed` on a fresh vhost and database."""
    schedule = generate(seed, instances=args.instances, kinds=tuple(args.faults))
    rabbit = RabbitAdmin()
    async with fresh_database(PG, prefix="statusek_chaos") as db_url:
        with fresh_vhost(AMQP, prefix="statusek-chaos", admin=rabbit) as url:
            broker = await Broker.connect(url, Names(partitions=args.partitions))
            try:
                await broker.declare()
            finally:
                await broker.close()
            env = {
                **os.environ,
                "STATUSEK_AMQP_URL": url,
                "STATUSEK_DATABASE_URL": db_url,
                "STATUSEK_MODELS_PATH": str(MODELS),
                "STATUSEK_LOG_FORMAT": "json",
                "STATUSEK_OPS_PORT": "0",
                "STATUSEK_COMMAND_PARTITIONS": str(args.partitions),
            }
            run_logs = logs / f"seed-{seed}"
            run_logs.mkdir(parents=True, exist_ok=True)
            cluster = Cluster(env, unquote(urlsplit(url).path[1:]), run_logs, rabbit)
            cluster.wire = await Wire.open(url)
            try:
                history = await run_schedule(schedule, cluster)
            finally:
                await asyncio.to_thread(cluster.stop)
                await cluster.wire.close()
    verdict = check(history, strict_timeouts=args.strict_timeouts, flood=args.flood)
    if args.histories and verdict.anomalies:
        args.histories.mkdir(parents=True, exist_ok=True)
        record = dataclasses.asdict(history) | {"healthy": sorted(history.healthy)}
        (args.histories / f"seed-{seed}.json").write_text(json.dumps(record, indent=1, default=str))
    return verdict, history.seconds, history.info


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--schedules", type=int, default=10, help="how many (seeds SEED, SEED+1 ...)")
    parser.add_argument("--seed", type=int, default=1, help="the first seed")
    parser.add_argument("--instances", type=int, default=12, help="instances per schedule")
    parser.add_argument("--partitions", type=int, default=1, help="STATUSEK_COMMAND_PARTITIONS")
    parser.add_argument(
        "--faults", type=lambda s: s.split(","), default=list(FAULTS), help="fault kinds to draw from"
    )
    parser.add_argument(
        "--strict-timeouts",
        action="store_true",
        help="a client that timed out (with a deadline header) but whose command was applied is an anomaly",
    )
    parser.add_argument(
        "--flood",
        type=int,
        default=None,
        help="copies of one notification a healthy subscriber may get (default: the relay's schedule "
        "for as long as a queue refused, at least FLOOD)",
    )
    parser.add_argument("--verbose", action="store_true", help="print what each schedule played and heard")
    parser.add_argument(
        "--histories", type=Path, help="write the whole history of each schedule with anomalies here"
    )
    parser.add_argument("--json", type=Path, help="write every verdict to this file")
    parser.add_argument("--logs", type=Path, help="keep the workers' logs here (default: a temporary folder)")
    args = parser.parse_args()
    unknown = set(args.faults) - set(FAULTS)
    if unknown:
        parser.error(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(FAULTS)}")

    configure_logging("WARNING")  # fresh_database's migration lines would bury the progress lines
    verdicts: list[Verdict] = []
    seconds: list[float] = []
    expected: Counter[str] = Counter()
    records = []
    with tempfile.TemporaryDirectory(prefix="statusek-chaos-") as tmp:
        logs = args.logs or Path(tmp)
        started = time.monotonic()
        for seed in range(args.seed, args.seed + args.schedules):
            verdict, took, info = await one(seed, args, logs)
            verdicts.append(verdict)
            seconds.append(took)
            expected.update(verdict.expected)
            counts = dict(verdict.counts())
            line = f"seed {seed:>5}  {'+'.join(verdict.faults):<28} {took:5.1f}s"
            line += f"  anomalies {sum(counts.values()):>3} {counts or ''}"
            print(f"{line}  expected {dict(verdict.expected) or ''}", flush=True)
            if args.verbose:
                print(f"       {info}", flush=True)
            records.append(
                {
                    "seed": seed,
                    "faults": verdict.faults,
                    "seconds": round(took, 2),
                    "anomalies": [a.__dict__ for a in verdict.anomalies],
                    "expected": dict(verdict.expected),
                    "played": info.get("faults"),
                }
            )
        wall = time.monotonic() - started
    print()
    print(table(verdicts))
    print()
    print(
        f"{len(verdicts)} schedules in {wall:.0f} s: {wall / max(1, len(verdicts)):.1f} s per schedule"
        f" (schedule itself {sum(seconds) / max(1, len(seconds)):.1f} s, the rest setup and teardown)"
    )
    print(f"expected outcomes (not anomalies): {dict(expected)}")
    for v in verdicts:
        for a in v.anomalies[:10]:
            print(f"seed {v.seed} [{'+'.join(v.faults)}] {a.kind}: {a.detail}")
        if len(v.anomalies) > 10:
            print(f"seed {v.seed}: {len(v.anomalies) - 10} more")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))
    return 1 if any(v.anomalies for v in verdicts) else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
