"""Files under a directory, reached without following a symlink anywhere on the way.

An artifact store copies files into (and out of) directories that sandboxed code has written to, and the act worker
runs as root: a directory symlink planted there (``d -> /etc``) must never steer a store's write or read outside.
Every path component is opened relative to its parent's file descriptor with ``O_NOFOLLOW``, so a symlink at any
level makes the call fail instead of being followed, with no window between a check and the use. ``root`` itself is
trusted (the worker made it).

``prune`` is the first half of a mirror: it removes everything under ``root`` that is not a kept regular file or a
directory on the way to one (other files, symlinks, fifos, sockets, devices, stray directories), so that after the
store writes its files the directory holds exactly the store's view.

Paths are workspace-relative POSIX paths already checked with ``base.check_relative``. A symlink or a non-directory
where a directory should be raises ``InvalidArtifactPath``; a missing file raises ``ArtifactNotFound``.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from autogpt_workers.artifacts.base import ArtifactNotFound, InvalidArtifactPath

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# EMLINK: O_NOFOLLOW on a symlink (FreeBSD); ENAMETOOLONG: a name the file system cannot hold is no such path
_REFUSED = (errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.EMLINK, errno.ENAMETOOLONG)


def directories_of(paths: Collection[str]) -> set[str]:
    """Every directory on the way to one of ``paths`` (``a/b/c`` -> ``a``, ``a/b``)."""
    dirs: set[str] = set()
    for path in paths:
        parts = path.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return dirs


def open_file(root: Path, relative: str) -> BinaryIO:
    """``root/relative`` for reading if it is a regular file reached through real directories only."""
    with _refused(relative), _parents(root, relative, create=False) as chain:
        try:
            fd = os.open(chain[-1][1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=chain[-1][0])
        except FileNotFoundError as exc:
            raise ArtifactNotFound(f"no file {relative!r}") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise InvalidArtifactPath(f"{relative!r} is not a regular file")
        return os.fdopen(fd, "rb")


def is_file(root: Path, relative: str) -> bool:
    """Whether ``open_file`` would find a regular file there."""
    try:
        open_file(root, relative).close()
    except ArtifactNotFound:
        return False
    return True


def write_file(
    root: Path,
    relative: str,
    fill: Callable[[BinaryIO], object],
    *,
    mtime_ns: int | None = None,
    mode: int | None = None,
) -> int:
    """Write ``root/relative`` atomically from what ``fill`` writes into a new file (creating its directories, never
    through a symlink); an existing file or symlink of that name is replaced, a directory refused. Returns the size."""
    with _refused(relative), _parents(root, relative, create=True) as chain:
        parent, name = chain[-1]
        tmp = f".part-{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=parent)
        try:
            with os.fdopen(fd, "wb") as f:
                fill(f)
                f.flush()
                size = os.fstat(f.fileno()).st_size  # not tell(): a download may write its parts out of order
                if mode is not None:
                    os.fchmod(f.fileno(), stat.S_IMODE(mode))
                if mtime_ns is not None:  # the local store compares (size, mtime): an unchanged copy compares equal
                    os.utime(f.fileno(), ns=(mtime_ns, mtime_ns))
            os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=parent)
            raise
        return size


def remove_file(root: Path, relative: str) -> None:
    """Delete ``root/relative`` if it is there (a symlink is removed, not followed), then the directories it leaves
    empty. A path that cannot be reached without a symlink is not there."""
    try:
        with _parents(root, relative, create=False) as chain:
            parent, name = chain[-1]
            try:
                os.unlink(name, dir_fd=parent)
            except IsADirectoryError:
                return
            except FileNotFoundError:
                pass
            for above, directory in reversed(chain[:-1]):
                try:
                    os.rmdir(directory, dir_fd=above)
                except OSError:
                    break  # not empty (or gone): so is every directory above it
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        if exc.errno not in _REFUSED:
            raise


def prune(root: Path, keep: Collection[str]) -> dict[str, tuple[int, int]]:
    """Remove from ``root`` everything but the regular files in ``keep`` and the directories on the way to them;
    returns the kept files still there -> (size, mtime_ns), like ``base.snapshot``."""
    keep_dirs = directories_of(keep)
    found: dict[str, tuple[int, int]] = {}
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _prune(fd, "", set(keep), keep_dirs, found)
    finally:
        os.close(fd)
    return found


def _prune(fd: int, prefix: str, keep: set[str], keep_dirs: set[str], found: dict[str, tuple[int, int]]) -> None:
    with os.scandir(fd) as it:
        entries = list(it)
    for entry in entries:
        relative = prefix + entry.name
        if entry.is_dir(follow_symlinks=False):
            if relative in keep_dirs:
                sub = os.open(entry.name, _DIR, dir_fd=fd)
                try:
                    _prune(sub, relative + "/", keep, keep_dirs, found)
                finally:
                    os.close(sub)
            else:
                shutil.rmtree(entry.name, dir_fd=fd)  # fd-based: never follows a symlink inside
        elif entry.is_file(follow_symlinks=False) and relative in keep and relative not in keep_dirs:
            st = entry.stat(follow_symlinks=False)
            found[relative] = (st.st_size, st.st_mtime_ns)
        else:  # a symlink, fifo, socket, device, or a file the store does not have
            os.unlink(entry.name, dir_fd=fd)


@contextmanager
def _parents(root: Path, relative: str, *, create: bool) -> Iterator[list[tuple[int, str]]]:
    """The open directory fds on the way to ``relative``, each with the name of the next component:
    ``[(root_fd, "a"), (a_fd, "b"), (b_fd, "file")]``. Closed on exit."""
    parts = relative.split("/")
    chain: list[tuple[int, str]] = []
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            chain.append((fd, part))
            try:
                fd = os.open(part, _DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
                fd = os.open(part, _DIR, dir_fd=fd)
        chain.append((fd, parts[-1]))
        yield chain
    finally:
        for opened, _ in chain:
            os.close(opened)


@contextmanager
def _refused(relative: str) -> Iterator[None]:
    """A symlink or a file where a directory should be (or a directory where a file should be) -> refused."""
    try:
        yield
    except FileNotFoundError as exc:
        raise ArtifactNotFound(f"no file {relative!r}") from exc
    except OSError as exc:
        if exc.errno in _REFUSED:
            raise InvalidArtifactPath(
                f"{relative!r} cannot be reached without a symlink, or a file or directory is in its way"
            ) from exc
        raise
