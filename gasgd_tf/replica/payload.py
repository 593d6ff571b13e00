"""What a push carries: the gradients since the last push, or a parameter delta.

Downpour SGD (Paine et al. 2013) pushes the sum of the raw gradients of the
steps since the last push; the server's optimizer applies it. DiLoCo
(Douillard et al., arXiv 2311.08105) instead lets each replica take H steps
of its own optimizer (AdamW) and pushes the pseudo-gradient
theta_fetched - theta_local: the server's optimizer, applied to it as to a
gradient, is the outer optimizer (SGD with lr 1 and no momentum reproduces
the local trajectory of one replica exactly).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gasgd_tf.tensors import TensorSpec


@dataclasses.dataclass(frozen=True)
class Update:
    """One push's payload.

    Attributes:
      values: Flat float32, in the server's layout.
      kind: "gradient" or "delta" (``config.worker.push``).
      samples: Training examples behind it (steps x batch size; 0: unknown).
    """

    values: np.ndarray
    kind: str = "gradient"
    samples: int = 0


class DeltaTracker:
    """The replica's variables, remembering the anchor a delta push is taken against.

    It wraps ``Variables`` (the session assigns fetched weights through it)
    and is the session's ``take_update`` for delta pushes. The anchor is the
    weights as last fetched, or as last pushed: after a push without a fetch
    (``n_fetch`` > ``n_push``) the next delta counts only the steps after it.
    A fetch that replaces the weights between two pushes (``n_fetch`` <
    ``n_push``, or one that a background sync brings a step after its push)
    first keeps the movement since the anchor as pending, so the pushed
    deltas always add up to the replica's whole movement.
    """

    def __init__(self, variables):
        self._variables = variables
        self.specs: tuple[TensorSpec, ...] = variables.specs
        self._anchor: np.ndarray | None = None
        self._pending: np.ndarray | None = None  # Movement the last fetch overwrote.

    def read(self) -> np.ndarray:
        return self._variables.read()

    def assign(self, flat: np.ndarray) -> None:
        if self._anchor is not None:  # The local steps since the anchor stay to be pushed.
            moved = self._anchor - self._variables.read()
            self._pending = moved if self._pending is None else self._pending + moved
        self._variables.assign(flat)
        self._anchor = np.array(flat, np.float32, copy=True)

    def take(self) -> np.ndarray:
        """The movement since the last take, flat: pending + theta_anchor - theta_local.

        The local weights become the anchor.

        Raises:
          RuntimeError: No weights were assigned yet (nothing to take a delta from).
        """
        if self._anchor is None:
            raise RuntimeError("a delta push before any fetch: no weights to take it from")
        local = self._variables.read()
        delta = self._anchor - local
        if self._pending is not None:
            delta, self._pending = delta + self._pending, None
        self._anchor = local
        return delta
