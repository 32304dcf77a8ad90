"""The password grep itself (tests/log_secrets.py) finds a password wherever the run printed it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import pytest

from tests.log_secrets import MIN_LENGTH, PasswordGrep, find_passwords, mask, password, with_password

# Never registered with password(): the session's own grep must not look for it, since these tests
# print it on purpose. Each test hands it to a PasswordGrep of its own.
SECRET = "pa55-" + "word-for-the-grep-test"
TEST = "tests/unit/test_log_secrets.py::test_the_plugin_fails_the_session_for_a_password_in_captured_output"


def test_a_line_with_a_registered_password_is_found_and_masked() -> None:
    """The checker names where and on which line a password is, and never prints the password."""
    texts = [
        ("tests/a.py::test_x (Captured stderr call)", "fine\nconnecting to amqp://u:" + SECRET + "@h/\nok\n"),
        ("worker-0.log", '{"event": "consuming"}\n'),
    ]
    (hit,) = find_passwords(texts, {SECRET})
    assert (hit.where, hit.line_number) == ("tests/a.py::test_x (Captured stderr call)", 2)
    assert SECRET not in str(hit) and "amqp://u:pa***@h/" in str(hit)


def test_clean_text_has_no_hit() -> None:
    """Masked URLs and other passwords' neighbours are no hits."""
    assert find_passwords([("x", "amqp://u:***@h/ pa55-word\n")], {SECRET}) == []


def test_mask_hides_every_password() -> None:
    assert mask(f"{SECRET} and {SECRET}", {SECRET}) == "pa*** and pa***"


def test_short_passwords_are_not_registered() -> None:
    """A password too short to grep for (it would match ordinary words) is refused."""
    with pytest.raises(ValueError):
        password("x" * (MIN_LENGTH - 1))


def test_with_password_keeps_the_user_and_registers_the_password() -> None:
    from tests.log_secrets import PASSWORDS

    url = with_password("amqp://someone:old@h:5672/v", "wrong-on-purpose")
    assert url == "amqp://someone:wrong-on-purpose@h:5672/v" and "wrong-on-purpose" in PASSWORDS


def report(
    nodeid: str, when: Literal["setup", "call", "teardown"], sections: list[tuple[str, str]]
) -> pytest.TestReport:
    return pytest.TestReport(nodeid, ("x.py", 0, "x"), {}, "passed", None, when, sections)


def test_the_plugin_fails_the_session_for_a_password_in_captured_output(tmp_path: Path) -> None:
    """Captured output, piped subprocess output and log files are searched; a hit fails the session."""
    grep = PasswordGrep(passwords={SECRET})
    grep.basetemp = tmp_path
    # What pytest captured: only the phase's own sections count (a report repeats earlier ones).
    grep.pytest_runtest_logreport(report("t.py::a", "setup", [("Captured stderr setup", "clean\n")]))
    grep.pytest_runtest_logreport(
        report(
            "t.py::a",
            "call",
            [("Captured stderr setup", "clean\n"), ("Captured log call", f"WARNING x {SECRET}\n")],
        )
    )
    # Output read through pipes, by both kinds of communicate.
    untap = grep._tap_pipes()
    try:
        subprocess.run([sys.executable, "-c", f"print('piped {SECRET}')"], capture_output=True, check=True)

        async def run() -> None:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                f"import sys; print('async {SECRET}', file=sys.stderr)",
                stderr=asyncio.subprocess.PIPE,
            )
            await process.communicate()

        asyncio.run(run())
    finally:
        untap()
    # A log file under the session's temporary folder.
    (tmp_path / "test_x0").mkdir()
    (tmp_path / "test_x0" / "worker-0.log").write_text(f'{{"event": "start"}}\n{{"url": "{SECRET}"}}\n')

    session: Any = SimpleNamespace(exitstatus=pytest.ExitCode.OK)
    grep.pytest_sessionfinish(session)
    assert session.exitstatus == pytest.ExitCode.TESTS_FAILED
    log = tmp_path / "test_x0" / "worker-0.log"
    assert sorted((hit.where, hit.line_number) for hit in grep.hits) == sorted(
        [
            ("t.py::a (Captured log call)", 1),
            (f"{TEST} (output of a subprocess)", 1),
            (f"{TEST} (output of {Path(sys.executable).name})", 1),
            (str(log), 2),
        ]
    )
    assert all(SECRET not in str(hit) for hit in grep.hits)
    assert grep.summary.startswith("password grep: ") and "4 passwords found" in grep.summary


def test_the_plugin_passes_a_clean_session(tmp_path: Path) -> None:
    grep = PasswordGrep(passwords={SECRET})
    grep.basetemp = tmp_path
    grep.pytest_runtest_logreport(report("t.py::a", "call", [("Captured stdout call", "all\nfine\n")]))
    session: Any = SimpleNamespace(exitstatus=pytest.ExitCode.OK)
    grep.pytest_sessionfinish(session)
    assert session.exitstatus == pytest.ExitCode.OK
    assert grep.summary == (
        "password grep: 2 lines from 1 tests and 0 log files searched, 0 passwords found (1 registered)"
    )


def test_a_pytest_run_whose_test_prints_a_password_fails(tmp_path: Path) -> None:
    """End to end: a session whose test passes but prints a registered password exits 1, masked."""
    (tmp_path / "conftest.py").write_text(
        "from tests.log_secrets import PasswordGrep\n"
        "def pytest_configure(config):\n"
        "    config.pluginmanager.register(PasswordGrep(), 'statusek-password-grep')\n"
    )
    (tmp_path / "test_leak.py").write_text(
        "import sys\n"
        "from tests.log_secrets import password\n"
        "def test_leaks():\n"
        "    secret = password('pa55-' + 'leaked-on-purpose')\n"
        "    print('connecting to amqp://u:' + secret + '@h/', file=sys.stderr)\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    assert "test_leak.py::test_leaks (Captured stderr call):1: connecting to amqp://u:pa***@h/" in done.stdout
    assert "searched, 1 passwords found (1 registered)" in done.stdout
    assert "leaked-on-purpose" not in done.stdout + done.stderr
