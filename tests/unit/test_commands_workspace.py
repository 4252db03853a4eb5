"""Workspace confinement: no absolute paths, no NUL bytes, no way out through ``..`` or symlinks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autogpt_workers.commands import Workspace
from autogpt_workers.errors import CommandError, WorkspaceEscape


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    workspace = Workspace(tmp_path / "ws")
    workspace.create()
    return workspace


def test_create_is_idempotent(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "a" / "b")
    assert workspace.create() == (tmp_path / "a" / "b").resolve()
    assert workspace.create().is_dir()


@pytest.mark.parametrize("path", ["notes.md", "dir/sub/file.txt", "./x", "a/../b", "dir/", "."])
def test_paths_inside_resolve_under_the_root(ws: Workspace, path: str) -> None:
    resolved = ws.resolve(path)
    assert resolved.is_relative_to(ws.root.resolve())


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("../x", "leads outside the workspace"),
        ("a/../../x", "leads outside the workspace"),
        ("..", "leads outside the workspace"),
        ("/etc/passwd", "is absolute"),
        ("//etc/passwd", "is absolute"),
        ("bad\x00name", "NUL byte"),
    ],
)
def test_escapes_are_refused(ws: Workspace, path: str, message: str) -> None:
    with pytest.raises(WorkspaceEscape, match=message):
        ws.resolve(path)


def test_symlink_pointing_outside_is_refused(ws: Workspace, tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "key.txt").write_text("secret")
    os.symlink(outside, ws.root / "door")
    os.symlink(outside / "key.txt", ws.root / "key-link")
    for path in ("door", "door/key.txt", "key-link", "door/new.txt"):
        with pytest.raises(WorkspaceEscape, match="outside the workspace"):
            ws.resolve(path)


def test_symlink_inside_the_workspace_is_fine(ws: Workspace) -> None:
    (ws.root / "real.txt").write_text("x")
    os.symlink(ws.root / "real.txt", ws.root / "alias.txt")
    assert ws.resolve("alias.txt") == (ws.root / "real.txt").resolve()


def test_escape_is_a_command_error_and_pickles(ws: Workspace) -> None:
    import pickle

    with pytest.raises(CommandError) as info:
        ws.resolve("../x")
    copy = pickle.loads(pickle.dumps(info.value))
    assert isinstance(copy, WorkspaceEscape) and str(copy) == str(info.value)


def test_relative_normalises(ws: Workspace) -> None:
    assert ws.relative(ws.resolve("./a//b/../c.txt")) == "a/c.txt"
    assert ws.relative(ws.resolve(".")) == "."


def test_symlink_loop_is_a_command_error(ws: Workspace) -> None:
    os.symlink(ws.root / "loop-b", ws.root / "loop-a")
    os.symlink(ws.root / "loop-a", ws.root / "loop-b")
    with pytest.raises(CommandError):
        ws.resolve("loop-a/x")
