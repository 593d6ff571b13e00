"""When a replica syncs: which calls fall due as its step count moves.

One rule for every replica (the command-line worker and the Keras callback):
a push is due when the step count crosses a multiple of ``n_push``, and at
the last step when the run's length is known; a fetch is due when it
crosses a multiple of ``n_fetch``, except at the last step (nothing would
use it). "Crosses" rather than "equals" because a Keras callback may see the
count move by several steps at once (``steps_per_execution`` > 1); when it
moves by one, crossing a multiple is landing on it. When both fall due at
one step the push goes first, so the fetched weights include it.

Adaptive local steps (DyLU) move the multiples: when the server tells a
replica a new H after its push at step s, the schedule counts multiples of
H from s on (``replanned``).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Due:
    """What a replica does after a step (push first, then fetch)."""

    push: bool = False
    fetch: bool = False

    def __bool__(self) -> bool:
        return self.push or self.fetch


NOTHING = Due()


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class SyncSchedule:
    """The push and fetch schedule of one replica.

    Attributes:
      n_push: Push every ``n_push`` steps.
      n_fetch: Fetch every ``n_fetch`` steps.
      num_steps: The run's last step when known (the command-line worker;
        Keras when ``fit`` says how many steps it runs), else None: then the
        last push is the caller's (``ReplicaSession.finish``).
      origin: The step the multiples count from (0; a replan's push step).
    """

    n_push: int
    n_fetch: int
    num_steps: int | None = None
    origin: int = 0

    def __post_init__(self):
        _positive("n_push", self.n_push)
        _positive("n_fetch", self.n_fetch)
        if self.num_steps is not None:
            _positive("num_steps", self.num_steps)

    def due(self, step: int, previous: int) -> Due:
        """What is due once the step count has moved from ``previous`` to ``step``.

        Args:
          step: The steps done now.
          previous: The steps done at the last call (0 at the start, or the
            step a resumed run starts after).
        """
        if step <= previous:
            return NOTHING
        last = self.num_steps is not None and step >= self.num_steps
        step, previous = step - self.origin, max(previous - self.origin, 0)
        push = last or step // self.n_push > previous // self.n_push
        fetch = not last and step // self.n_fetch > previous // self.n_fetch
        return Due(push=push, fetch=fetch)

    def replanned(self, local_steps: int, at: int) -> SyncSchedule:
        """Push and fetch every ``local_steps`` steps counted from step ``at``."""
        _positive("local_steps", local_steps)
        return dataclasses.replace(self, n_push=local_steps, n_fetch=local_steps, origin=at)

    def with_num_steps(self, num_steps: int | None) -> SyncSchedule:
        """The same schedule for a run of ``num_steps`` steps."""
        return dataclasses.replace(self, num_steps=num_steps)
