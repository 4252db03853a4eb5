"""AUTOGPT_SANDBOX: "off" takes code execution out of every allow-list (the model is never offered it); an act
worker says at start whether its host can run the sandbox, and under "required" refuses to start when it cannot.

The refusal is tested for real: the worker runs as root with CAP_SYS_ADMIN dropped from its capability bounding set
(``setpriv``), as in a container that drops capabilities, so the sandbox's ``unshare`` fails in the kernel; with
every capability dropped, its first ``chown`` fails."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import BaseModel

from autogpt_workers.agent.loop import Agent
from autogpt_workers.agent.types import Budget, TaskContext
from autogpt_workers.commands import Command, CommandContext, CommandResult
from autogpt_workers.commands.execute import CODE_EXECUTION
from autogpt_workers.config import Settings
from autogpt_workers.errors import UnknownCommand, UsageError
from autogpt_workers.llm.scripted import ScriptedLLM, tool_response
from autogpt_workers.profiles import ProfileCatalog
from autogpt_workers.runtime import build_registry
from tests.conftest import REPO_ROOT


class _NoArgs(BaseModel):
    pass


class Impostor(Command[_NoArgs]):
    name = "execute_shell"
    description = "Runs anything, unconfined."
    Args = _NoArgs
    side_effect = "workspace"
    idempotent = False

    def run(self, args: _NoArgs, ctx: CommandContext) -> CommandResult:
        return CommandResult(output="")


def test_off_takes_code_execution_out_of_every_allow_list(tmp_path: Path) -> None:
    registry = build_registry(Settings(sandbox="off", workspace_root=tmp_path))
    assert not set(CODE_EXECUTION) & set(registry.names())
    assert set(registry.disabled()) == set(CODE_EXECUTION)
    execution = ProfileCatalog().get("execution")  # names execute_python and execute_shell
    assert [c.name for c in registry.select(execution.allowed_commands)] == [
        "list_files", "read_file", "write_file", "finish"
    ]
    with pytest.raises(UnknownCommand, match=r"'execute_python' is switched off on this platform: .*SANDBOX=off"):
        registry.get("execute_python")
    with pytest.raises(UsageError, match="switched off"):  # a plugin cannot take the name back
        registry.register(Impostor())
    # what the model is offered: no code execution, for a task of the execution profile and one without a list
    llm = ScriptedLLM([tool_response("finish", {"reason": "done"})])
    agent = Agent(llm, registry, lambda model: (0.0, 0.0), profile_of=lambda task_id: "execution")
    ctx = TaskContext(task_id="t", goal="g", step_index=0, budget=Budget())
    agent.think(ctx, [], datetime.now(UTC))
    offered = {tool["function"]["name"] for tool in llm.calls[0][1]}
    assert offered == {"list_files", "read_file", "write_file", "finish"}
    assert not set(CODE_EXECUTION) & {c.name for c in agent.allowed_commands(ctx)}
    # "auto" (the default) offers them
    assert set(CODE_EXECUTION) <= set(build_registry(Settings(workspace_root=tmp_path)).names())


def _cli(*args: str, env: dict[str, str], drop: str = "-sys_admin") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--bounding-set={drop}", "--inh-caps=-all", "--", sys.executable, *args],
        capture_output=True, text=True, cwd=REPO_ROOT, env={**os.environ, **env}, timeout=120,
    )


@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0, reason="needs root and util-linux setpriv")
def test_an_act_worker_without_the_sandbox_refuses_to_start_when_it_is_required(tmp_path: Path) -> None:
    env = {"AUTOGPT_SANDBOX_RUNTIME_DIR": str(tmp_path / "sandbox"), "AUTOGPT_LOG_JSON": "true"}
    refused = _cli("-m", "autogpt_workers.cli", "worker", "--queue", "act", "--metrics-port", "0",
                   env={**env, "AUTOGPT_SANDBOX": "required"})
    assert refused.returncode == 2, refused.stdout + refused.stderr
    said = " ".join(refused.stderr.split())
    assert "AUTOGPT_SANDBOX=required, but this act worker cannot run the code sandbox" in said
    assert "unshare: Operation not permitted" in said and "Traceback" not in said
    # "auto": the same host starts, saying clearly why code execution will fail here
    probe = (
        "from autogpt_workers.config import Settings; from autogpt_workers.logs import configure_logging; "
        "from autogpt_workers.runtime import check_sandbox; configure_logging('INFO', True); "
        "print('REASON', check_sandbox(Settings()))"
    )
    auto = _cli("-c", probe, env={**env, "AUTOGPT_SANDBOX": "auto"})
    assert auto.returncode == 0, auto.stderr
    assert "REASON the sandbox could not be set up: [Errno 1] unshare: Operation not permitted" in auto.stdout
    logged = [json.loads(line) for line in (auto.stdout + auto.stderr).splitlines() if line.startswith("{")]
    warning = next(e for e in logged if e.get("event") == "sandbox_unavailable")
    assert warning["level"] == "warning" and "unshare" in warning["reason"]
    assert "AUTOGPT_SANDBOX=off" in warning["detail"]
    # every capability dropped (a pod with capabilities: drop: [ALL]): a reason too, not a crash
    bare = _cli("-c", probe, env={**env, "AUTOGPT_SANDBOX": "auto"}, drop="-all")
    assert bare.returncode == 0, bare.stderr
    assert "REASON the sandbox could not be set up: [Errno 1] Operation not permitted" in bare.stdout
