"""The load: scripted tasks submitted at once through the HTTP API, as a careful client would.

Each submission carries an ``Idempotency-Key`` and is retried on connection errors, 429 and 5xx (a restarting
database answers 503) until the API acknowledges it; what was acknowledged is what the checker holds the platform
to: every acknowledged task must exist and end.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx


@dataclasses.dataclass(frozen=True)
class Submitted:
    index: int
    goal: str
    task_id: uuid.UUID | None  # None: never acknowledged within the deadline
    attempts: int


def goal_for(run_id: str, index: int, steps: int, marker: str = "") -> str:
    extra = f" {marker}" if marker else ""
    return f"Chaos {run_id} task {index}{extra} [[steps:{steps}]]"


def submit_all(api_url: str, run_id: str, count: int, steps: int, markers: dict[int, str] | None = None,
               deadline_s: float = 180, threads: int = 16) -> list[Submitted]:
    markers = markers or {}

    def one(i: int) -> Submitted:
        goal = goal_for(run_id, i, steps, markers.get(i, ""))
        body = {"goal": goal, "budget": {"max_steps": steps + 5}}
        headers = {"Idempotency-Key": f"{run_id}-{i}"}
        give_up = time.monotonic() + deadline_s
        attempts = 0
        with httpx.Client(base_url=api_url, timeout=15) as client:
            while time.monotonic() < give_up:
                attempts += 1
                try:
                    resp = client.post("/v1/tasks", json=body, headers=headers)
                except httpx.HTTPError:
                    time.sleep(0.5)
                    continue
                if resp.status_code in (200, 201):
                    return Submitted(i, goal, uuid.UUID(resp.json()["id"]), attempts)
                if resp.status_code == 429 or resp.status_code >= 500:
                    time.sleep(min(2.0, float(resp.headers.get("Retry-After", "0.5") or 0.5)))
                    continue
                raise RuntimeError(f"the API refused a chaos task ({resp.status_code}): {resp.text}")
        return Submitted(i, goal, None, attempts)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, range(count)))
