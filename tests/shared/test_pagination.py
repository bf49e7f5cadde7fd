"""Page sizes and page tokens shared by every list RPC."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from shared.errors import InvalidArgument
from shared.pagination import (
    _digest,
    decode_page_token,
    encode_page_token,
    integer_position,
    page_size,
    text_position,
)


def _pair(position: Any) -> tuple[int, str]:
    number, text = position
    if not isinstance(number, int) or not isinstance(text, str):
        raise TypeError("wrong shape")
    return number, text


def test_page_token_round_trips_its_position() -> None:
    token = encode_page_token([7, "b"], kind="keys", filters={"prefix": "a/"})

    position = decode_page_token(token, _pair, kind="keys", filters={"prefix": "a/"})

    assert position == (7, "b")


def test_empty_page_token_means_the_first_page() -> None:
    assert decode_page_token("", _pair, kind="keys") is None


def test_page_token_is_refused_for_other_filters_or_listing() -> None:
    token = encode_page_token([7, "b"], kind="keys", filters=["a/", True])

    for kind, filters in [("keys", ["a/", False]), ("other", ["a/", True])]:
        with pytest.raises(InvalidArgument) as caught:
            decode_page_token(token, _pair, kind=kind, filters=filters)
        assert caught.value.field == "page_token"
        assert caught.value.reason == "INVALID_PAGE_TOKEN"


def test_filters_compare_as_json_so_tuples_match_lists() -> None:
    token = encode_page_token(1, kind="k", filters=("a", 2))

    assert decode_page_token(token, int, kind="k", filters=("a", 2)) == 1


def test_edited_page_token_is_refused() -> None:
    token = encode_page_token([7, "b"], kind="keys")
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[raw.rindex(b"7")] = ord("6")  # still valid JSON: only the digest tells

    edited = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(edited, _pair, kind="keys")
    assert caught.value.reason == "INVALID_PAGE_TOKEN"


@pytest.mark.parametrize("token", ["!!", "%%%", "nonsense", "e30", "a" * 40])
def test_garbage_page_token_is_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(token, _pair, kind="keys")
    assert caught.value.field == "page_token"


def test_position_of_the_wrong_shape_is_invalid_argument() -> None:
    token = encode_page_token("not a pair", kind="keys")

    with pytest.raises(InvalidArgument):
        decode_page_token(token, _pair, kind="keys")


def test_page_size_defaults_and_coerces_to_the_maximum() -> None:
    assert page_size(0, default=50, maximum=500) == 50
    assert page_size(20, default=50, maximum=500) == 20
    assert page_size(10_000, default=50, maximum=500) == 500


def test_page_size_over_the_maximum_can_be_refused() -> None:
    assert page_size(1000, default=100, maximum=1000, over_maximum="reject") == 1000
    with pytest.raises(InvalidArgument) as caught:
        page_size(1001, default=100, maximum=1000, over_maximum="reject")
    assert caught.value.field == "page_size"
    assert caught.value.reason == "INVALID_PAGE_SIZE"


def test_negative_page_size_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument) as caught:
        page_size(-1, default=50, maximum=500)
    assert caught.value.field == "page_size"


def test_single_value_positions_refuse_other_types() -> None:
    for position, read in [(5, text_position), ("5", integer_position)]:
        token = encode_page_token(position, kind="k")
        with pytest.raises(InvalidArgument):
            decode_page_token(token, read, kind="k")
    assert decode_page_token(encode_page_token("a", kind="k"), text_position, kind="k")
    assert decode_page_token(encode_page_token(3, kind="k"), integer_position, kind="k")


def test_forged_token_of_deeply_nested_json_is_invalid_not_internal() -> None:
    document = b"[" * 100_000 + b"]" * 100_000
    token = base64.urlsafe_b64encode(_digest(document) + document).decode()

    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(token, _pair, kind="keys")

    assert caught.value.field == "page_token"


def test_forged_token_with_an_infinite_position_is_invalid_not_internal() -> None:
    document = b'{"k":"keys","f":null,"p":Infinity}'
    token = base64.urlsafe_b64encode(_digest(document) + document).decode()

    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(token, int, kind="keys")

    assert caught.value.field == "page_token"
