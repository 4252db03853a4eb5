"""``bench.ab``: the order of the runs, and the table of medians it prints."""

from __future__ import annotations

import pytest

from bench import ab


def test_each_round_runs_before_after_after_before() -> None:
    assert ab.plan(1) == ["before", "after", "after", "before"]
    assert ab.plan(2) == ["before", "after", "after", "before"] * 2


def test_every_numeric_value_of_every_figure_is_taken() -> None:
    results = {"figures": [
        {"key": "cpu", "values": {"steps_per_s": 250.0, "window_steps": 700, "host_busy": 0.98,
                                  "cpu_per_step_by_process_s": {"think": 0.002}, "rounds_steps_per_s": [1.0, 2.0]}},
        {"key": "submit_api", "values": {"rate": 800, "ok": True}},
        {"key": "peer", "values": {}},
    ]}  # fmt: skip
    assert ab.numbers(results) == {"cpu.steps_per_s": 250.0, "cpu.window_steps": 700.0, "cpu.host_busy": 0.98,
                                   "submit_api.rate": 800.0}


def test_the_table_gives_each_sides_median_and_their_ratio() -> None:
    runs = [("before", {"cpu.steps_per_s": 200.0, "only.before": 1.0}), ("after", {"cpu.steps_per_s": 260.0}),
            ("after", {"cpu.steps_per_s": 240.0}), ("before", {"cpu.steps_per_s": 220.0})]
    [row] = ab.summarize(runs)  # a number only one side reported is left out
    name, before, after, ratio, before_runs, after_runs = row
    assert (name, before, after) == ("cpu.steps_per_s", 210.0, 250.0)
    assert ratio == pytest.approx(250 / 210)
    assert (before_runs, after_runs) == ([200.0, 220.0], [260.0, 240.0])
    assert "| cpu.steps_per_s | 210 | 250 | 1.190 | 200, 220 | 260, 240 |" in ab.table([row])


def test_a_ref_that_names_no_commit_is_a_clear_message(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit, match=r"bench\.ab: git rev-parse"):
        ab.worktree("no-such-ref-anywhere", tmp_path)
