"""``python -m bench``: run every figure on the local stack, print one table, write results.json and results.png.

    python -m bench                 # the issue's sizes (about 6-8 minutes on 2 cores)
    python -m bench --quick         # tiny sizes: checks the harness, the numbers mean nothing
    python -m bench --only latency,throughput --think-concurrency 500
    python -m bench --only longterm # the long-term memory figures alone (bench.memory_bench), no platform

The bench uses its own database and vhost (AUTOGPT_BENCH_DATABASE_URL / AUTOGPT_BENCH_BROKER_URL, default
``autogpt_bench``): it empties their tables and queues between figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from bench import report
from bench.env import REPO_ROOT, BenchEnv
from bench.figure import Figure, Unavailable
from bench.params import FULL, QUICK, Params

T = TypeVar("T")
FIGURES = ("latency", "throughput", "cpu", "submit", "memory", "peer", "longterm")
PLATFORM_FIGURES = set(FIGURES) - {"longterm"}  # "longterm" needs no platform: it runs after the stack stops


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test): checks the harness only")
    p.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated subset of: {', '.join(FIGURES)}")
    p.add_argument("--memory", action="store_true", help="no-op for old command lines: longterm is in every run")
    p.add_argument("--think-concurrency", type=int, help="think worker threads (default: the platform's setting)")
    p.add_argument("--act-concurrency", type=int, help="act worker processes (default: the platform's setting)")
    p.add_argument("--ks", help="comma-separated K values for the throughput figure (default 50,200,500)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every platform process, e.g. --set AUTOGPT_MEMORY_BACKEND=none (repeatable)",
    )
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "bench", help="where results.json/.png go")
    p.add_argument("--work-dir", type=Path, default=REPO_ROOT / "var" / "bench", help="logs and workspaces")
    p.add_argument("--database-url", help="default: AUTOGPT_BENCH_DATABASE_URL or .../autogpt_bench")
    p.add_argument("--broker-url", help="default: AUTOGPT_BENCH_BROKER_URL or .../autogpt_bench")
    args = p.parse_args(argv)
    unknown = set(args.only.split(",")) - set(FIGURES)
    if unknown:
        p.error(f"unknown figures {sorted(unknown)}; choose from {', '.join(FIGURES)}")
    return args


class BenchRun:
    def __init__(self, env: BenchEnv, params: Params, only: set[str]) -> None:
        self.env = env
        self.params = params
        self.only = only
        self.errors: dict[str, str] = {}
        self.unavailable: dict[str, str] = {}
        self.started = time.monotonic()
        self.figures: list[Figure] = []
        self.machine: dict[str, Any] = {}
        self.reset: Callable[[], None] | None = None

    def say(self, message: str) -> None:
        print(f"[bench {time.monotonic() - self.started:6.1f}s] {message}", file=sys.stderr, flush=True)

    def step(self, name: str, fn: Callable[[], T]) -> T | None:
        """Run one measurement; an exception becomes an error note on its figure, never the end of the run."""
        self.say(f"{name} ...")
        t0 = time.monotonic()
        try:
            result = fn()
        except Unavailable as exc:
            self.unavailable[name] = str(exc)
            self.say(f"{name}: n/a ({exc})")
            return None
        except Exception as exc:
            self.errors[name] = f"{type(exc).__name__}: {exc}"
            with open(self.env.log_dir / "bench-errors.log", "a") as log:
                log.write(f"--- {name}\n{traceback.format_exc()}\n")
            self.say(f"{name} FAILED: {self.errors[name]}")
            self._reset()
            return None
        self.say(f"{name} done in {time.monotonic() - t0:.1f}s")
        return result

    def _reset(self) -> None:
        """After a failed figure: stop the workers, empty the queues and tables, so the next one starts clean."""
        if self.reset is None:
            return
        try:
            self.reset()
        except Exception as exc:
            self.say(f"reset after the failure failed too: {exc}")

    def why(self, *names: str) -> str:
        reasons = [self.unavailable[n] for n in names if n in self.unavailable]
        reasons += [f"{n} failed: {self.errors[n]}" for n in names if n in self.errors]
        return "; ".join(reasons) or "not run"

    def run(self) -> list[Figure]:
        """Start what every figure needs (processes start in parallel: the machine is small), then measure."""
        from bench.floor import Floor
        from bench.machine import describe
        from bench.stack import Platform

        env, p = self.env, self.params
        shutil.rmtree(env.work_dir / "workspaces", ignore_errors=True)
        shutil.rmtree(env.work_dir / "peer-workspaces", ignore_errors=True)
        platform = Platform(env)
        floor = Floor(env, *self._concurrency()) if self.only & {"latency", "cpu"} else None
        try:
            with ThreadPoolExecutor(2) as pool:
                llm = pool.submit(platform.start_llm)
                # its imports overlap the migration; it touches the database only later. One uvicorn process per
                # core, as the think workers: a process's Python runs on one core at a time
                platform.spawn_api(workers=os.cpu_count() or 1)
                env.ensure_services()
                env.purge_queues()  # what an interrupted run left
                self.say("database and vhost ready, schema migrated")
                if floor is not None:
                    floor.start(p.floor_noop_tasks)
                if p.quick:  # the quick run reuses one set of workers throughout
                    platform.start_workers(p.think_concurrency, p.act_concurrency)
                api = pool.submit(platform.wait_api)
                platform.ensure_api_key()
                api.result()
                llm.result()
                self.say("API and fake LLM up")
            with env.sql() as db:
                env.truncate(db)
                self.machine = describe(env, db)
                self._measure(platform, db, floor)
        finally:
            if floor is not None:
                floor.stop()
            platform.stop()
        return self.figures

    def _concurrency(self) -> tuple[int, int]:
        from autogpt_workers.config import Settings

        s = Settings()
        return self.params.think_concurrency or s.think_concurrency, self.params.act_concurrency or s.act_concurrency

    def _measure(self, platform: Any, db: Any, floor: Any) -> None:
        from bench import cpu, latency, peer, submit_api, throughput, worker_memory

        p, env, only = self.params, self.env, self.only
        think_c, _ = self._concurrency()
        workers = (p.think_concurrency, p.act_concurrency)

        def fresh_workers() -> None:
            platform.start_workers(*workers)
            platform.warm_up(db)

        def reset() -> None:
            platform.stop_workers(grace_s=2.0)
            env.purge_queues()
            db.close()  # it may be the connection that failed
            env.truncate(db)

        self.reset = reset

        def ensure_workers() -> None:
            if not platform.workers or any(not w.alive() for w in platform.workers.values()):
                self.step("workers", fresh_workers)

        def measure_floor() -> Any:
            from autogpt_workers.config import Settings

            try:  # a bench step (write_file) is one hop when the think worker runs the command itself
                return floor.measure(p.latency_steps, hops_per_step=1 if Settings().inline_act else 2)
            finally:
                floor.stop()  # its workers leave the machine to the platform

        def measure_submit() -> Any:
            return submit_api.measure_submit(
                platform, env, db, p.submit_clients, p.submit_duration_s, keep_workers=p.quick
            )

        def measure_cpu() -> Any:
            return [
                cpu.measure_cpu(
                    platform, env, db, p.cpu_tasks, p.cpu_steps, p.stats_settle_s, *workers, restart=not p.quick
                )
                for _ in range(p.cpu_rounds)
            ]

        def measure_memory() -> Any:
            if not p.quick:
                fresh_workers()  # idle RSS is a fresh worker's, after one warm-up task
            ensure_workers()
            try:
                return worker_memory.measure_memory(platform, db, p.memory_agents, p.memory_llm_latency_s, think_c)
            finally:  # the agents wait on a slow LLM: stop the workers rather than wait (quick: a short wait)
                env.settle(db) if p.quick else reset()

        def measure_throughput(k: int) -> Any:
            return throughput.measure_throughput(
                platform, env, db, k, p.llm_latency_s, p.throughput_warmup_s, p.throughput_window_s
            )

        def measure_peer() -> Any:
            return peer.measure_peer(
                platform, env, db, p.peer_tasks, p.llm_latency_s, p.throughput_warmup_s, p.throughput_window_s
            )

        floor_result = self.step("floor", measure_floor) if floor is not None else None
        submit = self.step("submit API", measure_submit) if "submit" in only else None
        cpu_result = self.step("cpu and costs", measure_cpu) if "cpu" in only else None
        ours_latency = None
        if "latency" in only:
            ensure_workers()
            ours_latency = self.step("latency", lambda: latency.measure_latency(platform, db, p.latency_steps))
        memory = self.step("worker memory", measure_memory) if "memory" in only else None
        tputs: dict[int, Any] = {}
        if "throughput" in only:
            for k in p.throughput_ks:
                ensure_workers()
                r = self.step(f"throughput K={k}", lambda k=k: measure_throughput(k))  # type: ignore[misc]
                if r is not None:
                    tputs[k] = r
        peer_result = self.step("peer (LangGraph)", measure_peer) if "peer" in only else None

        # -- the table, in the order ---------------------------------------------------------------------
        figs = self.figures
        floor_note = self.why("floor")
        if "latency" in only:
            figs.append(
                latency.latency_figure(p.latency_steps, *ours_latency, floor_result, floor_note)
                if ours_latency is not None
                else Figure.unavailable(latency.KEY, "per-step latency", self.why("workers", "latency"))
            )
        if "throughput" in only:
            for k in p.throughput_ks:
                figs.append(
                    throughput.throughput_figure(tputs[k], p.throughput_goal(k), think_c)
                    if k in tputs
                    else Figure.unavailable(f"throughput_k{k}", f"steps/s, K = {k}", self.why(f"throughput K={k}"))
                )
        if "cpu" in only:
            if cpu_result is not None:
                figs += [
                    cpu.cpu_figure(cpu_result, floor_result, floor_note),
                    cpu.costs_figure(cpu.median_round(cpu_result)),
                ]
            else:
                figs += [
                    Figure.unavailable(cpu.CPU_KEY, "CPU per step and steps/s", self.why("cpu and costs")),
                    Figure.unavailable(cpu.COSTS_KEY, "transactions and messages per step", self.why("cpu and costs")),
                ]
        if "submit" in only:
            figs.append(
                submit_api.submit_figure(submit)
                if submit is not None
                else Figure.unavailable(submit_api.KEY, "submit API", self.why("submit API"))
            )
        if "memory" in only:
            figs.append(
                worker_memory.memory_figure(memory)
                if memory is not None
                else Figure.unavailable(worker_memory.KEY, "think-worker RSS", self.why("worker memory"))
            )
        if "peer" in only:
            ours = tputs.get(p.peer_tasks)
            figs.append(
                peer.peer_figure(peer_result, ours.steps_per_s if ours else None)
                if peer_result is not None
                else Figure.unavailable(peer.KEY, "peer: LangGraph", self.why("peer (LangGraph)"))
            )


def _longterm(quick: bool, run: BenchRun) -> list[Figure]:
    """The long-term memory figures (``bench.memory_bench``): recall of the local model on the labelled set beside
    a lexical baseline, top-5 latency of the embedded store beside a numpy scan. Run after the platform stopped,
    so its processes do not share the cores."""
    from bench import memory_bench

    figures = run.step("long-term memory", lambda: memory_bench.run(quick=quick))
    if figures is not None:
        return figures
    sizes = memory_bench.QUICK_SIZES if quick else memory_bench.FULL_SIZES
    why = run.why("long-term memory")
    return [
        Figure.unavailable(memory_bench.RECALL_KEY, "memory recall@5, local model", why),
        *(Figure.unavailable(memory_bench.topk_key(s), f"embedded store top-5, {s:,} memories", why) for s in sizes),
    ]


def _stop_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop every process we started


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGHUP, _stop_on_signal)
    params = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {"think_concurrency": args.think_concurrency, "act_concurrency": args.act_concurrency}
    if args.ks:
        overrides["throughput_ks"] = tuple(int(k) for k in args.ks.split(","))
    params = dataclasses.replace(params, **{k: v for k, v in overrides.items() if v is not None})
    env = BenchEnv.from_environ(args.database_url, args.broker_url, None, args.work_dir.resolve())
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"--set wants NAME=VALUE, got {item!r}", file=sys.stderr)
            return 2
        env.overrides[name] = value
    env.log_dir.mkdir(parents=True, exist_ok=True)
    # this process publishes floor tasks and reads settings too: point it at the bench's services
    os.environ.update(env.process_env())

    run = BenchRun(env, params, set(args.only.split(",")))
    started_at = datetime.now(UTC)
    if run.only & PLATFORM_FIGURES:
        figures = run.run()
    else:  # nothing that needs the stack
        from bench.machine import describe

        figures, run.machine = [], describe(env, None)
    if "longterm" in run.only:
        figures += _longterm(params.quick, run)
    duration = time.monotonic() - run.started
    run.machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]

    from bench.machine import one_line

    print(report.text_report(figures))
    verdicts = [f.verdict for f in figures]
    print(
        f"\n{verdicts.count('pass')} pass, {verdicts.count('miss')} miss, {verdicts.count('n/a')} n/a "
        f"in {duration:.0f} s on {one_line(run.machine)}"
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "started_at": started_at.isoformat(),
        "duration_s": duration,
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": run.machine,
        "params": dataclasses.asdict(params),
        "settings": env.overrides,
        "figures": [f.as_dict() for f in figures],
        "errors": run.errors,
    }
    report.write_json(args.out_dir / "results.json", payload)
    chart = args.out_dir / "results.png"
    if importlib.util.find_spec("matplotlib") is not None:
        report.write_chart(chart, figures, report_subtitle(run.machine, started_at))
        print(f"wrote {args.out_dir / 'results.json'} and {chart}")
    else:
        print(f"wrote {args.out_dir / 'results.json'}; no chart (matplotlib missing: pip install -e '.[bench]')")
    if run.errors:
        print(f"errors (details in {env.log_dir / 'bench-errors.log'}): {run.errors}", file=sys.stderr)
        return 1
    return 0


def report_subtitle(machine: dict[str, Any], started_at: datetime) -> str:
    return f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, {started_at:%Y-%m-%d %H:%M} UTC"


if __name__ == "__main__":
    sys.exit(main())
