"""Offline checks of the deployment files: docker-compose.yml, deploy/k8s/*.yaml, deploy/docker/Dockerfile.*.

Nothing here needs a Docker engine or a cluster:
- the compose file is validated by Debian's ``docker-compose config -q`` (skipped only if the binary is absent);
- every Kubernetes manifest is validated against the Kubernetes OpenAPI schemas by ``kubernetes-validate``;
- the design rules (health checks, start order, shutdown grace above the step time limits, secrets by
  reference) are asserted on the parsed files.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from autogpt_workers.config import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
K8S_DIR = REPO / "deploy" / "k8s"
DOCKER_DIR = REPO / "deploy" / "docker"
K8S_FILES = sorted(K8S_DIR.glob("*.yaml"))

# The step time limits the shutdown grace periods must exceed (the settings' defaults).
THINK_LIMIT_S = float(Settings.model_fields["think_time_limit_s"].default)
ACT_LIMIT_S = float(Settings.model_fields["act_time_limit_s"].default)

INFRA_SERVICES = {"rabbitmq", "postgres", "redis", "weaviate"}
OBSERVABILITY_SERVICES = {"prometheus", "grafana"}
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
GRAFANA_DIR = REPO / "deploy" / "grafana"
APP_SERVICES = {"migrate", "api", "worker-think", "worker-act", "reaper", "dispatcher", "flower"}
WORKER_LIMITS = {"worker-think": THINK_LIMIT_S, "worker-act": ACT_LIMIT_S}
# API groups of custom resources whose schemas kubernetes-validate does not ship (validated elsewhere).
CRD_GROUPS = {"keda.sh"}
SECRET_NAME = "autogpt-workers-secrets"


def parse_duration_s(value: str | int | float) -> float:
    """A compose duration ("660s", "1m30s", "1h", 90) in seconds."""
    if isinstance(value, int | float):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", value.strip())
    if not parts or "".join(n + u for n, u in parts) != value.strip():
        raise ValueError(f"not a compose duration: {value!r}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    docs: list[tuple[str, dict[str, Any]]] = []
    for path in K8S_FILES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc.get("kind") in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        spec: dict[str, Any] = doc["spec"]["template"]["spec"]
        return spec
    return None


def by_component(component: str) -> dict[str, Any]:
    for _, doc in k8s_docs():
        labels = doc.get("metadata", {}).get("labels", {})
        if doc.get("kind") == "Deployment" and labels.get("app.kubernetes.io/component") == component:
            return doc
    raise AssertionError(f"no Deployment with component label {component!r} in deploy/k8s")


# ----------------------------------------------------------------------------------------- compose


def test_docker_compose_config_is_valid() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (apt-get install -y docker-compose); .ci/run installs it")
    proc = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"docker-compose config -q failed:\n{proc.stdout}\n{proc.stderr}"


def test_compose_has_the_designed_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == INFRA_SERVICES | APP_SERVICES | OBSERVABILITY_SERVICES


def test_compose_infra_services_have_healthchecks(compose: dict[str, Any]) -> None:
    for name in INFRA_SERVICES:
        check = compose["services"][name].get("healthcheck")
        assert check and check.get("test"), f"{name} needs a healthcheck (app services wait for it)"


def test_compose_app_services_start_in_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in APP_SERVICES:
        deps = services[name].get("depends_on")
        assert isinstance(deps, dict) and deps, f"{name}: depends_on must be a mapping with conditions"
        for dep, cond in deps.items():
            expected = "service_completed_successfully" if dep == "migrate" else "service_healthy"
            assert cond.get("condition") == expected, f"{name} -> {dep}: condition should be {expected}"
            if expected == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep}, which has no healthcheck"
    # the database must be migrated before anything that uses it starts
    for name in ("api", "worker-think", "worker-act", "reaper", "dispatcher"):
        assert "migrate" in services[name]["depends_on"], f"{name} must wait for migrate"
    assert "postgres" in services["migrate"]["depends_on"]
    assert services["migrate"].get("restart", "no") == "no"


def test_compose_workers_wait_for_weaviate(compose: dict[str, Any]) -> None:
    """The workers build long-term memory at start (the compose default is Weaviate): they wait until it is ready."""
    services = compose["services"]
    assert services["worker-think"]["environment"]["AUTOGPT_MEMORY_BACKEND"].endswith(":-weaviate}")
    for name in ("worker-think", "worker-act"):
        deps = services[name]["depends_on"]
        assert deps["weaviate"] == {"condition": "service_healthy"}, f"{name} must wait for a healthy weaviate"
        assert {"migrate", "postgres", "rabbitmq", "redis"} <= set(deps), f"{name} lost its other dependencies"


def test_compose_serving_services_have_healthchecks(compose: dict[str, Any]) -> None:
    assert "/healthz" in str(compose["services"]["api"]["healthcheck"]["test"])
    assert "/healthcheck" in str(compose["services"]["flower"]["healthcheck"]["test"])


@pytest.mark.parametrize("name", sorted(WORKER_LIMITS))
def test_compose_worker_grace_exceeds_step_time_limit(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    assert service.get("stop_signal", "SIGTERM") == "SIGTERM", "SIGTERM is Celery's warm shutdown"
    grace = parse_duration_s(service["stop_grace_period"])
    limit = WORKER_LIMITS[name]
    assert grace > limit, f"{name}: stop_grace_period {grace:.0f}s must exceed the step time limit {limit:.0f}s"


def test_compose_app_env_points_at_compose_services(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        env = compose["services"][name].get("environment")
        assert isinstance(env, dict), f"{name}: environment must be a mapping"
        assert "@postgres:5432/" in env["AUTOGPT_DATABASE_URL"], name
        assert "@rabbitmq:5672/" in env["AUTOGPT_BROKER_URL"], name
        assert env["AUTOGPT_REDIS_URL"].startswith("redis://redis:6379/"), name


def _substitute(value: str, shell: dict[str, str]) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR}`` interpolation, from ``shell``."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: shell.get(m.group(1), m.group(2) or ""), value)


def _production_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    import os

    for name in list(os.environ):
        if name.startswith(("AUTOGPT_", "OPENAI_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_compose_env_passes_production_settings_once_its_secrets_are_set(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from autogpt_workers.errors import ConfigError

    shell = {"AUTOGPT_ENV": "production", "POSTGRES_PASSWORD": "pg-7f3a9", "RABBITMQ_PASSWORD": "mq-2b8c1",
             "AUTOGPT_FLOWER_BASIC_AUTH": "ops:fl-9d4e2"}
    for name in APP_SERVICES:
        raw = compose["services"][name]["environment"]
        env = {k: _substitute(str(v), shell) for k, v in raw.items() if v is not None}
        env["OPENAI_API_KEY"] = "sk-test"
        assert _production_settings(env, monkeypatch).env == "production", name
    # the development defaults (Flower's admin:change-me) are refused if AUTOGPT_ENV=production is all one sets
    raw = compose["services"]["api"]["environment"]
    env = {k: _substitute(str(v), {"AUTOGPT_ENV": "production"}) for k, v in raw.items() if v is not None}
    with pytest.raises(ConfigError, match="default Flower credentials"):
        _production_settings({**env, "OPENAI_API_KEY": "sk-test"}, monkeypatch)


def test_k8s_secret_example_passes_production_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Secret the ConfigMap's comment tells operators to create, with real passwords, passes the production
    checks together with the ConfigMap; with its PASSWORD placeholders left in, it is refused."""
    from autogpt_workers.errors import ConfigError

    text = (K8S_DIR / "01-configmap.yaml").read_text()
    literals = dict(re.findall(r"--from-literal=([\w-]+)='([^']*)'", text))
    assert {"database-url", "broker-url", "flower-basic-auth", "openai-api-key"} <= set(literals)
    config = next(doc for _, doc in k8s_docs() if doc.get("kind") == "ConfigMap")["data"]
    names = {"database-url": "AUTOGPT_DATABASE_URL", "broker-url": "AUTOGPT_BROKER_URL",
             "redis-url": "AUTOGPT_REDIS_URL", "openai-api-key": "OPENAI_API_KEY",
             "flower-basic-auth": "AUTOGPT_FLOWER_BASIC_AUTH"}
    secret = {names[k]: v.replace("PASSWORD", "Xy7-q2w9") for k, v in literals.items()}
    assert _production_settings({**config, **secret}, monkeypatch).env == "production"
    placeholders = {names[k]: v for k, v in literals.items()}
    with pytest.raises(ConfigError, match="default Flower credentials"):
        _production_settings({**config, **placeholders}, monkeypatch)


def test_compose_observability_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in OBSERVABILITY_SERVICES:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} needs a healthcheck"
        for dep, cond in services[name]["depends_on"].items():
            assert cond["condition"] == "service_healthy" and services[dep].get("healthcheck"), f"{name} -> {dep}"
    prom = services["prometheus"]
    assert any(v.startswith("./deploy/prometheus:/etc/prometheus") for v in prom["volumes"])
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    grafana = services["grafana"]
    assert any(v.startswith("./deploy/grafana/provisioning:/etc/grafana/provisioning") for v in grafana["volumes"])
    assert any(v.startswith("./deploy/grafana/dashboards:") for v in grafana["volumes"])
    # the secret Prometheus scrapes Flower with exists, and is the password of the compose default credentials
    secret = REPO / compose["secrets"]["flower-password"]["file"]
    default_auth = re.search(r"AUTOGPT_FLOWER_BASIC_AUTH:-([^}]+)}", COMPOSE_FILE.read_text())
    assert default_auth and secret.read_text().strip() == default_auth.group(1).split(":", 1)[1]


def test_compose_metrics_ports_match_the_scrape_config(compose: dict[str, Any]) -> None:
    """Every job of deploy/prometheus/prometheus.yml names a compose service serving /metrics on that port."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    services = compose["services"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for name in ("worker-think", "worker-act", "reaper", "dispatcher"):
        env = services[name]["environment"]
        assert env["AUTOGPT_METRICS_PORT"] == "9100" and env["AUTOGPT_METRICS_HOST"] == "0.0.0.0", name
        (sd,) = jobs[f"autogpt-{name}"]["dns_sd_configs"]
        assert sd["names"] == [name] and sd["port"] == 9100
        assert "127.0.0.1:9100/metrics" in str(services[name]["healthcheck"]["test"]), name
    (sd,) = jobs["autogpt-api"]["dns_sd_configs"]
    assert sd["names"] == ["api"] and sd["port"] == 8000
    assert jobs["flower"]["static_configs"][0]["targets"] == ["flower:5555"]
    assert jobs["flower"]["basic_auth"]["password_file"] == "/run/secrets/flower-password"
    assert services["flower"]["command"][-2:] == ["--address", "0.0.0.0"], "reachable from the other containers"
    assert config["rule_files"] == ["alerts.yml"] and (PROMETHEUS_DIR / "alerts.yml").is_file()


def test_parse_duration() -> None:
    assert parse_duration_s("660s") == 660
    assert parse_duration_s("1m30s") == 90
    assert parse_duration_s(45) == 45
    with pytest.raises(ValueError):
        parse_duration_s("ten minutes")


# -------------------------------------------------------------------------------------- kubernetes


def test_k8s_manifests_exist() -> None:
    assert K8S_FILES, "deploy/k8s/*.yaml is empty"


@pytest.mark.parametrize("path", K8S_FILES, ids=[p.name for p in K8S_FILES])
def test_k8s_manifest_is_valid(path: Path) -> None:
    kv = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (it belongs in the dev extra)"
    )
    version = kv.latest_version()
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs, f"{path.name} holds no resource"
    for doc in docs:
        kind = f"{doc.get('apiVersion')}/{doc.get('kind')}"
        try:
            kv.validate(doc, version, strict=True)
        except kv.SchemaNotFoundError:
            group = str(doc.get("apiVersion", "")).split("/")[0]
            if group in CRD_GROUPS:
                continue  # custom resource: kubernetes-validate has no schema for it
            pytest.fail(f"{path.name}: no Kubernetes {version} schema for {kind}")
        except kv.ValidationError as e:
            pytest.fail(f"{path.name}: {kind} {doc['metadata'].get('name')} is invalid: {e.message}")


def test_k8s_everything_in_one_namespace_and_no_embedded_secret() -> None:
    for filename, doc in k8s_docs():
        assert doc.get("kind") != "Secret", f"{filename}: secrets are referenced by name, never embedded"
        if doc.get("kind") != "Namespace":
            assert doc["metadata"].get("namespace") == "autogpt-workers", f"{filename}: {doc['metadata']['name']}"


def test_k8s_secrets_only_by_reference() -> None:
    for filename, doc in k8s_docs():
        spec = pod_spec(doc)
        if spec is None:
            continue
        for container in spec["containers"]:
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if var["name"] in {"AUTOGPT_DATABASE_URL", "AUTOGPT_BROKER_URL", "OPENAI_API_KEY"}:
                    assert ref, f"{filename}: {var['name']} must come from a secretKeyRef"
                if ref:
                    assert ref["name"] == SECRET_NAME, f"{filename}: unexpected secret {ref['name']}"
                assert "value" not in var or "://" not in str(var["value"]), f"{filename}: URL inline"


@pytest.mark.parametrize("component", sorted(WORKER_LIMITS))
def test_k8s_worker_grace_exceeds_step_time_limit(component: str) -> None:
    spec = by_component(component)["spec"]["template"]["spec"]
    grace = float(spec["terminationGracePeriodSeconds"])
    limit = WORKER_LIMITS[component]
    assert grace > limit, f"{component}: terminationGracePeriodSeconds {grace:.0f} must exceed {limit:.0f}s"
    assert "--queue" in spec["containers"][0]["command"]


@pytest.mark.parametrize("component", ["worker-think", "worker-act", "reaper", "dispatcher"])
def test_k8s_worker_groups_serve_metrics_with_probes(component: str) -> None:
    pod = by_component(component)["spec"]["template"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {v["name"]: v.get("value") for v in container["env"]}
    assert env["AUTOGPT_METRICS_PORT"] == str(ports["metrics"])
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, f"{component}: {probe}"


@pytest.mark.parametrize("component", ["api", "worker-think", "worker-act", "dispatcher"])
def test_k8s_disruption_budgets(component: str) -> None:
    deployment = by_component(component)
    budgets = [
        doc for _, doc in k8s_docs()
        if doc["kind"] == "PodDisruptionBudget"
        and doc["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    ]
    assert len(budgets) == 1, f"one PodDisruptionBudget for {component}"
    spec = budgets[0]["spec"]
    assert spec.get("maxUnavailable") == 1 or spec.get("minAvailable") == 1


def test_k8s_worker_pre_stop_fits_in_the_grace_period() -> None:
    for component, limit in WORKER_LIMITS.items():
        spec = by_component(component)["spec"]["template"]["spec"]
        command = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        assert float(spec["terminationGracePeriodSeconds"]) > limit + float(command[1]), component


@pytest.mark.parametrize(("component", "path"), [("api", "/healthz"), ("flower", "/healthcheck")])
def test_k8s_serving_deployments_have_probes(component: str, path: str) -> None:
    container = by_component(component)["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == path, f"{component}: {probe}"


def test_k8s_has_every_component() -> None:
    for component in ("api", "worker-think", "worker-act", "reaper", "dispatcher", "flower"):
        by_component(component)
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in k8s_docs()}
    assert ("Service", "autogpt-api") in kinds
    assert ("Service", "autogpt-flower") in kinds
    assert any(kind == "Job" for kind, _ in kinds), "a migration Job"


def test_the_dispatcher_runs_everywhere(compose: dict[str, Any]) -> None:
    """Admission under the running-task caps, deadline priorities and webhooks need the dispatcher process: compose
    and Kubernetes both run it, with its /metrics as health check, and it may lose no more than one pod at once."""
    service = compose["services"]["dispatcher"]
    assert service["command"] == ["autogpt-workers", "dispatcher"]
    assert service["environment"]["AUTOGPT_METRICS_PORT"] == "9100"
    assert "127.0.0.1:9100/metrics" in str(service["healthcheck"]["test"])
    assert service.get("stop_signal", "SIGTERM") == "SIGTERM"
    deployment = by_component("dispatcher")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["autogpt-workers", "dispatcher"]
    assert deployment["spec"]["replicas"] >= 1
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    names = {var["name"] for var in container["env"]}
    assert {"AUTOGPT_DATABASE_URL", "AUTOGPT_BROKER_URL"} <= names, "it reads the ledger and publishes wake-ups"


def test_tracing_is_configurable_but_off_by_default(compose: dict[str, Any]) -> None:
    """The standard OTLP variable reaches every app service (passed through, unset by default: no tracing)."""
    for name in APP_SERVICES:
        env = compose["services"][name]["environment"]
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" in env and not env["OTEL_EXPORTER_OTLP_ENDPOINT"], name
    config = yaml.safe_load((K8S_DIR / "01-configmap.yaml").read_text())
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in config["data"], "tracing stays opt-in"


# ------------------------------------------------------------------------------------------ images


@pytest.mark.parametrize("name", ["Dockerfile.api", "Dockerfile.worker"])
def test_dockerfile_basics(name: str) -> None:
    text = (DOCKER_DIR / name).read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M), "base image python:3.11-slim"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the image must run as a non-root user"
    assert re.search(r"^RUN pip install \.", text, re.M), "the image installs the project"
    assert re.search(r'^CMD \["autogpt-workers"', text, re.M), "CMD runs the CLI (exec form)"


def test_api_dockerfile_healthcheck() -> None:
    text = (DOCKER_DIR / "Dockerfile.api").read_text()
    assert re.search(r"^HEALTHCHECK .*\n?.*urllib.*?/healthz", text, re.M)
    assert '"--host", "0.0.0.0", "--port", "8000"' in text


def test_worker_dockerfile_warm_shutdown() -> None:
    text = (DOCKER_DIR / "Dockerfile.worker").read_text()
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.M)
    assert 'CMD ["autogpt-workers", "worker", "--queue", "think"]' in text


def test_an_act_worker_that_cannot_sandbox_is_deployed_with_code_execution_off(compose: dict[str, Any]) -> None:
    """The shipped act containers run as a non-root uid (the k8s pod also drops every capability): the sandbox
    cannot run there, so the platform is declared without it and the model is never offered code execution."""
    config = next(doc for _, doc in k8s_docs() if doc.get("kind") == "ConfigMap")
    act = by_component("worker-act")["spec"]["template"]["spec"]
    confined = act["securityContext"].get("runAsNonRoot") or "ALL" in act["containers"][0]["securityContext"].get(
        "capabilities", {}
    ).get("drop", [])
    assert Settings(sandbox=config["data"]["AUTOGPT_SANDBOX"]).sandbox == ("off" if confined else "required")
    assert compose["services"]["worker-act"]["environment"]["AUTOGPT_SANDBOX"] == "${AUTOGPT_SANDBOX:-off}"
    assert compose["services"]["worker-think"]["environment"]["AUTOGPT_SANDBOX"] == "${AUTOGPT_SANDBOX:-off}"
