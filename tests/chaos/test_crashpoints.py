"""The test-only crash hook: parsed strictly, off by default, refused in production, journaled before it fires."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autogpt_workers.config import Settings
from autogpt_workers.crashpoints import CrashPoints, CrashRule, parse_rules
from autogpt_workers.errors import ConfigError


def test_rules_parse_and_bad_specs_are_refused_with_a_reason() -> None:
    assert parse_rules("llm:0.5, command:1:poison-pill:hang") == [
        CrashRule("llm", 0.5), CrashRule("command", 1.0, "poison-pill", "hang")
    ]
    for bad, why in (("later:0.5", "unknown window"), ("llm:often", "not a number"), ("llm:2", "between 0 and 1"),
                     ("llm", "<window>:<probability>"), ("llm:1::explode", "unknown action")):
        with pytest.raises(ValueError, match=why):
            parse_rules(bad)


def test_off_by_default_and_refused_in_production() -> None:
    assert not CrashPoints.from_spec(Settings().chaos_crash_at).rules
    with pytest.raises(ConfigError, match="production refuses AUTOGPT_CHAOS_CRASH_AT"):
        Settings(env="production", chaos_crash_at="llm:1", broker_url="amqp://u:p@h//",
                 database_url="postgresql+psycopg2://u:p@h/db", openai_api_key="k", flower_basic_auth="a:b")
    with pytest.raises(ConfigError, match="unknown window"):
        Settings(chaos_crash_at="sometime:1")


def _run_killed(script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a new Python process, which a crash rule must end with SIGKILL."""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ})
    assert done.returncode == -9, done.stderr
    return done


def test_a_matching_rule_journals_then_kills_its_process(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    script = textwrap.dedent(f"""
        from pathlib import Path
        from autogpt_workers.crashpoints import CrashPoints
        points = CrashPoints.from_spec("committed:1:victim", Path({str(journal)!r}))
        points.maybe("committed", task_id="t-other", step_index=1, phase="act", goal="bystander")
        print("survived the bystander", flush=True)
        points.maybe("committed", task_id="t-victim", step_index=2, phase="act", goal="the victim")
        print("not reached", flush=True)
    """)
    done = _run_killed(script)
    assert done.stdout.strip() == "survived the bystander"
    [record] = [json.loads(line) for line in journal.read_text().splitlines()]
    assert (record["window"], record["task_id"], record["step"], record["action"]) == (
        "committed", "t-victim", 2, "kill")


def test_no_rule_fires_before_the_worker_has_run_its_minimum_uptime(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from autogpt_workers.crashpoints import CrashPoints
        points = CrashPoints.from_spec("llm:1", Path({str(journal)!r}), min_uptime_s=0.5)
        points.maybe("llm", task_id="t-early", step_index=0, phase="think", goal="too early")
        print("survived while young", flush=True)
        time.sleep(0.6)
        points.maybe("llm", task_id="t-late", step_index=1, phase="think", goal="old enough")
        print("not reached", flush=True)
    """)
    done = _run_killed(script)
    assert done.stdout.strip() == "survived while young"
    [record] = [json.loads(line) for line in journal.read_text().splitlines()]
    assert record["task_id"] == "t-late"
