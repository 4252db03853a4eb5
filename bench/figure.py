"""One row of the bench table: what was measured, its reference from the same run, the goal and the verdict."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

Verdict = Literal["pass", "miss", "n/a", "-"]


class Unavailable(RuntimeError):
    """A figure that cannot be measured here (e.g. a missing optional package): printed as n/a with the reason."""


@dataclasses.dataclass
class Figure:
    key: str  # stable id in results.json, e.g. "throughput_k200"
    title: str  # the table's first column
    measured: str = "n/a"
    reference: str = "-"
    goal: str = "-"
    verdict: Verdict = "n/a"
    values: dict[str, Any] = dataclasses.field(default_factory=dict)  # the raw numbers behind the strings
    note: str = ""  # why a figure is n/a, or a caveat

    @classmethod
    def unavailable(cls, key: str, title: str, reason: str, goal: str = "-") -> Figure:
        return cls(key=key, title=title, goal=goal, verdict="n/a", note=reason)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def judge(ok: bool | None) -> Verdict:
    """``pass``/``miss`` for a goal that applies, ``-`` where none does (``None``)."""
    if ok is None:
        return "-"
    return "pass" if ok else "miss"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"
