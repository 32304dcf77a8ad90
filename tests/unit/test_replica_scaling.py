"""The CPU readings of benchmarks/replica_scaling.py: cgroup files, the listener's pid, a process tree."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and cgroups")


def _load() -> ModuleType:
    path = Path(__file__).parents[2] / "benchmarks" / "replica_scaling.py"
    spec = importlib.util.spec_from_file_location("replica_scaling", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _load()


def test_cgroup_v1_usage_and_throttling(tmp_path: Path) -> None:
    cpuacct, cpu = tmp_path / "cpuacct", tmp_path / "cpu"
    cpuacct.mkdir()
    cpu.mkdir()
    (cpuacct / "cpuacct.usage").write_text("2500000000\n")
    (cpu / "cpu.stat").write_text("nr_periods 40\nnr_throttled 30\nthrottled_time 123\n")
    assert bench.cgroup_sample(cpuacct, cpu) == bench.CpuSample(2.5, 40, 30)


def test_cgroup_v2_usage_and_throttling(tmp_path: Path) -> None:
    (tmp_path / "cpu.stat").write_text(
        "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\nnr_periods 10\nnr_throttled 2\n"
    )
    assert bench.cgroup_sample(tmp_path, tmp_path) == bench.CpuSample(1.5, 10, 2)


def test_listener_pid_finds_this_process() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert bench.listener_pid(s.getsockname()[1]) == os.getpid()


def test_process_tree_counts_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        tree = bench.process_tree(os.getpid())
        assert child.pid in tree
        assert tree[os.getpid()] > 0
    finally:
        child.kill()
        child.wait()
    assert bench.process_tree(None) == {}
