"""The lease heartbeat's bookkeeping: stop requests from the renewal's answer, and late renewals counted."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from autogpt_workers.lease import LeaseKeeper


def test_a_missing_token_means_lease_lost_and_a_cancelling_task_means_cancel() -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    def renew(tokens: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
        return {a: "running", b: "cancelling"}

    keeper = LeaseKeeper(renew, interval_s=3600, ttl_s=10)
    with keeper.hold(a) as ha, keeper.hold(b) as hb, keeper.hold(c) as hc:
        keeper.beat()
        assert (ha.stop_reason, hb.stop_reason, hc.stop_reason) == (None, "cancel", "lease lost")


def test_renewals_further_apart_than_half_a_lease_are_counted_late() -> None:
    keeper = LeaseKeeper(lambda tokens: {t: "running" for t in tokens}, interval_s=3600, ttl_s=0.2)
    with keeper.hold(uuid.uuid4()):
        keeper.beat()
        keeper.beat()
        assert keeper.late_renewals == 0
        time.sleep(0.15)
        keeper.beat()
        assert keeper.late_renewals == 1
