"""Staleness policies: what the server does about gradients computed from old parameters.

A push's staleness is the number of updates the server applied between the
version the gradient was computed from (its base) and the push. Policies:

- ``none``: plain A-SGD (Paine et al. 2013, Downpour SGD): every gradient
  is applied as it is.
- ``lr_scale``: the step of a push is divided by max(1, staleness) (Zhang
  et al. 2016, "Staleness-aware async-SGD").
- ``bounded``: no push is applied with a staleness above ``bound``. The
  server admits a worker's Fetch (the start of its next round) only when no
  worker's gradient could end up staler than the bound; pushes are never
  held back, so the workers computing always finish (see
  ``BoundedAdmission``).
- ``dc_asgd``: delay compensation (Zheng et al. 2017, DC-ASGD): the
  gradient is corrected towards the current parameters with
  g + lambda * g * g * (w_now - w_base), where w_base are the parameters the
  worker last fetched. The server keeps, per worker, a reference to the
  snapshot it fetched: at most one extra copy of the parameters per worker.
- ``delayed_nesterov``: for asynchronous outer steps (Liu et al. 2024): the
  server's SGD momentum is folded in once every ``ps.dn_period`` pushes,
  each push applied at once without it (``optimizers.DelayedNesterov``).

Numpy only, like the rest of the server.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

POLICIES = ("none", "lr_scale", "bounded", "dc_asgd", "delayed_nesterov")


@dataclasses.dataclass(frozen=True)
class StalenessConfig:
    """The server's staleness policy and its parameters.

    Attributes:
      policy: One of ``POLICIES``.
      bound: ``bounded``: the largest staleness a push may have, >= 0.
      dc_lambda: ``dc_asgd``: the variance-control parameter lambda, >= 0.
      straggler_secs: ``bounded``: a worker that has not pushed for this
        long after its fetch is no longer waited for (it may have died);
        its late push is still applied, and the log says so.
    """

    policy: str = "none"
    bound: int = 2
    dc_lambda: float = 0.04
    straggler_secs: float = 30.0

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"unknown staleness policy {self.policy!r}; known: {POLICIES}")
        if not isinstance(self.bound, int) or self.bound < 0:
            raise ValueError(f"staleness bound must be an integer >= 0, got {self.bound!r}")
        if not (math.isfinite(self.dc_lambda) and self.dc_lambda >= 0):
            raise ValueError(f"dc_lambda must be a finite number >= 0, got {self.dc_lambda}")
        if not self.straggler_secs > 0:
            raise ValueError(f"straggler_secs must be > 0, got {self.straggler_secs}")


def lr_scale(staleness: int) -> float:
    """``lr_scale``: the factor on the step of a push with this staleness."""
    return 1.0 / max(1, staleness)


def dc_compensate(
    grad: np.ndarray, params: np.ndarray, base: np.ndarray, dc_lambda: float, out: np.ndarray
) -> np.ndarray:
    """``dc_asgd``: ``out = grad + dc_lambda * grad * grad * (params - base)``; returns ``out``.

    ``out`` must not alias ``grad``; it may be a reused scratch buffer.
    """
    np.subtract(params, base, out=out)
    out *= grad
    out *= grad
    out *= np.float32(dc_lambda)
    out += grad
    return out


class BoundedAdmission:
    """Decides when a worker may start a round so that no push exceeds the staleness bound.

    A worker is *outstanding* from its Fetch until its next Push, with base
    version f (the version it fetched). While it is outstanding, the other
    outstanding workers may each push once before it (a worker fetches again
    before pushing again), so the staleness its push can reach is at most
    ``(version - f) + (number of other outstanding workers)``. A Fetch is
    admitted only if that projection stays within the bound for every
    outstanding worker, the fetching one included. Pushes leave it
    unchanged (the version gains one, the outstanding others lose one) and
    are never delayed, so outstanding workers always finish and the waiting
    ones always get in eventually: no deadlock, provided the server has a
    thread for every waiting Fetch and the pushes besides (the config
    requires ``ps.rpc_threads >= num_workers + 3``). Waiting Fetches are served
    in arrival order, so a slow worker is not starved by fast ones.

    With bound s, at most s + 1 workers compute at once; s = 0 runs one
    worker at a time (every gradient fresh). This needs ``n_fetch ==
    n_push`` (a fetch between pushes would start no new round).

    Not thread-safe: the store calls it under its lock.
    """

    def __init__(self, bound: int):
        self.bound = bound
        self.outstanding: dict[str, tuple[int, float]] = {}  # client -> (base, since)
        self.queue: list[str] = []

    def admissible(self, client_id: str, version: int) -> bool:
        """Whether ``client_id`` may fetch now (at the head of the queue, within the bound)."""
        if client_id in self.outstanding:
            return True  # Already in its round: a fetch changes nothing.
        if self.queue and self.queue[0] != client_id:
            return False
        others = len(self.outstanding)  # Outstanding others, once this one joins.
        if others > self.bound:
            return False
        return all(version - base + others <= self.bound for base, _ in self.outstanding.values())

    def blockers(self) -> list[str]:
        """The outstanding workers that keep the bound from admitting another, oldest first."""
        return [c for c, _ in sorted(self.outstanding.items(), key=lambda item: item[1][0])]

    def start(self, client_id: str, version: int, now: float) -> None:
        """Records an admitted fetch."""
        if client_id in self.queue:
            self.queue.remove(client_id)
        self.outstanding.setdefault(client_id, (version, now))

    def finish(self, client_id: str) -> None:
        """Records a push (or a Leave): the worker's round is over."""
        self.outstanding.pop(client_id, None)

    def drop_stragglers(self, now: float, straggler_secs: float) -> list[str]:
        """Stops waiting for workers outstanding for longer than ``straggler_secs``."""
        late = [c for c, (_, since) in self.outstanding.items() if now - since > straggler_secs]
        for c in late:
            del self.outstanding[c]
        return late
