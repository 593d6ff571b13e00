"""Server-side optimizers over one flat float32 parameter buffer.

The parameter store keeps every tensor in one contiguous buffer, so an update
is a handful of vectorised numpy operations over the whole model, with a
preallocated scratch buffer instead of fresh temporaries (about 1.4x faster
on large models, see DESIGN.md's measurements). The math follows the
``keras.optimizers`` class of the same name exactly, operation for operation
in float32, so a run can move between a single Keras process and the server.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np


class ServerOptimizer(abc.ABC):
    """Applies gradients to a flat parameter buffer in place.

    Slots (momentum and the like) live in a dict owned by the caller, so that
    the store can snapshot or checkpoint them with the parameters.
    """

    name: str = ""

    def __init__(self):
        self._scratch: list[np.ndarray] = []

    @abc.abstractmethod
    def init_slots(self, size: int) -> dict[str, np.ndarray]:
        """Returns the initial slots for ``size`` parameters."""

    @abc.abstractmethod
    def apply(self, params: np.ndarray, grad: np.ndarray, slots: dict[str, np.ndarray]) -> None:
        """Updates ``params`` and ``slots`` in place with ``grad``.

        Not thread-safe (it uses a shared scratch buffer): callers serialise
        calls, as ParameterStore does under its lock.
        """

    @abc.abstractmethod
    def get_config(self) -> dict[str, Any]:
        """The hyperparameters, as passed to the constructor."""

    def _tmp(self, size: int, index: int = 0) -> np.ndarray:
        """Scratch buffer number ``index`` of ``size`` floats, reused across calls."""
        while len(self._scratch) <= index:
            self._scratch.append(np.empty(0, dtype=np.float32))
        if self._scratch[index].size != size:
            self._scratch[index] = np.empty(size, dtype=np.float32)
        return self._scratch[index]


class SGD(ServerOptimizer):
    """SGD with optional momentum, Nesterov momentum and decoupled weight decay.

    As ``keras.optimizers.SGD``: first ``w -= w * weight_decay * lr``; then
    with momentum ``m = m * momentum - g * lr`` and ``w += m`` (Nesterov:
    ``w += m * momentum - g * lr``), without it ``w -= g * lr``.

    Args:
      learning_rate: Step size, > 0.
      momentum: In [0, 1).
      nesterov: Use Nesterov momentum.
      weight_decay: Decoupled weight decay coefficient, >= 0.
    """

    name = "sgd"

    def __init__(
        self,
        learning_rate: float = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ):
        super().__init__()
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.learning_rate = float(learning_rate)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = float(weight_decay)

    def init_slots(self, size: int) -> dict[str, np.ndarray]:
        return {"momentum": np.zeros(size, np.float32)} if self.momentum else {}

    def apply(self, params: np.ndarray, grad: np.ndarray, slots: dict[str, np.ndarray]) -> None:
        lr = np.float32(self.learning_rate)
        tmp = self._tmp(params.size)
        if self.weight_decay:
            np.multiply(params, np.float32(self.weight_decay), out=tmp)
            tmp *= lr
            params -= tmp
        np.multiply(grad, lr, out=tmp)  # tmp = g * lr
        if not self.momentum:
            params -= tmp
            return
        m = slots["momentum"]
        momentum = np.float32(self.momentum)
        m *= momentum
        m -= tmp
        if self.nesterov:
            # Keras adds (m * momentum - g * lr) as one term; same rounding here.
            step = np.multiply(m, momentum, out=self._tmp(params.size, 1))
            step -= tmp
            params += step
        else:
            params += m

    def get_config(self) -> dict[str, Any]:
        return {
            "learning_rate": self.learning_rate,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
        }


OPTIMIZERS: dict[str, type[ServerOptimizer]] = {SGD.name: SGD}


def make_optimizer(name: str, **hparams: Any) -> ServerOptimizer:
    """Builds a server optimizer by name, for example ``make_optimizer("sgd", momentum=0.9)``.

    Raises:
      ValueError: For an unknown name or hyperparameter.
    """
    try:
        cls = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(
            f"unknown server optimizer {name!r}; known: {sorted(OPTIMIZERS)}"
        ) from None
    try:
        return cls(**hparams)
    except TypeError as e:
        raise ValueError(f"bad hyperparameters for optimizer {name!r}: {e}") from None
