"""``python -m bench.profile_run``: hold K tasks in flight on the bench's stack and look inside for a while.

Starts the platform as ``make bench`` does (fake LLM, API, two think workers, act worker, reaper, dispatcher),
submits K tasks whose LLM answers after L seconds, waits for them to get going, then for ``--seconds``: counts
committed steps, the platform's CPU per step (as the throughput figure does) and every process's CPU per step by
name (PostgreSQL and RabbitMQ included), and with ``--spy PREFIX`` records each think worker with py-spy
(``--gil``: only the thread holding the GIL is sampled, so the samples are where the Python CPU goes) into
``PREFIX-think.txt``, ``PREFIX-think-2.txt`` (py-spy's raw format; ``--top`` sums them), and prints the samples'
shares by function and by area of the step (``AREAS``). ``--windows N`` cuts the window in N and prints each one's
steps/s and CPU per step beside the steps a task had committed (how long a think's history was). With ``--tasks 0`` the
platform idles through the window, and the bench database's transactions are counted per second: the platform's
periodic rounds (dispatcher, reaper), and one per connection opened (a backend's start-up counts as a commit). A
profiling aid: one window, no warm-up discipline; ``make bench`` makes the figures.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from bench.env import BenchEnv, Sql, xact_counts
from bench.procs import CpuMeter, cpu_seconds
from bench.stack import Platform, steps_goal

COMPLETED = "SELECT count(*) FROM steps WHERE status = 'completed'"


def cpu_by_name() -> dict[str, float]:
    """CPU seconds of every live process on the host, by command name."""
    out: dict[str, float] = collections.defaultdict(float)
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")].split("/")[0]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[name] += (int(fields[11]) + int(fields[12])) / ticks
    return out


def thread_switches(pids: list[int]) -> tuple[int, int]:
    """Voluntary and involuntary context switches of every thread of these processes, so far (threads that ended
    are not counted: the think workers' pool threads live as long as their process)."""
    voluntary = involuntary = 0
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    voluntary += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    involuntary += int(line.split()[1])
    return voluntary, involuntary


def _stacks(files: list[str]) -> Iterator[tuple[str, int]]:
    """(stack, samples) of each line of py-spy raw files."""
    for name in files:
        for line in Path(name).read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack:
                yield stack, int(count)


def top(files: list[str], limit: int = 60) -> str:
    """Inclusive share of samples per function (line numbers dropped), over py-spy raw files."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for stack, n in _stacks(files):
        total += n
        for frame in {re.sub(r":\d+\)$", ")", f) for f in stack.split(";")}:
            inclusive[frame] += n
    rows = [f"{n / total:6.1%} {frame}" for frame, n in inclusive.most_common(limit)] if total else []
    return "\n".join([f"{total} samples", *rows])


# where a think worker's Python time goes, by the first of these (in this order) that a sample's stack contains: a
# sample inside the LLM call is the LLM call's, whatever it calls; one inside none is "other"
AREAS = (
    ("LLM call (openai client, httpx)", ("OpenAIChatModel.complete",)),
    ("prompt and proposal (agent)", ("build_messages", "Agent._proposal", "Agent.allowed_commands", "agent/loop.py")),
    ("claim (ledger)", ("StepRunner._claim",)),
    ("proposal and commit (ledger)", ("StepRunner._persist",)),
    ("publish (broker)", ("StepRunner._publish",)),
    ("command (act)", ("StepRunner._run_command.<locals>.run", "StepRunner._act_pure")),
    ("history records", ("_Records",)),
    ("logging", ("logging/__init__.py", "structlog/")),
    ("metrics", ("PrometheusObserver", "prometheus_client")),
    ("published marks", ("PublishMarks",)),
    ("helper threads, lease waits", ("Hold.", "DaemonThreads", "LeaseKeeper")),
    ("Celery: receive, ack, pool, trace", ("celery/", "kombu/", "amqp/", "concurrent/futures")),
)


def areas(files: list[str]) -> str:
    """Share of samples per area of the step (``AREAS``), over py-spy raw files of think workers."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for stack, n in _stacks(files):
        total += n
        counts[next((a for a, marks in AREAS if any(m in stack for m in marks)), "other")] += n
    rows = [f"{n / total:6.1%} {area}" for area, n in counts.most_common()] if total else []
    return "\n".join([f"{total} samples, by area of the step", *rows])


def _windows(db: Sql, platform: Platform, thinkers: list[str], tasks: int, seconds: float, count: int) -> str:
    """``seconds`` cut into ``count`` windows: in each, the steps committed per second, the steps a task had
    committed on average (the history a think sends), and the CPU per step of the think workers and of the fake LLM
    (whose work grows with the request)."""
    think = [platform.workers[name].pid for name in thinkers]
    assert platform.fake is not None  # started before the workers
    llm = platform.fake.process.pid

    def sample() -> tuple[int, float, float, float]:
        return (
            int(db.scalar(COMPLETED)),
            sum(cpu_seconds(pid) for pid in think),
            cpu_seconds(llm),
            time.perf_counter(),
        )

    lines = ["| window | steps/s | steps per task (mid-window) | think workers' CPU ms/step | fake LLM's CPU ms/step |",
             "|---|---|---|---|---|"]  # fmt: skip
    last = sample()
    for index in range(count):
        time.sleep(seconds / count)
        now = sample()
        steps = max(1, now[0] - last[0])
        lines.append(
            f"| {index + 1} | {steps / (now[3] - last[3]):.1f} | {(now[0] + last[0]) / 2 / max(1, tasks):.0f} | "
            f"{(now[1] - last[1]) / steps * 1000:.2f} | {(now[2] - last[2]) / steps * 1000:.2f} |"
        )
        last = now
    return "\n".join(lines)


def _spy_args(spy: str, pid: int, seconds: float) -> list[str]:
    return [spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "100", "-f", "raw", "--nonblocking", "--gil"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--latency", type=float, default=1.0, help="the fake LLM's answer time, seconds")
    parser.add_argument("--seconds", type=float, default=20.0, help="the measured window")
    parser.add_argument("--steps", type=int, default=0, help="steps per task (default: enough for the window)")
    parser.add_argument("--think-workers", type=int, help="think processes (default: one per core)")
    parser.add_argument("--think-concurrency", type=int, help="think threads in all, shared out among the processes")
    parser.add_argument(
        "--windows", type=int, default=1, help="cut the window in N and print steps/s and CPU per step in each"
    )
    parser.add_argument("--spy", metavar="PREFIX", help="record the think workers with py-spy into PREFIX-*.txt")
    parser.add_argument("--top", nargs="+", metavar="FILE", help="only sum py-spy raw files, then exit")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a platform setting")
    parser.add_argument("--work-dir", default="bench/.profile-work")
    args = parser.parse_args()
    if args.top:
        print(top(args.top))
        print(areas(args.top))
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if args.spy and not Path(spy).exists():
        parser.error("--spy needs py-spy: pip install py-spy")
    env = BenchEnv.from_environ(None, None, None, Path(args.work_dir).resolve())
    env.work_dir.mkdir(parents=True, exist_ok=True)
    for item in args.set:
        name, _, value = item.partition("=")
        env.overrides[name] = value
    platform = Platform(env)
    platform.start_llm()
    platform.spawn_api(workers=1)
    env.ensure_services()
    env.purge_queues()
    platform.wait_api()
    platform.ensure_api_key()
    try:
        with env.sql() as db:
            env.truncate(db)
            platform.start_workers(args.think_concurrency, None, args.think_workers)
            platform.warm_up(db)
            if args.tasks == 0:
                time.sleep(12)  # idle backends flush their statistics within 10 s
                x0, t0 = xact_counts(env.database_url, env.database), time.perf_counter()
                meters = {name: CpuMeter([proc.pid]).start() for name, proc in platform.workers.items()}
                time.sleep(args.seconds + 11)
                x1, elapsed = xact_counts(env.database_url, env.database), time.perf_counter() - t0
                idle_cpu = {name: round(meter.stop() / elapsed * 1000, 1) for name, meter in meters.items()}
                print(f"idle platform, CPU ms per second by process: {idle_cpu}")
                commits, rollbacks = (x1.commits - x0.commits) / elapsed, (x1.rollbacks - x0.rollbacks) / elapsed
                print(f"idle platform, the bench database's counters: {commits:.1f} commits/s, "
                      f"{rollbacks:.1f} read-only transactions/s")  # fmt: skip
                return
            platform.set_llm_latency(args.latency)
            steps = args.steps or int((args.seconds + 30) / max(args.latency, 0.05)) + 5
            platform.submit([steps_goal(steps, "profile")] * args.tasks, max_steps=steps + 1)
            time.sleep(8)  # the tasks get going
            c0, before = db.scalar(COMPLETED), cpu_by_name()
            meter = CpuMeter(platform.sessions()).start()
            t0 = time.perf_counter()
            thinkers = [name for name in platform.workers if name == "think" or name.startswith("think-")]
            switches0 = thread_switches([platform.workers[name].pid for name in thinkers])
            spies = [
                subprocess.Popen(
                    [*_spy_args(spy, proc.pid, args.seconds), "-o", f"{args.spy}-{name}.txt"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for name, proc in platform.workers.items()
                if args.spy and name in thinkers
            ]
            if args.windows > 1:
                print(_windows(db, platform, thinkers, args.tasks, args.seconds, args.windows))
            else:
                time.sleep(args.seconds)
            for p in spies:
                p.wait()
            c1, after = db.scalar(COMPLETED), cpu_by_name()
            switches1 = thread_switches([platform.workers[name].pid for name in thinkers])
            meter.stop()
            elapsed = time.perf_counter() - t0
            n = max(1, c1 - c0)
            by_name = {k: round((after[k] - before.get(k, 0.0)) / n * 1000, 2) for k in after}
            print(f"K = {args.tasks}, L = {args.latency:g} s: {(c1 - c0) / elapsed:.1f} steps/s; platform CPU "
                  f"{meter.seconds / n * 1000:.1f} ms/step; host busy {meter.host_busy:.0%}")  # fmt: skip
            print("CPU ms per step by process name:", {k: v for k, v in sorted(by_name.items()) if v >= 0.05})
            print(f"think workers' thread switches per step: {(switches1[0] - switches0[0]) / n:.1f} voluntary, "
                  f"{(switches1[1] - switches0[1]) / n:.1f} involuntary")  # fmt: skip
            if spies:
                print(top([f"{args.spy}-{name}.txt" for name in thinkers], 40))
                print(areas([f"{args.spy}-{name}.txt" for name in thinkers]))
    finally:
        platform.stop()


if __name__ == "__main__":
    main()
