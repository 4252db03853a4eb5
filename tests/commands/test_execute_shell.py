"""``execute_shell``: one allow-listed program, no shell, in the sandbox."""

from __future__ import annotations

import pytest

from autogpt_workers.commands import CommandContext, Sandbox
from autogpt_workers.commands.execute import ExecuteShell, ExecuteShellArgs, fit
from autogpt_workers.errors import CommandError


def shell(sandbox: Sandbox, ctx: CommandContext, command: str, programs: tuple[str, ...] | None = None) -> str:
    cmd = ExecuteShell(sandbox, programs) if programs else ExecuteShell(sandbox)
    return cmd.run(ExecuteShellArgs(command=command), ctx).output


def test_an_allowed_program_runs_in_the_workspace(sandbox: Sandbox, ctx: CommandContext) -> None:
    (ctx.workspace.root / "notes.md").write_text("alpha\nTODO beta\ngamma TODO\n")
    output = shell(sandbox, ctx, "grep -n TODO notes.md")
    assert output.splitlines()[1:] == ["2:TODO beta", "3:gamma TODO"]


def test_quoting_is_honoured_but_no_shell_runs(sandbox: Sandbox, ctx: CommandContext) -> None:
    output = shell(sandbox, ctx, "echo 'a  b' $HOME *.txt")
    assert output.splitlines()[1] == "a  b $HOME *.txt"  # no variables, no globbing


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("cat notes.md | wc -l", r"shell operators are not supported \(\|\)"),
        ("echo hi > out.txt", r"shell operators are not supported \(>\)"),
        ("ls; rm -rf /", r"shell operators are not supported \(;\)"),
        ("sort -u a && rm a", r"shell operators are not supported \(&&\)"),
        ("echo $(id)", r"shell operators are not supported \(\$ \( \)\)"),
        ("echo `id`", "shell operators are not supported"),
        ("echo a>b", r"shell operators are not supported \(>\)"),
        ("bash -c id", "program 'bash' is not allowed; allowed: ls, cat"),
        ("/bin/ls", "program '/bin/ls' is not allowed"),
        ("./ls", "program './ls' is not allowed"),
        ("echo 'unterminated", "cannot parse the command line: No closing quotation"),
    ],
)
def test_what_is_refused_before_anything_runs(
    sandbox: Sandbox, ctx: CommandContext, command: str, message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        shell(sandbox, ctx, command)


def test_a_failing_program_is_a_clear_error(sandbox: Sandbox, ctx: CommandContext) -> None:
    with pytest.raises(CommandError, match=r"(?s)the program failed: exit code 2 .*No such file"):
        shell(sandbox, ctx, "ls missing-dir")


def test_an_allowed_program_missing_from_the_host_is_a_clear_error(sandbox: Sandbox, ctx: CommandContext) -> None:
    with pytest.raises(CommandError, match=r"(?s)exit code 127.*cannot run 'no-such-tool'"):
        shell(sandbox, ctx, "no-such-tool --help", programs=("no-such-tool",))


def test_the_allow_list_is_in_the_tool_description(sandbox: Sandbox) -> None:
    schema = ExecuteShell(sandbox, ("ls", "wc")).tool_schema()["function"]
    assert schema["description"].endswith("Allowed programs: ls, wc. No pipes or redirections.")


def test_fit_keeps_head_and_tail() -> None:
    text = "".join(f"{i:05d}\n" for i in range(10_000))
    cut = fit(text, 1_000)
    assert len(cut) <= 1_000 and cut.startswith("00000\n") and cut.endswith("09999\n") and "omitted" in cut
    assert fit("short", 1_000) == "short"
