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


def _reference(root: Path, relative: str) -> object:
    """What ``Workspace.resolve`` answered when it was ``(root / relative).resolve()`` under the resolved root."""
    resolved_root = root.resolve()
    try:
        target = (resolved_root / relative).resolve()
    except (OSError, RuntimeError):
        return "error"
    return target if target.is_relative_to(resolved_root) else "escape"


def _answer(ws: Workspace, relative: str) -> object:
    try:
        return ws.resolve(relative)
    except WorkspaceEscape:
        return "escape"
    except CommandError:
        return "error"


def test_resolve_agrees_with_a_full_walk_on_every_path_of_a_tricky_tree(tmp_path: Path) -> None:
    """The walk below the root (``_below``) answers as ``Path.resolve`` does: symlinks in and out, relative and
    absolute, dangling, looping, chained; missing parts; a file used as a directory; ``.`` and ``..``."""
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "secret.txt").write_text("s")
    real = tmp_path / "real-ws"
    (real / "a" / "b").mkdir(parents=True)
    (real / "f.txt").write_text("f")
    (real / "a" / "g.txt").write_text("g")
    os.symlink(real / "a", real / "in-abs")
    os.symlink("a/b", real / "in-rel")
    os.symlink("f.txt", real / "in-file")
    os.symlink(outside, real / "out-abs")
    os.symlink("../outside", real / "out-rel")
    os.symlink("a/../../outside/secret.txt", real / "out-file")
    os.symlink("nowhere", real / "dangling")
    os.symlink("loop-b", real / "loop-a")
    os.symlink("loop-a", real / "loop-b")
    os.symlink("in-abs", real / "chain")
    os.symlink(real, tmp_path / "ws-link")  # a workspace root that is itself a symlink
    parts = ["a", "b", "f.txt", "g.txt", "in-abs", "in-rel", "in-file", "out-abs", "out-rel", "out-file",
             "dangling", "loop-a", "chain", "missing", "..", ".", "deep", "secret.txt"]  # fmt: skip
    paths = ["", "./", "a//b", "a/b/", *parts]
    paths += [f"{x}/{y}" for x in parts for y in parts]
    paths += [f"{x}/{y}/{z}" for x in parts[:14] for y in parts[:14] for z in ("a", "b", "..", "new.txt")]
    for root in (real, tmp_path / "ws-link"):
        ws = Workspace(root)
        mismatches = [(p, _answer(ws, p), _reference(root, p)) for p in paths if _answer(ws, p) != _reference(root, p)]
        assert not mismatches, mismatches[:5]
        assert ws.resolved_root() == real.resolve()


def test_a_write_file_step_looks_up_only_the_parts_below_the_root(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cost this walk exists for: resolving ``notes/today.md`` looks at two paths, not every directory
    from ``/`` down (``Path.resolve`` looked at all of them, and a step resolved three times)."""
    root = ws.resolved_root()
    (ws.root / "notes").mkdir()
    looked: list[str] = []
    real_lstat = os.lstat

    def counting(path: object, *args: object, **kwargs: object) -> os.stat_result:
        looked.append(str(path))
        return real_lstat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "lstat", counting)
    assert ws.resolve("notes/today.md") == root / "notes" / "today.md"
    assert looked == [str(root / "notes"), str(root / "notes" / "today.md")]
