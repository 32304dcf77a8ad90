"""The gateway's users file and HTTP Basic checks, without the network."""

from __future__ import annotations

import argparse
import base64
import io
import os
from pathlib import Path

import pytest

from statusek.cli.main import cmd_gateway_user
from statusek.gateway.server import GatewayConfigError, authenticator_for
from statusek.gateway.users import (
    Authenticator,
    PasswordHash,
    Unauthenticated,
    Users,
    UsersFileError,
    basic_credentials,
    hash_password,
    parse_users,
    users_line,
)
from statusek.settings import Settings


def cheap(password: str) -> PasswordHash:
    """A hash with tiny scrypt parameters: the format and the check, at test speed."""
    return hash_password(password, log_n=4, r=1, p=1)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_a_hash_verifies_its_password_only() -> None:
    """The right password verifies; another does not."""
    hashed = cheap("s3cret")
    assert hashed.verify("s3cret") and not hashed.verify("s3cret ")


def test_a_hash_survives_its_text_form() -> None:
    """`scrypt$N$r$p$salt$key` parses back to the same hash."""
    hashed = cheap("s3cret")
    assert PasswordHash.parse(str(hashed)) == hashed and str(hashed).startswith("scrypt$4$1$1$")


def test_two_hashes_of_one_password_differ() -> None:
    """Each hash has its own salt."""
    assert str(cheap("x")) != str(cheap("x"))


def test_users_file_lines_comments_and_blanks() -> None:
    """`name:hash` lines are users; blank lines and # comments are skipped."""
    text = f"# gateway users\n\n{users_line('billing', cheap('a'))}\n  {users_line('ops', cheap('b'))}  \n"
    assert sorted(parse_users(text, "users")) == ["billing", "ops"]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("billing", "not `name:hash`"),
        ("billing:md5$abc", "not a scrypt hash"),
        ("bill ing:scrypt$4$1$1$c2FsdA$" + "A" * 43, "spaces"),
        ("billing:scrypt$99$1$1$c2FsdA$" + "A" * 43, "out of range"),
    ],
)
def test_a_bad_line_is_named_without_its_hash(line: str, problem: str) -> None:
    """The error names the file and the line, says what is wrong, and never quotes the hash."""
    with pytest.raises(UsersFileError) as caught:
        parse_users(f"# first\n{line}\n", "/etc/users")
    assert str(caught.value).startswith("/etc/users line 2: ") and problem in str(caught.value)
    assert "AAAA" not in str(caught.value)


def test_a_user_listed_twice_is_an_error() -> None:
    """Two lines for one user: which one holds is not guessed."""
    with pytest.raises(UsersFileError, match="listed twice"):
        parse_users(f"{users_line('a', cheap('x'))}\n{users_line('a', cheap('y'))}\n", "users")


def test_basic_credentials_are_read() -> None:
    """`Basic base64(user:pass)` gives user and password; a colon in the password stays."""
    assert basic_credentials(basic("billing", "pa:ss")) == ("billing", "pa:ss")


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (None, "no credentials"),
        ("Bearer abc", "not HTTP Basic"),
        ("Basic !!!", "not base64"),
        ("Basic " + base64.b64encode(b"nocolon").decode(), "not `user:password`"),
    ],
)
def test_bad_authorization_headers_say_why(header: str | None, problem: str) -> None:
    """Missing, another scheme, not base64, no colon: each refused with its reason."""
    with pytest.raises(Unauthenticated, match=problem):
        basic_credentials(header)


def replace_file(path: Path, text: str) -> None:
    path.write_text(text)


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text(users_line("billing", cheap("right")) + "\n")
    return path


async def test_the_authenticator_names_the_user_of_good_credentials(users_file: Path) -> None:
    """Good credentials: the user's name, which the gateway publishes as."""
    users = Users(users_file)
    users.load()
    assert await Authenticator(users).authenticate(basic("billing", "right")) == "billing"


async def test_a_wrong_password_and_an_unknown_user_get_the_same_answer(users_file: Path) -> None:
    """Whether the user exists is not told."""
    users = Users(users_file)
    users.load()
    authenticator = Authenticator(users)
    for header in (basic("billing", "wrong"), basic("nobody", "right")):
        with pytest.raises(Unauthenticated, match=r"^unknown user or wrong password$"):
            await authenticator.authenticate(header)


async def test_a_changed_file_is_read_again_and_forgets_remembered_credentials(users_file: Path) -> None:
    """A password changed in the file: the old one, remembered before, no longer passes."""
    users = Users(users_file, check_every=0)
    users.load()
    authenticator = Authenticator(users)
    assert await authenticator.authenticate(basic("billing", "right")) == "billing"
    replace_file(users_file, users_line("billing", cheap("new")) + "\n")
    os.utime(users_file, ns=(1, 1))  # a different mtime, even within the clock's resolution
    with pytest.raises(Unauthenticated):
        await authenticator.authenticate(basic("billing", "right"))
    assert await authenticator.authenticate(basic("billing", "new")) == "billing"


async def test_a_file_broken_later_keeps_the_users_read_before(users_file: Path) -> None:
    """An unreadable edit does not lock everyone out: the users read before still pass."""
    users = Users(users_file, check_every=0)
    users.load()
    replace_file(users_file, "garbage\n")
    os.utime(users_file, ns=(2, 2))
    assert await Authenticator(users).authenticate(basic("billing", "right")) == "billing"


def test_a_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    """At start, a users file that cannot be read stops the gateway, naming the path."""
    with pytest.raises(UsersFileError, match="nowhere: cannot read it"):
        Users(tmp_path / "nowhere").load()


def test_basic_auth_without_a_users_file_names_both_settings() -> None:
    """STATUSEK_GATEWAY_AUTH=basic (the default) needs STATUSEK_GATEWAY_USERS_FILE; both are named."""
    with pytest.raises(GatewayConfigError) as caught:
        authenticator_for(Settings(gateway_auth="basic", gateway_users_file=None))
    assert "STATUSEK_GATEWAY_USERS_FILE is not set" in str(caught.value)
    assert "STATUSEK_GATEWAY_AUTH=none" in str(caught.value)


def test_no_auth_asks_nobody() -> None:
    """STATUSEK_GATEWAY_AUTH=none: no authenticator, whatever the users file."""
    assert authenticator_for(Settings(gateway_auth="none", gateway_users_file="/nowhere")) is None


def test_an_unreadable_users_file_names_its_setting(tmp_path: Path) -> None:
    """A users file that cannot be read stops the gateway, naming STATUSEK_GATEWAY_USERS_FILE."""
    with pytest.raises(GatewayConfigError, match=r"^STATUSEK_GATEWAY_USERS_FILE: .*nowhere: cannot read it"):
        authenticator_for(Settings(gateway_auth="basic", gateway_users_file=str(tmp_path / "nowhere")))


def test_gateway_user_prints_a_line_for_the_password_on_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`statusek gateway-user billing --password-stdin` prints `billing:scrypt$…` for that password."""
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-from-stdin\n"))
    args = argparse.Namespace(name="billing", password_stdin=True)
    assert cmd_gateway_user(Settings(), args) == 0
    out, err = capsys.readouterr()
    assert out.startswith("billing:scrypt$15$8$1$") and "s3cret-from-stdin" not in out + err
    users = parse_users(out, "stdout")
    assert users["billing"].verify("s3cret-from-stdin")


def test_gateway_user_makes_a_password_when_none_is_given(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --password-stdin a new password is shown on stderr; stdout has only the line."""
    assert cmd_gateway_user(Settings(), argparse.Namespace(name="ops", password_stdin=False)) == 0
    out, err = capsys.readouterr()
    password = err.strip().removeprefix("password of ops: ")
    assert len(password) >= 24 and parse_users(out, "stdout")["ops"].verify(password)


def test_gateway_user_refuses_a_name_with_a_colon(capsys: pytest.CaptureFixture[str]) -> None:
    """A name HTTP Basic could not carry is refused (exit 2), saying why."""
    assert cmd_gateway_user(Settings(), argparse.Namespace(name="a:b", password_stdin=False)) == 2
    assert "cannot hold ':'" in capsys.readouterr().err
