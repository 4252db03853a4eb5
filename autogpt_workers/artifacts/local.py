"""The default artifact store: one directory per task under a root, on this host (or a shared file system).

The store's directory *is* the task's workspace, so ``materialise`` and ``sync_back`` have nothing to copy when
the worker works in place (``workspace_dir``); given another directory they mirror it (copy what differs, remove
what the store no longer has), which tests and tools use.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from autogpt_workers.artifacts.base import (
    ArtifactNotFound,
    ArtifactStore,
    InvalidArtifactPath,
    check_relative,
    snapshot,
)


class LocalArtifactStore(ArtifactStore):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def task_dir(self, task_id: str) -> Path:
        return self.root / check_relative(task_id)

    def workspace_dir(self, task_id: str, scratch_root: Path) -> Path:
        return self.task_dir(task_id)  # work in place: nothing to copy

    def materialise(self, task_id: str, dest_dir: Path) -> Path:
        dest_dir.mkdir(parents=True, exist_ok=True)
        source = self.task_dir(task_id)
        if _same(source, dest_dir):
            return dest_dir
        stored = snapshot(source) if source.is_dir() else {}
        local = snapshot(dest_dir)
        for relative, stamp in stored.items():
            if local.get(relative) != stamp:
                _copy(source / relative, dest_dir / relative)
        for relative in local.keys() - stored.keys():
            (dest_dir / relative).unlink(missing_ok=True)
        return dest_dir

    def sync_back(self, task_id: str, src_dir: Path, changed_paths: Iterable[str]) -> None:
        target = self.task_dir(task_id)
        if _same(src_dir, target):
            return
        for relative in map(check_relative, changed_paths):
            source = src_dir / relative
            if source.is_file() and not source.is_symlink():
                _copy(source, target / relative)
            else:
                (target / relative).unlink(missing_ok=True)

    def open(self, task_id: str, relative_path: str) -> IO[bytes]:
        base = self.task_dir(task_id).resolve()
        path = (base / check_relative(relative_path)).resolve()
        if not path.is_relative_to(base) or not path.is_file():  # a symlink out of the task resolves outside
            raise ArtifactNotFound(f"task {task_id} has no artifact {relative_path!r}")
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
        try:
            return os.fdopen(os.open(path, flags), "rb")
        except OSError as exc:
            raise ArtifactNotFound(f"task {task_id} has no artifact {relative_path!r}") from exc

    def save(self, task_id: str, relative_path: str, data: IO[bytes]) -> int:
        base = self.task_dir(task_id)
        target = base / check_relative(relative_path)
        if not target.resolve().is_relative_to(base.resolve()):  # a symlinked directory on the way out
            raise InvalidArtifactPath(f"invalid artifact path {relative_path!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                size = _copy_stream(data, f)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size

    def list(self, task_id: str) -> list[str]:
        directory = self.task_dir(task_id)
        return sorted(snapshot(directory)) if directory.is_dir() else []


def _copy_stream(source: IO[bytes], target: IO[bytes]) -> int:
    size = 0
    for block in iter(lambda: source.read(1 << 20), b""):
        target.write(block)
        size += len(block)
    return size


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        target.unlink()
    shutil.copy2(source, target, follow_symlinks=False)  # keeps the mtime: unchanged files compare equal
