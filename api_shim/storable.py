"""What PostgreSQL cannot store of a client's JSON, found before anything is written: a NUL or an unpaired surrogate
in a string (``text`` and ``jsonb`` refuse both), a number JSON cannot carry (NaN, Infinity, or a float past the
double range, which Python reads as infinite; ``jsonb`` refuses them, and a 422 that echoes one cannot be rendered),
and nesting deeper than ``MAX_DEPTH`` (pydantic's serializer refuses to answer it).

Each of these once reached the database and came back as a 503 ("the task store is unavailable"), or failed the
error's own rendering as a 500: a client's mistake must be its clear 422.
"""

from __future__ import annotations

import json
import math
from typing import Any

# objects and arrays within one value; pydantic's serializer stops at about 250 levels (a 500 once), and no task's
# metadata or arguments need more than a few
MAX_DEPTH = 64
NON_FINITE = "holds a number JSON cannot carry (NaN, Infinity or out of range)"


def unstorable(value: Any) -> str | None:
    """Why PostgreSQL could not store this JSON value (or the platform answer it: past ``MAX_DEPTH``), or None.
    Walks without recursion."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "contains a NUL character"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "is not valid Unicode (unpaired surrogate)"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return NON_FINITE
        elif isinstance(item, (dict, list, tuple)):
            if depth == MAX_DEPTH:
                return f"is nested deeper than {MAX_DEPTH} levels"
            inner = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((each, depth + 1) for each in inner)
    return None


def plainly_storable(body: bytes) -> bool:
    """Whether every value ``loads`` parses from these bytes is storable without walking them (``unstorable``):
    - no NUL or unpaired surrogate: in UTF-8 text only a ``\\u`` escape makes either, or a surrogate's own three
      bytes (``json.loads`` lets them through; they start with 0xED, as do some Hangul syllables, which take the
      walk); a NUL byte (UTF-16 or UTF-32 text, which hides the escapes' bytes) takes the walk too;
    - no nesting past ``MAX_DEPTH``: no more opening brackets than that in all (those in strings count too);
    - numbers: ``loads`` refuses those JSON cannot carry."""
    if b"\\u" in body or b"\xed" in body or b"\x00" in body:
        return False
    return body.count(b"{") + body.count(b"[") <= MAX_DEPTH


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text[:40]} is out of a double's range")
    return number


def loads(body: bytes) -> Any:
    """``json.loads``, but NaN, Infinity and floats past a double's range are a ``ValueError``, as is nesting past
    the interpreter's recursion limit (``json.loads``' own ``RecursionError``)."""
    try:
        return json.loads(body, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise ValueError("the JSON is nested too deep") from exc
