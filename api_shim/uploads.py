"""Artifact files in a task's workspace: path checks, upload storage, download lookup.

Paths from a client are refused (422), never quietly rewritten, when they are absolute (``/x``, ``C:/x``), contain
``..``, NUL or other control characters, backslashes, or are too long. A file name keeps only its last
component (browsers send ``C:\\fakepath\\name``). The final path is resolved and must lie inside the workspace, so a
symlink planted in it cannot lead a write or a read outside.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import BinaryIO

from autogpt_workers.errors import UsageError

MAX_PATH_CHARS = 1024
MAX_COMPONENT_CHARS = 255
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
    if len(raw) > MAX_PATH_CHARS:
        raise BadPath(f"relative_path is longer than {MAX_PATH_CHARS} characters")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BadPath(f"relative_path {raw!r} contains '..'; it must stay inside the task's workspace")
    if any(len(p) > MAX_COMPONENT_CHARS for p in parts):
        raise BadPath(f"a component of relative_path is longer than {MAX_COMPONENT_CHARS} characters")
    return "/".join(parts)


def clean_file_name(raw: str | None) -> str:
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    if CONTROL.search(name):
        raise BadPath("the file name must not contain NUL or control characters")
    if name in ("", ".", ".."):
        raise BadPath("the uploaded file needs a file name")
    if len(name) > MAX_COMPONENT_CHARS:
        raise BadPath(f"the file name is longer than {MAX_COMPONENT_CHARS} characters")
    return name


def artifact_path(directory: str, file_name: str) -> str:
    """Where an upload lands: ``relative_path`` is a directory unless it already ends with the file name
    (AutoGPT's forge accepts both)."""
    if directory == file_name or directory.endswith("/" + file_name):
        return directory
    return f"{directory}/{file_name}" if directory else file_name


def confined(root: Path, relative: str) -> Path:
    base = root.resolve()
    target = (base / relative).resolve()
    if target == base or not target.is_relative_to(base):
        raise BadPath(f"path {relative!r} leads outside the task's workspace")
    return target


def store(root: Path, relative: str, source: BinaryIO, max_bytes: int) -> tuple[int, str]:
    """Copy ``source`` to ``root/relative`` atomically; returns (size, sha256). Raises ``TooLarge`` past
    ``max_bytes`` (nothing is left behind)."""
    root.mkdir(parents=True, exist_ok=True)
    target = confined(root, relative)
    if target.is_dir():
        raise BadPath(f"{relative!r} is a directory in the task's workspace")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file where a directory of the path should be
        raise BadPath(f"cannot store {relative!r}: {exc.strerror} (a file of the workspace is in the way)") from exc
    digest = hashlib.sha256()
    size = 0
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(f"the file is larger than the upload limit of {max_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return size, digest.hexdigest()


def workspace(root: Path, task_id: uuid.UUID) -> Path:
    return root / str(task_id)
