"""Artifact stores: the local directory (default) and S3 (against moto's S3 server, a real HTTP endpoint).

Two "hosts" are two scratch directories: what one writes back, the other materialises.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from pydantic import SecretStr

from autogpt_workers.artifacts import (
    ArtifactNotFound,
    ArtifactStore,
    LocalArtifactStore,
    artifact_store,
    changed_paths,
    check_relative,
    snapshot,
)
from autogpt_workers.artifacts.s3 import S3ArtifactStore
from autogpt_workers.config import Settings


@pytest.fixture
def s3_store(moto_s3: str) -> Iterator[S3ArtifactStore]:
    bucket = f"artifacts-{uuid.uuid4().hex[:8]}"
    client = boto3.client(
        "s3", endpoint_url=moto_s3, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    client.create_bucket(Bucket=bucket)
    yield S3ArtifactStore(bucket, prefix="tasks", client=client)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "store")
    store: ArtifactStore = request.getfixturevalue("s3_store")
    return store


def write(root: Path, relative: str, content: str) -> str:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return relative


def sync(store: ArtifactStore, task: str, directory: Path, before: dict[str, tuple[int, int]]) -> None:
    store.sync_back(task, directory, changed_paths(before, snapshot(directory)))


def test_a_workspace_moves_between_hosts(store: ArtifactStore, tmp_path: Path) -> None:
    task = str(uuid.uuid4())
    host_a, host_b = tmp_path / "a" / task, tmp_path / "b" / task
    # step 1 on host A writes two files
    store.materialise(task, host_a)
    before = snapshot(host_a)
    write(host_a, "report.md", "# v1")
    write(host_a, "data/numbers.csv", "1,2,3")
    sync(store, task, host_a, before)
    assert store.list(task) == ["data/numbers.csv", "report.md"]
    # step 2 on host B sees them, changes one and deletes the other
    store.materialise(task, host_b)
    assert (host_b / "report.md").read_text() == "# v1"
    before = snapshot(host_b)
    write(host_b, "report.md", "# v2, longer")
    (host_b / "data" / "numbers.csv").unlink()
    sync(store, task, host_b, before)
    # step 3 back on host A: its stale copy is brought up to date
    store.materialise(task, host_a)
    assert (host_a / "report.md").read_text() == "# v2, longer"
    assert not (host_a / "data" / "numbers.csv").exists()
    with store.open(task, "report.md") as f:
        assert f.read() == b"# v2, longer"


def test_symlinks_are_never_stored(store: ArtifactStore, tmp_path: Path) -> None:
    task = str(uuid.uuid4())
    host = tmp_path / "h" / task
    store.materialise(task, host)
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    os.symlink(secret, host / "link.txt")
    store.sync_back(task, host, ["link.txt"])  # as if a program had reported it
    assert store.list(task) == []
    with pytest.raises(ArtifactNotFound):
        store.open(task, "link.txt")


@pytest.mark.parametrize("path", ["../other/x", "/etc/passwd", "a/../../b", "", ".", "a\\b", "x\x00y"])
def test_paths_out_of_the_task_are_not_found(store: ArtifactStore, path: str) -> None:
    with pytest.raises(ArtifactNotFound):
        store.open(str(uuid.uuid4()), path)


def test_a_missing_artifact_is_not_found(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactNotFound):
        store.open(str(uuid.uuid4()), "nothing.txt")


def test_local_store_works_in_place(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    task = str(uuid.uuid4())
    directory = store.workspace_dir(task, tmp_path / "scratch")
    assert directory == tmp_path / "store" / task  # no copy: the store is the workspace
    store.materialise(task, directory)
    write(directory, "a.txt", "in place")
    store.sync_back(task, directory, ["a.txt"])
    with store.open(task, "a.txt") as f:
        assert f.read() == b"in place"


def test_local_store_refuses_a_symlink_out_of_the_task(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    task = str(uuid.uuid4())
    directory = store.materialise(task, store.task_dir(task))
    os.symlink("/etc/passwd", directory / "passwd")
    with pytest.raises(ArtifactNotFound):
        store.open(task, "passwd")


def test_s3_materialise_downloads_only_what_changed(s3_store: S3ArtifactStore, tmp_path: Path) -> None:
    task = str(uuid.uuid4())
    host = tmp_path / task
    s3_store.materialise(task, host)
    write(host, "keep.txt", "same")
    s3_store.sync_back(task, host, ["keep.txt"])
    stamp = (host / "keep.txt").stat().st_mtime_ns
    s3_store.materialise(task, host)
    assert (host / "keep.txt").stat().st_mtime_ns == stamp  # identical (ETag = MD5): not downloaded again


def test_s3_keys_that_could_escape_are_ignored(s3_store: S3ArtifactStore, tmp_path: Path) -> None:
    task = str(uuid.uuid4())
    s3_store.client.put_object(Bucket=s3_store.bucket, Key=f"tasks/{task}/../escaped.txt", Body=b"x")
    s3_store.client.put_object(Bucket=s3_store.bucket, Key=f"tasks/{task}/fine.txt", Body=b"y")
    host = tmp_path / "h" / task
    s3_store.materialise(task, host)
    assert sorted(p.name for p in host.iterdir()) == ["fine.txt"]
    assert not (tmp_path / "h" / "escaped.txt").exists()


def test_the_settings_pick_the_store(tmp_path: Path, moto_s3: str) -> None:
    local = artifact_store(Settings(workspace_root=tmp_path))
    assert isinstance(local, LocalArtifactStore) and local.root == tmp_path
    s3 = artifact_store(
        Settings(
            artifact_store="s3", artifact_s3_bucket="b", artifact_s3_endpoint_url=moto_s3,
            artifact_s3_region="us-east-1", artifact_s3_access_key_id="test",
            artifact_s3_secret_access_key=SecretStr("test"),
        )
    )
    assert isinstance(s3, S3ArtifactStore) and s3.bucket == "b" and s3.prefix == "tasks/"


def test_check_relative_normalises() -> None:
    assert check_relative("./a//b/./c.txt") == "a/b/c.txt"


def test_an_upload_is_saved_and_read_back(store: ArtifactStore) -> None:
    import io

    task = str(uuid.uuid4())
    assert store.save(task, "in/upload.bin", io.BytesIO(b"\x00\x01" * 1000)) == 2000
    assert store.list(task) == ["in/upload.bin"]
    with store.open(task, "in/upload.bin") as f:
        assert f.read() == b"\x00\x01" * 1000
    with pytest.raises(ArtifactNotFound):
        store.save(task, "../escape.bin", io.BytesIO(b"x"))
