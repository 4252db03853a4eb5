"""The think worker's gevent pool: which command lines patch, and a shutdown waker that does not stall the greenlets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from autogpt_workers.celery_app import check_worker_options
from autogpt_workers.config import Settings
from autogpt_workers.green import DEFAULT_POOL, requested_pool
from tests.conftest import REPO_ROOT

# in a patched process's script, in place of a ``# TICKER`` line (``with_ticker``): a greenlet that counts every
# 10 ms, so a call that holds the process's one thread shows as ticks missed while it runs
TICKER = """\
ticks = [0]
def tick():
    while True:
        ticks[0] += 1
        time.sleep(0.01)
threading.Thread(target=tick, daemon=True).start()
time.sleep(0.05)
"""


def with_ticker(script: str) -> str:
    return textwrap.dedent(script).replace("# TICKER\n", TICKER)


@pytest.mark.parametrize(
    ("argv", "environ", "dotenv", "expected"),
    [
        (["autogpt-workers", "worker", "--queue", "think", "--pool", "gevent"], {}, {}, "gevent"),
        (["cli.py", "worker", "--queue=think", "--pool=gevent"], {}, {}, "gevent"),
        (["cli.py", "worker", "--queue", "think"], {"AUTOGPT_THINK_POOL": "gevent"}, {}, "gevent"),
        (["cli.py", "worker", "--queue", "think"], {}, {"AUTOGPT_THINK_POOL": "gevent"}, "gevent"),
        (["cli.py", "worker", "--queue", "think"], {"AUTOGPT_THINK_POOL": "threads"}, {"AUTOGPT_THINK_POOL": "gevent"},
         "threads"),
        (["cli.py", "worker", "--queue", "think", "--pool", "threads"], {"AUTOGPT_THINK_POOL": "gevent"}, {},
         "threads"),
        (["cli.py", "worker", "--queue", "think"], {}, {}, "gevent"),  # the default
        # only a think worker: the act worker is prefork, every other command is left alone
        (["cli.py", "worker", "--queue", "act"], {"AUTOGPT_THINK_POOL": "gevent"}, {}, None),
        (["cli.py", "api"], {"AUTOGPT_THINK_POOL": "gevent"}, {}, None),
        (["pytest", "tests/unit", "worker", "--queue", "think"], {"AUTOGPT_THINK_POOL": "gevent"}, {}, None),
        (["cli.py"], {"AUTOGPT_THINK_POOL": "gevent"}, {}, None),
    ],
)
def test_the_pool_comes_from_the_command_line_then_the_environment_then_dotenv(
    argv: list[str], environ: dict[str, str], dotenv: dict[str, str | None], expected: str | None
) -> None:
    assert requested_pool(argv, environ, lambda: dotenv) == expected


def test_the_early_default_is_the_settings_default() -> None:
    assert Settings.model_fields["think_pool"].default == DEFAULT_POOL


def test_a_gevent_worker_without_the_patch_is_refused() -> None:
    """This test process is not patched: a raw ``celery worker -P gevent`` in such a process would block every
    greenlet on psycopg2 and the pipe reads. Eventlet is refused outright."""
    s = Settings()
    [problem] = check_worker_options({"pool_cls": "gevent", "queues": ["autogpt.think"]}, s)
    assert "patched" in problem
    assert any("eventlet" in p for p in check_worker_options({"pool_cls": "eventlet", "queues": ["autogpt.think"]}, s))


def test_the_signal_waker_lets_the_other_greenlets_run_while_it_waits() -> None:
    """Under gevent, ``os.read`` on the waker's pipe would block the whole process until the signal; the waker
    waits in (patched) ``select`` instead. A ticking greenlet keeps ticking, and the wake still runs the target."""
    script = textwrap.dedent(
        """
        from autogpt_workers.green import patch
        patch()
        import threading, time
        from autogpt_workers.celery_app import SignalWaker
        ran = threading.Event()
        ticks = [0]
        def tick():
            while not ran.is_set():
                ticks[0] += 1
                time.sleep(0.01)
        waker = SignalWaker(ran.set, "test-waker")
        threading.Thread(target=tick, daemon=True).start()
        time.sleep(0.5)
        before = ticks[0]
        waker.wake()
        assert ran.wait(5), "the target did not run"
        print(before)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) >= 10  # about 50 in 0.5 s; 0 if the waker's read held the process


def test_the_cli_patches_a_gevent_think_worker_and_no_other_command() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.argv = ["autogpt-workers", *sys.argv[1:]]
        import autogpt_workers.cli
        import socket
        from autogpt_workers.green import patched
        print(patched(), "gevent" in type(socket.socket).__module__ or "gevent" in socket.socket.__module__)
        """
    )
    for args, expected in ((["worker", "--queue", "think", "--pool", "gevent"], "True True"),
                           (["worker", "--queue", "think"], "True True"),
                           (["worker", "--queue", "think", "--pool", "threads"], "False False"),
                           (["api"], "False False")):
        env = {k: v for k, v in os.environ.items() if k != "AUTOGPT_THINK_POOL"}
        out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=REPO_ROOT,
                             env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[-2:] == expected.split(), (args, out.stdout)


def test_an_offloaded_call_runs_on_a_real_thread_under_gevent_and_inline_otherwise() -> None:
    """A call that blocks in C code (here the unpatched ``time.sleep``) holds every greenlet unless it is offloaded:
    offloaded, a ticking greenlet keeps ticking while it runs, and its result and its exception reach the caller."""
    script = with_ticker(
        """
        from autogpt_workers.green import patch, offload
        patch()
        import threading, time
        from gevent import monkey
        c_sleep = monkey.get_original("time", "sleep")
        # TICKER
        def blocking(x):
            c_sleep(0.5)
            return x * 2, threading.get_native_id()
        start = ticks[0]
        value, native = offload(blocking, 21)
        offloaded_ticks = ticks[0] - start
        start = ticks[0]
        blocking(1)
        inline_ticks = ticks[0] - start
        def fails():
            raise KeyError("boom")
        try:
            offload(fails)
        except KeyError as exc:
            raised = str(exc)
        print(value, native != threading.get_native_id(), offloaded_ticks, inline_ticks, raised)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    value, other_thread, offloaded_ticks, inline_ticks, raised = out.stdout.split()
    assert value == "42" and other_thread == "True" and raised == "'boom'"
    assert int(offloaded_ticks) >= 10 and int(inline_ticks) <= 1, out.stdout  # ~50 in 0.5 s offloaded, 0 inline


def test_offload_is_a_plain_call_in_an_unpatched_process() -> None:
    import threading

    from autogpt_workers.green import offload

    assert offload(lambda a, b: (a + b, threading.get_ident()), 1, b=2) == (3, threading.get_ident())


def test_the_memory_layer_under_gevent_embeds_and_stores_from_many_greenlets_at_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The local model's encoding and the embedded store's SQLite calls run on gevent's real threads. Code run there
    must take no gevent lock (two native threads contending for one hung: the first version of this change stalled
    a think worker on the embedder's lock) and keep its SQLite connection per OS thread. Thirty greenlets write and
    search at once; a ticking greenlet shows the process was never held."""
    from autogpt_workers.memory.local_embeddings import LocalEmbedder

    if not LocalEmbedder.available():
        pytest.skip("the local-embeddings extra is not installed")
    script = textwrap.dedent(
        f"""
        from autogpt_workers.green import patch
        patch()
        import gevent
        from autogpt_workers.memory.base import NewMemory
        from autogpt_workers.memory.embedded import SqliteVecStore
        from autogpt_workers.memory.local_embeddings import LocalEmbedder
        embedder = LocalEmbedder()
        embedder.embed(["warm up"])
        store = SqliteVecStore({str(tmp_path / "m.sqlite3")!r}, embedder.dims, embedder.model)
        store.ensure_schema()
        def agent(i):
            memories = [NewMemory(tenant_id="t", text=f"memory {{i}} {{j}}") for j in range(5)]
            store.upsert(memories, embedder.embed([m.text for m in memories]))
            return store.search("t", embedder.embed([f"memory {{i}}"])[0], 3)
        ticks = [0]
        def tick():
            while True:
                ticks[0] += 1
                gevent.sleep(0.01)
        gevent.spawn(tick)
        agents = [gevent.spawn(agent, i) for i in range(30)]
        gevent.joinall(agents, timeout=60)
        print(sum(a.successful() for a in agents), store.count("t"), ticks[0])
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    done, count, ticks = (int(x) for x in out.stdout.split()[-3:])
    assert (done, count) == (30, 150)
    assert ticks >= 5, ticks


def test_the_llm_transport_waits_cooperatively_under_gevent(no_proxy_env: None) -> None:
    """The LLM client's transport (``lean_transport``) on gevent's sockets: 50 greenlets each wait 0.3 s for the fake
    LLM at once and all finish in about that time (one after another would take 15 s), kept-alive connections are
    reused by the second round, and a ticking greenlet keeps ticking meanwhile."""
    script = textwrap.dedent(
        """
        from autogpt_workers.green import patch
        patch()
        import json, threading, time
        import gevent
        from autogpt_workers.llm import lean_transport
        from autogpt_workers.llm.openai_chat import make_client
        from tests.fake_llm.client import FakeLLMControl, start_fake_llm
        connects = [0]
        connect = lean_transport.LeanTransport._connect
        def counting(self, *args):
            connects[0] += 1
            return connect(self, *args)
        lean_transport.LeanTransport._connect = counting
        ticks = [0]
        def tick():
            while True:
                ticks[0] += 1
                time.sleep(0.01)
        with start_fake_llm() as server:
            FakeLLMControl(server.base_url).set_config(latency_s=0.3)
            client = make_client(server.openai_base_url, None, 10.0, 64)
            body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
            def call():
                return json.loads(client.post("/chat/completions", content=body, cast_to=bytes))["object"]
            gevent.spawn(tick)
            walls = []
            for _ in range(2):
                start = time.monotonic()
                calls = [gevent.spawn(call) for _ in range(50)]
                gevent.joinall(calls, timeout=30, raise_error=True)
                walls.append(time.monotonic() - start)
                assert all(c.value == "chat.completion" for c in calls), [c.value for c in calls]
        print(json.dumps({"walls": walls, "connects": connects[0], "ticks": ticks[0]}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert max(result["walls"]) < 5.0, result  # concurrent: one after another is 50 x 0.3 s
    assert result["connects"] == 50, result  # the second round reused the first round's connections
    assert result["ticks"] >= 20, result


def test_a_gevent_worker_shares_celery_thread_state_among_its_greenlets() -> None:
    """Celery's per-thread backend and oid are per greenlet under gevent (a new backend per task); a green worker
    whose results are off shares its thread's among the greenlets, and a new greenlet builds nothing."""
    script = textwrap.dedent(
        """
        from autogpt_workers.green import patch
        patch()
        import gevent
        from autogpt_workers.celery_app import app, prepare_green_worker
        def state():
            return id(app.backend), app.thread_oid
        before = [gevent.spawn(state) for _ in range(2)]
        gevent.joinall(before, raise_error=True)
        assert before[0].value != before[1].value, "expected a backend per greenlet before"
        prepare_green_worker(app.conf)
        after = [gevent.spawn(state) for _ in range(3)]
        gevent.joinall(after, raise_error=True)
        assert len({g.value for g in after}) == 1, [g.value for g in after]
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "ok"


def test_write_files_fsync_moves_off_the_hub_once_the_disk_is_slow(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An inline ``write_file`` on a think worker: a quick ``fsync`` runs on the hub's thread (a hop to a thread
    would cost the step more); once one took longer than ``SLOW_FSYNC_S`` (here 0.5 s, as on a slow network volume,
    which holds the ticking greenlet), the next ones run on a real thread and the ticker keeps ticking. Every file
    is written, and the switch is logged once."""
    script = with_ticker(
        """
        import sys
        from autogpt_workers.green import patch
        patch()
        import json, os, threading, time
        from pathlib import Path
        from gevent import monkey
        from autogpt_workers.commands import CommandContext, Workspace
        from autogpt_workers.commands import files
        c_sleep = monkey.get_original("time", "sleep")
        delay = [0.0]
        synced = []
        def fsync(fd):  # the disk's wait only: a real fsync could itself pass 2 ms on a busy disk
            c_sleep(delay[0])
            synced.append(threading.get_native_id() == main)
        os.fsync = fsync
        main = threading.get_native_id()
        # TICKER
        workspace = Workspace(Path(sys.argv[1]))
        workspace.create()
        ctx = CommandContext(workspace=workspace, task_id="t1", step_index=0)
        command = files.WriteFile()
        def write(name):
            start = ticks[0]
            command.run(command.parse_args({"path": name, "content": name}), ctx)
            return ticks[0] - start
        write("quick.txt")
        delay[0] = 0.5
        slow, offloaded = write("slow.txt"), write("offloaded.txt")
        texts = [(workspace.root / n).read_text() for n in ("quick.txt", "slow.txt", "offloaded.txt")]
        print(json.dumps({"texts": texts, "on_hub": synced, "slow": slow, "offloaded": offloaded}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "ws")], capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["texts"] == ["quick.txt", "slow.txt", "offloaded.txt"]
    assert got["on_hub"] == [True, True, False], got  # quick and slow on the hub's thread, then a real one
    assert got["slow"] <= 1 and got["offloaded"] >= 10, got  # ~50 ticks in 0.5 s off the hub, 0 on it
    assert (out.stdout + out.stderr).count("workspace_fsync_slow") == 1  # the operator hears of the slow disk once
