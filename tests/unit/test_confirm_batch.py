"""How a batch's confirms are settled: an ack confirms its delivery tag, or every tag up to it when ``multiple``; a
nacked message is not confirmed (it is published again one at a time); a ``task-sent`` event's tag belongs to no
wake-up."""

from __future__ import annotations

from autogpt_workers.confirm_batch import ConfirmBatch


def test_acks_settle_one_tag_or_all_up_to_it_and_a_nack_confirms_nothing() -> None:
    batch = ConfirmBatch(publisher=None)  # type: ignore[arg-type]  # no publishing here
    batch._confirmed = [False] * 4
    batch._pending = {1: 0, 2: None, 3: 1, 4: 2, 5: 3}  # tag 2: an event, no wake-up
    batch._acked(3, True)
    assert batch._confirmed == [True, True, False, False] and sorted(batch._pending) == [4, 5]
    batch._nacked(4, False)
    assert batch._confirmed == [True, True, False, False] and sorted(batch._pending) == [5]
    batch._acked(5, False)
    assert batch._confirmed == [True, True, False, True] and not batch._pending


def test_only_a_wake_ups_own_message_confirms_it_not_its_task_sent_event() -> None:
    sent: list[object] = []

    class Channel:
        def _basic_publish(self, message: object, **kwargs: object) -> None:
            sent.append(message)

    batch = ConfirmBatch(publisher=None)  # type: ignore[arg-type]
    batch._channel = Channel()
    batch._confirmed = [False]
    batch._index = 0
    batch._publish_unconfirmed("the wake-up", exchange="", routing_key="think", confirm_timeout=None)
    batch._publish_unconfirmed("its task-sent event", exchange="celeryev", routing_key="task.sent")
    assert batch._pending == {1: 0, 2: None} and sent == ["the wake-up", "its task-sent event"]
    batch._nacked(1, False)
    batch._acked(2, False)
    assert batch._confirmed == [False]  # published again alone by wake_all
