"""Speed-adaptive local steps (``worker.local_steps='adaptive'``): DyLU.

From "Asynchronous Local-SGD Training for Language Modeling" (Liu et al.
2024, arXiv 2401.09135, Dynamic Local Updates): a worker's number of local
steps between syncs is set in proportion to its speed, H_i = H * v_i / v_max
(rounded), so that the fastest worker does H (``n_push``) steps, a worker
half as fast H / 2, and every worker syncs after about the same wall-clock
time. Slow
workers then no longer push deltas that are many server versions stale.

The server measures each worker's speed from its pushes (steps between two
pushes over the seconds between them, a moving average) and answers every
push with the worker's H for its next window (``PushResponse.local_steps``).
The plan for each worker is checkpointed with the client records.

Numpy-free and lock-free: the store calls it under its lock.
"""

from __future__ import annotations

import dataclasses

# Weight of the newest measurement in a worker's moving-average speed.
RATE_SMOOTHING = 0.5


@dataclasses.dataclass
class WorkerSpeed:
    """What the planner knows of one worker."""

    last_step: int = 0
    last_time: float | None = None
    steps_per_sec: float = 0.0  # 0: not measured yet.
    local_steps: int = 0  # The H last told; 0: none yet.


class LocalStepsPlanner:
    """Tells each worker its local steps from its measured speed.

    Args:
      max_local_steps: H of the fastest worker (``n_push``), >= 1.
    """

    def __init__(self, max_local_steps: int):
        if max_local_steps < 1:
            raise ValueError(f"max_local_steps must be >= 1, got {max_local_steps}")
        self.max_local_steps = int(max_local_steps)
        self.workers: dict[str, WorkerSpeed] = {}

    def observe(self, client_id: str, client_step: int, now: float) -> int:
        """Records a push of ``client_id`` at its step ``client_step``; returns its next H."""
        speed = self.workers.setdefault(client_id, WorkerSpeed())
        if speed.last_time is not None and now > speed.last_time and client_step > speed.last_step:
            rate = (client_step - speed.last_step) / (now - speed.last_time)
            speed.steps_per_sec = (
                rate
                if not speed.steps_per_sec
                else RATE_SMOOTHING * rate + (1 - RATE_SMOOTHING) * speed.steps_per_sec
            )
        speed.last_step, speed.last_time = client_step, now
        speed.local_steps = self.local_steps(client_id)
        return speed.local_steps

    def local_steps(self, client_id: str) -> int:
        """H for ``client_id``: max H scaled by its speed over the fastest known."""
        fastest = max((w.steps_per_sec for w in self.workers.values()), default=0.0)
        own = self.workers.get(client_id)
        if own is None or not own.steps_per_sec or not fastest:
            return self.max_local_steps  # Not measured yet: as fixed H.
        # Rounded, not floored (the paper floors): two workers of one speed
        # measure a percent apart, and the slightly slower one would lose a step.
        return max(1, round(self.max_local_steps * own.steps_per_sec / fastest))

    def forget(self, client_id: str) -> None:
        """Drops a worker that left or expired (its speed no longer sets anyone's H)."""
        self.workers.pop(client_id, None)

    def export(self) -> dict:
        return {
            c: {"steps_per_sec": w.steps_per_sec, "local_steps": w.local_steps}
            for c, w in self.workers.items()
        }

    def restore(self, saved: dict | None) -> None:
        """Resumes from ``export``; the next push of each worker starts a new measurement."""
        for client_id, values in (saved or {}).items():
            self.workers[client_id] = WorkerSpeed(
                steps_per_sec=float(values.get("steps_per_sec", 0.0)),
                local_steps=int(values.get("local_steps", 0)),
            )
