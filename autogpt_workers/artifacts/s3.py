"""Artifacts in S3-compatible object storage (AWS S3, MinIO, Ceph, moto): a task's steps may run on any host.

Layout: ``s3://<bucket>/<prefix><task_id>/<relative path>``. Files are written with one ``PutObject`` each, so an
object's ETag is the MD5 of its content (true for unencrypted and SSE-S3 buckets): ``materialise`` downloads only
what differs from the worker's local copy and removes everything else there (files the store no longer has,
symlinks, stray directories), so the workspace holds exactly the store's view. With SSE-KMS the ETag is not an MD5
and every file is downloaded each time (correct, only slower). Local files are read and written through
``confined``: a symlink the previous step left in the workspace is never followed.

S3 has no directories, so ``a`` and ``a/b`` could both be keys; ``save`` refuses the second (as a file system
would) and ``materialise`` skips a file shadowed by a directory.

botocore's errors are translated here and nowhere else: a missing object is ``ArtifactNotFound``, anything else
``ArtifactStoreError``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from autogpt_workers.artifacts import confined
from autogpt_workers.artifacts.base import (
    ArtifactNotFound,
    ArtifactStore,
    ArtifactStoreError,
    InvalidArtifactPath,
    check_relative,
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
        shadowed = confined.directories_of(remote.keys())  # a key that is also a "directory": not materialised
        local = confined.prune(dest_dir, remote.keys() - shadowed)
        for relative, (etag, size) in remote.items():
            if relative in shadowed or (relative in local and local[relative][0] == size
                                        and _md5(dest_dir, relative) == etag):
                continue
            try:
                self._download(self._task_prefix(task_id) + relative, dest_dir, relative)
            except ArtifactNotFound:
                continue  # deleted meanwhile
            except InvalidArtifactPath as exc:  # a symlink appeared since the prune: refuse, never follow
                raise ArtifactStoreError(f"cannot materialise {relative!r} of task {task_id}: {exc}") from exc
        return dest_dir

    def sync_back(self, task_id: str, src_dir: Path, changed_paths: Iterable[str]) -> None:
        base = self._task_prefix(task_id)
        for relative in sorted(set(map(check_relative, changed_paths))):
            key = base + relative
            try:
                body = confined.open_file(src_dir, relative)  # never through a symlink
            except ArtifactNotFound:  # gone, or not a regular file: deleted
                with _translated(key):
                    self.client.delete_object(Bucket=self.bucket, Key=key)
                continue
            with body, _translated(key):
                self.client.put_object(Bucket=self.bucket, Key=key, Body=body)

    def open(self, task_id: str, relative_path: str) -> IO[bytes]:
        key = self._task_prefix(task_id) + check_relative(relative_path)
        with _translated(key):
            body: IO[bytes] = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            return body

    def save(self, task_id: str, relative_path: str, data: IO[bytes]) -> int:
        relative = check_relative(relative_path)
        key = self._task_prefix(task_id) + relative
        self._refuse_conflicts(task_id, relative)
        counted = _Counting(data)
        with _translated(key):
            self.client.upload_fileobj(counted, self.bucket, key)
        return counted.size

    def list(self, task_id: str) -> list[str]:
        return sorted(relative for relative, _ in self._objects(task_id))

    def delete_task(self, task_id: str) -> int:
        base = self._task_prefix(task_id)
        paginator = self.client.get_paginator("list_objects_v2")
        deleted = 0
        with _translated(base):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base):  # at most 1000 keys a page
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if not keys:
                    continue
                answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
                if answer.get("Errors"):
                    first = answer["Errors"][0]
                    raise ArtifactStoreError(
                        f"S3 did not delete {len(answer['Errors'])} of {len(keys)} objects under {base}: "
                        f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                    )
                deleted += len(keys)
        return deleted

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

    def _refuse_conflicts(self, task_id: str, relative: str) -> None:
        """``InvalidArtifactPath`` if ``relative`` is a "directory" of stored files, or one of its directories is a
        stored file: the workspace could not hold both."""
        base = self._task_prefix(task_id)
        with _translated(base + relative):
            below = self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{base}{relative}/", MaxKeys=1)
            if below.get("KeyCount", 0):
                raise InvalidArtifactPath(f"{relative!r} is a directory in the task's workspace")
        for directory in sorted(confined.directories_of([relative])):
            try:
                with _translated(base + directory):
                    self.client.head_object(Bucket=self.bucket, Key=base + directory)
            except ArtifactNotFound:
                continue
            raise InvalidArtifactPath(f"cannot store {relative!r}: the file {directory!r} is in its way")

    def _download(self, key: str, dest_dir: Path, relative: str) -> None:
        def fill(f: IO[bytes]) -> None:
            with _translated(key):
                self.client.download_fileobj(self.bucket, key, f)

        confined.write_file(dest_dir, relative, fill)


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


def _md5(root: Path, relative: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with confined.open_file(root, relative) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
