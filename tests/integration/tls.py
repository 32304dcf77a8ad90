"""Throw-away certificate authorities, and a RabbitMQ node and a Postgres server with TLS, for tests.

Both servers run on this machine from the locally installed binaries (the
Debian packages rabbitmq-server and postgresql-15), on free ports and in
temporary folders, whatever STATUSEK_TEST_BACKEND says: they are stopped and
removed when their block ends. Certificates are made with the `openssl` command.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from statusek.testing import free_port
from tests.log_secrets import password

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")  # the real scripts; /usr/sbin has su-wrappers
POSTGRES_BIN = Path(os.environ.get("STATUSEK_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
START_TIMEOUT = 90.0


class MissingTool(RuntimeError):
    """A binary the TLS tests need is not installed here."""


def _run(*args: str | Path, timeout: float = 60, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _require(path: Path | str | None, what: str) -> Path:
    if path is None or not Path(path).exists():
        raise MissingTool(f"the TLS tests need {what} on this machine (not found: {path or 'not on PATH'})")
    return Path(path)


# --- certificates --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A CA that signed the servers' certificate, and another CA that signed nothing of ours."""

    folder: Path
    ca: Path
    other_ca: Path
    server_cert: Path  # for 127.0.0.1 and localhost, signed by `ca`
    server_key: Path


_CA_EXTENSIONS = (
    "basicConstraints=critical,CA:TRUE\n"
    "keyUsage=critical,keyCertSign,cRLSign\n"
    "subjectKeyIdentifier=hash\n"
    "authorityKeyIdentifier=keyid:always\n"
)
_SERVER_EXTENSIONS = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature,keyEncipherment\n"
    "extendedKeyUsage=serverAuth\n"
    "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    "subjectKeyIdentifier=hash\n"
    "authorityKeyIdentifier=keyid:always\n"
)


def make_pki(folder: Path) -> Pki:
    """Two CAs and a server certificate signed by the first, valid for a day, under `folder`."""
    openssl = _require(shutil.which("openssl"), "the openssl command")
    (folder / "ca.ext").write_text(_CA_EXTENSIONS)
    (folder / "server.ext").write_text(_SERVER_EXTENSIONS)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for name in ("ca", "other-ca"):
        _run(
            openssl,
            "req",
            *ec,
            "-keyout",
            folder / f"{name}.key",
            "-out",
            folder / f"{name}.csr",
            "-subj",
            f"/CN=statusek test {name} {secrets.token_hex(3)}",
        )
        _run(
            openssl,
            "x509",
            "-req",
            "-in",
            folder / f"{name}.csr",
            "-key",
            folder / f"{name}.key",
            "-days",
            "1",
            "-extfile",
            folder / "ca.ext",
            "-out",
            folder / f"{name}.pem",
        )
    _run(
        openssl,
        "req",
        *ec,
        "-keyout",
        folder / "server.key",
        "-out",
        folder / "server.csr",
        "-subj",
        "/CN=localhost",
    )
    _run(
        openssl,
        "x509",
        "-req",
        "-in",
        folder / "server.csr",
        "-CA",
        folder / "ca.pem",
        "-CAkey",
        folder / "ca.key",
        "-set_serial",
        str(secrets.randbits(63)),
        "-days",
        "1",
        "-extfile",
        folder / "server.ext",
        "-out",
        folder / "server.pem",
    )
    return Pki(
        folder, folder / "ca.pem", folder / "other-ca.pem", folder / "server.pem", folder / "server.key"
    )


# --- servers -------------------------------------------------------------------------------------------


def _wait_accepting(port: int, process: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.exists() else ""
            state = f"exited with {process.returncode}" if process.returncode is not None else "timed out"
            raise RuntimeError(
                f"{what} did not accept on port {port} ({state}); last lines of {log}:\n{tail}"
            )
        time.sleep(0.2)


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    """Wait for `process` (which we started in a session of its own), then kill its group if it lingers."""
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _owned_folder(prefix: str, user: str | None) -> Path:
    """A new folder under the system temp dir, owned by `user` when we are root."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    return folder


@dataclass(frozen=True)
class TlsRabbit:
    node: str
    port: int  # the TLS listener on 127.0.0.1; there is no plain AMQP listener
    home: Path  # HOME of the node and of its rabbitmqctl (the Erlang cookie)

    def url(self, cafile: Path, user: str = "guest", password: str = "guest") -> str:
        return f"amqps://{user}:{password}@127.0.0.1:{self.port}/?cafile={cafile}"

    def rabbitmqctl(self, *args: str) -> str:
        env = {**os.environ, "HOME": str(self.home)}
        return _run(RABBITMQ_BIN / "rabbitmqctl", "-q", "-n", self.node, *args, env=env)


@contextmanager
def rabbitmq_with_tls(pki: Pki) -> Iterator[TlsRabbit]:
    """A RabbitMQ node of its own with only a TLS listener (the server certificate of `pki`), then stopped.

    It shares this machine's EPMD with the other nodes, under a name of its own;
    its Erlang cookie is its own too, in the HOME given to it and to its rabbitmqctl.
    """
    _require(RABBITMQ_BIN / "rabbitmq-server", "RabbitMQ (the rabbitmq-server package)")
    folder = Path(tempfile.mkdtemp(prefix="statusek-tls-rabbit-"))
    node = f"statusek-tls-{secrets.token_hex(4)}@localhost"
    port = free_port()
    cookie = folder / ".erlang.cookie"
    cookie.write_text(secrets.token_hex(16).upper())
    cookie.chmod(0o400)
    config = folder / "rabbitmq.conf"
    config.write_text(
        "listeners.tcp = none\n"
        f"listeners.ssl.1 = 127.0.0.1:{port}\n"
        f"ssl_options.cacertfile = {pki.ca}\n"
        f"ssl_options.certfile = {pki.server_cert}\n"
        f"ssl_options.keyfile = {pki.server_key}\n"
        "ssl_options.verify = verify_none\n"
        "ssl_options.fail_if_no_peer_cert = false\n"
    )
    (folder / "enabled_plugins").write_text("[].\n")
    (folder / "rabbitmq-env.conf").write_text("ERL_EPMD_ADDRESS=127.0.0.1\n")
    env = {
        **os.environ,
        "HOME": str(folder),
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(free_port()),
        "RABBITMQ_DIST_PORT": str(free_port()),
        "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
        "RABBITMQ_LOG_BASE": str(folder / "log"),
        "RABBITMQ_CONFIG_FILE": str(config),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),
        "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
        # One scheduler: the machine is shared with other tests.
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+S 1:1",
    }
    log = folder / "server.out"
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, folder, ignore_errors=True)
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        rabbit = TlsRabbit(node, port, folder)

        def stop() -> None:
            if process.poll() is None:
                try:
                    rabbit.rabbitmqctl("stop")
                except (RuntimeError, subprocess.TimeoutExpired):
                    process.terminate()
            _stop_process(process)

        stack.callback(stop)
        _wait_accepting(port, process, log, f"RabbitMQ node {node}")
        yield rabbit


@dataclass(frozen=True)
class TlsPostgres:
    port: int

    def url(self, database: str, query: str = "") -> str:
        return f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{self.port}/{database}" + (
            f"?{query}" if query else ""
        )


# Sent by nobody (the server trusts every TLS connection): it is there to prove it is never shown.
PG_PASSWORD = password("pg-password-" + secrets.token_hex(4))


@contextmanager
def postgres_with_tls(pki: Pki) -> Iterator[TlsPostgres]:
    """A Postgres server of its own that takes TLS connections on 127.0.0.1 and rejects the others."""
    initdb = _require(POSTGRES_BIN / "initdb", "PostgreSQL (initdb of the postgresql-15 package)")
    pg_ctl = POSTGRES_BIN / "pg_ctl"
    # Postgres will not run as root: as root, run it as the user postgres.
    user = "postgres" if os.geteuid() == 0 else None
    as_user = ["runuser", "-u", user, "--"] if user else []
    folder = _owned_folder("statusek-tls-pg-", user)
    port = free_port()
    cert, key = folder / "server.pem", folder / "server.key"
    shutil.copyfile(pki.server_cert, cert)
    shutil.copyfile(pki.server_key, key)
    key.chmod(0o600)  # the server refuses a key that others may read
    if user:
        entry = pwd.getpwnam(user)
        for path in (cert, key):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    data, log = folder / "data", folder / "server.log"
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, folder, ignore_errors=True)
        _run(
            *as_user,
            initdb,
            "-D",
            data,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            timeout=120,
        )
        (data / "pg_hba.conf").write_text(
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n"
        )
        options = (
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c ssl=on"
            f" -c ssl_cert_file={cert} -c ssl_key_file={key}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=16MB"
        )

        def stop() -> None:
            if (data / "postmaster.pid").exists():
                _run(*as_user, pg_ctl, "-D", data, "-m", "fast", "-w", "stop", timeout=60)

        stack.callback(stop)
        _run(
            *as_user,
            pg_ctl,
            "-D",
            data,
            "-l",
            log,
            "-w",
            "-t",
            str(int(START_TIMEOUT)),
            "-o",
            options,
            "start",
            timeout=START_TIMEOUT + 10,
        )
        yield TlsPostgres(port)
