"""Follow a task over the HTTP API and show its steps as they happen (``submit --wait``, ``run``)."""

from __future__ import annotations

import time
from typing import Any

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

TERMINAL = {"completed", "failed", "cancelled"}


def _short(value: Any, width: int = 90) -> str:
    text = str(value).replace("\n", " ⏎ ")
    return text if len(text) <= width else text[: width - 1] + "…"


def print_step(console: Console, step: dict[str, Any]) -> None:
    mark = "[red]✗[/]" if step["is_error"] or step["status"] == "failed" else "[green]✓[/]"
    args = step.get("arguments") or {}
    arg_text = ", ".join(f"{k}={_short(v, 40)!s}" for k, v in args.items())
    console.print(f"{mark} step {step['step_index']}: [bold]{step.get('command') or '-'}[/]({arg_text})")
    if step.get("thought"):
        console.print(f"    [dim]thought:[/] {_short(step['thought'])}")
    if step.get("output") is not None:
        console.print(f"    [dim]output:[/]  {_short(step['output'])}")
    if step.get("error") and step["status"] == "failed":
        console.print(f"    [red]error:[/]   {_short(step['error'])}")


def follow(client: httpx.Client, task_id: str, console: Console, poll_s: float = 0.3,
           timeout_s: float | None = None) -> dict[str, Any]:
    """Print each step once it is committed; return the task when it ends (or when ``timeout_s`` passes)."""
    shown: set[int] = set()
    started = time.monotonic()
    task: dict[str, Any] = client.get(f"/v1/tasks/{task_id}").raise_for_status().json()
    total = task["budget"].get("max_steps") or 0
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        bar = progress.add_task(f"task {task_id[:8]} {task['status']}", total=total or None)
        while True:
            task = client.get(f"/v1/tasks/{task_id}").raise_for_status().json()
            steps = client.get(f"/v1/tasks/{task_id}/steps").raise_for_status().json()
            for step in steps:
                if step["status"] in ("completed", "failed") and step["step_index"] not in shown:
                    shown.add(step["step_index"])
                    print_step(progress.console, step)
            progress.update(bar, completed=task["steps_completed"],
                            description=f"task {task_id[:8]} {task['status']}")
            if task["status"] in TERMINAL:
                break
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                break
            time.sleep(poll_s)
    return task


def summary(console: Console, task: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None)
    colour = {"completed": "green", "failed": "red", "cancelled": "yellow"}.get(task["status"], "cyan")
    table.add_row("task", task["id"])
    table.add_row("status", f"[{colour}]{task['status']}[/]")
    table.add_row("steps", str(task["steps_completed"]))
    usage = task["usage"]
    table.add_row("tokens", f"{usage['total_tokens']} ({usage['prompt_tokens']} in, {usage['completion_tokens']} out)")
    table.add_row("cost", f"${usage['cost_usd']:.6f}")
    if task.get("error"):
        table.add_row("error", f"[red]{task['error']}[/]")
    console.print(table)
