"""Artifacts in S3-compatible object storage (AWS S3, MinIO, Ceph, moto): a task's steps may run on any host.

Layout: ``s3://<bucket>/<prefix><task_id>/<relative path>``. Files are written with one ``PutObject`` each, so an
object's ETag is the MD5 of its content (true for unencrypted and SSE-S3 buckets): ``materialise`` downloads only
what differs from the worker's local copy and removes local files the store no longer has. With SSE-KMS the ETag
is not an MD5 and every file is downloaded each time (correct, only slower).

botocore's errors are translated here and nowhere else: a missing object is ``ArtifactNotFound``, anything else
``ArtifactStoreError``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from autogpt_workers.artifacts.base import (
    ArtifactNotFound,
    ArtifactStore,
    ArtifactStoreError,
    InvalidArtifactPath,
    check_relative,
    snapshot,
)

NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class S3ArtifactStore(ArtifactStore):
    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "tasks/",
        client: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=30),
        )

    def _task_prefix(self, task_id: str) -> str:
        return f"{self.prefix}{check_relative(task_id)}/"

    def materialise(self, task_id: str, dest_dir: Path) -> Path:
        dest_dir.mkdir(parents=True, exist_ok=True)
        remote = dict(self._objects(task_id))
        local = snapshot(dest_dir)
        for relative, (etag, size) in remote.items():
            path = dest_dir / relative
            if relative in local and local[relative][0] == size and _md5(path) == etag:
                continue
            self._download(self._task_prefix(task_id) + relative, path)
        for relative in local.keys() - remote.keys():
            (dest_dir / relative).unlink(missing_ok=True)
        return dest_dir

    def sync_back(self, task_id: str, src_dir: Path, changed_paths: Iterable[str]) -> None:
        base = self._task_prefix(task_id)
        for relative in map(check_relative, changed_paths):
            path = src_dir / relative
            key = base + relative
            with _translated(key):
                if path.is_file() and not path.is_symlink():
                    with open(path, "rb") as body:
                        self.client.put_object(Bucket=self.bucket, Key=key, Body=body)
                else:
                    self.client.delete_object(Bucket=self.bucket, Key=key)

    def open(self, task_id: str, relative_path: str) -> IO[bytes]:
        key = self._task_prefix(task_id) + check_relative(relative_path)
        with _translated(key):
            body: IO[bytes] = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            return body

    def save(self, task_id: str, relative_path: str, data: IO[bytes]) -> int:
        key = self._task_prefix(task_id) + check_relative(relative_path)
        counted = _Counting(data)
        with _translated(key):
            self.client.upload_fileobj(counted, self.bucket, key)
        return counted.size

    def list(self, task_id: str) -> list[str]:
        return sorted(relative for relative, _ in self._objects(task_id))

    def _objects(self, task_id: str) -> Iterator[tuple[str, tuple[str, int]]]:
        """(relative path, (etag, size)) of every object under the task's prefix; odd keys are skipped."""
        base = self._task_prefix(task_id)
        paginator = self.client.get_paginator("list_objects_v2")
        with _translated(base):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
                for item in page.get("Contents", []):
                    try:
                        relative = check_relative(item["Key"][len(base):])
                    except InvalidArtifactPath:
                        continue  # not written by us: never let a key steer a write outside the workspace
                    yield relative, (str(item.get("ETag", "")).strip('"'), int(item.get("Size", 0)))

    def _download(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.is_dir():
            raise ArtifactStoreError(f"cannot materialise {key}: {path} is a symlink or a directory")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f, _translated(key):
                self.client.download_fileobj(self.bucket, key, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class _Counting:
    """A read-only stream wrapper that counts the bytes read through it."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        block = self.stream.read(n)
        self.size += len(block)
        return block


class _translated:
    """Map botocore errors for ``key`` to ours."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            if str(error.get("Code")) in NOT_FOUND_CODES:
                raise ArtifactNotFound(f"no artifact at {self.key}") from exc
            raise ArtifactStoreError(f"S3 error for {self.key}: {error.get('Code')} {error.get('Message')}") from exc
        if isinstance(exc, BotoCoreError):
            raise ArtifactStoreError(f"S3 error for {self.key}: {exc}") from exc


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
