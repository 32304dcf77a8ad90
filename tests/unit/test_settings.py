"""Settings from `<VAR>_FILE` (Docker and Kubernetes secrets): every setting, one source of each."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import Field, ValidationError
from pydantic_settings import SettingsError

from statusek.cli.main import _settings
from statusek.settings import Settings, SettingsFileError
from statusek.worker.worker import database_options

URL = "amqp://statusek-worker:s3cret-from-a-file@rabbitmq:5672/statusek"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No STATUSEK_* variable of the test run, and no `.env` but the one a test writes."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("STATUSEK_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


def secret_file(tmp_path: Path, text: str, name: str = "secret") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def variable(field: str) -> str:
    return f"STATUSEK_{field.upper()}"


def test_a_url_comes_from_its_file_without_the_trailing_newline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """STATUSEK_AMQP_URL_FILE and STATUSEK_DATABASE_URL_FILE name files whose content is the URL."""
    monkeypatch.setenv("STATUSEK_AMQP_URL_FILE", secret_file(tmp_path, URL + "\n", "amqp"))
    monkeypatch.setenv(
        "STATUSEK_DATABASE_URL_FILE", secret_file(tmp_path, "postgresql://o:p w@db/s\r\n\n", "db")
    )
    settings = Settings()
    assert settings.amqp_url == URL
    assert settings.database_url == "postgresql://o:p w@db/s"  # only newlines are stripped


def sample(field: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, object]:
    """A value of STATUSEK_<FIELD> that `field` accepts and that is not its default, and the setting."""
    default = Settings.model_fields[field].default
    candidates = ("7", "0.5", "true", "false", "json", "none", "readme", "/tmp/statusek-sample", '["ops"]')
    for candidate in (*candidates, '{"a": 1}'):
        monkeypatch.setenv(variable(field), candidate)
        try:
            value = getattr(Settings(), field)
        except (ValidationError, SettingsError):  # SettingsError: not JSON, for a list or a dict
            continue
        finally:
            monkeypatch.delenv(variable(field))
        if value != default:
            return candidate, value
    raise AssertionError(f"no sample value for {field}")


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_can_come_from_a_file(
    field: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`<VAR>_FILE` gives the same setting as `<VAR>` with the file's content, for every field."""
    text, from_variable = sample(field, monkeypatch)
    monkeypatch.setenv(f"{variable(field)}_FILE", secret_file(tmp_path, text + "\n"))
    assert getattr(Settings(), field) == from_variable


def test_a_variable_and_its_file_together_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Setting both is an error that names both variables, and neither value."""
    monkeypatch.setenv("STATUSEK_AMQP_URL", URL)
    monkeypatch.setenv("STATUSEK_AMQP_URL_FILE", secret_file(tmp_path, URL))
    with pytest.raises(SettingsFileError) as caught:
        Settings()
    message = str(caught.value)
    assert "STATUSEK_AMQP_URL and STATUSEK_AMQP_URL_FILE are both set" in message
    assert "s3cret" not in message


def test_a_variable_in_env_file_and_its_file_in_the_environment_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`.env` counts as setting a variable, as it does for the settings themselves."""
    (tmp_path / ".env").write_text(f"STATUSEK_AMQP_URL={URL}\n")
    monkeypatch.setenv("STATUSEK_AMQP_URL_FILE", secret_file(tmp_path, URL))
    with pytest.raises(SettingsFileError, match="STATUSEK_AMQP_URL and STATUSEK_AMQP_URL_FILE"):
        Settings()


def test_a_file_variable_may_be_in_env_file(tmp_path: Path) -> None:
    """`<VAR>_FILE` in `.env` works like in the environment."""
    (tmp_path / ".env").write_text(f"STATUSEK_AMQP_URL_FILE={secret_file(tmp_path, URL + chr(10))}\n")
    assert Settings().amqp_url == URL


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_an_unreadable_file_is_an_error_naming_the_variable_and_path(
    kind: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A file that does not exist, or is a folder, is an error naming STATUSEK_X_FILE and the path."""
    path = tmp_path / "nowhere" if kind == "missing" else tmp_path
    monkeypatch.setenv("STATUSEK_DATABASE_URL_FILE", str(path))
    with pytest.raises(SettingsFileError) as caught:
        Settings()
    assert str(caught.value).startswith(f"STATUSEK_DATABASE_URL_FILE: cannot read '{path}': ")


def test_an_error_never_shows_the_content(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A file that is not text is refused without quoting it."""
    path = tmp_path / "binary"
    path.write_bytes(b"s3cret-from-a-file\xff\n")
    monkeypatch.setenv("STATUSEK_AMQP_URL_FILE", str(path))
    with pytest.raises(SettingsFileError) as caught:
        Settings()
    assert str(caught.value) == f"STATUSEK_AMQP_URL_FILE: '{path}' is not UTF-8 text"


def test_every_problem_is_reported_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Two bad `_FILE` variables give one error naming both."""
    monkeypatch.setenv("STATUSEK_AMQP_URL_FILE", str(tmp_path / "a"))
    monkeypatch.setenv("STATUSEK_DATABASE_URL_FILE", str(tmp_path / "b"))
    with pytest.raises(SettingsFileError) as caught:
        Settings()
    assert "STATUSEK_AMQP_URL_FILE" in str(caught.value) and "STATUSEK_DATABASE_URL_FILE" in str(caught.value)


def test_an_empty_file_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """`STATUSEK_AMQP_URL_FILE=` (as a template with nothing to put leaves it) is no file at all."""
    monkeypatch.setenv("STATUSEK_AMQP_URL_FILE", "")
    monkeypatch.setenv("STATUSEK_AMQP_URL", URL)
    assert Settings().amqp_url == URL


def test_arguments_win_over_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Settings(amqp_url=...) in code is not overridden by a file."""
    monkeypatch.setenv("STATUSEK_AMQP_URL_FILE", secret_file(tmp_path, URL))
    assert Settings(amqp_url="amqp://other/").amqp_url == "amqp://other/"


class WithList(Settings):
    writers: list[str] | None = None
    tags: list[str] = Field(default_factory=list)


def test_a_list_comes_from_a_file_as_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A list setting's file holds JSON, as its variable would; other content fails validation."""
    monkeypatch.setenv("STATUSEK_WRITERS_FILE", secret_file(tmp_path, '["ops", "deployer"]\n'))
    assert WithList().writers == ["ops", "deployer"]
    monkeypatch.setenv("STATUSEK_WRITERS_FILE", secret_file(tmp_path, "not json\n"))
    with pytest.raises(ValidationError) as caught:
        WithList()
    assert [e["msg"] for e in caught.value.errors()] == ["Input should be a valid list"]


def test_a_file_that_is_not_the_json_a_list_needs_is_refused_unquoted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STATUSEK_TAGS_FILE", secret_file(tmp_path, "s3cret, not json\n"))
    with pytest.raises(SettingsFileError) as caught:
        WithList()
    assert str(caught.value) == "STATUSEK_TAGS_FILE: the file does not hold STATUSEK_TAGS as JSON"


def test_a_bad_value_from_a_file_is_validated_like_any(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The file's content goes through the same validation as the variable's."""
    monkeypatch.setenv("STATUSEK_PREFETCH_FILE", secret_file(tmp_path, "many\n"))
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"STATUSEK_AMQP_URL": URL, "STATUSEK_AMQP_URL_FILE": "/run/secrets/amqp-url"},
            "statusek: invalid settings: STATUSEK_AMQP_URL and STATUSEK_AMQP_URL_FILE are both set: "
            "set only one of them: fix the environment or .env\n",
        ),
        (
            {"STATUSEK_AMQP_URL_FILE": "/run/secrets/nothing-here"},
            "statusek: invalid settings: STATUSEK_AMQP_URL_FILE: cannot read '/run/secrets/nothing-here': "
            "No such file or directory: fix the environment or .env\n",
        ),
        (
            {"STATUSEK_PREFETCH_FILE": "<many>"},
            "statusek: invalid settings: STATUSEK_PREFETCH: Input should be a valid integer, "
            "unable to parse string as an integer: fix the environment or .env\n",
        ),
    ],
    ids=["both", "unreadable", "invalid"],
)
def test_the_cli_says_what_is_wrong_in_one_line(
    env: dict[str, str],
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The CLI prints one line naming the variable, never a URL or a file's content, and exits 2."""
    for name, value in env.items():
        monkeypatch.setenv(name, secret_file(tmp_path, "many\n") if value == "<many>" else value)
    with pytest.raises(SystemExit) as exited:
        _settings()
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", expected)


# --- Postgres time bounds (issue 17, item 3) ---


def test_database_timeouts_reach_every_connection_as_server_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The timeout and keepalive variables become the session settings every connection is opened with."""
    monkeypatch.setenv("STATUSEK_DATABASE_STATEMENT_TIMEOUT", "7.5")
    monkeypatch.setenv("STATUSEK_DATABASE_LOCK_TIMEOUT", "3")
    monkeypatch.setenv("STATUSEK_DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", "12")
    monkeypatch.setenv("STATUSEK_DATABASE_KEEPALIVES_IDLE", "20")
    monkeypatch.setenv("STATUSEK_DATABASE_CONNECT_TIMEOUT", "4")
    kwargs = database_options(Settings()).connect_kwargs()
    assert kwargs["timeout"] == 4
    # The client waits a little longer than the server, whose error is the one worth reading.
    assert kwargs["command_timeout"] == 9.5
    assert kwargs["server_settings"] == {
        "statement_timeout": "7500",
        "lock_timeout": "3000",
        "idle_in_transaction_session_timeout": "12000",
        "tcp_keepalives_idle": "20",
        "tcp_keepalives_interval": "5",
        "tcp_keepalives_count": "3",
    }


def test_every_database_bound_is_on_by_default() -> None:
    """Without any variable, statements, locks, idle transactions and stalls are all bounded, within 30 s."""
    s = Settings()
    bounds = [
        s.database_connect_timeout,
        s.database_statement_timeout,
        s.database_lock_timeout,
        s.database_idle_in_transaction_timeout,
        s.database_stall_timeout,
    ]
    assert all(0 < bound <= 30 for bound in bounds), bounds


@pytest.mark.parametrize(
    "name", ["DATABASE_STALL_TIMEOUT", "DATABASE_STATEMENT_TIMEOUT", "DATABASE_KEEPALIVES_COUNT"]
)
def test_a_database_bound_cannot_be_turned_off(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """0 is refused: a bound of 0 would mean none (Postgres reads a 0 timeout as no timeout)."""
    monkeypatch.setenv(f"STATUSEK_{name}", "0")
    with pytest.raises(ValidationError, match=name.lower()):
        Settings()
