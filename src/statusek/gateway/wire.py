"""The HTTP dialect of the original Go Statusek, without I/O: requests in, responses out.

Requests are read as Go's `json.NewDecoder(r.Body).Decode(&params)` reads
them (encoding/json): the first JSON value of the body, whatever follows it
ignored; keys matched to fields case-insensitively; `null` leaves a field
unset; a value of the wrong type is an error. Paths are cleaned and matched
as gorilla/mux (`StrictSlash(true)`) does. Responses are written in one of
two shapes (`Wire`): v2.7.2's, byte for byte as Go's `json.NewEncoder`
writes them, or the first README's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from statusek.core.codes import Code
from statusek.settings import Wire


class ParamsError(ValueError):
    """The request body cannot be read as the route's parameters; the message says why."""


class Params(BaseModel):
    """The original's request fields (api/structs.go `tParams`); other keys are ignored, as Go does."""

    model_config = ConfigDict(frozen=True)

    object_name: str | None = None
    instance_timeout: int | None = None
    instance_token: str | None = None
    status_name: str | None = None
    status_message: str | None = None

    @property
    def token(self) -> str:
        assert self.instance_token is not None
        return self.instance_token

    @property
    def status(self) -> str:
        assert self.status_name is not None
        return self.status_name

    def placeholders(self) -> dict[str, str]:
        """The values Go puts in a message's <Name> placeholders (structs.Map of the params)."""
        return {
            "ObjectName": self.object_name or "",
            "InstanceToken": self.instance_token or "",
            "StatusName": self.status_name or "",
        }


_FIELDS: dict[str, type] = {
    "object_name": str,
    "instance_timeout": int,
    "instance_token": str,
    "status_name": str,
    "status_message": str,
}

# Go's int is 64 bits: a number outside it does not decode.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1

# The bytes Go's JSON scanner skips as whitespace (Python's str.strip skips more).
_JSON_SPACE = " \t\r\n"

# Go folds a key to match a field with unicode.SimpleFold: besides ASCII case, the long s and the
# Kelvin sign fold to ASCII letters. No other character can match an ASCII field name.
_NON_ASCII_FOLDS = {"\u017f": "s", "\u212a": "k"}

_SURROGATE = re.compile("[\ud800-\udfff]")


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its key/value pairs in order: Go applies duplicate keys one after another."""


@dataclass(frozen=True, slots=True)
class _Fraction:
    """A JSON number with a fraction or an exponent: never a Go int."""

    literal: str


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(
    object_pairs_hook=_Pairs, parse_float=_Fraction, parse_constant=_no_constant, strict=True
)


def field_for(key: str) -> str | None:
    """The field a JSON key sets, matched as Go's encoding/json matches it (case-insensitively)."""
    if key in _FIELDS:
        return key
    folded = []
    for char in key:
        if char.isascii():
            folded.append(char.lower())
        elif char in _NON_ASCII_FOLDS:
            folded.append(_NON_ASCII_FOLDS[char])
        else:
            return None
    name = "".join(folded)
    return name if name in _FIELDS else None


def _go_string(value: str) -> str:
    # Go decodes a lone surrogate escape (\ud800) as U+FFFD; Python keeps it, and could not encode it.
    return _SURROGATE.sub("\ufffd", value)


def decode_params(body: bytes, required: tuple[str, ...] = ()) -> Params:
    """The parameters Go Statusek reads from `body`; ParamsError naming what is wrong.

    As Go's decoder: only the first JSON value counts (text after it is not
    read), `null` is no parameters, keys match fields whatever their case,
    a later duplicate key wins unless its value is null. Unlike Go, a
    required field that is missing or empty is refused, naming it.
    """
    # Invalid UTF-8 becomes U+FFFD, as Go reads it (inside strings; elsewhere it is a syntax error).
    text = body.decode("utf-8", errors="replace").lstrip(_JSON_SPACE)
    if not text:
        raise ParamsError("the body is empty: send a JSON object")
    try:
        raw, _end = _DECODER.raw_decode(text)
    except json.JSONDecodeError as e:
        raise ParamsError(f"the body is not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise ParamsError("the body is not JSON (nested too deeply)") from None
    except ValueError as e:
        raise ParamsError(f"the body is not JSON ({e})") from None
    values: dict[str, Any] = {}
    if raw is not None:
        if not isinstance(raw, _Pairs):
            raise ParamsError("the body is not a JSON object")
        for key, value in raw:
            name = field_for(key)
            if name is None or value is None:  # unknown key, or null: Go leaves the field as it is
                continue
            values[name] = _field_value(name, value)
    for name in required:
        if not values.get(name):
            raise ParamsError(f"'{name}' is required")
    return Params(**values)


def _field_value(name: str, value: Any) -> Any:
    if _FIELDS[name] is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"'{name}' must be an integer")
        if not _INT_MIN <= value <= _INT_MAX:
            raise ParamsError(f"'{name}' is out of range (a 64-bit integer)")
        return value
    if not isinstance(value, str):
        raise ParamsError(f"'{name}' must be a string")
    return _go_string(value)


def go_clean(path: str) -> str:
    """Go's path.Clean: the shortest equivalent path ('.' and '..' resolved, slashes merged)."""
    if not path:
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(segment)
    cleaned = "/".join(parts)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def mux_clean(path: str) -> str:
    """gorilla/mux's cleanPath: Go's path.Clean, rooted, keeping a trailing slash."""
    if not path:
        return "/"
    if not path.startswith("/"):
        path = "/" + path
    cleaned = go_clean(path)
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes, as gorilla/mux with StrictSlash(true) decides it."""

    kind: str  # "clean" (redirect to the cleaned path), "slash" (redirect), "route", "not-found"
    path: str  # the route's path, or where to redirect


def route_for(path: str, routes: frozenset[str]) -> Route:
    """The route of `path` among `routes`, or the redirect gorilla/mux answers instead.

    An unclean path (`//about`, `/a/../about`) is redirected to its clean form
    first; a path that matches a route but for a trailing slash is redirected to
    the route's path.
    """
    cleaned = mux_clean(path)
    if cleaned != path:
        return Route("clean", cleaned)
    if path in routes:
        return Route("route", path)
    toggled = path[:-1] if path.endswith("/") else path + "/"
    if toggled in routes:
        return Route("slash", toggled)
    return Route("not-found", path)


def go_json(value: Any) -> bytes:
    """`value` as Go's json.Encoder writes it: compact, HTML-safe, UTF-8, ending in a newline.

    Dicts keep their order: sort the ones Go would write from a map.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    # Go escapes these inside strings (SetEscapeHTML is on by default; U+2028/9 break JavaScript).
    for char, escaped in (
        ("&", "\\u0026"),
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text.encode() + b"\n"


# Go's net/http sniffs the type of v2.7.2's answers: its handler sets Content-Type after WriteHeader,
# too late, so the header sent is what http.DetectContentType finds in a JSON text.
GO_SNIFFED_TEXT = "text/plain; charset=utf-8"
JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Answer:
    """One response: `status`, `message` and `data` as the original sends them, and statusek's code.

    `message` is the first README's ("Success" on success); v2.7.2 sends "" instead
    whenever status is true.
    """

    status: bool
    message: str
    data: dict[str, Any] = field(default_factory=dict)
    code: str = Code.SUCCESS
    http_status: int = 200

    def render(self, wire: Wire) -> tuple[bytes, str]:
        """The body and its content type in `wire`'s shape."""
        if wire is Wire.V2_7_2:
            body = {
                "status": self.status,
                "message": "" if self.status else self.message,
                # `data` is a Go map: json.Encoder writes its keys sorted.
                "data": dict(sorted(self.data.items())),
                "code": self.code,
            }
            return go_json(body), GO_SNIFFED_TEXT
        # The data keys also at the top level, where the first README's responses have them.
        readme = {"status": self.status, "message": self.message, "data": self.data, "code": self.code}
        return json.dumps({**readme, **self.data}).encode(), JSON
