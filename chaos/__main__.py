"""``python -m chaos``: run the chaos scenarios and print the checker's table; exit 1 if any bar fails.

    python -m chaos                          # every scenario, twice (make chaos)
    python -m chaos --scenario poison        # one scenario (repeatable option)
    python -m chaos --trimmed                # the short version run inside make test
    python -m chaos --list
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

from chaos.checker import Result, percentile, table
from chaos.platform import REPO_ROOT
from chaos.scenarios import catalogue
from chaos.suite import Sizes, Suite


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m chaos", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--scenario", action="append", help="run only this scenario (repeatable); see --list")
    p.add_argument("--trimmed", action="store_true", help="few tasks, two scenarios, no service restarts")
    p.add_argument("--repeat", type=int, help="runs per scenario (default 2, trimmed 1)")
    p.add_argument("--tasks", type=int, help="tasks per run (default 50, trimmed 20)")
    p.add_argument("--steps", type=int, default=10, help="steps per task (default 10)")
    p.add_argument("--work-dir", type=Path, default=REPO_ROOT / "var" / "chaos", help="logs and journals")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--keep-services", action="store_true", help="leave the private services' data directory")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--set", action="append", default=[], metavar="AUTOGPT_X=VALUE", type=_setting,
                   help="a setting for every platform process (repeatable), e.g. AUTOGPT_THINK_POOL=gevent")
    return p.parse_args(argv)


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("AUTOGPT_"):
        raise argparse.ArgumentTypeError(f"expected AUTOGPT_NAME=VALUE, got {text!r}")
    return name, value


def main(argv: list[str] | None = None) -> int:
    """SIGTERM unwinds like Ctrl-C: the platform's processes and the private services are stopped on the way out."""
    if threading.current_thread() is not threading.main_thread():
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    scenarios = catalogue(trimmed=args.trimmed)
    if args.list:
        for s in catalogue().values():
            print(f"{s.name:18} {s.summary}")
        return 0
    if args.scenario:
        unknown = [n for n in args.scenario if n not in catalogue()]
        if unknown:
            print(f"unknown scenario(s): {', '.join(unknown)}; see --list", file=sys.stderr)
            return 2
        full = catalogue(trimmed=args.trimmed) | {n: catalogue()[n] for n in args.scenario if n not in scenarios}
        scenarios = {n: full[n] for n in args.scenario}
    repeat = args.repeat or (1 if args.trimmed else 2)
    sizes = Sizes(tasks=args.tasks or (20 if args.trimmed else 50), steps=args.steps,
                  settle_s=300 if args.trimmed else 600)
    work_dir = args.work_dir / time.strftime("%Y%m%d-%H%M%S")
    results: list[Result] = []
    with Suite(work_dir, sizes, keep_services=args.keep_services, settings=dict(args.set)) as suite:
        for scenario in scenarios.values():
            for run in range(1, repeat + 1):
                result = suite.run(scenario, run)
                results.append(result)
                print(table([result]), flush=True)
    command = "python -m chaos " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"\n$ {command.strip()}\n{table(results)}")
    if args.json:
        args.json.write_text(json.dumps([_as_json(r) for r in results], indent=2))
    failed = [f"{r.scenario} #{r.run}" for r in results if not r.passed]
    print(f"\nchaos: {len(results) - len(failed)} of {len(results)} runs passed every bar"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _as_json(r: Result) -> dict[str, object]:
    return {
        "scenario": r.scenario,
        "run": r.run,
        "passed": r.passed,
        "tasks": r.tasks,
        "faults": r.faults,
        "fault_detail": r.fault_detail,
        "not_terminal": r.not_terminal,
        "steps_lost": r.steps_lost,
        "committed_twice": r.committed_twice,
        "missing": r.missing,
        "unexpected": r.unexpected,
        "rebought": r.rebought,
        "rebought_allowed": r.rebought_allowed,
        "recovery_p50_s": percentile(r.recovery_s, 50),
        "recovery_p99_s": percentile(r.recovery_s, 99),
        "recovery_samples": len(r.recovery_s),
        "unrecovered": r.unrecovered,
        "checks": [{"name": c.name, "value": c.value, "ok": c.ok} for c in r.checks],
        "duration_s": r.duration_s,
    }


if __name__ == "__main__":
    sys.exit(main())
