"""API keys and tenants: keys are stored hashed, every endpoint is scoped to the key's tenant, revoked keys stop
working, and development mode is explicit."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from autogpt_workers.store.gateway import ApiKey
from tests.api.conftest import Gateway, Tenant, wait_for, wait_terminal
from tests.conftest import REPO_ROOT


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autogpt_workers.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=60,
    )


def test_keys_create_list_revoke_from_the_cli(gateway: Gateway, db: Any) -> None:
    tenant = f"cli-{time.time_ns()}"
    made = cli("keys", "create", "--tenant", tenant, "--name", "ci", "--max-running", "3", env=gateway.env())
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("agw_") and "whsec_" in made.stdout
    with db.session() as s:  # only the hash is stored
        row = s.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant)).one()
        assert row.key_hash == hashlib.sha256(key.encode()).hexdigest() and key not in str(row.__dict__)
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{gateway.url}/v1/tasks", headers=headers).status_code == 200
    listed = cli("keys", "list", "--tenant", tenant, env=gateway.env())
    assert listed.returncode == 0 and str(row.id) in listed.stdout and key not in listed.stdout
    revoked = cli("keys", "revoke", key[:12], env=gateway.env())
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    # the API remembers answers for a few seconds, then refuses the key
    wait_for(lambda: httpx.get(f"{gateway.url}/v1/tasks", headers=headers).status_code == 401, 15, "key refused")
    missing = cli("keys", "revoke", "agw_nosuchkey", env=gateway.env())
    assert missing.returncode == 1 and "no API key" in missing.stderr and "Traceback" not in missing.stderr
    bad = cli("keys", "create", "--tenant", "no spaces allowed", env=gateway.env())
    assert bad.returncode == 2 and "tenant id" in bad.stderr


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer agw_wrong"}, {"X-API-Key": "nope"}, {"Authorization": "Basic Zm9vOmJhcg=="}],
)
def test_requests_without_a_valid_key_are_refused(gateway: Gateway, headers: dict[str, str]) -> None:
    for method, path in (("GET", "/v1/tasks"), ("POST", "/v1/tasks"), ("GET", "/ap/v1/agent/tasks")):
        resp = httpx.request(method, f"{gateway.url}{path}", headers=headers, json={"goal": "x"})
        assert resp.status_code == 401, (path, resp.text)
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert ("message" if path.startswith("/ap/") else "detail") in resp.json()
    assert httpx.get(f"{gateway.url}/healthz").status_code == 200  # public
    assert httpx.get(f"{gateway.url}/openapi.json").status_code == 200


def _fill(path: str, ids: dict[str, str]) -> str:
    for name, value in ids.items():
        path = path.replace("{" + name + "}", value)
    return path


def test_every_endpoint_is_scoped_to_the_tenant(gateway: Gateway, llm: Any) -> None:
    """Tenant B gets 404 for each of tenant A's resources, on every path of the OpenAPI document."""
    a, b = gateway.tenant("iso-a"), gateway.tenant("iso-b")
    with gateway.client(a) as ca, gateway.client(b, timeout=10) as cb:
        native = ca.post("/v1/tasks", json={"goal": "Write things [[steps:2]]"}).json()["id"]
        wait_terminal(ca, native)
        ap_task = ca.post("/ap/v1/agent/tasks", json={"input": "hello", "additional_input": {"mode": "continuous"}})
        ap_id = ap_task.json()["task_id"]
        upload = ca.post(f"/ap/v1/agent/tasks/{ap_id}/artifacts", files={"file": ("a.txt", b"secret")})
        artifact_id = upload.json()["artifact_id"]
        steps = ca.get(f"/ap/v1/agent/tasks/{ap_id}/steps").json()["steps"]
        ids = {"task_id": ap_id, "artifact_id": artifact_id, "step_id": steps[0]["step_id"]}
        paths = ca.get("/openapi.json").json()["paths"]
        checked = 0
        for template, operations in paths.items():
            if "{task_id}" not in template:
                continue
            for method in operations:
                ids["task_id"] = ap_id if template.startswith("/ap/") else native
                path = _fill(template, ids)
                kwargs: dict[str, Any] = {}
                if template.endswith("/artifacts") and method == "post":
                    kwargs["files"] = {"file": ("b.txt", b"intruder")}
                elif method == "post":
                    kwargs["json"] = {}
                theirs = cb.request(method.upper(), path, **kwargs)
                assert theirs.status_code == 404, (method, path, theirs.status_code, theirs.text)
                if method == "get":
                    with ca.stream("GET", path) as mine:
                        assert mine.status_code == 200, (path, mine.status_code)
                checked += 1
        assert checked >= 10
        # and B's own listings do not show A's tasks
        assert cb.get("/v1/tasks").json()["tasks"] == []
        assert cb.get("/ap/v1/agent/tasks").json()["pagination"]["total_items"] == 0


def test_development_mode_needs_the_explicit_flag(gateway: Gateway, stack: Any) -> None:
    """The session's other API runs with AUTOGPT_API_AUTH=disabled: no key is tenant "default", a key still counts,
    and a bad key is still refused."""
    t: Tenant = gateway.tenant("dev")
    resp = httpx.post(f"{stack.api_url}/v1/tasks", json={"goal": "dev mode [[steps:1]]"}, timeout=10)
    assert resp.status_code == 201
    mine = httpx.post(f"{stack.api_url}/v1/tasks", json={"goal": "keyed [[steps:1]]"}, headers=t.headers, timeout=10)
    assert httpx.get(f"{stack.api_url}/v1/tasks/{mine.json()['id']}", timeout=10).status_code == 404
    assert httpx.get(f"{gateway.url}/v1/tasks/{mine.json()['id']}", headers=t.headers).status_code == 200
    bad = httpx.get(f"{stack.api_url}/v1/tasks", headers={"Authorization": "Bearer agw_bad"}, timeout=10)
    assert bad.status_code == 401
    log = stack["api"].log_path.read_text(errors="replace")
    assert "API AUTHENTICATION IS DISABLED" in log
