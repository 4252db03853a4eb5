"""Enqueue an agent task without HTTP: ``submit_task(...)``. The API calls the same function.

The task row, its first step and its first wake-up commit in one transaction; the wake-up is published after
commit with publisher confirms. If the broker is down the task is still accepted: the reaper publishes it later.
"""

from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import json
import queue
import threading
import uuid
import weakref
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.exc import DBAPIError

from autogpt_workers import tracing
from autogpt_workers.admission import Policy, effective_priority, hold_if_capped
from autogpt_workers.broker import Publisher
from autogpt_workers.config import get_settings
from autogpt_workers.confirm_batch import ConfirmBatch, Wake
from autogpt_workers.contracts import TaskStatus, TaskSubmission, TaskView, Usage
from autogpt_workers.errors import UsageError
from autogpt_workers.group_commit import GroupCommit
from autogpt_workers.profiles import ProfileCatalog, apply_profile
from autogpt_workers.publish_marks import PublishMarks
from autogpt_workers.store.db import Database
from autogpt_workers.store.gateway import record_options
from autogpt_workers.store.ledger import Ledger, Wakeup
from autogpt_workers.store.submit_sql import EXISTING_TASK, CreatedTask

log = structlog.get_logger(__name__)


class IdempotencyConflict(UsageError):
    """The idempotency key was already used for a different request."""


@dataclasses.dataclass(frozen=True)
class Submitted:
    task_id: uuid.UUID
    created: bool  # False: an earlier identical submission with the same idempotency key
    published: bool  # False: accepted, the wake-up waits in the outbox (for the background publisher or the reaper)
    # a new task as committed (what reading it back would answer); None for an earlier identical submission
    view: TaskView | None = None


def request_hash(submission: TaskSubmission) -> str:
    canonical = json.dumps(submission.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class PreparedSubmit:
    """A submission turned into its task's row values and options (``prepare_submit``): nothing written yet."""

    submission: TaskSubmission  # with its profile applied
    digest: str  # ``request_hash`` of the request as given
    values: dict[str, Any]
    options: dict[str, Any]
    # the options go into the task's own statement, except a webhook's: its trigger must see the options row
    in_statement: bool

    def alone(self, policy: Policy | None, backlog: str | None) -> bool:
        """Whether the submit can be one statement, a transaction of its own (the group commit's): only the tenant's
        own cap could hold the task, and the statement reads that one."""
        return self.in_statement and backlog is None and (policy is None or not policy.caps_every_tenant())


def prepare_submit(
    submission: TaskSubmission,
    *,
    tenant_id: str = "default",
    idempotency_key: str | None = None,
    model: str | None = None,
    source: str = "native",
    additional_input: dict[str, Any] | None = None,
    policy: Policy | None = None,
    profiles: ProfileCatalog | None = None,
) -> PreparedSubmit:
    """The rows a submission writes (no I/O beyond reading a profile). Raises ``UnknownProfile``."""
    digest = request_hash(submission)  # of the request as given: the same body under the same key is the same task
    if submission.profile is not None:
        submission = apply_profile(submission, profiles or default_profiles())
    deadline = submission.deadline
    priority = effective_priority(submission.priority, deadline, policy or Policy())
    values = {
        "tenant_id": tenant_id,
        "goal": submission.goal,
        "priority": priority,
        "budget": submission.budget.model_dump(mode="json"),
        "allowed_commands": submission.allowed_commands,
        "metadata_": submission.metadata,
        "idempotency_key": idempotency_key,
        "request_hash": digest,
        "model": model,
        "approval": submission.approval,  # the lifecycle's approval gate and deadline (revision 0004)
        "deadline": deadline,
        "traceparent": tracing.current_traceparent(),  # the steps' spans join the submitter's trace (0005)
    }
    options: dict[str, Any] = {
        "source": source,
        "base_priority": submission.priority,
        "profile": submission.profile,
        "webhook_url": submission.webhook_url,
        "webhook_events": submission.webhook_events,
        "additional_input": additional_input,
    }
    return PreparedSubmit(submission, digest, values, options, submission.webhook_url is None)


def submit_task(
    db: Database,
    publisher: Publisher,
    submission: TaskSubmission,
    *,
    tenant_id: str = "default",
    idempotency_key: str | None = None,
    model: str | None = None,
    source: str = "native",
    additional_input: dict[str, Any] | None = None,
    policy: Policy | None = None,
    background: BackgroundPublisher | None = None,
    profiles: ProfileCatalog | None = None,
    group: SubmitGroup | None = None,
) -> Submitted:
    """Accept a task. ``policy`` (running-task caps, deadline urgency) may hold it back in the admission queue;
    without one it is admitted at once. ``source``/``additional_input`` record an Agent Protocol request. The
    first wake-up is published before returning, or handed to ``background`` (then ``published`` is False: not
    yet). A task that names a profile gets the profile's allow-list, budget limits and approval classes for what
    it left out (read from ``profiles``, by default the shipped ones and ``AUTOGPT_PROFILES_DIR``); an unknown
    profile raises ``UnknownProfile`` before anything is written. With ``group`` (``submit_group``), a submit
    that needs no transaction is written together with the other threads' submits of the moment, in one
    statement (a group commit): the same rows, and the same answer."""
    prepared = prepare_submit(
        submission,
        tenant_id=tenant_id,
        idempotency_key=idempotency_key,
        model=model,
        source=source,
        additional_input=additional_input,
        policy=policy,
        profiles=profiles,
    )
    backlog = policy.backlogged() if policy is not None else None  # the workers are all busy: wait for admission
    created = None
    if prepared.alone(policy, backlog):
        if group is None:
            created = Ledger(db).create_task_alone(prepared.values, options=prepared.options)
        else:
            created = group_outcome(group.run((prepared.values, prepared.options)))
    return finish_submit(db, publisher, prepared, created, policy, backlog, background)


def group_outcome(outcome: GroupOutcome) -> CreatedTask | None:
    """A group commit's answer for one submit: its new task, None (its key is taken, or a cap may hold it: the
    transaction's path decides), or its own error raised."""
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def finish_submit(
    db: Database,
    publisher: Publisher,
    prepared: PreparedSubmit,
    created: CreatedTask | None,
    policy: Policy | None,
    backlog: str | None,
    background: BackgroundPublisher | None,
) -> Submitted:
    """The rest of a submit once its one statement ran (``created``), or in place of it (``created`` None: the
    transaction's path, which also answers a taken idempotency key); may block (the database, the broker)."""
    values = prepared.values
    held = None
    if created is None:
        created, held, existing = _create_in_transaction(
            db, Ledger(db), values, prepared.options, prepared.in_statement, policy, backlog
        )
        if created is None:
            assert existing is not None
            existing_id, existing_hash = existing
            if existing_hash != prepared.digest:
                raise IdempotencyConflict(
                    f"idempotency key {values['idempotency_key']!r} was already used for a different request "
                    f"(task {existing_id})"
                )
            return Submitted(existing_id, created=False, published=True)
    if held is None:
        return publish_new(db, publisher, created, admitted_view(prepared, created), background)
    view = _new_task_view(created.task_id, created.created_at, values, prepared.submission, waiting=True)
    log.info("task_waiting_for_slot", task_id=str(created.task_id), tenant_id=values["tenant_id"], reason=held)
    return Submitted(created.task_id, created=True, published=False, view=view)


def publish_new(
    db: Database,
    publisher: Publisher,
    created: CreatedTask,
    view: TaskView | None,
    background: BackgroundPublisher | None,
) -> Submitted:
    """A new admitted task's first wake-up: handed to ``background``, or published now (blocks on the broker's
    confirm)."""
    handed = hand_to_background(created, view, background)
    if handed is not None:
        return handed
    published = _publish(db, publisher, created.wakeup)
    return Submitted(created.task_id, created=True, published=published, view=view)


def admitted_view(prepared: PreparedSubmit, created: CreatedTask) -> TaskView | None:
    """The answer for a new task admitted at once, as committed (what reading it back would answer)."""
    return _new_task_view(created.task_id, created.created_at, prepared.values, prepared.submission, waiting=False)


def hand_to_background(
    created: CreatedTask, view: TaskView | None, background: BackgroundPublisher | None
) -> Submitted | None:
    """The submit's answer once ``background`` took the first wake-up; None when it did not (none, or full): then
    the caller publishes it (``publish_new``). Never blocks."""
    if background is not None and background.offer(created.wakeup, contextvars.copy_context()):
        return Submitted(created.task_id, created=True, published=False, view=view)
    return None


def _create_in_transaction(
    db: Database,
    ledger: Ledger,
    values: dict[str, Any],
    options: dict[str, Any],
    in_statement: bool,
    policy: Policy | None,
    backlog: str | None,
) -> tuple[CreatedTask | None, str | None, tuple[uuid.UUID, str] | None]:
    """The submit in a transaction: writes the task (and its options, when they could not go into the statement)
    and takes the admission's decision. Returns the new task (``None`` if the idempotency key is taken), why it waits
    (or ``None``), and for a taken key the existing task's id and request hash."""
    with db.transaction() as s:
        created = ledger.create_task(s, values, options=options if in_statement else None)
        if created is None:
            existing = s.connection().execute(
                EXISTING_TASK, {"p_tenant_id": values["tenant_id"], "p_idempotency_key": values["idempotency_key"]}
            ).one()
            return None, None, (existing[0], existing[1])
        if not in_statement:
            record_options(s, created.task_id, **options)
        held = None
        if policy is not None and (backlog is not None or _may_be_capped(created.tenant_cap, policy)):
            held = hold_if_capped(s, created.task_id, values["tenant_id"], policy, backlog)
        return created, held, None


GroupOutcome = CreatedTask | None | Exception
SubmitGroup = GroupCommit[tuple[dict[str, Any], dict[str, Any]], GroupOutcome]


def submit_group(
    db: Database, max_batch: int = 32, on_batch: Callable[[int], None] | None = None
) -> SubmitGroup:
    """The group commit of a process's submits to ``db`` (the API's, one per process: ``submit_task(group=...)``);
    ``on_batch`` is told each batch's size (the API's ``autogpt_api_submit_batch_size``). ``python -m
    bench.submit_micro --mode prepared --batch 4,8`` measured what it saves: PostgreSQL's CPU per task 0.30 ms
    written alone, 0.12-0.14 ms four at a time, 0.10 ms eight at a time."""
    ledger = Ledger(db)

    def write(submits: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[GroupOutcome]:
        if on_batch is not None:
            on_batch(len(submits))
        return _write_group(ledger, submits)

    return GroupCommit(write, max_batch)


def _write_group(ledger: Ledger, submits: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[GroupOutcome]:
    """The group's write: several submits in one statement. If the server refuses it (an error with a SQLSTATE: a
    value one submit got past validation, a deadlock between two batches), nothing of it was written, and each
    submit is written alone, so only one the server refuses fails, with its own error. Without the server's answer
    (no connection, or one lost: whether the statement committed is unknown) it fails them all, as it would have
    each alone: no retry here, so no task twice and no batch of connection timeouts in a row."""
    if len(submits) > 1:
        try:
            return list(ledger.create_tasks_alone(submits))
        except DBAPIError as exc:
            if exc.connection_invalidated or not getattr(exc.orig, "pgcode", None):
                raise
            log.warning("submit_group_refused", tasks=len(submits), error=str(exc.orig).strip())
    outcomes: list[GroupOutcome] = []
    for values, options in submits:
        try:
            outcomes.append(ledger.create_task_alone(values, options=options))
        except Exception as exc:  # this submit's own error, raised in its own thread
            outcomes.append(exc)
    return outcomes


def default_profiles() -> ProfileCatalog:
    """The shipped profiles and the operator's directory (``AUTOGPT_PROFILES_DIR``), as the workers read them."""
    return ProfileCatalog(get_settings().profiles_dir)


def _publish(db: Database, publisher: Publisher, wakeup: Wakeup) -> bool:
    try:
        publisher.wake(wakeup.task_id, wakeup.step_index, wakeup.phase, wakeup.priority)
    except Exception as exc:  # accepted all the same: the outbox row is committed
        log.warning("submit_publish_deferred", task_id=str(wakeup.task_id), error=str(exc))
        return False
    _marks(db).add([wakeup.outbox_id])  # batched; a mark lost is a duplicate at worst, which the ledger ignores
    return True


class BackgroundPublisher:
    """Publishes new tasks' first wake-ups from ``threads`` threads of its own, so a submit answers once its
    transaction is committed instead of also waiting for the broker's confirm (the API's choice: the client is
    promised a committed task, whose outbox row the reaper publishes if this process never does).

    ``offer`` takes a wake-up only while fewer than ``max_pending`` wait: beyond that the caller publishes it
    itself, so a broker slower than the submits slows the submits down (no backlog hidden in memory). Each
    wake-up is published in the submitter's context (its trace span). ``close`` publishes what is left.
    """

    def __init__(
        self, db: Database, publisher: Publisher, threads: int = 4, max_pending: int = 256, batch: int = 1
    ) -> None:
        self.db = db
        self.publisher = publisher
        self.threads = threads
        self.batch = batch  # > 1: a thread publishes up to this many of the waiting wake-ups per wait for confirms
        self._queue: queue.Queue[tuple[Wakeup, contextvars.Context] | None] = queue.Queue(max_pending)
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()

    def offer(self, wakeup: Wakeup, context: contextvars.Context) -> bool:
        """True if taken (it will be published); False if the caller must publish it now."""
        if not self._workers:
            self._start()
        try:
            self._queue.put_nowait((wakeup, context))
        except queue.Full:
            return False
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Publish what waits (for at most ``timeout_s``), then stop the threads; what is left goes to the reaper."""
        with self._lock:
            workers, self._workers = self._workers, []
        for _ in workers:
            try:
                self._queue.put(None, timeout=timeout_s)
            except queue.Full:
                break
        for worker in workers:
            worker.join(timeout_s)

    def _start(self) -> None:
        with self._lock:  # started on first use: in a server's worker process, after the fork
            if not self._workers:
                for i in range(self.threads):
                    worker = threading.Thread(target=self._run, name=f"submit-publisher-{i}", daemon=True)
                    worker.start()
                    self._workers.append(worker)

    def _run(self) -> None:
        if self.batch > 1:
            self._run_batches()
            return
        while True:
            item = self._queue.get()
            if item is None:
                return
            wakeup, context = item
            context.run(_publish, self.db, self.publisher, wakeup)

    def _run_batches(self) -> None:
        """Take what waits (up to ``batch``), publish it on this thread's own connection and wait for the confirms
        once (``confirm_batch``), mark what was confirmed; until ``close``'s end mark."""
        batcher = ConfirmBatch(self.publisher)
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                items, end = [item], False
                while len(items) < self.batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        end = True
                        break
                    items.append(item)
                wakes = [Wake(w.task_id, w.step_index, w.phase, w.priority, context) for w, context in items]
                confirmed = batcher.wake_all(wakes)
                _marks(self.db).add([w.outbox_id for (w, _), ok in zip(items, confirmed, strict=True) if ok])
                if end:
                    return
        finally:
            batcher.close()


def _may_be_capped(tenant_cap: int | None, policy: Policy) -> bool:
    """Whether a cap could hold the task back: the tenant's own (read in the submitting statement), the default
    per-tenant one or the platform's. Without any, ``hold_if_capped`` has nothing to check."""
    return tenant_cap is not None or policy.tenant_max_running is not None or policy.max_running is not None


def _new_task_view(
    task_id: uuid.UUID,
    created_at: datetime | None,
    values: dict[str, Any],
    submission: TaskSubmission,
    *,
    waiting: bool,
) -> TaskView | None:
    """The new task as ``queries.load_task_view`` reads it back right after the commit, built from what was
    written (no read-back). ``None`` when the row's ``created_at`` is unknown. Built without validation
    (``model_construct``): every value was validated on the way in, or is ours."""
    if created_at is None:
        return None
    return TaskView.model_construct(
        id=task_id,
        status=TaskStatus.queued,
        goal=values["goal"],
        priority=submission.priority,
        effective_priority=values["priority"],
        budget=submission.budget,  # ``values["budget"]`` is its dump
        steps_completed=0,
        usage=Usage.model_construct(prompt_tokens=0, completion_tokens=0, total_tokens=0, cost_usd=0.0, llm_calls=0),
        error=None,
        created_at=created_at,
        started_at=None,
        finished_at=None,
        metadata=values["metadata_"] or {},
        allowed_commands=values["allowed_commands"],
        profile=submission.profile,
        webhook_url=submission.webhook_url,
        webhook_events=submission.webhook_events or [],
        waiting_for_slot=waiting,
        deadline=submission.deadline,
        approval=submission.approval,
    )


_marks_lock = threading.Lock()
_marks_by_db: weakref.WeakKeyDictionary[Database, PublishMarks] = weakref.WeakKeyDictionary()


def _marks(db: Database) -> PublishMarks:
    """The process's batch of published marks for this database (one transaction a second, not one per submit)."""
    with _marks_lock:
        marks = _marks_by_db.get(db)
        if marks is None:
            marks = _marks_by_db[db] = PublishMarks(Ledger(db).mark_published)
        return marks


def flush_marks(db: Database) -> None:
    """Mark now what this process published for ``db`` and has not marked yet (before the database goes away: a
    mark left for the batch's thread would fail against it). A mark never made costs a duplicate wake-up at worst."""
    with _marks_lock:
        marks = _marks_by_db.get(db)
    if marks is not None:
        marks.flush()
