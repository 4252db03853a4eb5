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
    InvalidArtifactPath,
    LocalArtifactStore,
    artifact_store,
    changed_paths,
    check_relative,
    confined,
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


def tree(root: Path) -> set[str]:
    """Every entry under ``root`` (files, directories, symlinks; nothing followed), as relative paths."""
    entries = set()
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            entries.add(Path(directory, name).relative_to(root).as_posix())
    return entries


def test_materialise_never_writes_through_a_planted_directory_symlink(store: ArtifactStore, tmp_path: Path) -> None:
    """The audit's proof of concept: a symlink left in host A's copy steers host B's file outside on A."""
    task = str(uuid.uuid4())
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("original host file")
    host_a, host_b = tmp_path / "a" / task, tmp_path / "b" / task
    # step 1 on host A: sandboxed code plants a directory symlink (never stored)
    store.materialise(task, host_a)
    before = snapshot(host_a)
    os.symlink(outside, host_a / "d")
    sync(store, task, host_a, before)
    assert store.list(task) == []
    # step 2 on host B writes a real file d/victim.txt
    store.materialise(task, host_b)
    before = snapshot(host_b)
    write(host_b, "d/victim.txt", "OVERWRITTEN via store")
    sync(store, task, host_b, before)
    assert store.list(task) == ["d/victim.txt"]
    # step 3 back on host A: the symlink is gone, the store's file is in a real directory, outside is untouched
    store.materialise(task, host_a)
    assert (outside / "victim.txt").read_text() == "original host file"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    assert not (host_a / "d").is_symlink() and (host_a / "d" / "victim.txt").read_text() == "OVERWRITTEN via store"
    assert tree(host_a) == {"d", "d/victim.txt"}


def test_after_materialise_the_workspace_is_the_stores_view(store: ArtifactStore, tmp_path: Path) -> None:
    task = str(uuid.uuid4())
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("host file")
    origin = tmp_path / "origin" / task
    store.materialise(task, origin)
    write(origin, "keep.txt", "kept")
    write(origin, "linked.txt", "from the store")
    write(origin, "deep/er/file.txt", "deep")
    store.sync_back(task, origin, ["keep.txt", "linked.txt", "deep/er/file.txt"])
    host = tmp_path / "host" / task
    host.mkdir(parents=True)
    os.symlink(outside / "victim.txt", host / "linked.txt")  # a stored path, planted as a symlink to a host file
    os.symlink(outside, host / "deep")  # a stored directory, planted as a symlink
    os.symlink(outside, host / "elsewhere")  # not stored at all
    os.mkfifo(host / "pipe")
    write(host, "stale.txt", "not in the store")
    (host / "empty" / "dir").mkdir(parents=True)
    store.materialise(task, host)
    assert tree(host) == {"keep.txt", "linked.txt", "deep", "deep/er", "deep/er/file.txt"}
    assert (host / "linked.txt").read_text() == "from the store" and not (host / "linked.txt").is_symlink()
    assert (outside / "victim.txt").read_text() == "host file"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    assert sorted(snapshot(host)) == store.list(task)


def test_sync_back_never_reads_through_a_symlinked_directory(store: ArtifactStore, tmp_path: Path) -> None:
    task = str(uuid.uuid4())
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("host secret")
    host = tmp_path / "h" / task
    store.materialise(task, host)
    os.symlink(outside, host / "d")
    store.sync_back(task, host, ["d/secret.txt"])  # as if a program had reported it
    assert store.list(task) == []


def test_a_directory_replaced_by_a_file_moves_between_hosts(store: ArtifactStore, tmp_path: Path) -> None:
    task = str(uuid.uuid4())
    host_a, host_b = tmp_path / "a" / task, tmp_path / "b" / task
    store.materialise(task, host_a)
    before = snapshot(host_a)
    write(host_a, "x/inner.txt", "inner")
    sync(store, task, host_a, before)
    before = snapshot(host_a)
    (host_a / "x" / "inner.txt").unlink()
    (host_a / "x").rmdir()
    write(host_a, "x", "now a file")
    sync(store, task, host_a, before)
    assert store.list(task) == ["x"]
    store.materialise(task, host_b)
    assert (host_b / "x").read_text() == "now a file"


def test_a_file_and_a_directory_of_one_name_are_refused(store: ArtifactStore) -> None:
    import io

    task = str(uuid.uuid4())
    store.save(task, "a", io.BytesIO(b"file"))
    with pytest.raises(InvalidArtifactPath):
        store.save(task, "a/b", io.BytesIO(b"below a file"))
    store.save(task, "c/d", io.BytesIO(b"file"))
    with pytest.raises(InvalidArtifactPath):
        store.save(task, "c", io.BytesIO(b"over a directory"))
    assert store.list(task) == ["a", "c/d"]


def test_s3_materialise_skips_a_file_shadowed_by_a_directory(s3_store: S3ArtifactStore, tmp_path: Path) -> None:
    task = str(uuid.uuid4())
    for key, body in (("x", b"file"), ("x/y", b"below")):  # written by something other than this store
        s3_store.client.put_object(Bucket=s3_store.bucket, Key=f"tasks/{task}/{key}", Body=body)
    host = tmp_path / task
    s3_store.materialise(task, host)
    assert tree(host) == {"x", "x/y"} and (host / "x" / "y").read_bytes() == b"below"


def test_confined_files_refuse_a_symlink_on_the_way(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    (outside / "f.txt").write_text("outside")
    os.symlink(outside, root / "real" / "link")
    with pytest.raises(InvalidArtifactPath):
        confined.write_file(root, "real/link/new.txt", lambda f: f.write(b"x"))
    with pytest.raises(InvalidArtifactPath):
        confined.write_file(root, "real/link/f.txt", lambda f: f.write(b"x"))
    with pytest.raises(ArtifactNotFound):
        confined.open_file(root, "real/link/f.txt")
    confined.remove_file(root, "real/link/f.txt")
    assert sorted(p.name for p in outside.iterdir()) == ["f.txt"] and (outside / "f.txt").read_text() == "outside"
    assert confined.write_file(root, "real/ok.txt", lambda f: f.write(b"12345")) == 5
    assert (root / "real" / "ok.txt").read_bytes() == b"12345"
    assert sorted(os.listdir(root / "real")) == ["link", "ok.txt"]  # no temporary file left behind


def test_delete_task_removes_every_stored_file_of_that_task_only(store: ArtifactStore, tmp_path: Path) -> None:
    host = tmp_path / "host"
    for task in ("gone", "kept"):
        directory = host / task
        directory.mkdir(parents=True)
        before = snapshot(directory)
        write(directory, "a.txt", "a")
        write(directory, "deep/er/b.txt", "b")
        sync(store, task, directory, before)
    assert store.delete_task("gone") == 2
    assert store.list("gone") == [] and store.list("kept") == ["a.txt", "deep/er/b.txt"]
    assert store.delete_task("gone") == 0  # nothing left: not an error
    assert store.delete_task("never-stored") == 0


def test_the_local_store_deletes_a_symlinked_task_directory_as_a_link(tmp_path: Path) -> None:
    store, elsewhere = LocalArtifactStore(tmp_path / "store"), tmp_path / "elsewhere"
    write(elsewhere, "precious.txt", "keep me")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "planted").symlink_to(elsewhere, target_is_directory=True)
    assert store.delete_task("planted") == 0
    assert not (tmp_path / "store" / "planted").exists() and (elsewhere / "precious.txt").read_text() == "keep me"
