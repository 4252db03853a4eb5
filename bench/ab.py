"""``python -m bench.ab BEFORE AFTER``: the same bench figures for two commits, run alternately on this host.

One run of a figure on a shared 2-core host moves by a tenth or more from the next (the same code read 152 and 199
steps/s at K = 50 in two 20-second windows of ``bench.profile_run`` a few minutes apart): a change is only seen
against its before when the two are run back to back, in an order that cancels the host's drift. Each commit is
checked out in a worktree of its own (``--work-dir``/<commit>, reused), and ``python -m bench --only ...`` runs from
it with ``PYTHONPATH`` pointing there, so every platform process it starts runs that commit's code. Each round runs
BEFORE, AFTER, AFTER, BEFORE, each on a freshly created bench database (dropped first: its tables and statistics do
not carry over). The table gives, for every number a figure reports, each side's median and AFTER / BEFORE;
``ab.json`` keeps every run.

    python -m bench.ab d4d8f6c HEAD --only cpu --rounds 2 --set AUTOGPT_MEMORY_BACKEND=none
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2 import sql

from bench.env import DEFAULT_DATABASE_URL, REPO_ROOT, admin_url, database_name

SIDES = ("before", "after")


def plan(rounds: int) -> list[str]:
    """The order of the runs: each round is before, after, after, before (a linear drift of the host cancels)."""
    return [side for _ in range(rounds) for side in ("before", "after", "after", "before")]


def numbers(results: dict[str, Any]) -> dict[str, float]:
    """``figure key.value name`` -> number, for every numeric value of every figure in a ``results.json``."""
    out: dict[str, float] = {}
    for fig in results.get("figures", []):
        for name, value in (fig.get("values") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"{fig['key']}.{name}"] = float(value)
    return out


Row = tuple[str, float, float, float, list[float], list[float]]


def summarize(runs: Iterable[tuple[str, dict[str, float]]]) -> list[Row]:
    """Per number: (name, median before, median after, after / before, the before runs, the after runs), for the
    numbers both sides reported."""
    by_side: dict[str, dict[str, list[float]]] = {side: {} for side in SIDES}
    for side, values in runs:
        for name, value in values.items():
            by_side[side].setdefault(name, []).append(value)
    rows = []
    for name in sorted(set(by_side["before"]) & set(by_side["after"])):
        before, after = by_side["before"][name], by_side["after"][name]
        b, a = statistics.median(before), statistics.median(after)
        rows.append((name, b, a, a / b if b else float("nan"), before, after))
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| value | before (median) | after (median) | after / before | before runs | after runs |",
             "|---|---|---|---|---|---|"]
    for name, b, a, ratio, before, after in rows:
        lines.append(f"| {name} | {_num(b)} | {_num(a)} | {ratio:.3f} | {', '.join(map(_num, before))} | "
                     f"{', '.join(map(_num, after))} |")
    return "\n".join(lines)


def _num(x: float) -> str:
    return f"{x:.4g}"


def worktree(ref: str, work_dir: Path) -> tuple[str, Path]:
    """The commit ``ref`` names, checked out (detached) in ``work_dir``/<short commit>; an existing one is reused."""
    commit = _git("rev-parse", "--verify", f"{ref}^{{commit}}").strip()
    path = work_dir / commit[:12]
    if not (path / ".git").exists():
        work_dir.mkdir(parents=True, exist_ok=True)
        _git("worktree", "add", "--detach", "-f", str(path), commit)
    elif _git("rev-parse", "HEAD", cwd=path).strip() != commit:
        _git("checkout", "--detach", "-q", commit, cwd=path)
    return commit, path


def _git(*args: str, cwd: Path = REPO_ROOT) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench.ab: git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def drop_database(url: str) -> None:
    """Drop the bench's database (the next run creates and migrates it anew)."""
    conn = psycopg2.connect(admin_url(url), application_name="autogpt-bench-ab")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database_name(url))))
    finally:
        conn.close()


def run_once(tree: Path, bench_args: list[str], out_dir: Path) -> dict[str, Any]:
    """``python -m bench`` from ``tree``; its results, or exits with the run's last lines when it failed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}
    log = out_dir / "bench.log"
    with log.open("w") as f:
        done = subprocess.run([sys.executable, "-m", "bench", *bench_args, "--out-dir", str(out_dir)], cwd=tree,
                              env=env, stdout=f, stderr=subprocess.STDOUT)
    results = out_dir / "results.json"
    if done.returncode != 0 or not results.exists():
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise SystemExit(f"bench.ab: the run in {tree} failed (exit {done.returncode}), {log}:\n{tail}")
    loaded: dict[str, Any] = json.loads(results.read_text())
    return loaded


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=(__doc__ or "").splitlines()[0])
    p.add_argument("before", help="a commit (any git ref)")
    p.add_argument("after", help="a commit (any git ref)")
    p.add_argument("--only", default="cpu", help="the figures, as python -m bench --only takes them (default cpu)")
    p.add_argument("--rounds", type=int, default=1, help="rounds of before, after, after, before (default 1)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="passed on to python -m bench")
    p.add_argument("--work-dir", type=Path, default=REPO_ROOT / "var" / "ab", help="worktrees and the runs' output")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    trees = {side: worktree(ref, args.work_dir) for side, ref in zip(SIDES, (args.before, args.after), strict=True)}
    database_url = os.environ.get("AUTOGPT_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    bench_args = ["--only", args.only, *(arg for s in args.set for arg in ("--set", s))]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    order = plan(args.rounds)
    runs: list[dict[str, Any]] = []
    for i, side in enumerate(order, 1):
        commit, tree = trees[side]
        print(f"bench.ab: run {i} of {len(order)}: {side} ({commit[:9]}) ...", flush=True)
        drop_database(database_url)
        started = time.perf_counter()
        results = run_once(tree, bench_args, args.work_dir / "runs" / stamp / f"{i:02d}-{side}")
        values = numbers(results)
        runs.append({"side": side, "commit": commit, "seconds": time.perf_counter() - started, "values": values,
                     "load_average_at_start": results.get("machine", {}).get("load_average_at_start")})
        print(f"bench.ab: run {i} done in {runs[-1]['seconds']:.0f} s", flush=True)
    rows = summarize((r["side"], r["values"]) for r in runs)
    command = "python -m bench.ab " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"\n$ {command}\nbefore {trees['before'][0][:9]}, after {trees['after'][0][:9]}, runs in the order "
          f"{', '.join(order)}\n\n{table(rows)}")
    out = args.work_dir / "runs" / stamp / "ab.json"
    out.write_text(json.dumps({"command": command, "before": trees["before"][0], "after": trees["after"][0],
                               "order": order, "runs": runs}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
