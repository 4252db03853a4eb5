"""In-memory state of one fake LLM app: scripts, config, fault counters, seeded RNGs and the request log."""

from __future__ import annotations

import random
from collections import deque
from typing import Any

from tests.fake_llm.models import Config, FaultKind, Outcome, Script, Turn

LOG_LIMIT = 1_000_000


class FakeLLMState:
    """Everything the control endpoints change. The app is single-threaded asyncio: no locks needed."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Back to the initial state: no scripts, default config, empty counters and log."""
        self.scripts: dict[str, Script] = {}
        self.config = Config()
        self.models_seen: set[str] = set()
        self.fault_counters: dict[tuple[str, int], int] = {}
        self.log: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)
        self.seq = 0
        self._seed_rngs()

    def _seed_rngs(self) -> None:
        self.fault_rng = random.Random(self.config.seed)
        self.latency_rng = random.Random(self.config.seed + 1)

    def update_config(self, changes: dict[str, Any]) -> Config:
        """Merge the given fields into the config (validated); a given ``seed`` re-seeds the RNGs."""
        self.config = Config.model_validate({**self.config.model_dump(), **changes})
        if "seed" in changes:
            self._seed_rngs()
        return self.config

    def pick_fault(self, conversation: str, turn_number: int, turn: Turn) -> FaultKind | None:
        """Scripted faults first (one per request of this turn), else a random fault at ``fault_rate``."""
        key = (conversation, turn_number)
        served = self.fault_counters.get(key, 0)
        if served < len(turn.faults):
            self.fault_counters[key] = served + 1
            return turn.faults[served]
        if self.config.fault_rate > 0 and self.fault_rng.random() < self.config.fault_rate:
            return self.fault_rng.choice(self.config.fault_kinds)
        return None

    def latency(self, turn: Turn) -> float:
        jitter = self.config.latency_jitter_s
        extra = self.latency_rng.uniform(0, jitter) if jitter > 0 else 0.0
        return self.config.latency_s + extra + turn.latency_s

    def record(
        self, *, ts: float, conversation: str, turn: int, outcome: Outcome, tool: str | None, model: str
    ) -> dict[str, Any]:
        """Append a log entry; the caller sets ``done_ts`` on the returned dict when it has answered."""
        self.seq += 1
        entry: dict[str, Any] = {
            "seq": self.seq,
            "ts": ts,
            "done_ts": None,
            "conversation": conversation,
            "turn": turn,
            "outcome": outcome,
            "tool": tool,
            "model": model,
        }
        self.log.append(entry)
        return entry

    def entries(self, conversation: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.log if conversation is None or e["conversation"] == conversation]

    def summary(self) -> dict[str, dict[str, dict[str, int]]]:
        """``{conversation: {turn (str): {outcome: count}}}`` over the current log."""
        result: dict[str, dict[str, dict[str, int]]] = {}
        for entry in self.log:
            counts = result.setdefault(entry["conversation"], {}).setdefault(str(entry["turn"]), {})
            counts[entry["outcome"]] = counts.get(entry["outcome"], 0) + 1
        return result
