"""What PostgreSQL cannot store of a client's JSON (``api_shim.storable``): found before anything is written."""

from __future__ import annotations

import json
from typing import Any

import pytest

from api_shim.storable import MAX_DEPTH, NON_FINITE, loads, plainly_storable, unstorable


def nested(levels: int) -> Any:
    value: Any = "leaf"
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("plain", None),
        ({"a": [1, 2.5, None, True, {"b": "c"}], "\ud55c\uae00": "\ud55c"}, None),  # Hangul is fine
        (10**30, None),  # jsonb's numeric takes it
        ("a\x00b", "contains a NUL character"),
        ({"k": ["x", {"y": "\ud800"}]}, "is not valid Unicode (unpaired surrogate)"),
        ({"lone \udc00 key": 1}, "is not valid Unicode (unpaired surrogate)"),  # a key, not only values
        ({"n": [float("nan")]}, NON_FINITE),
        ({"n": float("-inf")}, NON_FINITE),
        ((1.0, float("inf")), NON_FINITE),
        (nested(MAX_DEPTH), None),
        (nested(MAX_DEPTH + 1), f"is nested deeper than {MAX_DEPTH} levels"),
        (nested(50_000), f"is nested deeper than {MAX_DEPTH} levels"),  # no recursion to run out of
    ],
)
def test_unstorable_says_why(value: Any, why: str | None) -> None:
    assert unstorable(value) == why


def test_loads_refuses_numbers_json_cannot_carry_and_nesting_it_cannot_parse() -> None:
    assert loads(b'{"a": [1, 2.5, -3e10, 1e308], "b": 100000000000000000000000}') == {
        "a": [1, 2.5, -3e10, 1e308],
        "b": 10**23,
    }
    for body in (b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}', b'{"a": 1e400}', b'[-1.5e999]'):
        with pytest.raises(ValueError):
            loads(body)
    with pytest.raises(ValueError, match="nested too deep"):
        loads(b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize(
    ("body", "plain"),
    [
        (b'{"goal": "x", "metadata": {"a": [1, 2]}}', True),
        ('{"goal": "\ud55c"}'.encode(), False),  # 0xED lead byte: walked (it is storable, the walk says so)
        (b'{"goal": "\\u00e9"}', False),  # any escape is walked
        (b'{"goal": "\xed\xa0\x80"}', False),  # a raw surrogate
        (json.dumps({"goal": "x"}).encode("utf-16"), False),  # NUL bytes
        (json.dumps({"goal": "x", "m": nested(MAX_DEPTH - 1)}).encode(), True),
        (json.dumps({"goal": "x", "m": nested(MAX_DEPTH)}).encode(), False),  # one bracket too many to be sure
    ],
)
def test_plainly_storable_only_spares_the_walk_when_it_cannot_find_anything(body: bytes, plain: bool) -> None:
    assert plainly_storable(body) is plain
    if plain:  # what it spares, the walk confirms
        assert unstorable(loads(body)) is None
