"""The examples of the README and of docs/*.md run as written against a real worker."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from _pytest.mark.structures import ParameterSet

from statusek.worker.worker import Worker
from tests.helpers import run

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def examples(language: str) -> list[ParameterSet]:
    """Fenced blocks whose info string is `<language> example`, in every page, named by page."""
    found = []
    for page in PAGES:
        blocks = re.findall(rf"^```{language} example\n(.*?)^```", page.read_text(), flags=re.S | re.M)
        name = page.relative_to(ROOT).as_posix()
        found += [pytest.param(block, id=f"{name}-{n}") for n, block in enumerate(blocks, 1)]
    return found


@pytest.fixture
def env(worker: Worker, worker_env: dict[str, str]) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**worker_env, "PATH": f"{bin_dir}{os.pathsep}{worker_env.get('PATH', '')}"}


def test_readme_has_examples() -> None:
    """The README and docs mark their runnable examples (so the tests below test something)."""
    assert len(examples("python")) >= 1 and len(examples("sh")) >= 1


@pytest.mark.parametrize("code", examples("python"))
async def test_python_examples_run(code: str, env: dict[str, str]) -> None:
    """Each Python example runs and prints what its comments promise."""
    done = await run(sys.executable, "-c", code, env=env)
    assert done.returncode == 0, done.stderr
    assert "ALL_MANDATORY_STATUSES_ARE_SET" in done.stdout


@pytest.mark.parametrize("script", examples("sh"))
async def test_shell_examples_run(script: str, env: dict[str, str]) -> None:
    """Each shell example runs with `set -e` and ends with the instance completed."""
    done = await run("bash", "-ec", script, env=env)
    assert done.returncode == 0, done.stderr
    assert "ALL_MANDATORY_STATUSES_ARE_SET" in done.stdout
    assert "STARTED ✔" in done.stdout
