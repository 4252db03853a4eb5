"""The built-in file commands and ``finish``, run directly against a temporary workspace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autogpt_workers.commands import CommandContext, Workspace
from autogpt_workers.commands.base import truncate_output
from autogpt_workers.commands.files import ListFiles, ReadFile, WriteFile
from autogpt_workers.commands.finish import Finish
from autogpt_workers.errors import CommandError, WorkspaceEscape


@pytest.fixture
def ctx(tmp_path: Path) -> CommandContext:
    workspace = Workspace(tmp_path / "ws")
    workspace.create()
    return CommandContext(workspace=workspace, task_id="t1", step_index=3, max_output_chars=200)


def _write(ctx: CommandContext, path: str, content: str, max_bytes: int = 1000) -> list[str]:
    command = WriteFile(max_bytes=max_bytes)
    return command.run(command.parse_args({"path": path, "content": content}), ctx).files_written


def test_context_idempotency_key(ctx: CommandContext) -> None:
    assert ctx.idempotency_key == "t1:3"


def test_write_creates_parents_and_reports_the_normalised_path(ctx: CommandContext) -> None:
    assert _write(ctx, "./docs//notes/../plan.md", "# Plan") == ["docs/plan.md"]
    assert (ctx.workspace.root / "docs" / "plan.md").read_text() == "# Plan"


def test_write_replaces_atomically_and_leaves_no_temp_file(ctx: CommandContext) -> None:
    _write(ctx, "a.txt", "one")
    _write(ctx, "a.txt", "two")
    assert (ctx.workspace.root / "a.txt").read_text() == "two"
    assert sorted(p.name for p in ctx.workspace.root.iterdir()) == ["a.txt"]


def test_write_refuses_content_over_the_cap(ctx: CommandContext) -> None:
    with pytest.raises(CommandError, match="is 11 bytes; the limit is 10 bytes"):
        _write(ctx, "big.txt", "x" * 11, max_bytes=10)
    assert not (ctx.workspace.root / "big.txt").exists()
    _write(ctx, "ok.txt", "é" * 5, max_bytes=10)  # the cap counts UTF-8 bytes


def test_write_refuses_a_directory_and_a_file_as_parent(ctx: CommandContext) -> None:
    (ctx.workspace.root / "d").mkdir()
    with pytest.raises(CommandError, match="is a directory"):
        _write(ctx, "d", "x")
    _write(ctx, "f", "x")
    with pytest.raises(CommandError, match=r"cannot write 'f/g\.txt'"):
        _write(ctx, "f/g.txt", "x")


def test_write_through_an_escaping_symlink_is_refused(ctx: CommandContext, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, ctx.workspace.root / "link")
    with pytest.raises(WorkspaceEscape):
        _write(ctx, "link/pwned.txt", "x")
    assert list(outside.iterdir()) == []


def test_read_returns_the_text(ctx: CommandContext) -> None:
    _write(ctx, "a.txt", "hello\nworld")
    assert ReadFile().run(ReadFile.Args(path="a.txt"), ctx).output == "hello\nworld"


def test_read_truncates_with_a_note(ctx: CommandContext) -> None:
    _write(ctx, "long.txt", "y" * 1000)
    output = ReadFile().run(ReadFile.Args(path="long.txt"), ctx).output
    assert len(output) <= ctx.max_output_chars
    assert output.startswith("yyy")
    assert "[truncated: long.txt is 1000 bytes; showing the first" in output


@pytest.mark.parametrize(
    ("setup", "path", "message"), [(None, "nope.txt", "no such file"), ("dir", "d", "is a directory")]
)
def test_read_errors(ctx: CommandContext, setup: str | None, path: str, message: str) -> None:
    if setup == "dir":
        (ctx.workspace.root / "d").mkdir()
    with pytest.raises(CommandError, match=message):
        ReadFile().run(ReadFile.Args(path=path), ctx)


def test_read_empty_and_binary_files(ctx: CommandContext) -> None:
    (ctx.workspace.root / "empty").write_bytes(b"")
    (ctx.workspace.root / "blob").write_bytes(b"\x00\x01\x02")
    assert ReadFile().run(ReadFile.Args(path="empty"), ctx).output == "(empty is empty)"
    assert "binary file of 3 bytes" in ReadFile().run(ReadFile.Args(path="blob"), ctx).output


def test_list_is_recursive_sorted_and_relative(ctx: CommandContext) -> None:
    for path in ("b.txt", "a/z.txt", "a/b/c.txt", "c/"):
        if path.endswith("/"):
            (ctx.workspace.root / path).mkdir()
        else:
            _write(ctx, path, "x")
    output = ListFiles().run(ListFiles.Args(), ctx).output
    assert output.splitlines() == ["a/", "a/b/", "a/b/c.txt", "a/z.txt", "b.txt", "c/"]
    assert ListFiles().run(ListFiles.Args(path="a/b"), ctx).output == "a/b/c.txt"
    assert ListFiles().run(ListFiles.Args(path="b.txt"), ctx).output == "b.txt"


def test_list_is_bounded(ctx: CommandContext) -> None:
    for i in range(30):
        (ctx.workspace.root / f"f{i:02}").write_text("")
    output = ListFiles(max_entries=10).run(ListFiles.Args(), ctx).output
    lines = output.splitlines()
    assert lines[:10] == [f"f{i:02}" for i in range(10)]
    assert lines[10] == "[listing stopped at 10 entries; list a subdirectory to see more]"


def test_list_does_not_follow_symlinks(ctx: CommandContext, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("s")
    os.symlink(outside, ctx.workspace.root / "link")
    assert ListFiles().run(ListFiles.Args(), ctx).output == "link"


def test_list_empty_and_missing(ctx: CommandContext) -> None:
    assert ListFiles().run(ListFiles.Args(), ctx).output == "(. is empty)"
    with pytest.raises(CommandError, match="no such directory"):
        ListFiles().run(ListFiles.Args(path="missing"), ctx)
    with pytest.raises(WorkspaceEscape):
        ListFiles().run(ListFiles.Args(path=".."), ctx)


def test_finish_is_last(ctx: CommandContext) -> None:
    result = Finish().run(Finish.Args(reason="all done"), ctx)
    assert result.is_last and result.output == "all done" and result.files_written == []


def test_truncate_output_respects_the_bound() -> None:
    assert truncate_output("short", 100) == "short"
    cut = truncate_output("z" * 1000, 100)
    assert len(cut) <= 100 and cut.startswith("z") and "of 1000 characters" in cut
