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

Fragments (Streaming DiLoCo, arXiv 2501.18512): a push of a fragment of the
parameters (``gasgd_tf/fragments.py``) goes into that fragment's own open
round, which closes, averages and is applied on its own: one update of that
fragment. Fragments of different keys must not overlap (every worker cuts
the model the same way); their sums share one model-sized buffer, since
disjoint fragments use disjoint parts of it.

Numpy only. Not thread-safe: the store calls it under its lock.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection

import numpy as np

from gasgd_tf.fragments import Fragment
from gasgd_tf.tensors import ValidationError

# The names of the open rounds' state among a checkpoint's slots.
SLOT_PREFIX = "round."
TOTAL_SLOT = SLOT_PREFIX + "total"
WEIGHT_SLOT = SLOT_PREFIX + "weight"

# Asks about a client's membership of any open round (``is_member``).
ANY = object()


def key_of(fragment: Fragment | None):
    """The key of the rounds a push of ``fragment`` goes into (None: the whole model)."""
    return None if fragment is None else fragment.runs


@dataclasses.dataclass
class _Open:
    """One open round: whose pushes it holds, their total weight, since when."""

    fragment: Fragment | None
    opened_at: float
    members: dict[str, int] = dataclasses.field(default_factory=dict)
    weight: float = 0.0


class RoundState:
    """The open rounds (one per fragment key): weighted sums and who pushed.

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
        self.closed = 0  # Rounds applied so far (of every fragment).
        self._open: dict[object, _Open] = {}
        self._total: np.ndarray | None = None  # Sum of weight x push (float32), model-sized.
        # The server version each key's last round produced: a push computed
        # from an older one missed that round (a late push).
        self.applied_version: dict[object, int] = {}

    @property
    def members(self) -> dict[str, int]:
        """Client id -> samples it pushed into the open whole-model round."""
        whole = self._open.get(None)
        return dict(whole.members) if whole else {}

    def is_member(self, client_id: str, key=ANY) -> bool:
        """Whether ``client_id`` pushed into the open round of ``key`` (of any: ``ANY``)."""
        if key is ANY:
            return any(client_id in o.members for o in self._open.values())
        return key in self._open and client_id in self._open[key].members

    def open_keys(self) -> list:
        return list(self._open)

    def add(
        self,
        client_id: str,
        values: np.ndarray,
        samples: int,
        now: float,
        fragment: Fragment | None = None,
        size: int | None = None,
    ) -> None:
        """Adds one push to its fragment's open round, weighted by its samples (1 when unknown).

        Args:
          values: The push: the whole model's values, or the fragment's, compact.
          size: Values in the whole model (default: ``values.size``).

        Raises:
          ValidationError: The fragment overlaps another fragment's open
            round (workers cut the model differently). Nothing is changed.
        """
        key = key_of(fragment)
        for other, round_ in self._open.items():
            if other != key and (
                fragment is None or round_.fragment is None or fragment.overlaps(round_.fragment)
            ):
                raise ValidationError(
                    "this push's tensors overlap another fragment's open round: every worker "
                    "must cut the model alike (the same sync.fragments)"
                )
        size = values.size if size is None else size
        if self._total is None or self._total.size != size:
            self._total = np.zeros(size, np.float32)
        weight = float(samples) if samples > 0 else 1.0
        round_ = self._open.setdefault(key, _Open(fragment, now))
        part = self._total if fragment is None else fragment.gather(self._total)
        part += values * np.float32(weight) if weight != 1.0 else values
        if fragment is not None:
            fragment.scatter(part, self._total)
        round_.weight += weight
        round_.members[client_id] = round_.members.get(client_id, 0) + int(samples)

    def missing(self, expected: Collection[str], key=None) -> list[str]:
        """The expected workers that have not pushed into the open round of ``key``."""
        members = self._open[key].members if key in self._open else {}
        return sorted(c for c in expected if c not in members)

    def ready(self, expected: Collection[str], now: float, key=None) -> bool:
        """Whether the open round of ``key`` may close now (see the module docstring)."""
        round_ = self._open.get(key)
        if round_ is None or not round_.members:
            return False
        missing = self.missing(expected, key)
        if not missing:
            return True
        if now - round_.opened_at < self.timeout_secs:
            return False
        pushed = len([c for c in expected if c in round_.members])
        return pushed >= math.ceil(self.quorum * len(expected))

    def take_average(self, key=None) -> tuple[np.ndarray, Fragment | None]:
        """The weighted average of the open round of ``key`` (new array) and its fragment.

        That round closes; the next push of ``key`` opens a new one.
        """
        round_ = self._open.pop(key)
        fragment = round_.fragment
        part = self._total if fragment is None else fragment.gather(self._total)
        average = part / np.float32(round_.weight)
        part[...] = 0
        if fragment is not None:
            fragment.scatter(part, self._total)
        self.closed += 1
        return average, fragment

    # -- Checkpoints -------------------------------------------------------------

    def export(self, size: int) -> tuple[dict[str, np.ndarray], dict]:
        """Copies of the open rounds' sums and weights (slots) and members (meta)."""
        total = np.zeros(size, np.float32) if self._total is None else self._total.copy()
        whole = self._open.get(None)
        weight = whole.weight if whole else 0.0
        slots = {TOTAL_SLOT: total, WEIGHT_SLOT: np.array([weight], np.float64)}
        meta = {
            "closed": self.closed,
            "members": dict(whole.members) if whole else {},
            "fragments": [
                {"runs": [list(r) for r in key], "members": dict(o.members), "weight": o.weight}
                for key, o in self._open.items()
                if key is not None
            ],
        }
        return slots, meta

    def restore(self, slots: dict[str, np.ndarray], meta: dict | None, now: float) -> None:
        """Resumes the open rounds of a checkpoint (``export``); their deadlines restart now."""
        meta = meta or {}
        self.closed = int(meta.get("closed", 0))
        self._open = {}
        members = {str(k): int(v) for k, v in (meta.get("members") or {}).items()}
        if TOTAL_SLOT in slots:
            self._total = np.array(slots[TOTAL_SLOT], np.float32, copy=True).reshape(-1)
        if members:
            weight = float(np.asarray(slots.get(WEIGHT_SLOT, [0.0])).reshape(-1)[0])
            self._open[None] = _Open(None, now, members, weight)
        for saved in meta.get("fragments") or ():
            fragment = Fragment.of([tuple(r) for r in saved["runs"]])
            saved_members = {str(k): int(v) for k, v in saved["members"].items()}
            self._open[fragment.runs] = _Open(fragment, now, saved_members, float(saved["weight"]))

    def members_of_all(self) -> list[str]:
        """Every client with a push in some open round (for the log)."""
        return sorted({c for o in self._open.values() for c in o.members})


def split_slots(slots: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """A checkpoint's slots as (the optimizer's, the open round's)."""
    optimizer = {k: v for k, v in slots.items() if not k.startswith(SLOT_PREFIX)}
    round_ = {k: v for k, v in slots.items() if k.startswith(SLOT_PREFIX)}
    return optimizer, round_
