"""The password grep: no log line and no error message of the test run contains a password.

Every password the tests use is registered with `password()`: the session's
random RabbitMQ and Postgres passwords (tests/conftest.py), the wrong ones tests
use on purpose, and those of deploy/rabbitmq/definitions.json that the deploy
tests log in with. Everything the run printed is gathered:

- what pytest captured of each test (stdout, stderr, log records), which holds
  the output of the processes that inherit its file descriptors;
- the stdout and stderr of every process a test reads through pipes
  (`subprocess.run(capture_output=True)`, `Popen.communicate`, asyncio's
  `Process.communicate`: the plugin taps both `communicate`s for the session);
- log files tests write: those registered with `log_file()`, and every `*.log`
  under the session's temporary folder (the Cluster's worker-N.log, the compose
  stack's compose.log).

At the end of the session each of these is searched for each password. A hit
fails the session (exit status 1) and is printed, masked, with where it was
and its line number; otherwise the terminal summary says

    password grep: N lines from M tests and K log files searched, 0 passwords found

Only what the tests' programs printed is searched, never pytest's own report of
a failure (which shows a test's locals, URLs included).
"""

from __future__ import annotations

import asyncio.subprocess
import os
import secrets
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pytest

PASSWORDS: set[str] = set()
LOG_FILES: set[Path] = set()
MIN_LENGTH = 6  # shorter strings would be found in unrelated text (and are no passwords anyway)


def password(value: str) -> str:
    """Registers `value` as a password of this run, which no log line may contain; returns it."""
    if len(value) < MIN_LENGTH:
        raise ValueError(f"a password to grep for needs {MIN_LENGTH} characters or more")
    PASSWORDS.add(value)
    return value


def new_password(nbytes: int = 18) -> str:
    """A fresh random password, registered; it never starts with '-', which rabbitmqctl reads as an option."""
    return password("p" + secrets.token_urlsafe(nbytes))


def with_credentials(url: str, user: str, secret: str) -> str:
    """`url` with its user and password replaced (`secret` is registered as a password)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password(secret), safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def with_password(url: str, secret: str) -> str:
    """`url`, same user, with the password `secret` (a wrong one, usually), registered as a password."""
    return with_credentials(url, unquote(urlsplit(url).username or ""), secret)


def log_file(path: Path) -> Path:
    """Registers a log file a test writes outside its tmp_path; returns it."""
    LOG_FILES.add(path)
    return path


@dataclass(frozen=True)
class Hit:
    """A line that contains a password: where it was, its number there, and the line masked."""

    where: str
    line_number: int
    line: str

    def __str__(self) -> str:
        return f"{self.where}:{self.line_number}: {self.line}"


def mask(text: str, passwords: Iterable[str]) -> str:
    """`text` with every password in it shown as its first two characters and `***`."""
    for secret in sorted(passwords, key=len, reverse=True):
        text = text.replace(secret, secret[:2] + "***")
    return text


def find_passwords(texts: Iterable[tuple[str, str]], passwords: Iterable[str]) -> list[Hit]:
    """The lines of the (where, text) pairs that contain any of `passwords`, masked."""
    secrets = [p for p in set(passwords) if p]
    hits = []
    for where, text in texts:
        if not any(secret in text for secret in secrets):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if any(secret in line for secret in secrets):
                hits.append(Hit(where, number, mask(line, secrets)))
    return hits


def count_lines(text: str) -> int:
    return text.count("\n") + (1 if text and not text.endswith("\n") else 0)


def _program(args: Any) -> str:
    """The name of the program a Popen ran: not its arguments, which may hold a password."""
    argv = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
    return Path(os.fsdecode(argv[0])).name if argv else "a subprocess"


def _decoded(output: str | bytes | None) -> str:
    if output is None:
        return ""
    return output.decode(errors="replace") if isinstance(output, bytes) else output


class PasswordGrep:
    """The pytest plugin: gathers the run's output, then greps it for every password."""

    def __init__(self, passwords: set[str] = PASSWORDS) -> None:
        self.passwords = passwords  # the registry, read at the end (tests register as they go)
        self.texts: list[tuple[str, str]] = []  # (where, text)
        self.tests: set[str] = set()
        self.basetemp: Path | None = None
        self.hits: list[Hit] = []
        self.summary = ""
        self._untap: Callable[[], None] | None = None

    # --- gathering --------------------------------------------------------------------------------------

    def record(self, where: str, text: str) -> None:
        if text:
            self.texts.append((where, text))

    def current_test(self) -> str:
        return os.environ.get("PYTEST_CURRENT_TEST", "outside any test").rsplit(" ", 1)[0]

    def pytest_configure(self, config: pytest.Config) -> None:
        self._untap = self._tap_pipes()

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self._untap:
            self._untap()

    def _tap_pipes(self) -> Callable[[], None]:
        """Records what every `communicate` returns: the output of processes read through pipes."""
        plugin = self
        sync_communicate = subprocess.Popen.communicate
        async_communicate = asyncio.subprocess.Process.communicate

        def communicate(process: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> Any:
            out, err = sync_communicate(process, *args, **kwargs)
            plugin.record_process(_program(process.args), out, err)
            return out, err

        async def acommunicate(process: asyncio.subprocess.Process, *args: Any, **kwargs: Any) -> Any:
            out, err = await async_communicate(process, *args, **kwargs)
            plugin.record_process("a subprocess", out, err)
            return out, err

        subprocess.Popen.communicate = communicate  # type: ignore[method-assign,assignment]
        asyncio.subprocess.Process.communicate = acommunicate  # type: ignore[method-assign,assignment]

        def untap() -> None:
            subprocess.Popen.communicate = sync_communicate  # type: ignore[method-assign]
            asyncio.subprocess.Process.communicate = async_communicate  # type: ignore[method-assign]

        return untap

    def record_process(self, program: str, out: str | bytes | None, err: str | bytes | None) -> None:
        where = f"{self.current_test()} (output of {program})"
        self.record(where, _decoded(out))
        self.record(where, _decoded(err))

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        factory = getattr(session.config, "_tmp_path_factory", None)
        if isinstance(factory, pytest.TempPathFactory):
            self.basetemp = factory.getbasetemp()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """The output pytest captured in this phase (a report repeats the sections of earlier phases)."""
        self.tests.add(report.nodeid)
        for title, content in report.sections:
            if title.startswith("Captured ") and title.endswith(f" {report.when}"):
                self.record(f"{report.nodeid} ({title})", content)

    def log_files(self) -> list[Path]:
        found = set(LOG_FILES)
        if self.basetemp is not None and self.basetemp.exists():
            found.update(self.basetemp.rglob("*.log"))
        return sorted(p for p in found if p.is_file())

    # --- checking ---------------------------------------------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """After the session's fixtures are torn down: search everything, fail the session on a hit."""
        files = self.log_files()
        texts = list(self.texts)
        for path in files:
            texts.append((str(path), path.read_text(errors="replace")))
        lines = sum(count_lines(text) for _, text in texts)
        self.hits = find_passwords(texts, self.passwords)
        self.summary = (
            f"password grep: {lines} lines from {len(self.tests)} tests and {len(files)} log files "
            f"searched, {len(self.hits)} passwords found ({len(self.passwords)} registered)"
        )
        if self.hits and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.summary:
            return
        if self.hits:
            terminalreporter.section("passwords in log lines", red=True)
            for hit in self.hits:
                terminalreporter.write_line(str(hit), red=True)
        terminalreporter.write_line(self.summary, red=bool(self.hits))
