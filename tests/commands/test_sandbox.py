"""The code sandbox against hostile programs: every one ends as a clear error, the caller lives on, and nothing of
the program survives its run. Runs real processes in real namespaces (the tests run as root here)."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autogpt_workers.commands import CommandContext, Sandbox, SandboxUnavailable
from autogpt_workers.commands.execute import ExecutePython, ExecutePythonArgs
from autogpt_workers.errors import CommandError
from tests.commands.conftest import FAST_LIMITS, sandbox_uids_in_use


def run_python(sandbox: Sandbox, ctx: CommandContext, code: str) -> str:
    command = ExecutePython(sandbox)
    return command.run(ExecutePythonArgs(code=code), ctx).output


def fails_with(sandbox: Sandbox, ctx: CommandContext, code: str) -> str:
    with pytest.raises(CommandError) as caught:
        run_python(sandbox, ctx, code)
    message = str(caught.value)
    assert message.startswith("the program failed: "), message
    assert "[limits: CPU 2 s, wall 6 s" in message
    return message


@pytest.fixture(autouse=True)
def _nothing_survives(sandbox: Sandbox, tmp_path: Path) -> object:
    yield
    assert sandbox_uids_in_use() == []  # no process of any sandbox uid outlives its run
    after = tmp_path / "after"
    after.mkdir()
    assert sandbox.run(["true"], after, {}).ok  # and the next run works


def test_a_program_runs_in_the_workspace_as_its_own_unprivileged_user(sandbox: Sandbox, ctx: CommandContext) -> None:
    (ctx.workspace.root / "input.txt").write_text("from the host")
    output = run_python(
        sandbox,
        ctx,
        "import os\n"
        "print(os.getcwd(), os.getuid() >= 200000, os.getgid() == os.getuid(), os.getgroups())\n"
        "print(open('input.txt').read())\n"
        "os.makedirs('out', exist_ok=True); open('out/result.txt', 'w').write('made inside')\n",
    )
    assert output.startswith("[exit code 0, ")
    assert "/workspace True True []" in output and "from the host" in output
    # the file is in the workspace, given back to the worker's user
    result = ctx.workspace.root / "out" / "result.txt"
    assert result.read_text() == "made inside"
    assert result.stat().st_uid == os.geteuid()


def test_files_written_by_the_program_are_reported(sandbox: Sandbox, ctx: CommandContext) -> None:
    (ctx.workspace.root / "same.txt").write_text("unchanged")
    command = ExecutePython(sandbox)
    result = command.run(ExecutePythonArgs(code="open('new.txt','w').write('1')\nopen('same.txt').read()"), ctx)
    assert result.files_written == ["new.txt"]


def test_fork_bomb_hits_the_process_limit(sandbox: Sandbox, ctx: CommandContext) -> None:
    message = fails_with(sandbox, ctx, "import os\nwhile True:\n    os.fork()\n")
    assert "Resource temporarily unavailable" in message  # fork() refused by RLIMIT_NPROC for the run's uid


def test_shell_fork_bomb_is_contained_too(sandbox: Sandbox, ctx: CommandContext) -> None:
    code = (
        "import os, subprocess, time\n"
        "subprocess.Popen(['sh', '-c', 'b() { b | b & }; b'])\n"
        "time.sleep(1.5)\n"
        "print('processes:', len([p for p in os.listdir('/proc') if p.isdigit()]))\n"
    )
    output = run_python(sandbox, ctx, code)  # the bomb runs on when we exit: PID 1's end takes it down
    count = int(output.split("processes:")[1].split()[0])
    assert count <= FAST_LIMITS.max_processes + 1  # the run's uid may hold max_processes; +1 for init


def test_memory_hog_gets_a_memory_error(sandbox: Sandbox, ctx: CommandContext) -> None:
    message = fails_with(sandbox, ctx, "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 2**20))\n")
    assert "MemoryError" in message


def test_infinite_loop_is_stopped_by_the_cpu_limit(ctx: CommandContext, tmp_path: Path) -> None:
    patient = Sandbox(dataclasses.replace(FAST_LIMITS, wall_seconds=60), runtime_dir=tmp_path / "rt")
    with pytest.raises(CommandError, match="killed by SIGXCPU: the CPU time limit of 2 s was exceeded"):
        run_python(patient, ctx, "while True:\n    pass\n")


def test_a_sleeping_program_is_stopped_by_the_wall_clock_limit(sandbox: Sandbox, ctx: CommandContext) -> None:
    message = fails_with(sandbox, ctx, "import os, time\nif os.fork() == 0:\n    time.sleep(600)\ntime.sleep(600)\n")
    assert "stopped: the wall-clock limit of 6 s was exceeded" in message
    assert "Traceback" not in message  # the run was ended cleanly, nothing of ours crashed


def test_a_stop_request_ends_the_run_at_once_with_everything_in_it(sandbox: Sandbox, ctx: CommandContext) -> None:
    asked_at: list[float] = []

    def should_stop() -> str | None:
        if (ctx.workspace.root / "started").exists():
            asked_at.append(time.monotonic())
            return "the task was cancelled"
        return None

    code = "import os, time\nos.fork()\nopen('started', 'w').close()\nwhile True:\n    time.sleep(0.05)\n"
    stopping = dataclasses.replace(ctx, should_stop=should_stop)
    with pytest.raises(CommandError) as caught:
        run_python(sandbox, stopping, code)
    ended = time.monotonic()
    assert "stopped early: the task was cancelled" in str(caught.value)
    assert asked_at and ended - asked_at[0] < 3  # not the 6 s wall-clock limit
    assert sandbox_uids_in_use() == []  # the forked child went too


def test_a_worker_killed_mid_run_takes_its_sandbox_with_it(tmp_path: Path) -> None:
    """SIGKILL of the worker: the sandbox sees its lifeline close and ends everything inside."""
    marker = tmp_path / "ws" / "started"
    (tmp_path / "ws").mkdir()
    worker = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\nfrom pathlib import Path\nfrom autogpt_workers.commands import Sandbox, SandboxLimits\n"
         f"box = Sandbox(SandboxLimits(wall_seconds=600, cpu_seconds=600), runtime_dir=Path({str(tmp_path)!r}))\n"
         f"box.run(['python3', '/tmp/main.py'], Path({str(tmp_path / 'ws')!r}), "
         "{'main.py': 'import os, time\\nos.fork()\\nopen(\"started\", \"w\").close()\\ntime.sleep(600)'})\n"],
    )
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < deadline and worker.poll() is None, "the sandboxed program did not start"
        time.sleep(0.1)
    assert sandbox_uids_in_use() != []
    worker.kill()
    worker.wait()
    deadline = time.monotonic() + 10
    while sandbox_uids_in_use():
        assert time.monotonic() < deadline, f"left behind: {sandbox_uids_in_use()}"
        time.sleep(0.1)


def test_a_huge_file_is_cut_at_the_file_size_limit(sandbox: Sandbox, ctx: CommandContext) -> None:
    message = fails_with(sandbox, ctx, "with open('big.bin', 'wb') as f:\n    f.write(b'x' * 8 * 2**20)\n")
    assert "File too large" in message
    assert (ctx.workspace.root / "big.bin").stat().st_size <= FAST_LIMITS.file_size_bytes


def test_the_hosts_etc_passwd_is_not_there(sandbox: Sandbox, ctx: CommandContext) -> None:
    message = fails_with(sandbox, ctx, "print(open('/etc/passwd').read())")
    assert "FileNotFoundError" in message and "/etc/passwd" in message
    assert "root:x:0:0" not in message


def test_only_the_sandbox_root_is_visible(sandbox: Sandbox, ctx: CommandContext, tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("host secret")
    code = (
        "import os\n"
        "print(sorted(os.listdir('/')))\n"
        "print(sorted(p for p in os.listdir('/proc') if p.isdigit()))\n"
        f"print(os.path.exists({str(tmp_path / 'outside.txt')!r}), os.path.exists('/work'), "
        "os.path.exists('/root'), os.path.exists('/var/run/postgresql'))\n"
    )
    output = run_python(sandbox, ctx, code)
    assert "['bin', 'dev', 'etc', 'lib', 'lib64', 'proc', 'sbin', 'tmp', 'usr', 'workspace']" in output
    assert "['1', '2']" in output  # the namespace's init and the program: no host process is visible
    assert "False False False False" in output


def test_read_only_system_and_no_privilege_back(sandbox: Sandbox, ctx: CommandContext) -> None:
    code = (
        "import os\n"
        "for path in ('/usr/evil', '/etc/evil', '/evil'):\n"
        "    try:\n"
        "        open(path, 'w')\n"
        "        print('WROTE', path)\n"
        "    except OSError as exc:\n"
        "        print('refused', path, exc.strerror)\n"
        "try:\n"
        "    os.setuid(0)\n"
        "    print('ROOT AGAIN')\n"
        "except PermissionError:\n"
        "    print('setuid refused')\n"
    )
    output = run_python(sandbox, ctx, code)
    assert "WROTE" not in output and "ROOT AGAIN" not in output
    assert output.count("refused") == 4


def test_no_network_not_even_to_this_host(sandbox: Sandbox, ctx: CommandContext) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        message = fails_with(
            sandbox, ctx, f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
        )
    assert "Network is unreachable" in message
    assert "[note: executed code has no network access; use web_fetch for allow-listed URLs]" in message


def test_name_resolution_fails_clearly(sandbox: Sandbox, ctx: CommandContext) -> None:
    code = "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=3)\n"
    message = fails_with(sandbox, ctx, code)
    assert "URLError" in message or "gaierror" in message


def test_the_workers_secrets_do_not_reach_the_program(
    sandbox: Sandbox, ctx: CommandContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-worker-secret-123")
    monkeypatch.setenv("AUTOGPT_DATABASE_URL", "postgresql://admin:hunter2@db/prod")
    code = (
        "import os\n"
        "print(dict(os.environ))\n"
        "for pid in [p for p in os.listdir('/proc') if p.isdigit()] + ['self']:\n"
        "    try:\n"
        "        print(pid, open(f'/proc/{pid}/environ').read())\n"
        "    except OSError as exc:\n"
        "        print(pid, 'unreadable:', exc.strerror)\n"
    )
    output = run_python(sandbox, ctx, code)
    assert "sk-worker-secret-123" not in output and "hunter2" not in output
    assert "'PATH': '/usr/local/bin:/usr/bin:/bin'" in output
    assert "1 unreadable: Permission denied" in output  # the namespace's init runs as root


def test_long_output_keeps_its_head_and_its_tail(sandbox: Sandbox, ctx: CommandContext) -> None:
    code = "print('START')\nfor i in range(100000):\n    print('line', i)\nraise SystemExit('the END')\n"
    message = fails_with(sandbox, ctx, code)
    assert len(message) <= 4_000 + 200
    assert "START" in message and "the END" in message and "omitted" in message


def test_setuid_bits_are_stripped_when_the_workspace_comes_back(sandbox: Sandbox, ctx: CommandContext) -> None:
    run_python(sandbox, ctx, "import os\nopen('tool','w').write('x')\nos.chmod('tool', 0o6755)\n")
    mode = (ctx.workspace.root / "tool").stat().st_mode
    assert mode & 0o6000 == 0 and mode & 0o755 == 0o755


def test_without_root_code_execution_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = Sandbox(FAST_LIMITS, runtime_dir=tmp_path / "rt")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SandboxUnavailable, match="code execution is disabled on this worker: the worker does not "
                                                 "run as root"):
        box.run(["true"], tmp_path, {})


def test_every_sandbox_uid_in_use_means_a_clear_refusal(tmp_path: Path, sandbox: Sandbox) -> None:
    box = Sandbox(FAST_LIMITS, runtime_dir=tmp_path / "rt", uid_base=300_000, uid_count=1)
    box._probed, box._unavailable = True, None  # skip the probe: it would take the only uid
    with box.uids.lease(), pytest.raises(CommandError, match="all 1 sandbox uids on this host are in use"):
        box.run(["true"], tmp_path, {})
