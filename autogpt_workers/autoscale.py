"""``autogpt-workers autoscale``: grow and shrink worker processes on queue depth, without Kubernetes.

Every ``interval`` the scaler reads the queues from the RabbitMQ management API and, per queue, computes the
wanted number of worker processes (``ScalePolicy.desired``):

- depth (ready + unacknowledged, like KEDA's RabbitMQ scaler in QueueLength mode over HTTP) divided by the
  messages one worker should hold (its concurrency by default), rounded up;
- one more than now when the oldest message is older than ``max_age_s`` (the backlog is not draining);
- never more than now while no message waits (``ready`` is 0): in-flight work keeps capacity, it does not add any;
- clamped to ``[min_workers, max_workers]``.

The management API's counts lag the queue by up to its statistics interval (5 s), so the ready count, which
drives scale-out, is read fresh over AMQP (a passive ``queue.declare``) when a ``ready_counter`` is given: a
drained queue is not mistaken for a backlog.

Scale-out starts ``autogpt-workers worker --queue Q`` children at once. Scale-in waits until the wanted number
stayed below the current one for ``scale_in_cooldown_s`` (stabilisation), then stops only idle workers (Celery
``inspect active`` says they run nothing; a worker that does not answer is not idle), newest first, with SIGTERM:
Celery's warm shutdown stops consuming and finishes what runs, and a message it had reserved but not started
goes back to the queue unacknowledged. No step is lost either way: the ledger decides what executes.

The children write metrics to the scaler's multiprocess directory; the scaler serves them, merged, with its own
``autogpt_autoscaler_*`` gauges, on one port.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog

from autogpt_workers.queues import ManagementAPIError, QueueReader, QueueStats

log = structlog.get_logger(__name__)

Launcher = Callable[[str, str], "subprocess.Popen[bytes]"]
# hostnames -> number of tasks each runs now; a hostname missing from the answer did not reply
Inspector = Callable[[list[str]], dict[str, int]]


@dataclasses.dataclass(frozen=True)
class ScalePolicy:
    min_workers: int
    max_workers: int
    target_per_worker: int  # messages (ready + unacked) one worker process should hold
    max_age_s: float  # scale out one more while the oldest message is older than this
    scale_in_cooldown_s: float

    def __post_init__(self) -> None:
        if self.min_workers < 0 or self.max_workers < max(1, self.min_workers):
            raise ValueError("need 0 <= min_workers <= max_workers and max_workers >= 1")
        if self.target_per_worker < 1:
            raise ValueError("target_per_worker must be at least 1")

    def desired(self, current: int, stats: QueueStats | None) -> int:
        """How many worker processes the queue wants now (``stats`` None: no reading, keep ``current``)."""
        if stats is None:
            return self._clamp(current)
        want = math.ceil(stats.depth / self.target_per_worker)
        if stats.oldest_age_s is not None and stats.oldest_age_s > self.max_age_s and stats.ready > 0:
            want = max(want, current + 1)
        if stats.ready == 0:
            want = min(want, current)  # nothing waits: more workers would have nothing to take
        return self._clamp(want)

    def _clamp(self, n: int) -> int:
        return max(self.min_workers, min(self.max_workers, n))


@dataclasses.dataclass
class WorkerChild:
    queue: str
    hostname: str
    popen: subprocess.Popen[bytes]
    started_at: float
    stopping_since: float | None = None


@dataclasses.dataclass(frozen=True)
class ScaleEvent:
    queue: str
    direction: str  # out | in
    before: int
    after: int
    depth: int
    oldest_age_s: float | None
    at: float  # time.time()


@dataclasses.dataclass
class _QueueState:
    name: str  # think | act
    rabbit_queue: str
    policy: ScalePolicy
    workers: list[WorkerChild] = dataclasses.field(default_factory=list)
    stopping: list[WorkerChild] = dataclasses.field(default_factory=list)
    below_since: float | None = None
    desired: int = 0
    last: QueueStats | None = None
    events: dict[str, int] = dataclasses.field(default_factory=lambda: {"out": 0, "in": 0})


class Autoscaler:
    """The control loop; ``tick`` is one round (tests drive it directly)."""

    def __init__(
        self,
        queues: dict[str, tuple[str, ScalePolicy]],
        reader: QueueReader,
        launch: Launcher,
        inspect: Inspector,
        clock: Callable[[], float] = time.monotonic,
        min_idle_age_s: float = 5.0,
        ready_counter: Callable[[list[str]], dict[str, int]] | None = None,
        held_demand: Callable[[], int] | None = None,
    ) -> None:
        self._queues = {name: _QueueState(name, rq, policy) for name, (rq, policy) in queues.items()}
        self.reader = reader
        self.launch = launch
        self.inspect = inspect
        self.clock = clock
        self.min_idle_age_s = min_idle_age_s  # a worker this young may not have answered inspect yet
        self.ready_counter = ready_counter
        # tasks the admission gate holds in the database while the think queue is backed up (``backlog``): they
        # count as ready think messages, so holding them back does not hide them from scaling
        self.held_demand = held_demand
        self.events: list[ScaleEvent] = []
        self._lock = threading.Lock()

    # -- the loop --------------------------------------------------------------------------------------------

    def tick(self) -> list[ScaleEvent]:
        with self._lock:
            self._reap_exited()
            names = [q.rabbit_queue for q in self._queues.values()]
            try:
                stats: dict[str, QueueStats] | None = self.reader.read(names)
            except ManagementAPIError as exc:
                log.warning("autoscale_no_reading", error=str(exc))
                stats = None
            if stats is not None and self.ready_counter is not None:
                fresh = self.ready_counter(names)
                stats = {n: dataclasses.replace(q, ready=fresh.get(n, q.ready)) for n, q in stats.items()}
            think = self._queues.get("think")
            if stats is not None and self.held_demand is not None and think is not None:
                held = self.held_demand()
                if held and think.rabbit_queue in stats:
                    seen = stats[think.rabbit_queue]
                    stats = {**stats, think.rabbit_queue: dataclasses.replace(seen, ready=seen.ready + held)}
            new: list[ScaleEvent] = []
            for q in self._queues.values():
                reading = stats.get(q.rabbit_queue) if stats is not None else None
                q.last = reading
                event = self._scale(q, reading)
                if event is not None:
                    new.append(event)
            self.events.extend(new)
            return new

    def run_forever(self, stop: threading.Event, interval_s: float) -> None:
        log.info("autoscale_started", queues=sorted(self._queues), interval_s=interval_s)
        while not stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # keep scaling whatever one round hit
                log.warning("autoscale_round_failed", error=str(exc))
            stop.wait(interval_s)

    def shutdown(self, grace_s: float) -> None:
        """Warm-stop every child (SIGTERM), wait up to ``grace_s``, then SIGKILL what is left."""
        with self._lock:
            children = [w for q in self._queues.values() for w in (*q.workers, *q.stopping)]
            for w in children:
                _signal(w.popen, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            for w in children:
                try:
                    w.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("autoscale_kill", hostname=w.hostname, detail="warm shutdown exceeded the grace")
                    _signal(w.popen, signal.SIGKILL)
                    w.popen.wait()
            for q in self._queues.values():
                q.workers.clear()
                q.stopping.clear()

    # -- reporting -------------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per queue: running and stopping workers, desired, scale events so far, the last reading."""
        return {
            q.name: {
                "workers": len(q.workers),
                "stopping": len(q.stopping),
                "desired": q.desired,
                "events": dict(q.events),
                "depth": q.last.depth if q.last else None,
                "oldest_age_s": q.last.oldest_age_s if q.last else None,
                "hostnames": [w.hostname for w in q.workers],
            }
            for q in self._queues.values()
        }

    # -- internals -------------------------------------------------------------------------------------------

    def _reap_exited(self) -> None:
        from autogpt_workers.metrics_server import mark_process_dead

        for q in self._queues.values():
            for w in [w for w in q.workers if w.popen.poll() is not None]:
                log.warning("autoscale_worker_died", queue=q.name, hostname=w.hostname, code=w.popen.returncode)
                q.workers.remove(w)
                mark_process_dead(w.popen.pid)
            for w in [w for w in q.stopping if w.popen.poll() is not None]:
                log.info(
                    "autoscale_worker_stopped",
                    queue=q.name,
                    hostname=w.hostname,
                    code=w.popen.returncode,
                    drain_s=round(self.clock() - (w.stopping_since or self.clock()), 2),
                )
                q.stopping.remove(w)
                mark_process_dead(w.popen.pid)

    def _scale(self, q: _QueueState, reading: QueueStats | None) -> ScaleEvent | None:
        now = self.clock()
        current = len(q.workers)
        want = q.policy.desired(current, reading)
        q.desired = want
        if want > current:
            q.below_since = None
            for _ in range(want - current):
                q.workers.append(self._start(q))
            return self._event(q, "out", current, len(q.workers), reading)
        if want == current:
            q.below_since = None
            return None
        if q.below_since is None:
            q.below_since = now
        if now - q.below_since < q.policy.scale_in_cooldown_s:
            return None
        victims = self._idle(q, current - want, now)
        if not victims:
            return None
        for w in victims:
            _signal(w.popen, signal.SIGTERM)  # Celery warm shutdown
            w.stopping_since = now
            q.workers.remove(w)
            q.stopping.append(w)
        q.below_since = None
        return self._event(q, "in", current, len(q.workers), reading)

    def _idle(self, q: _QueueState, count: int, now: float) -> list[WorkerChild]:
        candidates = [w for w in q.workers if now - w.started_at >= self.min_idle_age_s]
        if not candidates:
            return []
        try:
            active = self.inspect([w.hostname for w in candidates])
        except Exception as exc:  # no answer: nobody counts as idle
            log.warning("autoscale_inspect_failed", error=str(exc))
            return []
        idle = [w for w in candidates if active.get(w.hostname) == 0]
        idle.sort(key=lambda w: w.started_at, reverse=True)  # newest first: the old ones keep warm caches
        return idle[:count]

    def _start(self, q: _QueueState) -> WorkerChild:
        hostname = f"{q.name}-as{os.getpid()}-{_next_id()}@{socket.gethostname()}"
        popen = self.launch(q.name, hostname)
        log.info("autoscale_worker_started", queue=q.name, hostname=hostname, pid=popen.pid)
        return WorkerChild(q.name, hostname, popen, self.clock())

    def _event(
        self, q: _QueueState, direction: str, before: int, after: int, reading: QueueStats | None
    ) -> ScaleEvent:
        q.events[direction] += 1
        event = ScaleEvent(
            q.name, direction, before, after, reading.depth if reading else 0,
            reading.oldest_age_s if reading else None, time.time(),
        )
        log.info(
            f"scale_{direction}", queue=q.name, workers_before=before, workers_after=after, depth=event.depth,
            ready=reading.ready if reading else None, unacked=reading.unacked if reading else None,
            oldest_age_s=event.oldest_age_s, desired=q.desired,
        )
        return event


_ids = iter(range(1, 1 << 30))
_ids_lock = threading.Lock()


def _next_id() -> int:
    with _ids_lock:
        return next(_ids)


def _signal(popen: subprocess.Popen[bytes], sig: int) -> None:
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(popen.pid, sig)


def terminate_with_parent() -> None:
    """In the child before exec: SIGTERM (warm shutdown) when the parent dies, even by SIGKILL (Linux only). The
    signal follows the death of the parent's *thread* that started the child: start children from one that lives."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def worker_launcher(log_dir: Path, extra_args: list[str] | None = None) -> Launcher:
    """Start ``autogpt-workers worker --queue Q --hostname H`` in its own session, logging to ``log_dir``.

    The child inherits ``PROMETHEUS_MULTIPROC_DIR`` (the scaler serves its samples) and serves no port itself.
    """
    log_dir.mkdir(parents=True, exist_ok=True)

    def launch(queue: str, hostname: str) -> subprocess.Popen[bytes]:
        name = hostname.split("@", 1)[0]
        out = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        try:
            return subprocess.Popen(
                [
                    sys.executable, "-m", "autogpt_workers.cli", "worker", "--queue", queue,
                    "--hostname", hostname, "--metrics-port", "0", *(extra_args or []),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C on the scaler's terminal must not reach the workers directly
                preexec_fn=terminate_with_parent,
            )
        finally:
            out.close()

    return launch


def celery_inspector(timeout_s: float = 1.5) -> Inspector:
    """Asks the named workers what they run now (Celery remote control ``inspect active``)."""

    def inspect(hostnames: list[str]) -> dict[str, int]:
        from autogpt_workers.celery_app import app

        replies = app.control.inspect(destination=hostnames, timeout=timeout_s).active() or {}
        return {host: len(tasks or []) for host, tasks in replies.items()}

    return inspect


class AutoscalerCollector:
    """``autogpt_autoscaler_*`` gauges for the scaler's /metrics."""

    def __init__(self, scaler: Autoscaler) -> None:
        self.scaler = scaler

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        workers = GaugeMetricFamily("autogpt_autoscaler_workers", "Worker processes running.", labels=["queue"])
        desired = GaugeMetricFamily("autogpt_autoscaler_desired_workers", "Workers wanted.", labels=["queue"])
        events = CounterMetricFamily(
            "autogpt_autoscaler_scale_events", "Scale decisions taken.", labels=["queue", "direction"]
        )
        for name, snap in self.scaler.snapshot().items():
            workers.add_metric([name], snap["workers"])
            desired.add_metric([name], snap["desired"])
            for direction, n in snap["events"].items():
                events.add_metric([name, direction], n)
        yield from (workers, desired, events)

    def describe(self) -> list[Any]:
        return []
