"""The Agent Protocol's artifact upload and download go through the workers' artifact store: with S3 (moto's server)
an upload is what the workers materialise and what a worker stores is what the API serves; the local default keeps
working and follows no symlink planted in a workspace. The API runs in-process (TestClient) on real PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from autogpt_workers.artifacts import ArtifactStore, LocalArtifactStore, artifact_store, changed_paths, snapshot
from autogpt_workers.config import Settings
from autogpt_workers.store.models import Artifact


def s3_settings(moto_s3: str, bucket: str) -> Settings:
    return Settings(
        artifact_store="s3", artifact_s3_bucket=bucket, artifact_s3_endpoint_url=moto_s3,
        artifact_s3_region="us-east-1", artifact_s3_access_key_id="test",
        artifact_s3_secret_access_key=SecretStr("test"),
    )


@pytest.fixture
def s3_api(migrated: None, moto_s3: str) -> Iterator[tuple[TestClient, ArtifactStore]]:
    from api_shim.app import create_app

    bucket = f"api-{uuid.uuid4().hex[:8]}"
    boto3.client(
        "s3", endpoint_url=moto_s3, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    ).create_bucket(Bucket=bucket)
    settings = s3_settings(moto_s3, bucket)
    with TestClient(create_app(settings)) as c:
        yield c, artifact_store(settings)


@pytest.fixture
def local_api(migrated: None, settings: Settings) -> Iterator[tuple[TestClient, Settings]]:
    from api_shim.app import create_app

    with TestClient(create_app(settings)) as c:
        yield c, settings


def new_task(client: TestClient) -> str:
    created = client.post("/ap/v1/agent/tasks", json={"input": "Files [[script:none]]"})
    assert created.status_code == 200, created.text
    task_id: str = created.json()["task_id"]
    return task_id


def record(db: Any, task_id: str, relative: str, data: bytes) -> str:
    """The artifact row a worker's step commit writes for a file it wrote."""
    import hashlib

    with db.transaction() as s:
        row = Artifact(task_id=uuid.UUID(task_id), step_index=0, relative_path=relative, size_bytes=len(data),
                       sha256=hashlib.sha256(data).hexdigest())
        s.add(row)
        s.flush()
        return str(row.id)


def test_with_s3_uploads_reach_the_store_and_worker_files_download(
    s3_api: tuple[TestClient, ArtifactStore], db: Any, settings: Settings, tmp_path: Path
) -> None:
    client, store = s3_api
    tid = new_task(client)
    url = f"/ap/v1/agent/tasks/{tid}/artifacts"
    up = client.post(url, data={"relative_path": "in"}, files={"file": ("data.bin", b"\x00\x01upload")})
    assert up.status_code == 200, up.text
    assert up.json()["relative_path"] == "in/data.bin"
    # the upload is in the store (so any host's act worker materialises it), not on the API's disk
    assert store.list(tid) == ["in/data.bin"]
    with store.open(tid, "in/data.bin") as f:
        assert f.read() == b"\x00\x01upload"
    assert not (settings.workspace_root / tid).exists()
    host = store.materialise(tid, tmp_path / "host" / tid)
    assert (host / "in" / "data.bin").read_bytes() == b"\x00\x01upload"
    # a worker writes a file on its host and syncs it back, then commits its artifact row
    before = snapshot(host)
    (host / "out").mkdir()
    (host / "out" / "résumé.md").write_bytes(b"# written by a worker")
    store.sync_back(tid, host, changed_paths(before, snapshot(host)))
    artifact_id = record(db, tid, "out/résumé.md", b"# written by a worker")
    got = client.get(f"{url}/{artifact_id}")
    assert got.status_code == 200 and got.content == b"# written by a worker"
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["content-disposition"] == (
        "attachment; filename=\"r_sum_.md\"; filename*=UTF-8''r%C3%A9sum%C3%A9.md"
    )
    uploaded = client.get(f"{url}/{up.json()['artifact_id']}")
    assert uploaded.status_code == 200 and uploaded.content == b"\x00\x01upload"
    # the limits and checks still hold in front of the store
    conflict = client.post(url, data={"relative_path": "in/data.bin"}, files={"file": ("x.txt", b"x")})
    assert conflict.status_code == 422 and "message" in conflict.json()
    bad = client.post(url, data={"relative_path": "../up"}, files={"file": ("f.txt", b"f")})
    assert bad.status_code == 422
    assert store.list(tid) == ["in/data.bin", "out/résumé.md"]
    # content gone from the store: a clear 404, not a 500
    gone = record(db, tid, "never/written.txt", b"")
    missing = client.get(f"{url}/{gone}")
    assert missing.status_code == 404 and "no longer available" in missing.json()["message"]


def test_with_s3_the_upload_limit_stores_nothing(migrated: None, moto_s3: str) -> None:
    from api_shim.app import create_app

    bucket = f"api-{uuid.uuid4().hex[:8]}"
    boto3.client(
        "s3", endpoint_url=moto_s3, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    ).create_bucket(Bucket=bucket)
    settings = s3_settings(moto_s3, bucket).model_copy(update={"api_max_upload_bytes": 1000})
    with TestClient(create_app(settings)) as client:
        tid = new_task(client)
        big = client.post(f"/ap/v1/agent/tasks/{tid}/artifacts", files={"file": ("big.bin", b"x" * 1001)})
        assert big.status_code == 413 and "upload limit" in big.json()["message"]
    assert artifact_store(settings).list(tid) == []


def test_locally_uploads_land_in_the_workspace_and_no_symlink_is_followed(
    local_api: tuple[TestClient, Settings], tmp_path: Path
) -> None:
    client, settings = local_api
    tid = new_task(client)
    url = f"/ap/v1/agent/tasks/{tid}/artifacts"
    up = client.post(url, params={"relative_path": "docs"}, files={"file": ("r.md", b"# r")})
    assert up.status_code == 200, up.text
    workspace = settings.workspace_root / tid
    assert (workspace / "docs" / "r.md").read_bytes() == b"# r"  # where the act worker works in place
    assert LocalArtifactStore(settings.workspace_root).list(tid) == ["docs/r.md"]
    down = client.get(f"{url}/{up.json()['artifact_id']}")
    assert down.status_code == 200 and down.content == b"# r" and down.headers["content-length"] == "3"
    assert down.headers["content-type"] == "application/octet-stream"
    assert 'filename="r.md"' in down.headers["content-disposition"]
    # sandboxed code planted symlinks out of the workspace: neither a write nor a read goes through them
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("host secret")
    os.symlink(outside, workspace / "d")
    through = client.post(url, data={"relative_path": "d"}, files={"file": ("new.txt", b"planted")})
    assert through.status_code == 422
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    (workspace / "docs" / "r.md").unlink()
    os.symlink(outside / "secret.txt", workspace / "docs" / "r.md")
    leaked = client.get(f"{url}/{up.json()['artifact_id']}")
    assert leaked.status_code == 404 and b"host secret" not in leaked.content

