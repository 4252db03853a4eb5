"""The Celery application: configuration only (no task code is imported until a worker starts).

Durability comes from the ledger (PostgreSQL); the broker carries "run phase P of step k of task T" wake-ups.
The settings below are what make redelivery safe, and ``check_worker_settings`` refuses to start a worker without
them.

Graceful shutdown (SIGTERM, e.g. a scale-in): Celery stops consuming and waits for the running tasks (warm
shutdown). On top of that, each worker process drains (``LeaseKeeper.drain``): it takes no new step, lets the
steps in flight finish for ``shutdown_grace_s``, then hands back what is left (the lease released through
``Ledger.release``, the wake-up re-published) so another worker continues at once and nothing waits for a lease
to expire. The think worker (gevent or thread pool) abandons its LLM calls at the grace; a prefork child (act)
running a command in-process releases its lease and exits, and the parent forwards SIGTERM to its children when
only it was signalled (as Kubernetes does). The signal handlers themselves only wake a thread that does this
(``SignalWaker``).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

from celery import Celery, signals
from kombu import Exchange, Queue

from autogpt_workers.config import Settings, get_settings
from autogpt_workers.contracts import (
    ACT_QUEUE,
    ACT_TASK,
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    MAX_PRIORITY,
    THINK_QUEUE,
    THINK_TASK,
)
from autogpt_workers.errors import ConfigError

EXCHANGE = Exchange("autogpt", type="direct", durable=True)
DLX = Exchange(DEAD_LETTER_EXCHANGE, type="direct", durable=True)
QUEUE_ARGUMENTS = {
    "x-max-priority": MAX_PRIORITY + 1,
    "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
    "x-dead-letter-routing-key": DEAD_LETTER_QUEUE,
}


def work_queues() -> list[Queue]:
    return [
        Queue(name, EXCHANGE, routing_key=name, durable=True, queue_arguments=QUEUE_ARGUMENTS)
        for name in (THINK_QUEUE, ACT_QUEUE)
    ]


def dead_letter_queue() -> Queue:
    return Queue(DEAD_LETTER_QUEUE, DLX, routing_key=DEAD_LETTER_QUEUE, durable=True)


def make_celery(settings: Settings) -> Celery:
    app = Celery("autogpt_workers", broker=settings.broker_url, include=["autogpt_workers.tasks"])
    app.conf.update(
        # -- delivery: ack only after the step's outcome is committed and its successor published
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=False,  # an unexpected crash dead-letters the message; the reaper re-drives
        worker_prefetch_multiplier=1,
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        broker_heartbeat=30,
        broker_pool_limit=64,
        # after a broker reconnect Celery lowers the prefetch count by the steps still running and raises it again
        # with a blocking basic.qos as each ends; with the threads pool that call hung the worker's event loop (no
        # heartbeat, no ack, no delivery) until the broker dropped the connection, 90 s later (the chaos
        # rabbitmq-restart scenario, 2026-12-05). The messages of the running steps are redelivered on the new
        # connection anyway, and the ledger turns each into a no-op, so the worker takes its full prefetch at once
        worker_enable_prefetch_count_reduction=False,
        # -- topology
        task_queues=work_queues(),
        task_default_exchange=EXCHANGE.name,
        task_default_queue=THINK_QUEUE,
        task_routes={THINK_TASK: {"queue": THINK_QUEUE}, ACT_TASK: {"queue": ACT_QUEUE}},
        task_queue_max_priority=MAX_PRIORITY + 1,
        task_default_priority=5,
        task_create_missing_queues=False,
        # -- no result backend: results live in PostgreSQL
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        # -- time limits stay below RabbitMQ's consumer_timeout (checked at start-up)
        task_annotations={
            ACT_TASK: {
                "time_limit": settings.act_time_limit_s,
                "soft_time_limit": max(1.0, settings.act_time_limit_s - 10),
            },
            THINK_TASK: {"time_limit": settings.think_time_limit_s},
        },
        # -- Flower
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
        enable_utc=True,
    )
    return app


def check_worker_settings(conf: Any, settings: Settings) -> list[str]:
    """Problems that would make redelivery unsafe. Empty means the worker may start."""
    problems = []
    if not conf.task_acks_late:
        problems.append("task_acks_late must be True (an early ack loses the step if the worker dies)")
    if not conf.task_reject_on_worker_lost:
        problems.append("task_reject_on_worker_lost must be True (a killed child must requeue its step)")
    if conf.worker_prefetch_multiplier != 1:
        problems.append("worker_prefetch_multiplier must be 1 (prefetched steps wait unacked and block others)")
    if not (conf.broker_transport_options or {}).get("confirm_publish"):
        problems.append("broker_transport_options.confirm_publish must be True (publisher confirms)")
    if getattr(conf, "worker_enable_prefetch_count_reduction", True):  # Celery's default is True
        problems.append("worker_enable_prefetch_count_reduction must be False (its basic.qos after a reconnect can "
                        "hang the worker's event loop)")
    limit = settings.rabbitmq_consumer_timeout_s
    for name, ann in (conf.task_annotations or {}).items():
        tl = ann.get("time_limit")
        if tl is None or tl >= limit:
            problems.append(f"{name} time_limit ({tl}) must be set below RabbitMQ consumer_timeout ({limit:.0f}s)")
    if not conf.task_annotations:
        problems.append("time limits per task are missing")
    return problems


def check_worker_options(options: Mapping[str, Any], settings: Settings) -> list[str]:
    """Problems in a worker's command-line options (``celery worker ...``, as handed to ``celeryd_init``), which
    override the configuration: ``--prefetch-multiplier``, ``--time-limit``/``--soft-time-limit``, and the pool of
    a worker that consumes the act queue (``-Q``; none given means every queue). ``--concurrency`` is not checked:
    with prefetch 1 it only sets how many steps run at once, not whether they are redelivered safely."""
    problems = []
    prefetch = options.get("prefetch_multiplier")
    if prefetch is not None and prefetch != 1:
        problems.append(f"--prefetch-multiplier must be 1, not {prefetch} (prefetched steps wait unacked)")
    limit = settings.rabbitmq_consumer_timeout_s
    for name in ("time_limit", "soft_time_limit"):
        value = options.get(name)
        if value is not None and value >= limit:
            flag = "--" + name.replace("_", "-")
            problems.append(f"{flag} ({value:g}s) must be below RabbitMQ consumer_timeout ({limit:.0f}s)")
    queues = options.get("queues")
    pool_name = _pool_name(options)
    if pool_name is not None and (not queues or ACT_QUEUE in queues) and pool_name != "prefork":
        problems.append(
            f"the act queue ({ACT_QUEUE}) needs the prefork pool (-P prefork), not {pool_name}: only prefork "
            "enforces the hard time limit on a running command"
        )
    if pool_name == "eventlet":
        problems.append("the eventlet pool is not supported (psycopg2 would block every green thread): use gevent")
    if pool_name == "gevent" and not _gevent_patched():
        problems.append("the gevent pool needs the standard library patched before anything is imported: start it "
                        "with `autogpt-workers worker --queue think --pool gevent` (or Celery's own CLI, -P gevent)")
    return problems


def _pool_name(options: Mapping[str, Any]) -> str | None:
    """The pool a worker's options name (``--pool``/``-P``: a name or the pool's class), e.g. ``"prefork"``."""
    pool = options.get("pool_cls") or options.get("pool")
    if pool is None:
        return None
    return str(pool if isinstance(pool, str) else getattr(pool, "__module__", "")).rsplit(".", 1)[-1]


def _gevent_patched() -> bool:
    if "gevent" not in sys.modules:
        return False
    from gevent import monkey

    return bool(monkey.is_module_patched("socket"))


def prepare_green_worker(conf: Any) -> None:
    """A worker on the gevent pool (the think queue's, ``autogpt_workers.green``), before it connects: psycopg2 waits
    through gevent's hub, and no AMQP heartbeats. Celery's loop for green pools, with heartbeats on, waits 0.1 s on
    the event connection after every delivery (``_quick_drain`` in celery/worker/loops.py): ten deliveries a second
    (seen in ``make bench``). Without them a dead broker is still seen: its connection is reset, or TCP keepalive
    (py-amqp turns it on) ends it."""
    from autogpt_workers.green import patch

    patch()  # already done by the CLI; Celery's own CLI patches the standard library but not psycopg2
    conf.broker_heartbeat = 0
    share_thread_state(app)


def share_thread_state(celery: Celery) -> None:
    """Celery keeps its result backend and its ``thread_oid`` (a message's ``reply_to``) per thread, in a
    ``threading.local``, which gevent's patch makes per greenlet: every task then built a backend of its own, and every
    publish hashed a new oid (2% and 0.7% of a think worker's CPU in ``bench.profile_run``). Results are off here
    (``task_ignore_result``, no result backend): the disabled backend keeps no state, so the greenlets of an OS
    thread share it and the oid (``green.native_local``). With a real result backend configured, Celery's
    per-greenlet state stays (that backend's connections)."""
    from celery.backends.base import DisabledBackend

    from autogpt_workers.green import native_local

    if isinstance(celery.backend, DisabledBackend):
        celery._local = native_local()


def ensure_worker_settings(conf: Any, settings: Settings, options: Mapping[str, Any] | None = None) -> None:
    problems = check_worker_settings(conf, settings) + check_worker_options(options or {}, settings)
    if problems:
        raise ConfigError("refusing to start a worker with unsafe settings: " + "; ".join(problems))


def declare_topology(app: Celery) -> None:
    """Declare the work queues and the dead-letter exchange and queue (idempotent)."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for q in [*work_queues(), dead_letter_queue()]:
            q.bind(channel).declare()


app = make_celery(get_settings())


@signals.celeryd_init.connect
def _refuse_unsafe_worker(sender: Any = None, conf: Any = None, options: Any = None, **_: Any) -> None:
    """Runs before a worker consumes anything (``autogpt-workers worker`` or a raw ``celery worker``): unsafe
    settings or command-line options (``options``: the worker's keyword arguments) stop it with a clear message."""
    settings = get_settings()
    try:
        ensure_worker_settings(conf if conf is not None else app.conf, settings, options)
    except ConfigError as exc:
        print(f"autogpt-workers: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    if _pool_name(options or {}) == "gevent":
        prepare_green_worker(conf if conf is not None else app.conf)
    declare_topology(app)


@signals.worker_ready.connect
@signals.worker_process_init.connect
def _tune_gc(**_: Any) -> None:
    """Once a worker has started (the think worker's process), and in each prefork child as it starts: start-up's
    objects frozen out of the collector's way, the young generation's threshold raised (``gc_tuning``)."""
    from autogpt_workers.gc_tuning import tune

    tune(get_settings().gc_young_threshold)


# -- graceful shutdown ---------------------------------------------------------------------------------------------


def _pool_children() -> list[int]:
    """This process's child processes (a prefork pool's workers); empty for the think worker's pools. Each thread's own
    ``children`` file lists the processes that thread forked: read them all, whichever thread forked a child."""
    pid = os.getpid()
    children: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in threads:
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/task/{tid}/children") as f:
            children.extend(int(p) for p in f.read().split())
    return sorted(set(children))


class SignalWaker:
    """Run ``target`` on a thread of its own when a signal handler calls ``wake`` (once). A handler runs in the main
    thread between two bytecodes, maybe inside a lock its work needs (the lease registry's while a step's lease is
    taken, a stream's while a line is written): work done in the handler could wait on its own thread forever (seen
    once in CI: an act child that never drained). Writing a byte to a pipe cannot; the thread does the work."""

    def __init__(self, target: Callable[[], object], name: str) -> None:
        self._target = target
        self._read_fd, self._write_fd = os.pipe()
        self.pid = os.getpid()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._write_fd, b"x")

    def _run(self) -> None:
        while True:
            try:
                # ``select`` first: under gevent (``autogpt_workers.green``) it yields to the other greenlets,
                # where a bare ``os.read`` would block the whole process until the signal came
                select.select([self._read_fd], [], [])
                if os.read(self._read_fd, 1):
                    break
            except InterruptedError:
                continue
        self._target()


_wakers: dict[str, SignalWaker] = {}  # "drain" (a thread-pool worker's main process), "child" (a prefork child)


def _waker(kind: str) -> SignalWaker | None:
    waker = _wakers.get(kind)
    return waker if waker is not None and waker.pid == os.getpid() else None


@signals.worker_shutting_down.connect
def _drain_on_shutdown(sig: Any = None, how: Any = None, **_: Any) -> None:
    """MainProcess got SIGTERM/SIGINT/SIGQUIT: drain (a think worker) or tell the pool's children to (prefork)."""
    children = _pool_children()
    if children:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
        return
    waker = _waker("drain")
    if waker is not None:
        waker.wake()
    else:  # not started yet (a signal during start-up): nothing is held that the drain needs
        _drain_threads()


def _drain_threads() -> None:
    """A think worker's drain (threads or gevent): no new step, the held ones finished within the grace or handed
    back."""
    from autogpt_workers.runtime import get_runner

    runner = get_runner()
    runner.leases.drain(get_settings().shutdown_grace_s, on_expired=lambda holds: runner.exit_once_only_stuck())


@signals.worker_ready.connect
def _start_drain_waker(**_: Any) -> None:
    """In a think worker's process once it consumes (its steps run there, on threads or greenlets). A prefork
    worker, which has its children by then, gets none: it only forwards the signal to them, from the handler
    (``os.kill`` is safe there)."""
    if _waker("drain") is None and not _pool_children():
        _wakers["drain"] = SignalWaker(_drain_threads, "shutdown-drain")


@signals.worker_init.connect
def _build_runtime_before_work(**_: Any) -> None:
    """A gevent worker builds its runtime (database, LLM clients, memory, the local embedding model) before it
    connects to the broker: built at the first step, as the thread pool does, its seconds of blocking start-up would
    hold every greenlet, the lease heartbeat's among them (and built once connected, the deliveries prefetched
    meanwhile would wait in this process). A failure is logged by Celery; the first step builds it again."""
    from autogpt_workers.green import patched

    if patched():
        from autogpt_workers.runtime import get_runner

        get_runner()


def _child_stop() -> None:
    """A prefork child asked to stop (on the ``child-sigterm`` thread): exit now if idle, else finish the step
    within the grace or hand it back."""
    from autogpt_workers.runtime import get_runner

    runner = get_runner()
    if not runner.leases.held() and not _child_running_task[0]:
        os._exit(0)
    # a task that has claimed its step but not yet registered the hold would leave the step leased until the reaper
    # saw the lease expire (seen in CI): while a task runs, drain, so what it holds at the grace's end is handed back

    def hand_back_and_exit(holds: list[Any]) -> None:
        try:
            runner.hand_back_all(holds)
        finally:
            os._exit(0)

    runner.leases.drain(get_settings().shutdown_grace_s, on_expired=hand_back_and_exit)


def _child_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM in a prefork child: wake the ``child-sigterm`` thread (see ``SignalWaker``)."""
    waker = _waker("child")
    if waker is not None:
        waker.wake()


_pool_child: list[int] = [0]  # the pid of this process, if it is a prefork pool child
_child_running_task: list[bool] = [False]  # between a task's prerun and postrun, in a prefork child


@signals.worker_process_init.connect
def _mark_pool_child(**_: Any) -> None:
    _pool_child[0] = os.getpid()


@signals.task_prerun.connect
def _install_child_sigterm(**_: Any) -> None:
    """In a prefork child, before its first task: our SIGTERM handler (billiard installs its own after the
    process initializer, so it cannot be set in ``worker_process_init``). Before every task: that one runs."""
    if _pool_child[0] == os.getpid():
        _child_running_task[0] = True
        if _waker("child") is None:
            _wakers["child"] = SignalWaker(_child_stop, "child-sigterm")
            signal.signal(signal.SIGTERM, _child_sigterm)


@signals.task_postrun.connect
def _child_task_done(**_: Any) -> None:
    _child_running_task[0] = False
