"""The client's and the CLI's pure edges: URLs, expirations, exceptions and arguments."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from statusek.cli.main import build_parser
from statusek.client import check_url, expiration_for
from statusek.client._urls import _url_from_environment
from statusek.exceptions import InvalidURL, NoAnswerError, StatusekClientError


@pytest.mark.parametrize("url", ["localhost", "http://h/", "amqp://", "amqp://h:99999/", "amqp://h:x/"])
def test_a_url_that_is_not_amqp_is_refused(url: str) -> None:
    """Only amqp:// and amqps:// URLs with a host and a valid port are tried."""
    with pytest.raises(InvalidURL):
        check_url(url)


def test_an_invalid_url_error_masks_the_password() -> None:
    """The URL in the error keeps its user and hides its password."""
    with pytest.raises(InvalidURL) as caught:
        check_url("http://guest:hunter2@h/")
    assert "hunter2" not in str(caught.value) and "guest:***@h" in str(caught.value)


@pytest.mark.parametrize(("waits", "expires"), [(10, 9), (2, 1.6), (0.5, 0.4)])
def test_a_request_expires_before_its_caller_gives_up(waits: float, expires: float) -> None:
    """The expiration leaves a worker that took the request time to answer it."""
    assert expiration_for(waits) == pytest.approx(expires)


def test_exceptions_import_from_the_package_without_aio_pika() -> None:
    """`from statusek import InstanceFinishedError` works and loads no aio-pika."""
    code = (
        "import sys\n"
        "from statusek import InstanceFinishedError, NoAnswerError, StatusekRejected, TokenConflict\n"
        "assert issubclass(InstanceFinishedError, StatusekRejected)\n"
        "print('aio_pika' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_answer_is_a_timeout_error() -> None:
    """Code that catches TimeoutError keeps working, and can tell no answer apart."""
    error = NoAnswerError("create", 2, "/")
    assert isinstance(error, TimeoutError) and isinstance(error, StatusekClientError)
    assert "create" in str(error) and "'/'" in str(error)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["create", "X", "--label", "team"], "'team' is not KEY=VALUE"),
        (["create", "X", "--answer-within", "-1"], "'-1' is not a positive number of seconds"),
        (["create", "X", "--timeout", "nan"], "'nan' is not a positive number of seconds"),
        (["wait", "6f1c2a80-0000-4000-8000-000000000001", "--timeout", "0"], "'0' is not a positive"),
        (["set", "nope", "STARTED"], "'nope' is not an instance token"),
        (["watch", "--count", "-1"], "'-1' is not a count"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each bad argument exits 2 with one line naming it and pointing at --help."""
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert caught.value.code == 2
    assert err.count("\n") == 1 and fragment in err and "--help" in err


def test_a_label_becomes_a_pair() -> None:
    """`--label k=v=w` splits at the first `=`."""
    args = build_parser().parse_args(["create", "X", "--label", "k=v=w", "--label", "e="])
    assert args.label == [("k", "v=w"), ("e", "")]


def test_the_url_may_come_from_a_secret_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without STATUSEK_AMQP_URL, the file named by STATUSEK_AMQP_URL_FILE gives the URL."""
    secret = tmp_path / "amqp-url"
    secret.write_text("amqp://svc:s3cret-value@broker:5672/statusek\n")
    monkeypatch.delenv("STATUSEK_AMQP_URL", raising=False)
    monkeypatch.setenv("STATUSEK_AMQP_URL_FILE", str(secret))
    assert _url_from_environment() == "amqp://svc:s3cret-value@broker:5672/statusek"
    secret.unlink()
    with pytest.raises(InvalidURL, match="STATUSEK_AMQP_URL_FILE: cannot read") as unreadable:
        _url_from_environment()
    assert "s3cret" not in str(unreadable.value)
