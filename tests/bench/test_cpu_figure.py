"""The CPU figure is the median of its rounds, with every round beside it."""

from __future__ import annotations

import dataclasses

import pytest

from bench.cpu import CpuResult, cpu_figure, median_round
from bench.rabbit import PublishCounts


def _round(window_s: float, cpu_s: float) -> CpuResult:
    return CpuResult(
        tasks=50, steps_total=1000, window_steps=700, window_s=window_s, platform_cpu_s=cpu_s,
        by_process_cpu_s={"think": cpu_s}, infra_cpu_s={"postgres": 1.0}, host_busy=0.98, commits=3000,
        rollbacks=60, sessions=43, harness_statements=200, published=PublishCounts(950, {"": 950}), settled=True,
    )  # fmt: skip


def test_the_median_round_is_the_figure() -> None:
    slow, mid, fast = _round(3.5, 3.6), _round(2.8, 3.2), _round(2.0, 3.0)  # 200, 250, 350 steps/s
    fig = cpu_figure([fast, slow, mid], None, "not measured")
    assert median_round([fast, slow, mid]) is mid
    assert fig.values["steps_per_s"] == mid.steps_per_s == pytest.approx(250)
    assert fig.measured.startswith("250 steps/s")
    assert fig.verdict == "miss"  # the fast round alone would pass
    assert fig.values["rounds_steps_per_s"] == pytest.approx([350, 200, 250])
    assert fig.note.startswith("median of 3 rounds (steps/s: 350, 200, 250; CPU/step: ")


def test_of_an_even_count_the_lower_middle_round_and_one_round_is_its_own_median() -> None:
    a, b = _round(2.0, 3.0), _round(3.5, 3.0)
    assert median_round([a, b]) is b
    one = dataclasses.replace(a)
    fig = cpu_figure([one], None, "")
    assert fig.values["rounds_steps_per_s"] == pytest.approx([350]) and not fig.note.startswith("median")
