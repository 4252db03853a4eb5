"""Conformance runs against the real API, workers and fake LLM: the official Agent Protocol Postman suite (newman,
from npm) and a property-based schemathesis run over the whole OpenAPI document.

The Postman collection is used as published, plus one collection-level pre-request script that adds the API key
(the suite itself sends none). ``make test`` installs newman into ``.tools/``; run alone, these tests skip without
it unless ``AUTOGPT_REQUIRE_TOOLS=1`` (set by ``make test``), where a missing tool fails them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import Gateway, cancel_unfinished
from tests.conftest import ARTIFACTS, REPO_ROOT

SUITE = Path(__file__).parent / "agent_protocol_spec" / "postman-suite-v1.offline.json"  # the official suite, vendored
OFFICIAL_SPEC = Path(__file__).parent / "agent_protocol_spec" / "openapi.yml"  # the protocol's own document, vendored
NEWMAN = REPO_ROOT / ".tools" / "node_modules" / ".bin" / "newman"
SCHEMATHESIS = Path(sys.executable).parent / "st"
ADD_KEY = [
    "pm.request.headers.upsert({key: 'Authorization', value: 'Bearer ' + pm.environment.get('api_key')});",
]


def _require(tool: Path, how: str) -> None:
    if tool.exists():
        return
    message = f"{tool} is missing: {how}"
    if os.environ.get("AUTOGPT_REQUIRE_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _with_key(collection: dict[str, Any]) -> dict[str, Any]:
    events = [e for e in collection.get("event", []) if e.get("listen") != "prerequest"]
    events.append({"listen": "prerequest", "script": {"type": "text/javascript", "exec": ADD_KEY}})
    return {**collection, "event": events}


@pytest.mark.timeout(600)
def test_the_official_postman_suite_passes(gateway: Gateway, tmp_path: Path) -> None:
    _require(NEWMAN, "run `make api-tools` (npm install --prefix .tools newman)")
    if not SUITE.exists():
        pytest.fail(f"the Agent Protocol suite is missing at {SUITE}")
    tenant = gateway.tenant("postman")
    collection = tmp_path / "suite.json"
    collection.write_text(json.dumps(_with_key(json.loads(SUITE.read_text()))))
    (tmp_path / "test_output.txt").write_text("Washington\n")  # the file the suite uploads
    report = tmp_path / "newman.json"
    run = subprocess.run(
        [
            str(NEWMAN),
            "run",
            str(collection),
            "--env-var",
            f"url={gateway.url}",
            "--env-var",
            f"api_key={tenant.key}",
            "--working-dir",
            str(tmp_path),
            "--timeout-request",
            "90000",
            "--reporters",
            "cli,json",
            "--reporter-json-export",
            str(report),
            "--color",
            "off",
            "--disable-unicode",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    (ARTIFACTS / "newman.txt").parent.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "newman.txt").write_text(run.stdout + run.stderr)
    result = json.loads(report.read_text())["run"]
    stats = result["stats"]
    failures = [(f["source"]["name"], f["error"]["message"]) for f in result["failures"]]
    assert run.returncode == 0 and not failures, f"{failures}\n{run.stdout[-4000:]}"
    assert stats["requests"]["total"] == 12 and stats["requests"]["failed"] == 0
    assert stats["assertions"]["total"] >= 20 and stats["assertions"]["failed"] == 0


@pytest.fixture
def short_waits(gateway: Gateway) -> Iterator[Gateway]:
    """schemathesis reuses the ids it is given back: bound the step wait and the event streams it may open on
    unfinished tasks, so the run takes a minute or two, not request timeouts."""
    gateway.restart(AUTOGPT_AP_STEP_WAIT_S="1", AUTOGPT_SSE_MAX_STREAM_S="2")
    try:
        yield gateway
    finally:
        gateway.restart()


ALL_CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"


def _schemathesis(
    gateway: Gateway, tmp_path: Path, schema: str, *extra: str, checks: str = ALL_CHECKS
) -> tuple[dict[str, Any], str]:
    """One property-based run (as a tenant whose tasks wait for its one running slot instead of flooding the
    workers; they are cancelled afterwards). Returns the JSON report and the terminal output."""
    _require(SCHEMATHESIS, "pip install -e '.[dev]' (schemathesis)")
    tenant = gateway.tenant("fuzz", rate_per_s=2000, rate_burst=4000, max_running=1)
    report = tmp_path / "schemathesis.json"
    run = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            schema,
            *extra,
            "-H",
            f"Authorization: Bearer {tenant.key}",
            "--checks",
            checks,
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "15",
            "--request-timeout",
            "30",
            "--workers",
            "2",
            "--seed",
            "20261125",
            "--report",
            "json",
            "--report-json-path",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
    )
    cancel_unfinished(gateway.db, tenant.id)
    if not report.exists():
        pytest.fail(f"schemathesis produced no report:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return json.loads(report.read_text()), run.stdout + run.stderr


# schemathesis's own generator sometimes trips over itself while drawing a test case, before any request is sent
# (hypothesis replaying a draw; Python's ast under two worker threads): the tool's errors, not findings about the API
TOOL_FLAKES = (
    "Inconsistent results: A test case failed on the first run",
    "AST constructor recursion depth mismatch",
)


def _assert_clean(result: dict[str, Any], output: str) -> None:
    """No check failed, and every error is one of the tool's own flakes: each error group is a "Runtime Error" (the
    tool's internal exceptions; what the server does wrong is a failed check, a network error or a timeout, and
    fails here) and the terminal's ERRORS section names at least as many flakes as there are errors. At least, not
    exactly: one flake's traceback may quote its message twice (seen: "AST constructor recursion depth mismatch")."""
    assert result["failures"] == [], output[-6000:]
    errors = sum(int(e.get("count", 1)) for e in result["errors"])
    if errors:
        listed = output.split("ERRORS", 1)[-1] if "ERRORS" in output else ""
        assert {e["title"] for e in result["errors"]} == {"Runtime Error"}, output[-6000:]
        assert sum(listed.count(flake) for flake in TOOL_FLAKES) >= errors, output[-6000:]


@pytest.mark.timeout(600)
def test_schemathesis_finds_no_server_error_and_no_schema_violation(short_waits: Gateway, tmp_path: Path) -> None:
    result, output = _schemathesis(short_waits, tmp_path, f"{short_waits.url}/openapi.json")
    (ARTIFACTS / "schemathesis.txt").write_text(output)
    _assert_clean(result, output)
    assert result["operations"]["tested"] >= 15 and result["test_cases"]["generated"] >= 300


@pytest.mark.timeout(600)
def test_agent_protocol_answers_conform_to_the_official_spec(short_waits: Gateway, tmp_path: Path) -> None:
    """The same run against the Agent Protocol's own openapi.yml (vendored, unedited): every answer the protocol
    documents has the shape the protocol's clients are promised, not only the shape our document says. Status codes
    are not checked here: the protocol's document lists none of what a secured, limited server must also answer
    (401, 413, 422 for an unsafe upload path, 429); our own document declares them (the run above)."""
    checks = "not_a_server_error,response_schema_conformance,content_type_conformance"
    result, output = _schemathesis(short_waits, tmp_path, str(OFFICIAL_SPEC), "--url", short_waits.url, checks=checks)
    (ARTIFACTS / "schemathesis-agent-protocol.txt").write_text(output)
    _assert_clean(result, output)
    assert result["operations"]["tested"] == 9 and result["test_cases"]["generated"] >= 100
