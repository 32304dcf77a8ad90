"""Who calls the gateway: HTTP Basic credentials checked against a users file.

The file (STATUSEK_GATEWAY_USERS_FILE) has one user a line, `name:hash`, as
`statusek gateway-user NAME` prints it; blank lines and lines starting with
`#` are ignored:

    # statusek gateway users
    billing:scrypt$15$8$1$kX2...$Qm9...

Only hashes are stored (scrypt, salted). Checking one costs tens of
milliseconds on purpose, so a good check is remembered (by a digest of the
Authorization header) until the file changes: a client that sends the same
credentials on every request pays it once. The file is read again when it
changes, at most once a second; a file that cannot be read then keeps the
users read before, and says so in the log.

The name is what the worker sees as the request's sender (its AMQP user_id):
writer lists name it, and events record it as their actor.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

SCHEME = "scrypt"
# scrypt with N = 2**15, r = 8, p = 1: 32 MiB and some 50 ms a check (OWASP's minimum is 2**17 for
# interactive logins; a gateway's callers are services, and a good check is remembered).
DEFAULT_LOG_N = 15
DEFAULT_R = 8
DEFAULT_P = 1
_KEY_BYTES = 32
_SALT_BYTES = 16
# An AMQP user_id is a short string: at most 255 bytes.
MAX_NAME_BYTES = 255


class UsersFileError(ValueError):
    """The users file cannot be used: the message names the file and line, never a hash."""


class Unauthenticated(Exception):
    """The request's credentials are missing or wrong; the message says which, without secrets."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """A salted scrypt hash: `scrypt$<log2 N>$<r>$<p>$<salt>$<key>`, salt and key base64url."""

    log_n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        parts = text.split("$")
        if len(parts) != 6 or parts[0] != SCHEME:
            raise ValueError(f"not a {SCHEME} hash: make it with `statusek gateway-user NAME`")
        try:
            log_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt, key = _unb64(parts[4]), _unb64(parts[5])
        except (ValueError, binascii.Error):
            raise ValueError(f"a {SCHEME} hash with unreadable parameters, salt or key") from None
        if not (1 <= log_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16 and salt and len(key) >= 16):
            raise ValueError(f"a {SCHEME} hash with parameters out of range (log2 N 1-20, r 1-32, p 1-16)")
        return cls(log_n, r, p, salt, key)

    def __str__(self) -> str:
        return f"{SCHEME}${self.log_n}${self.r}${self.p}${_b64(self.salt)}${_b64(self.key)}"

    def derive(self, password: str) -> bytes:
        return _scrypt(password, self.salt, self.log_n, self.r, self.p, len(self.key))

    def verify(self, password: str) -> bool:
        return hmac.compare_digest(self.derive(password), self.key)


def _scrypt(password: str, salt: bytes, log_n: int, r: int, p: int, length: int) -> bytes:
    n = 1 << log_n
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=2 * 128 * r * (n + p + 2), dklen=length
    )


def hash_password(
    password: str, *, log_n: int = DEFAULT_LOG_N, r: int = DEFAULT_R, p: int = DEFAULT_P
) -> PasswordHash:
    """A new salted hash of `password`."""
    salt = secrets.token_bytes(_SALT_BYTES)
    return PasswordHash(log_n, r, p, salt, _scrypt(password, salt, log_n, r, p, _KEY_BYTES))


def check_name(name: str) -> str:
    """`name` if it can be a user of the gateway; ValueError saying why not."""
    if not name:
        raise ValueError("a user name cannot be empty")
    if ":" in name:
        raise ValueError("a user name cannot hold ':' (HTTP Basic splits there)")
    if any(not char.isprintable() or char.isspace() for char in name):
        raise ValueError("a user name cannot hold spaces or control characters")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"a user name is at most {MAX_NAME_BYTES} bytes (an AMQP user_id)")
    return name


def users_line(name: str, hashed: PasswordHash) -> str:
    return f"{check_name(name)}:{hashed}"


def parse_users(text: str, source: str) -> dict[str, PasswordHash]:
    """The users of a users file's `text`; UsersFileError naming `source` and the line."""
    users: dict[str, PasswordHash] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, hashed = line.partition(":")
        where = f"{source} line {number}"
        if not colon:
            raise UsersFileError(f"{where}: not `name:hash`")
        try:
            check_name(name)
            users_hash = PasswordHash.parse(hashed)
        except ValueError as e:
            raise UsersFileError(f"{where}: {e}") from None
        if name in users:
            raise UsersFileError(f"{where}: user {name!r} is listed twice")
        users[name] = users_hash
    return users


class Users:
    """The users file, read at start and again when it changes (checked at most every `check_every` s)."""

    def __init__(self, path: Path, *, check_every: float = 1.0):
        self.path = path
        self.check_every = check_every
        self.generation = 0  # grows whenever the users change
        self._users: dict[str, PasswordHash] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0

    def load(self) -> None:
        """Read the file now; UsersFileError when it cannot be read or holds a bad line."""
        try:
            stat = self.path.stat()
            text = self.path.read_text(encoding="utf-8")
        except OSError as e:
            raise UsersFileError(f"{self.path}: cannot read it: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise UsersFileError(f"{self.path}: not UTF-8 text") from None
        users = parse_users(text, str(self.path))
        self._stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        self._checked = time.monotonic()
        if users != self._users or self.generation == 0:
            self._users = users
            self.generation += 1
        if not users:
            log.warning(
                "the gateway's users file lists nobody: every request will be refused", path=str(self.path)
            )

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.check_every:
            return
        self._checked = now
        try:
            stat = self.path.stat()
            stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return
        try:
            self.load()
            log.info("gateway users file read again", path=str(self.path), users=len(self._users))
        except UsersFileError as e:
            self._stamp = stamp  # said once per change, not on every request
            log.error("gateway users file unusable; keeping the users read before", error=str(e))

    def get(self, name: str) -> PasswordHash | None:
        self._refresh()
        return self._users.get(name)

    def any(self) -> PasswordHash | None:
        """One user's hash, or None when the file lists nobody."""
        return next(iter(self._users.values()), None)

    def __len__(self) -> int:
        return len(self._users)


def basic_credentials(header: str | None) -> tuple[str, str]:
    """(user, password) of an `Authorization: Basic ...` header; Unauthenticated otherwise."""
    if not header:
        raise Unauthenticated("no credentials: send HTTP Basic credentials (Authorization: Basic ...)")
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise Unauthenticated("the credentials are not HTTP Basic (Authorization: Basic ...)")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthenticated("the HTTP Basic credentials are not base64 of UTF-8 `user:password`") from None
    user, colon, password = decoded.partition(":")
    if not colon:
        raise Unauthenticated("the HTTP Basic credentials are not `user:password`")
    return user, password


class Authenticator:
    """Checks HTTP Basic credentials against `users`; remembers good ones until the users change."""

    def __init__(self, users: Users, *, remember: int = 4096, concurrency: int = 2):
        self.users = users
        self._remember = remember
        self._known: OrderedDict[bytes, str] = OrderedDict()
        self._generation = users.generation
        # Checks run in threads; a few at a time, so that wrong passwords cannot take every core.
        self._checks = asyncio.Semaphore(concurrency)
        self._decoy: PasswordHash | None = None

    async def authenticate(self, header: str | None) -> str:
        """The user the `Authorization` header proves; Unauthenticated otherwise."""
        user, password = basic_credentials(header)
        assert header is not None
        hashed = self.users.get(user)
        if self.users.generation != self._generation:
            self._known.clear()
            self._generation = self.users.generation
        digest = hashlib.sha256(header.strip().encode()).digest()
        if hashed is not None and self._known.get(digest) == user:
            self._known.move_to_end(digest)
            return user
        # An unknown user costs a check too, so that timing does not tell which users exist.
        against = hashed or self._decoy_hash()
        async with self._checks:
            good = await asyncio.to_thread(against.verify, password)
        if hashed is None or not good:
            raise Unauthenticated("unknown user or wrong password")
        self._known[digest] = user
        if len(self._known) > self._remember:
            self._known.popitem(last=False)
        return user

    def _decoy_hash(self) -> PasswordHash:
        """A hash that matches no password, as costly to check as the users' own."""
        if self._decoy is None:
            model = self.users.any()
            params = (model.log_n, model.r, model.p) if model else (DEFAULT_LOG_N, DEFAULT_R, DEFAULT_P)
            log_n, r, p = params
            self._decoy = hash_password(secrets.token_urlsafe(16), log_n=log_n, r=r, p=p)
        return self._decoy


def new_password() -> str:
    """A password for a service: 32 random characters."""
    return secrets.token_urlsafe(24)
