"""Learning-rate schedules driven by the server version (the number of updates applied).

A schedule maps the version to the base learning rate of the next update;
the store multiplies it by the staleness policy's factor and passes the
product to ``ServerOptimizer.apply``. The formulas are those of
``keras.optimizers.schedules`` (``ExponentialDecay`` with ``staircase=True``
for ``StepDecay``, ``CosineDecay`` without warmup for ``Cosine``), computed
in double precision: Keras rounds every intermediate to float32, which near
the end of a cosine decay (1 + cos close to 0) costs it several digits, and
above 2**24 steps rounds the step itself.

Numpy-free and framework-free: plain Python, called once per push.
"""

from __future__ import annotations

import abc
import math
import numbers
from typing import Any


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


def _decay_steps(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"decay_steps must be an integer >= 1, got {value!r}")
    return int(value)


class Schedule(abc.ABC):
    """The learning rate as a function of the server version.

    Args:
      learning_rate: The rate at version 0, > 0.
    """

    name: str = ""

    def __init__(self, learning_rate: float):
        self.learning_rate = _positive("learning_rate", learning_rate)

    @abc.abstractmethod
    def __call__(self, version: int) -> float:
        """The learning rate of the update applied at ``version`` (>= 0)."""

    @abc.abstractmethod
    def get_config(self) -> dict[str, Any]:
        """The parameters, as passed to the constructor."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """The same rate at every version.

    Args:
      learning_rate: The rate, > 0.
    """

    name = "constant"

    def __call__(self, version: int) -> float:
        return self.learning_rate

    def get_config(self) -> dict[str, Any]:
        return {"learning_rate": self.learning_rate}


class StepDecay(Schedule):
    """``learning_rate * decay_rate ** floor(version / decay_steps)``.

    As ``keras.optimizers.schedules.ExponentialDecay(..., staircase=True)``.

    Args:
      learning_rate: The rate at version 0, > 0.
      decay_steps: Versions between decays, an integer >= 1.
      decay_rate: Factor applied every ``decay_steps`` versions, in (0, 1].
    """

    name = "step"

    def __init__(self, learning_rate: float, decay_steps: int, decay_rate: float):
        super().__init__(learning_rate)
        self.decay_steps = _decay_steps(decay_steps)
        self.decay_rate = _positive("decay_rate", decay_rate)
        # A rate above 1 grows the step without bound: more likely a typo
        # (10 for "divide by 10") than intended.
        if self.decay_rate > 1:
            raise ValueError(f"decay_rate must be in (0, 1], got {decay_rate}")

    def __call__(self, version: int) -> float:
        # Integer division: exact, where float32 (Keras) rounds large versions.
        return self.learning_rate * self.decay_rate ** (version // self.decay_steps)

    def get_config(self) -> dict[str, Any]:
        return {
            "learning_rate": self.learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
        }


class Cosine(Schedule):
    """Cosine decay from ``learning_rate`` to ``alpha * learning_rate`` over ``decay_steps``.

    ``learning_rate * ((1 - alpha) * 0.5 * (1 + cos(pi * s / decay_steps)) + alpha)``
    with ``s = min(version, decay_steps)``, as
    ``keras.optimizers.schedules.CosineDecay`` without warmup; constant after
    ``decay_steps``.

    Args:
      learning_rate: The rate at version 0, > 0.
      decay_steps: Versions to decay over, an integer >= 1.
      alpha: The final rate as a fraction of ``learning_rate``, in [0, 1].
    """

    name = "cosine"

    def __init__(self, learning_rate: float, decay_steps: int, alpha: float = 0.0):
        super().__init__(learning_rate)
        self.decay_steps = _decay_steps(decay_steps)
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
            raise ValueError(f"alpha must be a number, got {alpha!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)

    def __call__(self, version: int) -> float:
        fraction = min(version, self.decay_steps) / self.decay_steps
        cosine = 0.5 * (1.0 + math.cos(math.pi * fraction))
        return self.learning_rate * ((1.0 - self.alpha) * cosine + self.alpha)

    def get_config(self) -> dict[str, Any]:
        return {
            "learning_rate": self.learning_rate,
            "decay_steps": self.decay_steps,
            "alpha": self.alpha,
        }


SCHEDULES: dict[str, type[Schedule]] = {cls.name: cls for cls in (Constant, StepDecay, Cosine)}


def make_schedule(
    name: str,
    learning_rate: float,
    decay_steps: int | None = None,
    decay_rate: float | None = None,
    alpha: float = 0.0,
) -> Schedule:
    """Builds a schedule by name; each reads only the parameters it has.

    ``constant`` reads ``learning_rate``; ``step`` also ``decay_steps`` and
    ``decay_rate``; ``cosine`` also ``decay_steps`` and ``alpha``. The others
    are ignored, so that a config can set them all.

    Raises:
      ValueError: For an unknown name, or a missing or out-of-range parameter.
    """
    if name == Constant.name:
        return Constant(learning_rate)
    if name == StepDecay.name:
        return StepDecay(learning_rate, decay_steps, decay_rate)
    if name == Cosine.name:
        return Cosine(learning_rate, decay_steps, alpha)
    raise ValueError(f"unknown learning-rate schedule {name!r}; known: {sorted(SCHEDULES)}")
