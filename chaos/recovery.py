"""Recovery time: from a kill to the step it interrupted running again.

A watcher thread tails the fault journal. For every kill it decides which phase must run next and polls the
ledger until that phase is claimed again (its ``think_started_at`` / ``act_started_at`` moves past the kill):

- the steps whose lease the killed process held (``lease_owner`` = ``<host>:<pid>``): that same phase again;
- for the crash hook, the phase after its window: ``llm`` -> think again, ``proposed``/``command`` -> act,
  ``committed`` -> the next step's think, ``published`` -> the next phase (it was published: often at once).

Probes whose task ends first (the last step was already committed, or the task failed) are dropped; probes
unresolved after ``timeout_s`` are counted as unrecovered.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_

from autogpt_workers.store.db import Database
from autogpt_workers.store.models import Step, Task
from chaos.journal import Journal

TERMINAL = ("completed", "failed", "cancelled")
NEXT_AFTER = {  # hook window (and the phase it fired in) -> (step offset, phase that must run next)
    ("llm", "think"): (0, "think"),
    ("proposed", "think"): (0, "act"),
    ("command", "act"): (0, "act"),
    ("committed", "act"): (1, "think"),
    ("published", "think"): (0, "act"),
    ("published", "act"): (1, "think"),
}


@dataclasses.dataclass
class Probe:
    task_id: uuid.UUID
    step_index: int
    phase: str
    since: float  # the kill
    resolved_s: float | None = None
    dropped: bool = False  # its task ended before the phase had to run again
    given_up: bool = False  # not running again within the watcher's timeout


class RecoveryWatcher:
    def __init__(self, db: Database, journal: Journal, timeout_s: float = 180) -> None:
        self.db = db
        self.journal = journal
        self.timeout_s = timeout_s
        self.host = socket.gethostname()
        self.probes: list[Probe] = []
        # (kill time, task, step, phase) of every phase a killed process held: what the kill interrupted
        self.interrupted: list[tuple[float, uuid.UUID, int, str]] = []
        self._offset = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recovery-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, drain_s: float = 0) -> None:
        """Stop after at most ``drain_s`` more seconds of polling for the probes still open."""
        deadline = time.monotonic() + drain_s
        while drain_s and time.monotonic() < deadline and any(self._open()):
            time.sleep(0.2)
        self._stop.set()
        self._thread.join(timeout=10)

    def samples(self) -> list[float]:
        return [p.resolved_s for p in self.probes if p.resolved_s is not None]

    def unrecovered(self) -> int:
        return sum(1 for p in self.probes if p.resolved_s is None and not p.dropped)

    def _open(self) -> list[Probe]:
        return [p for p in self.probes if p.resolved_s is None and not p.dropped and not p.given_up]

    def _run(self) -> None:
        while not self._stop.wait(0.15):
            try:
                records, self._offset = self.journal.read(self._offset)
                for r in records:
                    self._add(r)
                self._poll()
            except Exception:  # the database may be restarting (a scenario): poll again next round
                continue

    def _add(self, record: dict[str, Any]) -> None:
        ts = float(record["ts"])
        pids = list(record.get("pids") or ([record["pid"]] if "pid" in record else []))
        if not pids:
            return  # a service fault: no step of a killed process to follow
        keys: set[tuple[uuid.UUID, int, str]] = set()
        with self.db.session() as s:
            owners = [f"{self.host}:{pid}" for pid in pids]
            for task_id, index, status in s.execute(
                select(Step.task_id, Step.step_index, Step.status).where(
                    Step.lease_owner.in_(owners), Step.status.in_(("thinking", "acting"))
                )
            ):
                phase = "think" if status == "thinking" else "act"
                keys.add((task_id, index, phase))
                self.interrupted.append((ts, task_id, index, phase))
        nxt = NEXT_AFTER.get((record.get("window", ""), record.get("phase", "")))
        if nxt is not None and record.get("task_id"):
            keys.add((uuid.UUID(record["task_id"]), int(record["step"]) + nxt[0], nxt[1]))
        self.probes.extend(Probe(t, i, phase, ts) for t, i, phase in keys)

    def _poll(self) -> None:
        open_probes = self._open()
        if not open_probes:
            return
        pairs = {(p.task_id, p.step_index) for p in open_probes}
        tasks = {p.task_id for p in open_probes}
        with self.db.session() as s:
            rows = {
                (t, i): (think, act)
                for t, i, think, act in s.execute(
                    select(Step.task_id, Step.step_index, Step.think_started_at, Step.act_started_at).where(
                        tuple_(Step.task_id, Step.step_index).in_(list(pairs))
                    )
                )
            }
            finished = set(s.scalars(select(Task.id).where(Task.id.in_(tasks), Task.status.in_(TERMINAL))))
        now = time.time()
        for p in open_probes:
            think, act = rows.get((p.task_id, p.step_index), (None, None))
            started: datetime | None = think if p.phase == "think" else act
            if started is not None and started.timestamp() > p.since:
                p.resolved_s = started.timestamp() - p.since
            elif p.task_id in finished:
                p.dropped = True
            elif now - p.since > self.timeout_s:
                p.given_up = True
