"""The default artifact store: one directory per task under a root, on this host (or a shared file system).

The store's directory *is* the task's workspace, so ``materialise`` and ``sync_back`` have nothing to copy when
the worker works in place (``workspace_dir``); given another directory they mirror it (copy what differs, remove
everything else: files the store no longer has, symlinks, stray directories), which tests and tools use. Every copy
goes through ``confined``: no symlink in either directory is ever followed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from autogpt_workers.artifacts import confined
from autogpt_workers.artifacts.base import (
    ArtifactNotFound,
    ArtifactStore,
    ArtifactStoreError,
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

    def works_in_place(self, task_id: str, workspace: Path) -> bool:
        return _same(self.task_dir(task_id), workspace)

    def materialise(self, task_id: str, dest_dir: Path) -> Path:
        dest_dir.mkdir(parents=True, exist_ok=True)
        source = self.task_dir(task_id)
        if _same(source, dest_dir):
            return dest_dir
        stored = snapshot(source) if source.is_dir() else {}
        local = confined.prune(dest_dir, stored.keys())
        for relative, stamp in stored.items():
            if local.get(relative) != stamp:
                try:
                    _copy(source, dest_dir, relative)  # False if deleted from the store meanwhile
                except InvalidArtifactPath as exc:  # a symlink appeared since the prune: refuse, never follow
                    raise ArtifactStoreError(f"cannot materialise {relative!r} of task {task_id}: {exc}") from exc
        return dest_dir

    def sync_back(self, task_id: str, src_dir: Path, changed_paths: Iterable[str]) -> None:
        target = self.task_dir(task_id)
        if _same(src_dir, target):
            return
        target.mkdir(parents=True, exist_ok=True)
        paths = sorted(set(map(check_relative, changed_paths)))
        present = [p for p in paths if confined.is_file(src_dir, p)]  # a symlink is never a file here
        for relative in sorted(set(paths) - set(present)):  # deletions first: a file may replace a directory
            confined.remove_file(target, relative)
        for relative in present:
            try:
                _copy(src_dir, target, relative)
            except InvalidArtifactPath as exc:
                raise ArtifactStoreError(f"cannot store {relative!r} of task {task_id}: {exc}") from exc

    def open(self, task_id: str, relative_path: str) -> IO[bytes]:
        try:
            return confined.open_file(self.task_dir(task_id), check_relative(relative_path))
        except ArtifactNotFound as exc:  # a symlink anywhere on the way counts as missing
            raise ArtifactNotFound(f"task {task_id} has no artifact {relative_path!r}") from exc

    def save(self, task_id: str, relative_path: str, data: IO[bytes]) -> int:
        base = self.task_dir(task_id)
        relative = check_relative(relative_path)
        base.mkdir(parents=True, exist_ok=True)
        return confined.write_file(base, relative, lambda f: _copy_stream(data, f))

    def list(self, task_id: str) -> list[str]:
        directory = self.task_dir(task_id)
        return sorted(snapshot(directory)) if directory.is_dir() else []

    def delete_task(self, task_id: str) -> int:
        root = self.task_dir(task_id)
        if root.is_symlink():  # not the store's own: the link goes, never what it points at
            root.unlink()
            return 0
        if not root.is_dir():
            return 0
        count = len(snapshot(root))
        shutil.rmtree(root)  # follows no symlink inside
        return count


def _copy_stream(source: IO[bytes], target: IO[bytes]) -> int:
    size = 0
    for block in iter(lambda: source.read(1 << 20), b""):
        target.write(block)
        size += len(block)
    return size


def _same(a: Path, b: Path) -> bool:
    return a == b or a.resolve() == b.resolve()  # equal paths need no resolving (the common case: in place)


def _copy(source_root: Path, target_root: Path, relative: str) -> bool:
    """Copy one file between the two directories with its mode and mtime (so an unchanged copy compares equal);
    False if the source is not there. ``InvalidArtifactPath`` if the target cannot be written without a symlink."""
    try:
        source = confined.open_file(source_root, relative)
    except ArtifactNotFound:
        return False
    with source:
        st = os.fstat(source.fileno())
        confined.write_file(
            target_root, relative, lambda f: _copy_stream(source, f), mtime_ns=st.st_mtime_ns, mode=st.st_mode
        )
    return True
