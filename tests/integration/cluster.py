"""A three-node RabbitMQ cluster of its own on this machine, for failover tests.

The nodes run from the Debian package's real scripts (as tests/integration/tls.py
starts its node), each with its own node name, AMQP and distribution ports, data
and log folders, all on 127.0.0.1 and sharing one Erlang cookie (in the HOME given
to them and to their rabbitmqctl). Nodes 2 and 3 join node 1. A single node can
be stopped and started again with the same data folder, or stop_app'd. Whatever
happens, `rabbitmq_cluster()` stops every node it started and removes the folder.

    with rabbitmq_cluster() as cluster:
        cluster.add_vhost("v"); cluster.add_user("u", "secret", vhost="v")
        urls = cluster.urls("u", "secret", "v")      # one per node
        leader = cluster.leader_of("v", "statusek.commands")
        cluster.stop(leader); ...; cluster.start(leader)
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from statusek.testing import free_port
from tests.integration.tls import RABBITMQ_BIN, _run, _stop_process, _wait_accepting

SERVER = RABBITMQ_BIN / "rabbitmq-server"
# One scheduler and no busy-waiting: three nodes share a small machine with the workers.
ERL_ARGS = "+S 1:1 +sbwt none +sbwtdcpu none +sbwtdio none"
# The partitioned layout of the worker needs the consistent-hash exchange.
PLUGINS = "[rabbitmq_consistent_hash_exchange].\n"


def available() -> bool:
    """Whether this machine has the RabbitMQ server scripts the cluster runs."""
    return SERVER.exists()


@dataclass
class Node:
    name: str  # the Erlang node name, e.g. statusek-c1-ab12cd34@localhost
    index: int  # 1, 2, 3
    port: int  # AMQP on 127.0.0.1
    dist_port: int
    folder: Path  # data and logs of this node
    env: dict[str, str] = field(repr=False)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log(self) -> Path:
        return self.folder / f"server-{self.starts}.out"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class RabbitCluster:
    home: Path  # HOME of every node and rabbitmqctl: the shared Erlang cookie
    nodes: list[Node] = field(default_factory=list)

    # --- rabbitmqctl ------------------------------------------------------------------------------

    def ctl(self, node: Node, *args: str, tool: str = "rabbitmqctl", timeout: float = 120) -> str:
        """`rabbitmqctl -q -n NODE ARGS` (or another CLI `tool`) with the cluster's cookie."""
        env = {**os.environ, "HOME": str(self.home)}
        return _run(RABBITMQ_BIN / tool, "-q", "-n", node.name, *args, env=env, timeout=timeout)

    def any_running(self, *, besides: Node | None = None) -> Node:
        for node in self.nodes:
            if node is not besides and node.running:
                return node
        raise RuntimeError("no node of the cluster is running")

    def add_vhost(self, vhost: str) -> None:
        self.ctl(self.any_running(), "add_vhost", vhost)

    def add_user(self, user: str, password: str, *, vhost: str) -> None:
        node = self.any_running()
        self.ctl(node, "add_user", user, password)
        self.ctl(node, "set_permissions", "-p", vhost, user, ".*", ".*", ".*")

    def urls(self, user: str, password: str, vhost: str) -> list[str]:
        """The AMQP URL of each node, in node order."""
        credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return [f"amqp://{credentials}@127.0.0.1:{n.port}/{quote(vhost, safe='')}" for n in self.nodes]

    def queues(self, vhost: str) -> list[dict[str, Any]]:
        """Every queue of `vhost` with its type, leader, members and online members (quorum queues)."""
        out = self.ctl(
            self.any_running(),
            "list_queues",
            "-p",
            vhost,
            "name",
            "type",
            "leader",
            "members",
            "online",
            "messages",
            "--formatter",
            "json",
        )
        rows: list[dict[str, Any]] = json.loads(out or "[]")
        return rows

    def node_named(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def leaders(self, vhost: str, prefix: str) -> dict[str, Node]:
        """Queue name -> the node leading it, for the quorum queues whose names start with `prefix`."""
        return {
            q["name"]: self.node_named(str(q["leader"]))
            for q in self.queues(vhost)
            if str(q["name"]).startswith(prefix) and q.get("leader")
        }

    # --- nodes ------------------------------------------------------------------------------------

    def start(self, node: Node) -> None:
        """Start `node`'s server (again, with the same data folder) and wait for its AMQP port."""
        if node.running:
            return
        self.spawn(node)
        self.wait_started(node)

    def spawn(self, node: Node) -> None:
        """Start `node`'s server process (in a session of its own), without waiting for it."""
        node.starts += 1
        with node.log.open("wb") as out:
            node.process = subprocess.Popen(
                [str(SERVER)],
                env=node.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_started(self, node: Node) -> None:
        assert node.process is not None
        _wait_accepting(node.port, node.process, node.log, f"RabbitMQ node {node.name}")

    def stop(self, node: Node) -> None:
        """Stop `node`'s whole server (its Erlang VM); its data folder stays for `start`."""
        if not node.running:
            return
        assert node.process is not None
        try:
            self.ctl(node, "stop", timeout=90)
        except (RuntimeError, subprocess.TimeoutExpired):
            with suppress(ProcessLookupError):
                os.killpg(node.process.pid, signal.SIGTERM)
        _stop_process(node.process)

    def kill(self, node: Node) -> None:
        """SIGKILL `node`'s server at once, like a machine lost; `start` brings it back."""
        if node.process is not None and node.process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(node.process.pid, signal.SIGKILL)
            node.process.wait(timeout=30)

    def stop_app(self, node: Node) -> None:
        """Stop RabbitMQ on `node` but keep its Erlang VM (and cluster membership)."""
        self.ctl(node, "stop_app")

    def start_app(self, node: Node) -> None:
        self.ctl(node, "start_app")
        assert node.process is not None
        _wait_accepting(node.port, node.process, node.log, f"RabbitMQ node {node.name}")

    def join(self, node: Node, seed: Node) -> None:
        """Make `node` a member of `seed`'s cluster."""
        self.ctl(node, "stop_app")
        self.ctl(node, "join_cluster", seed.name)
        self.start_app(node)

    def running_nodes(self) -> list[str]:
        """The nodes the cluster sees running, from any running node."""
        status = json.loads(self.ctl(self.any_running(), "cluster_status", "--formatter", "json"))
        return sorted(status.get("running_nodes", []))

    def close(self) -> None:
        """Stop every node still running (gracefully, else killed)."""
        for node in self.nodes:
            if node.running:
                try:
                    self.stop(node)
                except Exception:
                    self.kill(node)


def _node(home: Path, index: int, tag: str) -> Node:
    folder = home / f"node{index}"
    folder.mkdir()
    port, dist_port = free_port(), free_port()
    name = f"statusek-c{index}-{tag}@localhost"
    config = folder / "rabbitmq.conf"
    config.write_text(
        "loopback_users = none\n"
        # Small, quick: heartbeats notice a dead peer within seconds, as clients' do.
        "heartbeat = 10\n"
        "cluster_partition_handling = ignore\n"
    )
    (folder / "enabled_plugins").write_text(PLUGINS)
    (folder / "rabbitmq-env.conf").write_text("ERL_EPMD_ADDRESS=127.0.0.1\n")
    env = {
        **os.environ,
        "HOME": str(home),
        "RABBITMQ_NODENAME": name,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
        "RABBITMQ_LOG_BASE": str(folder / "log"),
        "RABBITMQ_CONFIG_FILE": str(config),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),
        "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": ERL_ARGS,
    }
    return Node(name, index, port, dist_port, folder, env)


@contextmanager
def rabbitmq_cluster(size: int = 3) -> Iterator[RabbitCluster]:
    """`size` RabbitMQ nodes clustered together, then all stopped and their folder removed.

    Every node is started before the first is waited for, so they boot side by side.
    """
    if not available():
        raise RuntimeError(f"RabbitMQ is not installed here ({SERVER} is missing)")
    home = Path(tempfile.mkdtemp(prefix="statusek-cluster-"))
    tag = secrets.token_hex(4)
    cookie = home / ".erlang.cookie"
    cookie.write_text(secrets.token_hex(16).upper())
    cookie.chmod(0o400)
    cluster = RabbitCluster(home)
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, home, ignore_errors=True)
        stack.callback(cluster.close)
        for index in range(1, size + 1):
            cluster.nodes.append(_node(home, index, tag))
        for node in cluster.nodes:
            cluster.spawn(node)
        for node in cluster.nodes:
            cluster.wait_started(node)
        seed = cluster.nodes[0]
        for node in cluster.nodes[1:]:
            cluster.join(node, seed)
        deadline = time.monotonic() + 60
        while len(cluster.running_nodes()) < size:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not form: {cluster.running_nodes()}")
            time.sleep(0.5)
        yield cluster
