"""The KEDA objects of deploy/k8s validated offline against KEDA's CRD schema (tests/ops/schemas), plus the rules
that make them do what we want: one ScaledObject per queue, on queue length through the management API
(unacked included), credentials from the Secret, scale-in slow and safe."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from autogpt_workers.config import Settings
from autogpt_workers.contracts import ACT_QUEUE, THINK_QUEUE

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
CRDS = Path(__file__).parent / "schemas" / "keda-v1alpha1.yaml"
SECRET = "autogpt-workers-secrets"
# parameters KEDA's RabbitMQ scaler reads from trigger metadata (2.16)
RABBITMQ_METADATA = {
    "host", "hostFromEnv", "protocol", "queueName", "mode", "value", "activationValue", "vhostName", "useRegex",
    "excludeUnacknowledged", "pageSize", "operation", "timeout", "unsafeSsl",
}
QUEUES = {"worker-think": THINK_QUEUE, "worker-act": ACT_QUEUE}
LIMITS = {
    "worker-think": float(Settings.model_fields["think_time_limit_s"].default),
    "worker-act": float(Settings.model_fields["act_time_limit_s"].default),
}


@functools.cache
def _docs() -> list[dict[str, Any]]:
    return [d for p in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


@functools.cache
def _validators() -> dict[str, jsonschema.protocols.Validator]:
    out = {}
    for crd in yaml.safe_load_all(CRDS.read_text()):
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        jsonschema.Draft202012Validator.check_schema(schema)
        out[crd["spec"]["names"]["kind"]] = jsonschema.Draft202012Validator(schema)
    return out


def _keda(kind: str) -> list[dict[str, Any]]:
    return [d for d in _docs() if d.get("apiVersion") == "keda.sh/v1alpha1" and d["kind"] == kind]


def _errors(doc: dict[str, Any]) -> list[str]:
    validator = _validators()[doc["kind"]]
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_every_keda_object_matches_the_crd_schema() -> None:
    docs = [d for d in _docs() if str(d.get("apiVersion", "")).startswith("keda.sh/")]
    assert {d["kind"] for d in docs} == {"ScaledObject", "TriggerAuthentication"}
    for doc in docs:
        assert not _errors(doc), f"{doc['kind']} {doc['metadata']['name']}: {_errors(doc)}"


def test_the_schema_rejects_what_keda_would() -> None:
    good = _keda("ScaledObject")[0]
    broken = copy.deepcopy(good)
    del broken["spec"]["triggers"]
    assert any("triggers" in e for e in _errors(broken))
    typo = copy.deepcopy(good)
    typo["spec"]["pollingIntervall"] = 10
    assert _errors(typo)
    wrong_type = copy.deepcopy(good)
    wrong_type["spec"]["triggers"][0]["metadata"]["value"] = 50  # metadata values are strings
    assert _errors(wrong_type)
    auth = copy.deepcopy(_keda("TriggerAuthentication")[0])
    del auth["spec"]["secretTargetRef"][0]["key"]
    assert _errors(auth)


@pytest.mark.parametrize("component", sorted(QUEUES))
def test_one_scaled_object_per_queue_on_queue_length_with_unacked(component: str) -> None:
    objs = [o for o in _keda("ScaledObject") if o["metadata"]["labels"]["app.kubernetes.io/component"] == component]
    assert len(objs) == 1, f"one ScaledObject for {component}"
    spec = objs[0]["spec"]
    deployments = {d["metadata"]["name"]: d for d in _docs() if d["kind"] == "Deployment"}
    target = deployments[spec["scaleTargetRef"]["name"]]
    assert target["metadata"]["labels"]["app.kubernetes.io/component"] == component
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "rabbitmq"
    assert set(meta) <= RABBITMQ_METADATA, set(meta) - RABBITMQ_METADATA
    assert meta["queueName"] == QUEUES[component]
    assert meta["protocol"] == "http", "the management API counts unacknowledged messages; AMQP cannot"
    assert meta["mode"] == "QueueLength" and int(meta["value"]) >= 1
    assert meta.get("excludeUnacknowledged", "false") == "false"
    assert "host" not in meta, "credentials come from the TriggerAuthentication, never inline"
    auths = {a["metadata"]["name"]: a for a in _keda("TriggerAuthentication")}
    ref = trigger["authenticationRef"]
    assert ref.get("kind", "TriggerAuthentication") == "TriggerAuthentication" and ref["name"] in auths
    params = {r["parameter"]: r for r in auths[ref["name"]]["spec"]["secretTargetRef"]}
    assert params["host"]["name"] == SECRET


@pytest.mark.parametrize("component", sorted(QUEUES))
def test_scale_in_is_slow_and_never_kills_a_running_step(component: str) -> None:
    spec = next(
        o["spec"] for o in _keda("ScaledObject") if o["metadata"]["labels"]["app.kubernetes.io/component"] == component
    )
    assert 5 <= spec["pollingInterval"] <= 60
    assert spec["cooldownPeriod"] >= 60
    down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 120
    assert all(p["type"] == "Pods" and p["value"] == 1 for p in down["policies"]), "one pod at a time"
    assert spec["advanced"].get("restoreToOriginalReplicaCount") is False
    deployment = next(
        d for d in _docs()
        if d["kind"] == "Deployment" and d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    )
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pause = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0.0
    assert pod["terminationGracePeriodSeconds"] > LIMITS[component] + pause, "grace above the longest step"
    assert "--queue" in container["command"], "SIGTERM reaches the Celery worker itself (warm shutdown)"
