"""The chaos suite's trimmed run, inside ``make test``: random SIGKILLs of worker processes, RabbitMQ restarted
twice under load, and a poison step, on private PostgreSQL/RabbitMQ/Redis instances (so nothing else on the machine
is disturbed), with real API, worker and reaper processes. The aimed kills and the other scenarios run in
``make chaos``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chaos.__main__ import main


@pytest.mark.timeout(1500)
def test_the_trimmed_chaos_run_passes_every_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results_file = tmp_path / "results.json"
    main(["--trimmed", "--work-dir", str(tmp_path), "--json", str(results_file)])
    printed = capsys.readouterr().out
    results = json.loads(results_file.read_text())
    assert [r["scenario"] for r in results] == ["random-kill", "rabbitmq-restart", "poison"], printed
    for r in results:
        assert r["not_terminal"] == 0 and r["steps_lost"] == 0 and r["committed_twice"] == 0, printed
        assert r["missing"] == 0 and not r["unexpected"], printed
        assert r["faults"] > 0, printed
        # an LLM completion bought again only when the crash happened during that very call
        assert r["rebought"] == r["rebought_allowed"], printed
        assert all(c["ok"] for c in r["checks"]), printed
        assert r["passed"], printed
