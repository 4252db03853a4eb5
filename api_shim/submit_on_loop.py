"""The submit route's path on the event loop: a submit that is one statement (``PreparedSubmit.alone``) waits for the
group commit's writer thread on a future, and hands its first wake-up to the background publisher, without taking
a thread of its own. Anything that may block (the backlog flag's Redis read when its cached reading is stale, the
transaction's path for a taken idempotency key or a capped tenant, a publish when the background publisher is full)
runs through ``run_sync``, the route's thread hop. The answer is ``submit_task``'s, row for row."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from autogpt_workers.admission import Policy
from autogpt_workers.broker import Publisher
from autogpt_workers.contracts import TaskSubmission
from autogpt_workers.store.db import Database
from autogpt_workers.submit import (
    BackgroundPublisher,
    SubmitGroup,
    Submitted,
    admitted_view,
    finish_submit,
    group_outcome,
    hand_to_background,
    prepare_submit,
    publish_new,
)

T = TypeVar("T")


class RunSync(Protocol):
    """The route's thread hop (anyio's ``to_thread.run_sync`` with the API's limiter)."""

    def __call__(self, fn: Callable[[], T]) -> Awaitable[T]: ...


async def submit_on_loop(
    db: Database,
    publisher: Publisher,
    submission: TaskSubmission,
    *,
    group: SubmitGroup,
    run_sync: RunSync,
    tenant_id: str,
    idempotency_key: str | None,
    model: str | None,
    policy: Policy,
    background: BackgroundPublisher | None,
) -> Submitted:
    """``submit_task(..., group=group)`` from the event loop (see the module's docstring), for a submission that
    names no profile (a profile may be read from a file: ``submit_task`` in a thread)."""
    if submission.profile is not None:
        raise ValueError("a submission with a profile is submitted in a thread (submit_task)")
    prepared = prepare_submit(
        submission, tenant_id=tenant_id, idempotency_key=idempotency_key, model=model, policy=policy
    )
    known, backlog = policy.backlog_known()
    if not known:
        backlog = await run_sync(policy.backlogged)
    created = None
    if prepared.alone(policy, backlog):
        created = group_outcome(await group.submit((prepared.values, prepared.options)))
    if created is None:  # a taken key, a capped tenant, a webhook, the backlog: the transaction's path
        return await run_sync(lambda: finish_submit(db, publisher, prepared, None, policy, backlog, background))
    view = admitted_view(prepared, created)
    handed = hand_to_background(created, view, background)
    if handed is not None:
        return handed
    admitted = created
    return await run_sync(lambda: publish_new(db, publisher, admitted, view, None))
