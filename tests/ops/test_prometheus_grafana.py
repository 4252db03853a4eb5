"""Debian's Prometheus scrapes the running stack with the repository's scrape config and alert rules (targets
rewritten to this machine's free ports, scrape interval 1 s); the platform's series are read back through
Prometheus's HTTP API, and every metric the Grafana dashboard queries is one the stack exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ARTIFACTS, free_port
from tests.ops.conftest import FLOWER_AUTH, OpsStack
from tests.ops.helpers import families, scrape

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PROM_DIR = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "autogpt-workers.json"
INSTALL_HINT = "apt-get install -y prometheus; `make ops-tools` (part of make test) installs it"
# PromQL words that look like metric names but are functions, keywords or label names
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "by", "without", "histogram_quantile",
    "le", "clamp_min", "and", "or", "unless", "on", "ignoring", "group_left", "group_right", "topk", "bottomk",
    "abs", "time", "vector", "scalar", "offset", "bool",
}
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed ({INSTALL_HINT})")
    return path


def test_promtool_checks_the_rules_and_their_unit_tests() -> None:
    promtool = _binary("promtool")
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run([promtool, *args], cwd=PROM_DIR, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"


def _local_config(stack: OpsStack, tmp: Path) -> Path:
    """deploy/prometheus/prometheus.yml with each platform job pointed at this machine's processes."""
    from autogpt_workers.metrics_prometheus import local_config

    local = {
        "autogpt-api": stack.metrics_urls["api"],
        "autogpt-worker-think": stack.metrics_urls["worker-think"],
        "autogpt-worker-act": stack.metrics_urls["worker-act"],
        "autogpt-reaper": stack.metrics_urls["reaper"],
        "autogpt-dispatcher": stack.metrics_urls["dispatcher"],
        "flower": f"{stack.flower_url}/metrics",
    }
    path = local_config({job: url.split("/")[2] for job, url in local.items()}, tmp, FLOWER_AUTH, "1s")
    jobs = {j["job_name"] for j in yaml.safe_load(path.read_text())["scrape_configs"]}
    assert jobs == set(local), "every platform job of the scrape config is exercised"
    return path


@pytest.fixture(scope="module")
def prometheus(ops_stack: OpsStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = _binary("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    log = (ARTIFACTS / "logs" / "ops-prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={_local_config(ops_stack, tmp)}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail("prometheus did not become ready; see artifacts/logs/ops-prometheus.log")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _query(url: str, promql: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert resp["status"] == "success", resp
    result: list[dict[str, Any]] = resp["data"]["result"]
    return result


def _eventually(url: str, promql: str, minimum: float, timeout_s: float = 30) -> list[dict[str, Any]]:
    """The query's result once its first value reaches ``minimum`` (or whatever it is after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = _query(url, promql)
        if (result and float(result[0]["value"][1]) >= minimum) or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


@pytest.fixture(scope="module")
def workload(ops_stack: OpsStack, prometheus: str, fake_llm: str) -> list[str]:
    """Four 3-step tasks, and a 2-step one whose first LLM call is answered 429 once (a retry)."""
    from tests.fake_llm.client import FakeLLMControl

    FakeLLMControl(fake_llm).register_script(
        "prom-429",
        [
            {"tool": "write_file", "arguments": {"path": "a.txt", "content": "a"}, "faults": ["429"],
             "retry_after": 0.1},
            {"tool": "finish", "arguments": {"reason": "done"}},
        ],
    )
    ids = [ops_stack.submit(f"prometheus run {i} [[steps:3]]") for i in range(4)]
    ids.append(ops_stack.submit("retry once [[script:prom-429]]"))
    status = ops_stack.wait_terminal(ids)
    assert set(status.values()) == {"completed"}, status
    time.sleep(3)  # a few scrapes after the last step
    return ids


def test_prometheus_scrapes_every_platform_target(prometheus: str, workload: list[str]) -> None:
    jobs = {"autogpt-api", "autogpt-worker-think", "autogpt-worker-act", "autogpt-reaper", "autogpt-dispatcher",
            "flower"}
    deadline = time.monotonic() + 30
    while True:
        up = {r["metric"]["job"]: r["value"][1] for r in _query(prometheus, "up")}
        if all(up.get(j) == "1" for j in jobs) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {j: up.get(j) for j in jobs} == dict.fromkeys(jobs, "1")


@pytest.mark.parametrize(
    ("promql", "minimum"),
    [
        ('sum(autogpt_tasks_ended_total{status="completed"})', 4),
        ('sum(autogpt_task_completion_time_seconds_count{status="completed"})', 4),
        ('sum(autogpt_steps_total{phase="think",result="proposed"})', 12),
        ('sum(autogpt_steps_total{phase="act"})', 12),
        ('sum(autogpt_llm_tokens_total{model="scripted-demo"})', 1),
        ('sum(autogpt_llm_cost_usd_total)', 1e-9),
        ('sum(autogpt_queue_wait_seconds_count)', 24),
        # the series the operators' issue names: step duration and queue wait by phase
        ('sum(autogpt_step_duration_seconds_count{phase="think"})', 12),
        ('sum(autogpt_step_duration_seconds_count{phase="act"})', 12),
        ('sum(autogpt_queue_wait_seconds_count{phase="think"})', 12),
        ('sum(autogpt_queue_wait_seconds_count{phase="act"})', 12),
        # LLM latency, tokens and cost by model; retries by reason
        ('sum(autogpt_llm_latency_seconds_count{model="scripted-demo"})', 12),
        ('sum(autogpt_llm_tokens_total{model="scripted-demo",kind="prompt"})', 1),
        ('sum(autogpt_llm_tokens_total{model="scripted-demo",kind="completion"})', 1),
        ('sum(autogpt_llm_cost_usd_total{model="scripted-demo"})', 1e-9),
        ('sum(autogpt_llm_retries_total{reason="rate_limited"})', 1),
        ('sum(autogpt_errors_total{error_type="llm_rate_limited"})', 1),
        # reaper recoveries by kind (none on a healthy stack: both series exported at zero)
        ('count(autogpt_reaper_recoveries_total{kind=~"expired_lease|republished"})', 2),
        # queue depth and oldest-message age per queue, dead letters, outbox
        ('count(autogpt_queue_messages{queue=~"think|act|dead",state="ready"})', 3),
        ('count(autogpt_queue_messages{queue=~"think|act",state="unacked"})', 2),
        ('count(autogpt_queue_oldest_message_age_seconds{queue=~"think|act"})', 2),
        ("count(autogpt_outbox_pending)", 1),
        # dispatcher rounds, each loop
        ('sum(autogpt_dispatcher_rounds_total{loop="admission",result="ok"})', 1),
        ('sum(autogpt_dispatcher_rounds_total{loop="priority_refresh",result="ok"})', 1),
        ('sum(autogpt_dispatcher_rounds_total{loop="webhooks",result="ok"})', 1),
        ('sum(autogpt_api_requests_total{endpoint="/v1/tasks",method="POST",status="201"})', 4),
        ("sum(autogpt_reaper_rounds_total)", 1),
        ('max(autogpt_queue_consumers{queue="think"})', 1),
        ('max(autogpt_platform_up{source="broker"})', 1),
        ("count(autogpt_active_agents)", 1),
        ("count(autogpt_queue_oldest_message_age_seconds)", 1),
        ("count(autogpt_dead_letter_messages)", 1),
        ("count(autogpt_stuck_tasks)", 1),
        ("count(autogpt_outbox_lag_seconds)", 1),
        ("sum(flower_events_total)", 1),
    ],
)
def test_platform_series_read_back_from_prometheus(prometheus: str, workload: list[str], promql: str,
                                                   minimum: float) -> None:
    result = _eventually(prometheus, promql, minimum)
    assert result, f"{promql}: no data in Prometheus"
    assert float(result[0]["value"][1]) >= minimum, (promql, result)


def test_prometheus_loaded_the_alert_rules(prometheus: str, workload: list[str]) -> None:
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    names = {r["name"] for g in groups for r in g["rules"]}
    assert {"AutogptWorkerDown", "AutogptTaskFailureRatioHigh", "AutogptBacklogTooOld",
            "AutogptDeadLetterQueueNotEmpty", "AutogptStuckTasks", "AutogptBudgetBurnHigh",
            "AutogptDispatcherDown", "AutogptDispatcherStalled"} <= names
    unhealthy = [r["name"] for g in groups for r in g["rules"] if r.get("health") == "err"]
    assert not unhealthy, unhealthy
    # nothing is wrong with this healthy stack: no alert is firing
    firing = [a for a in httpx.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
              if a["state"] == "firing"]
    assert not firing, firing


def _dashboard_metrics() -> dict[str, set[str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    out: dict[str, set[str]] = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = re.sub(r"\{[^}]*\}", "", target["expr"])  # label matchers
            expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
            expr = re.sub(r"\b(by|without)\s*\([^)]*\)", "", expr)  # grouping labels
            names = {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if w not in PROMQL_WORDS}
            names = {n for n in names if not re.fullmatch(r"e\d*", n)}
            out.setdefault(panel["title"], set()).update(names)
    return out


def _family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_every_dashboard_panel_queries_series_the_stack_exports(ops_stack: OpsStack, workload: list[str],
                                                                prometheus: str) -> None:
    exported: set[str] = {"up"}  # Prometheus's own per-target series
    for url in ops_stack.metrics_urls.values():
        exported |= families(scrape(url))
    exported |= families(scrape(f"{ops_stack.flower_url}/metrics", auth=FLOWER_AUTH))
    panels = _dashboard_metrics()
    assert len(panels) >= 10
    missing = {title: sorted(n for n in names if _family(n) not in exported and n not in exported)
               for title, names in panels.items()}
    missing = {t: m for t, m in missing.items() if m}
    assert not missing, f"dashboard panels query series nobody exports: {missing}"
    # and each panel's query returns data in Prometheus (except those whose series need an incident)
    quiet = {"LLM retries / s by reason", "Reaper recoveries / s"}
    dashboard = json.loads(DASHBOARD.read_text())
    empty = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row" or panel["title"] in quiet:
            continue
        if not any(_query(prometheus, t["expr"]) for t in panel["targets"]):
            empty.append(panel["title"])
    assert not empty, f"panels with no data after a run: {empty}"
