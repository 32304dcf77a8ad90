"""The gateway's Go dialect without I/O: bodies read as encoding/json reads them, paths as gorilla/mux
routes them, answers written as Go's json.Encoder writes them."""

from __future__ import annotations

import json

import pytest

from statusek.gateway.wire import (
    GO_SNIFFED_TEXT,
    Answer,
    Params,
    ParamsError,
    decode_params,
    field_for,
    go_clean,
    go_json,
    mux_clean,
    route_for,
)
from statusek.settings import Wire

# Decoding, as json.NewDecoder(r.Body).Decode(&params)


def test_keys_match_fields_whatever_their_case() -> None:
    """Go matches `OBJECT_NAME` and `Instance_Timeout` to object_name and instance_timeout."""
    params = decode_params(b'{"OBJECT_NAME": "TASK", "Instance_Timeout": 600}')
    assert params == Params(object_name="TASK", instance_timeout=600)


def test_the_long_s_and_the_kelvin_sign_fold_as_in_go() -> None:
    """Go's case folding maps U+017F to s and U+212A to k; other non-ASCII letters match nothing."""
    assert field_for("\u017ftatus_name") == "status_name"
    assert field_for("instance_to\u212aen") == "instance_token"
    assert field_for("\u0130nstance_token") is None


def test_text_after_the_first_value_is_ignored() -> None:
    """Only the first JSON value is read: trailing text, even not JSON, does not matter."""
    assert decode_params(b'{"object_name": "TASK"} trailing {not json').object_name == "TASK"


def test_a_second_object_is_not_read() -> None:
    """Two objects back to back: the first one counts."""
    assert decode_params(b'{"object_name": "A"}{"object_name": "B"}').object_name == "A"


def test_leading_json_whitespace_is_skipped() -> None:
    """Spaces, tabs and line breaks before the value are skipped, as Go's scanner does."""
    assert decode_params(b' \t\r\n{"object_name": "TASK"}').object_name == "TASK"


def test_a_later_duplicate_key_wins() -> None:
    """Keys are applied in order: the last value of a field is kept, case aside."""
    assert decode_params(b'{"object_name": "A", "OBJECT_NAME": "B"}').object_name == "B"


def test_null_leaves_a_field_as_it_was() -> None:
    """A null value does not unset a field an earlier key set."""
    assert decode_params(b'{"object_name": "A", "object_name": null}').object_name == "A"


def test_a_null_body_is_no_parameters() -> None:
    """`null` decodes into nothing, as Go leaves the struct's zero values."""
    assert decode_params(b"null") == Params()


def test_unknown_keys_are_ignored() -> None:
    """Keys that name no field, with any value, are skipped."""
    assert decode_params(b'{"object_name": "A", "priority": {"x": [1, 2.5]}}') == Params(object_name="A")


def test_an_empty_body_is_an_error() -> None:
    """Nothing to decode: Go's io.EOF, said plainly."""
    with pytest.raises(ParamsError, match="the body is empty"):
        decode_params(b" \n")


def test_a_broken_first_value_is_an_error_naming_where() -> None:
    """Invalid JSON in the first value is refused with the position."""
    with pytest.raises(ParamsError, match=r"^the body is not JSON \(.* at line 1 column \d+\)$"):
        decode_params(b'{"object_name": ')


def test_a_body_that_is_not_an_object_is_an_error() -> None:
    """An array (or a string, a number) cannot be the parameters."""
    with pytest.raises(ParamsError, match="not a JSON object"):
        decode_params(b'["object_name"]')


def test_an_integer_field_refuses_a_string() -> None:
    """instance_timeout is a Go int: "600" does not decode."""
    with pytest.raises(ParamsError, match="'instance_timeout' must be an integer"):
        decode_params(b'{"instance_timeout": "600"}')


@pytest.mark.parametrize("literal", [b"600.0", b"6e2", b"true"])
def test_an_integer_field_refuses_fractions_exponents_and_booleans(literal: bytes) -> None:
    """Go's int takes only an integer literal: 600.0 and 6e2 are refused, as is true."""
    with pytest.raises(ParamsError, match="'instance_timeout' must be an integer"):
        decode_params(b'{"instance_timeout": ' + literal + b"}")


def test_an_integer_field_refuses_numbers_beyond_64_bits() -> None:
    """2**63 does not fit a Go int."""
    with pytest.raises(ParamsError, match="'instance_timeout' is out of range"):
        decode_params(b'{"instance_timeout": 9223372036854775808}')


def test_a_negative_integer_decodes() -> None:
    """Go accepts -5 (the gateway then uses the model's timeout)."""
    assert decode_params(b'{"instance_timeout": -5}').instance_timeout == -5


def test_a_string_field_refuses_a_number() -> None:
    """object_name is a Go string: 5 does not decode."""
    with pytest.raises(ParamsError, match="'object_name' must be a string"):
        decode_params(b'{"object_name": 5}')


def test_nan_is_not_json() -> None:
    """NaN is refused, as Go's scanner refuses it."""
    with pytest.raises(ParamsError, match="not JSON"):
        decode_params(b'{"instance_timeout": NaN}')


def test_a_lone_surrogate_escape_becomes_the_replacement_character() -> None:
    """Go decodes "\\ud800" as U+FFFD; it must not reach a reply as a lone surrogate."""
    assert decode_params(b'{"object_name": "a\\ud800b"}').object_name == "a\ufffdb"


def test_invalid_utf8_in_a_string_becomes_the_replacement_character() -> None:
    """Bytes that are not UTF-8 inside a string are U+FFFD, as in Go."""
    assert decode_params(b'{"object_name": "a\xffb"}').object_name == "a\ufffdb"


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    """A body nested deeper than Python's parser goes is refused, not a 500."""
    with pytest.raises(ParamsError, match="not JSON"):
        decode_params(b"[" * 60_000)


def test_a_required_field_missing_or_empty_is_named() -> None:
    """Unlike Go (which went on with ""), a missing required field is refused by name."""
    with pytest.raises(ParamsError, match="'status_name' is required"):
        decode_params(b'{"instance_token": "t", "status_name": ""}', ("instance_token", "status_name"))


# Paths, as gorilla/mux with StrictSlash(true)

ROUTES = frozenset({"/", "/about", "/instance/create"})


@pytest.mark.parametrize(
    ("path", "cleaned"),
    [("", "."), ("/", "/"), ("//a//b", "/a/b"), ("/a/./b/..", "/a"), ("/..", "/"), ("a/../../b", "../b")],
)
def test_go_clean(path: str, cleaned: str) -> None:
    """Go's path.Clean: slashes merged, dots resolved, nothing above the root."""
    assert go_clean(path) == cleaned


def test_mux_clean_keeps_a_trailing_slash() -> None:
    """gorilla/mux puts back the trailing slash path.Clean removes."""
    assert mux_clean("/a/../about/") == "/about/"


def test_a_route_is_a_route() -> None:
    """An exact path is its route."""
    assert route_for("/about", ROUTES).kind == "route"


def test_a_trailing_slash_redirects_to_the_route() -> None:
    """StrictSlash(true): /about/ redirects to /about."""
    target = route_for("/about/", ROUTES)
    assert (target.kind, target.path) == ("slash", "/about")


def test_an_unclean_path_redirects_to_its_clean_form_first() -> None:
    """//about and /x/../about are redirected to /about before any route is matched."""
    assert route_for("//about", ROUTES).path == "/about"
    assert route_for("/x/../about", ROUTES).kind == "clean"


def test_an_unknown_path_is_not_found() -> None:
    """Neither a route nor a route with a slash toggled: not found; paths are case-sensitive."""
    assert route_for("/About", ROUTES).kind == "not-found"
    assert route_for("/instance/getInfo/", ROUTES).kind == "not-found"


# Answers


def test_go_json_is_compact_html_safe_utf8_with_a_newline() -> None:
    """As json.Encoder: no spaces, <>& escaped, non-ASCII as UTF-8, a newline at the end."""
    assert go_json({"m": "<a & b> é \u2028"}) == '{"m":"\\u003ca \\u0026 b\\u003e é \\u2028"}\n'.encode()


def test_v2_7_2_answer_has_v2_7_2_keys_sorted_data_and_empty_message() -> None:
    """v2.7.2: status, message "" on success, data's keys sorted (a Go map), then statusek's code."""
    data = {"status_is_ready_to_set_description": "", "status_is_ready_to_set": True}
    answer = Answer(True, "Success", data)
    body, content_type = answer.render(Wire.V2_7_2)
    assert body == (
        b'{"status":true,"message":"","data":{"status_is_ready_to_set":true,'
        b'"status_is_ready_to_set_description":""},"code":"SUCCESS"}\n'
    )
    assert content_type == GO_SNIFFED_TEXT


def test_v2_7_2_failure_keeps_its_message_and_empty_data() -> None:
    """A refusal: status false, the message, data {}."""
    body, _ = Answer(False, "ERROR: Object name 'X' is not found", code="OBJECT_NAME_IS_NOT_FOUND").render(
        Wire.V2_7_2
    )
    assert json.loads(body) == {
        "status": False,
        "message": "ERROR: Object name 'X' is not found",
        "data": {},
        "code": "OBJECT_NAME_IS_NOT_FOUND",
    }


def test_readme_answer_repeats_data_keys_at_the_top_level() -> None:
    """readme: "Success", and instance_token both in data and beside status, as application/json."""
    body, content_type = Answer(True, "Success", {"instance_token": "t"}).render(Wire.README)
    assert json.loads(body) == {
        "status": True,
        "message": "Success",
        "data": {"instance_token": "t"},
        "code": "SUCCESS",
        "instance_token": "t",
    }
    assert content_type == "application/json"
