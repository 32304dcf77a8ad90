"""A worker and the CLI configured by `<VAR>_FILE` only, as with Docker and Kubernetes secrets."""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tests.helpers import TASK, statusek
from tests.integration.conftest import Cluster


def from_files(env: dict[str, str], folder: Path) -> dict[str, str]:
    """`env` with every STATUSEK_X replaced by STATUSEK_X_FILE naming a file that holds its value."""
    folder.mkdir(mode=0o700)
    moved = {}
    for name, value in env.items():
        if name.startswith("STATUSEK_"):
            path = folder / name.lower()
            path.write_text(value + "\n")  # as `echo` and most editors leave it
            moved[f"{name}_FILE"] = str(path)
    return {**{k: v for k, v in env.items() if not k.startswith("STATUSEK_")}, **moved}


async def test_a_worker_and_the_cli_read_every_setting_from_files(cluster: Cluster, tmp_path: Path) -> None:
    """With STATUSEK_*_FILE only (the URLs with their passwords in files), a worker serves the CLI."""
    passwords = {
        unquote(urlsplit(cluster.env[name]).password or "")
        for name in ("STATUSEK_AMQP_URL", "STATUSEK_DATABASE_URL")
    }
    assert all(passwords)
    cluster.env = from_files(cluster.env, tmp_path / "secrets")
    assert "STATUSEK_AMQP_URL_FILE" in cluster.env and "STATUSEK_AMQP_URL" not in cluster.env
    assert not any(p in value for p in passwords for value in cluster.env.values())

    (worker,) = cluster.start(1)
    await cluster.wait_for_consumers(1)
    token = str(uuid.uuid4())
    created = await statusek(cluster.env, "create", TASK, "--token", token)
    assert (created.returncode, created.stdout) == (0, f"{token}\n"), created
    assert (await statusek(cluster.env, "set", token, "STARTED")).returncode == 0
    shown = await statusek(cluster.env, "show", token)
    assert shown.returncode == 0 and "statuses   STARTED" in shown.stdout.splitlines()

    cluster.stop()
    assert worker.returncode == 0
    lines = cluster.log_lines()
    assert any(line["event"] == "consuming" for line in lines), lines
    assert not any(p in str(lines) for p in passwords)  # and the session's password grep reads them all


async def test_a_missing_secret_file_stops_the_worker_with_one_line(cluster: Cluster, tmp_path: Path) -> None:
    """A worker whose STATUSEK_DATABASE_URL_FILE names no file exits 2, naming the variable and the path."""
    env = {k: v for k, v in cluster.env.items() if k != "STATUSEK_DATABASE_URL"}
    missing = tmp_path / "no-such-secret"
    done = await statusek({**env, "STATUSEK_DATABASE_URL_FILE": str(missing)}, "worker")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"statusek: invalid settings: STATUSEK_DATABASE_URL_FILE: cannot read '{missing}': "
        "No such file or directory: fix the environment or .env\n"
    )
