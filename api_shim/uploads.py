"""Artifact files of a task, in the configured artifact store: path checks, uploads, downloads.

Paths from a client are refused (422), never quietly rewritten, when they are absolute (``/x``, ``C:/x``), contain
``..``, NUL or other control characters, backslashes, or are too long. A file name keeps only its last
component (browsers send ``C:\\fakepath\\name``). Files go to and come from ``autogpt_workers.artifacts``'s store
(the workers' own, local or S3), which follows no symlink, so one planted in a workspace cannot lead a write or a read
outside.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Iterator
from typing import IO, BinaryIO

from autogpt_workers.artifacts import ArtifactStore, InvalidArtifactPath
from autogpt_workers.errors import UsageError

# in bytes of UTF-8, as file systems (255 a name) and S3 (1024 a key, with the task's prefix) count them
MAX_PATH_BYTES = 900
MAX_COMPONENT_BYTES = 255
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
CHUNK = 1024 * 1024


class BadPath(UsageError):
    pass


class TooLarge(UsageError):
    pass


def clean_relative_path(raw: str | None) -> str:
    """A safe POSIX path relative to the workspace ('' for its root)."""
    if raw is None:
        return ""
    if CONTROL.search(raw):
        raise BadPath("relative_path must not contain NUL or control characters")
    if "\\" in raw:
        raise BadPath("relative_path must use '/' as separator (no backslashes)")
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
        raise BadPath(f"relative_path {raw!r} is absolute; give a path inside the task's workspace")
    if len(raw.encode()) > MAX_PATH_BYTES:
        raise BadPath(f"relative_path is longer than {MAX_PATH_BYTES} bytes (UTF-8)")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BadPath(f"relative_path {raw!r} contains '..'; it must stay inside the task's workspace")
    if any(len(p.encode()) > MAX_COMPONENT_BYTES for p in parts):
        raise BadPath(f"a component of relative_path is longer than {MAX_COMPONENT_BYTES} bytes (UTF-8)")
    return "/".join(parts)


def clean_file_name(raw: str | None) -> str:
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    if CONTROL.search(name):
        raise BadPath("the file name must not contain NUL or control characters")
    if name in ("", ".", ".."):
        raise BadPath("the uploaded file needs a file name")
    if len(name.encode()) > MAX_COMPONENT_BYTES:
        raise BadPath(f"the file name is longer than {MAX_COMPONENT_BYTES} bytes (UTF-8)")
    return name


def artifact_path(directory: str, file_name: str) -> str:
    """Where an upload lands: ``relative_path`` is a directory unless it already ends with the file name
    (AutoGPT's forge accepts both)."""
    if directory == file_name or directory.endswith("/" + file_name):
        return directory
    return f"{directory}/{file_name}" if directory else file_name


def save(store: ArtifactStore, task_id: uuid.UUID, relative: str, source: BinaryIO, max_bytes: int) -> tuple[int, str]:
    """Store an upload (already spooled by the server, so it is read twice: once to check its size and hash it, then
    by the store); returns (size, sha256). ``TooLarge`` past ``max_bytes``, ``BadPath`` where the workspace has a
    directory (or a file in the way of one); nothing is stored then."""
    digest = hashlib.sha256()
    size = 0
    while chunk := source.read(CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(f"the file is larger than the upload limit of {max_bytes} bytes")
        digest.update(chunk)
    source.seek(0)
    try:
        store.save(str(task_id), relative, source)
    except InvalidArtifactPath as exc:
        raise BadPath(f"cannot store {relative!r}: {exc}") from exc
    return size, digest.hexdigest()


def chunks(body: IO[bytes]) -> Iterator[bytes]:
    """A stored file's content for a streaming response; closes it at the end (or when the client goes away)."""
    try:
        while block := body.read(CHUNK):
            yield block
    finally:
        body.close()


def size_of(body: IO[bytes]) -> int | None:
    """The size of an opened local file (for Content-Length); None for a stream (S3)."""
    try:
        return os.fstat(body.fileno()).st_size
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is an OSError
        return None
