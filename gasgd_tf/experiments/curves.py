"""Learning curves of one run, read from its TensorBoard events, as the paper drew them.

Two x-axes: steps per client (on dedicated GPUs, one per client, this is
time) and wall-clock seconds since the first worker started (on a machine
whose clients share the cores, it is not); a third, the bytes each client
sent and received by a step (``comm_curves``). Training error is smoothed
with a trailing sliding window over minibatches, as in the paper's figures.
"""

from __future__ import annotations

import dataclasses
import glob

import numpy as np

from gasgd_tf import layout
from gasgd_tf.experiments import events


@dataclasses.dataclass(frozen=True)
class Curve:
    """Error against both x-axes; the three arrays have equal length."""

    steps: np.ndarray
    seconds: np.ndarray
    error: np.ndarray

    def steps_to(self, error: float) -> float:
        """Steps per client when the error first fell to ``error`` or below (NaN: never)."""
        return self._first_reaching(error, self.steps)

    def seconds_to(self, error: float) -> float:
        """Wall-clock seconds when the error first fell to ``error`` or below (NaN: never)."""
        return self._first_reaching(error, self.seconds)

    def _first_reaching(self, error: float, axis: np.ndarray) -> float:
        below = np.flatnonzero(self.error <= error)
        return float(axis[below[0]]) if below.size else float("nan")

    def at_steps(self, steps: float) -> float:
        """The error at ``steps`` per client (linear interpolation; NaN before the first point)."""
        if self.steps.size == 0 or steps < self.steps[0]:
            return float("nan")
        return float(np.interp(steps, self.steps, self.error))


def _worker_dirs(run_dir: str) -> list[str]:
    return sorted(glob.glob(layout.tensorboard_dir(run_dir, layout.WORKER_PREFIX + "*")))


def start_time(run_dir: str) -> float:
    """When the first worker opened its event file (after TensorFlow's start-up)."""
    times = [t for d in _worker_dirs(run_dir) if (t := events.first_wall_time(d)) is not None]
    if not times:
        raise FileNotFoundError(f"no worker events under {run_dir}/tb")
    return min(times)


def test_curve(run_dir: str) -> Curve:
    """Test error of the server's parameters, one point per evaluation."""
    scalars = events.read_scalars(layout.tensorboard_dir(run_dir, layout.EVAL))
    accuracy = scalars.get("eval/accuracy", [])
    steps = scalars.get("eval/steps_per_client", [])
    if len(steps) != len(accuracy):  # Written together; a run killed mid-write may differ.
        n = min(len(steps), len(accuracy))
        accuracy, steps = accuracy[:n], steps[:n]
    t0 = start_time(run_dir)
    return Curve(
        np.array([p.value for p in steps]),
        np.array([p.wall_time - t0 for p in accuracy]),
        1.0 - np.array([p.value for p in accuracy]),
    )


def _smooth(values: np.ndarray, points: int) -> np.ndarray:
    """Trailing mean over the last ``points`` values (fewer at the start)."""
    if values.size == 0 or points <= 1:
        return values
    sums = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, values.size + 1)
    lo = np.maximum(idx - points, 0)
    return (sums[idx] - sums[lo]) / (idx - lo)


def train_curves(
    run_dir: str, window_minibatches: int, log_every_steps: int
) -> tuple[Curve, Curve]:
    """Training error on the workers' own minibatches, smoothed over a window.

    Each worker logs its accuracy averaged over ``log_every_steps``
    minibatches.

    Returns:
      (by steps, by time). By steps: the workers' values at each step are
      averaged, then smoothed over ``window_minibatches`` steps (its seconds
      are the workers' mean time at that step). By time: all workers'
      points merged in time order, smoothed over the points that make up
      the window of every worker together (its steps are each point's own).
    """
    per_worker = [events.read_scalars(d).get("train/accuracy", []) for d in _worker_dirs(run_dir)]
    per_worker = [p for p in per_worker if p]
    if not per_worker:
        empty = Curve(np.zeros(0), np.zeros(0), np.zeros(0))
        return empty, empty
    t0 = start_time(run_dir)
    points = max(1, round(window_minibatches / log_every_steps))

    by_step: dict[int, list[float]] = {}
    for worker_points in per_worker:
        for p in worker_points:
            by_step.setdefault(p.step, []).append(1.0 - p.value)
    steps = np.array(sorted(by_step), dtype=np.float64)
    step_error = _smooth(np.array([np.mean(by_step[s]) for s in sorted(by_step)]), points)

    merged = sorted((p for w in per_worker for p in w), key=lambda p: p.wall_time)
    time_error = _smooth(np.array([1.0 - p.value for p in merged]), points * len(per_worker))
    by_time = Curve(
        np.array([p.step for p in merged], dtype=np.float64),
        np.array([p.wall_time - t0 for p in merged]),
        time_error,
    )
    return Curve(steps, _mean_time(steps, per_worker, t0), step_error), by_time


def _mean_time(steps: np.ndarray, per_worker, t0: float) -> np.ndarray:
    """Mean wall time (since t0) at which the workers logged each step."""
    by_step: dict[int, list[float]] = {}
    for worker_points in per_worker:
        for p in worker_points:
            by_step.setdefault(p.step, []).append(p.wall_time - t0)
    return np.array([np.mean(by_step[int(s)]) for s in steps])


# The workers' cumulative byte counters (gasgd_tf/reporting.py, ParameterClient.bytes_*).
COMM_TAGS = {"sent": "comm/bytes_sent", "received": "comm/bytes_received"}


@dataclasses.dataclass(frozen=True)
class Comm:
    """Bytes per client (the workers' mean) by step: ``sent`` and ``received`` at ``steps``."""

    steps: np.ndarray
    sent: np.ndarray
    received: np.ndarray

    @property
    def total(self) -> np.ndarray:
        return self.sent + self.received

    def at_steps(self, steps, which: str = "total") -> np.ndarray | float:
        """Bytes per client by ``steps`` (linear interpolation; NaN without counters)."""
        values = getattr(self, which)
        if self.steps.size == 0:
            return np.full(np.shape(steps), np.nan) if np.ndim(steps) else float("nan")
        out = np.interp(steps, self.steps, values)
        return out if np.ndim(steps) else float(out)


def comm_curves(run_dir: str) -> Comm:
    """Bytes sent and received per client by step: each worker's counters, averaged.

    Each worker logs its cumulative counters every ``log_every_steps``;
    they are interpolated onto the union of the logged steps, then averaged
    over the workers. Empty when no worker logged them (runs before the
    counters existed).
    """
    per_worker = []
    for d in _worker_dirs(run_dir):
        scalars = events.read_scalars(d)
        series = [scalars.get(tag, []) for tag in COMM_TAGS.values()]
        if all(series):
            per_worker.append([_by_step(points) for points in series])
    if not per_worker:
        empty = np.zeros(0)
        return Comm(empty, empty, empty)
    steps = np.unique(np.concatenate([s for worker in per_worker for s, _ in worker]))
    means = [
        np.mean([np.interp(steps, *worker[i]) for worker in per_worker], axis=0)
        for i in range(len(COMM_TAGS))
    ]
    return Comm(steps, *means)


def _by_step(points) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) in step order, the last value of a step logged twice (a restart)."""
    last = {p.step: p.value for p in sorted(points, key=lambda p: p.wall_time)}
    steps = np.array(sorted(last), dtype=np.float64)
    return steps, np.array([last[int(s)] for s in steps])
