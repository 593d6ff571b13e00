"""Synchronous rounds (``ps.aggregation='round'``): one update from one push per worker.

The server collects one push from every active worker, averages them
weighted by the samples behind each, and applies the average as one update
(one version). A worker that has pushed into the open round waits in its
next Fetch until the round is applied, so every worker starts the next
round from the same parameters: with gradient pushes and H = n_push = 1
this is synchronous data-parallel SGD, with parameter deltas DiLoCo's outer
step (Douillard et al. 2023, arXiv 2311.08105: the outer gradient is the
average of the replicas' deltas).

Stragglers and the dead: a round closes when every expected worker (active,
not expired, has trained) has pushed into it; or, ``timeout_secs`` after
its first push, once ``quorum`` of them have. A worker that dies mid-round
stops being expected when it expires (``ps.heartbeat_timeout_secs``) or
leaves, so no round waits for it for ever.

Late pushes: a push that arrives after its round closed without it is not
refused (its samples were computed and acknowledging costs nothing): it
counts in the round open when it arrives, weighted by its samples like any
other, and its staleness (one or more versions) is recorded. Refusing it
would throw away the slow worker's work and make it recompute.

Numpy only. Not thread-safe: the store calls it under its lock.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np

# The names of the open round's state among a checkpoint's slots.
SLOT_PREFIX = "round."
TOTAL_SLOT = SLOT_PREFIX + "total"
WEIGHT_SLOT = SLOT_PREFIX + "weight"


class RoundState:
    """The open round: the weighted sum of its pushes and who pushed.

    Args:
      quorum: The fraction of expected workers that lets a late round close
        at its deadline, in (0, 1].
      timeout_secs: Seconds after a round's first push at which it may close
        without the workers still missing.
    """

    def __init__(self, quorum: float, timeout_secs: float):
        if not 0 < quorum <= 1:
            raise ValueError(f"round quorum must be in (0, 1], got {quorum}")
        if not timeout_secs > 0:
            raise ValueError(f"round timeout must be > 0 seconds, got {timeout_secs}")
        self.quorum = quorum
        self.timeout_secs = timeout_secs
        self.closed = 0  # Rounds applied so far.
        self.members: dict[str, int] = {}  # Client id -> samples it pushed into the open round.
        self.opened_at: float | None = None  # When the open round's first push came.
        self._total: np.ndarray | None = None  # Sum of weight x push (float32).
        self._weight = 0.0

    def add(self, client_id: str, values: np.ndarray, samples: int, now: float) -> None:
        """Adds one push to the open round, weighted by its samples (1 when unknown)."""
        weight = float(samples) if samples > 0 else 1.0
        if self._total is None or self._total.size != values.size:
            self._total = np.zeros(values.size, np.float32)
        if not self.members:
            self.opened_at = now
        self._total += values * np.float32(weight) if weight != 1.0 else values
        self._weight += weight
        self.members[client_id] = self.members.get(client_id, 0) + int(samples)

    def missing(self, expected: Collection[str]) -> list[str]:
        """The expected workers that have not pushed into the open round."""
        return sorted(c for c in expected if c not in self.members)

    def ready(self, expected: Collection[str], now: float) -> bool:
        """Whether the open round may close now (see the module docstring)."""
        if not self.members:
            return False
        missing = self.missing(expected)
        if not missing:
            return True
        if now - self.opened_at < self.timeout_secs:
            return False
        pushed = len([c for c in expected if c in self.members])
        return pushed >= math.ceil(self.quorum * len(expected))

    def take_average(self) -> np.ndarray:
        """The open round's weighted average (a new array); the next round opens empty."""
        average = self._total / np.float32(self._weight)
        self._total[...] = 0
        self._weight = 0.0
        self.members = {}
        self.opened_at = None
        self.closed += 1
        return average

    # -- Checkpoints -------------------------------------------------------------

    def export(self, size: int) -> tuple[dict[str, np.ndarray], dict]:
        """Copies of the open round's sum and weight (slots) and its members (meta)."""
        total = np.zeros(size, np.float32) if self._total is None else self._total.copy()
        slots = {TOTAL_SLOT: total, WEIGHT_SLOT: np.array([self._weight], np.float64)}
        return slots, {"closed": self.closed, "members": dict(self.members)}

    def restore(self, slots: dict[str, np.ndarray], meta: dict | None, now: float) -> None:
        """Resumes the open round of a checkpoint (``export``); its deadline restarts now."""
        meta = meta or {}
        self.closed = int(meta.get("closed", 0))
        self.members = {str(k): int(v) for k, v in (meta.get("members") or {}).items()}
        if TOTAL_SLOT in slots:
            self._total = np.array(slots[TOTAL_SLOT], np.float32, copy=True).reshape(-1)
            self._weight = float(np.asarray(slots.get(WEIGHT_SLOT, [0.0])).reshape(-1)[0])
        self.opened_at = now if self.members else None


def split_slots(slots: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """A checkpoint's slots as (the optimizer's, the open round's)."""
    optimizer = {k: v for k, v in slots.items() if not k.startswith(SLOT_PREFIX)}
    round_ = {k: v for k, v in slots.items() if k.startswith(SLOT_PREFIX)}
    return optimizer, round_
