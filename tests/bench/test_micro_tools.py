"""The profiling aids run (tiny sizes): what they print is what the notes quote."""

from __future__ import annotations

import pytest

from bench import prompt_micro


def test_prompt_micro_prints_the_cpu_per_think(capsys: pytest.CaptureFixture[str]) -> None:
    prompt_micro.main(["--steps", "3", "--output-bytes", "100", "--rounds", "2"])
    assert capsys.readouterr().out.startswith("prompt of 3 steps x 100 B: ")
