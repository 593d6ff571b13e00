"""Server-side optimizers over one flat float32 parameter buffer.

The parameter store keeps every tensor in one contiguous buffer, so an update
is a handful of vectorised numpy operations with preallocated scratch buffers
instead of fresh temporaries. The math follows the ``keras.optimizers`` class
of the same name exactly, operation for operation in float32, so a run can
move between a single Keras process and the server.

Blocking: numpy cannot fuse the operations of an update, and over the whole
model each one is a pass over memory (SGD with momentum: 4 passes touching
10 model-sized arrays, where one fused loop would touch 5). So ``apply`` runs
the update block by block (``BLOCK_SIZE`` elements): a block's slices of the
parameters, gradient and slots and the block-sized scratch buffers stay in
the CPU's L2 cache from one operation to the next, and memory sees about one
read of each input and one write of each output. On the benchmark machine
this took SGD with momentum from 0.27x to about 0.4x the bandwidth of a
numpy copy (benchmarks/apply.py, BENCHMARKS.md). Every operation is
elementwise, so blocking changes no result: each element goes through the
same float32 operations in the same order as without it.

All optimizer state (accumulators, Adam's step count) lives in the slots dict
the caller owns, never on the optimizer object, so a fresh optimizer given
them continues the run exactly (the server's checkpoints hold the
parameters and these slots: gasgd_tf/server/checkpointing.py).
"""

from __future__ import annotations

import abc
import math
from typing import Any

import numpy as np

# Elements per block of an update. 64K float32 is 256 KiB per array, so the
# up to 6 arrays of an update (Adam: w, g, m, v and two scratch buffers) stay
# within the 1-2 MiB L2 cache of current x86 cores; and a block is long
# enough that the ~1 us of Python per numpy call is small against its work.
# Chosen with benchmarks/apply.py's table of SGD momentum by block size.
BLOCK_SIZE = 1 << 16


def _number(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def _positive(name: str, value: Any) -> float:
    """``value`` as a float if finite and > 0 (NaN fails: comparisons are written to reject it)."""
    value = _number(name, value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _non_negative(name: str, value: Any) -> float:
    value = _number(name, value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _fraction(name: str, value: Any) -> float:
    """``value`` as a float in [0, 1): decay rates, momenta and betas."""
    value = _number(name, value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def _flag(name: str, value: Any) -> bool:
    # Strict: bool("false") is True, so a string from a config would flip silently.
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return bool(value)


class ServerOptimizer(abc.ABC):
    """Applies gradients to a flat parameter buffer in place.

    Slots (momentum and the like) live in a dict owned by the caller, so that
    the store can snapshot or checkpoint them with the parameters; they hold
    all of the optimizer's state.

    Every optimizer has decoupled weight decay as Keras does it: before the
    update, ``w -= w * weight_decay * lr`` with the step's learning rate.

    Subclasses implement ``_update`` on one block of elements; ``apply`` cuts
    the buffers into blocks (see the module docstring). Per-call work that is
    not elementwise (Adam's bias correction and step count) goes in
    ``_begin``/``_end``.

    Attributes:
      block_size: Elements per block of an update (``BLOCK_SIZE``); any
        value >= 1 gives the same results, only the speed changes.

    Args:
      learning_rate: Default step size, > 0; ``apply`` may override it per call.
      weight_decay: Decoupled weight decay coefficient, >= 0.
    """

    name: str = ""
    block_size: int = BLOCK_SIZE

    def __init__(self, learning_rate: float, weight_decay: float = 0.0):
        self.learning_rate = _positive("learning_rate", learning_rate)
        self.weight_decay = _non_negative("weight_decay", weight_decay)
        # Block-sized scratch (a few hundred KiB, not model-sized), kept here
        # rather than in the slots: it carries nothing from one block or call
        # to the next (each block writes it before reading it), so it needs no
        # checkpointing. One set per optimizer is safe because calls are
        # serialised: ParameterStore applies one push at a time, under its lock.
        self._scratch: list[np.ndarray] = []
        self._finite = np.empty(0, dtype=bool)

    @abc.abstractmethod
    def init_slots(self, size: int) -> dict[str, np.ndarray]:
        """Returns the initial slots for ``size`` parameters."""

    def apply(
        self,
        params: np.ndarray,
        grad: np.ndarray,
        slots: dict[str, np.ndarray],
        learning_rate: float | None = None,
        *,
        check_finite: bool = False,
    ) -> bool | None:
        """Updates ``params`` and ``slots`` in place with ``grad``.

        Not thread-safe (it uses shared scratch buffers): callers serialise
        calls, as ParameterStore does under its lock.

        Args:
          params: Flat (1-D) float32 parameters, updated in place.
          grad: Flat float32 gradient of the same shape.
          slots: From ``init_slots`` (or a checkpoint of them), updated in place.
          learning_rate: This step's rate, >= 0 (the store passes schedule x
            staleness policy); None: ``self.learning_rate``. It scales the
            weight decay too, as in Keras.
          check_finite: Also check that every updated parameter is finite,
            block by block while the block is still in cache (much cheaper
            than a separate pass over the parameters afterwards).

        Returns:
          With ``check_finite``: whether all parameters are finite after the
          update. Otherwise None.

        Raises:
          ValueError: ``params`` is not 1-D or ``grad`` has another shape
            (checked before anything is changed).
        """
        if params.ndim != 1 or grad.shape != params.shape:
            raise ValueError(
                f"params must be 1-D and grad of the same shape, got {params.shape} "
                f"and {grad.shape}"
            )
        lr = np.float32(self.learning_rate if learning_rate is None else learning_rate)
        weight_decay = np.float32(self.weight_decay)
        constants = self._begin(slots, lr)
        # Slots of one value per parameter are cut into blocks with the
        # parameters; any other (Adam's step count) is per call: _begin/_end.
        elementwise = [name for name, slot in slots.items() if slot.shape == params.shape]
        size, block = params.size, max(1, int(self.block_size))
        finite = True
        for start in range(0, size, block):
            stop = min(start + block, size)
            p = params[start:stop]
            if self.weight_decay:
                # Keras: variable.assign_sub(variable * wd * lr), in that order.
                tmp = self._tmp(stop - start)
                np.multiply(p, weight_decay, out=tmp)
                tmp *= lr
                p -= tmp
            self._update(
                p,
                grad[start:stop],
                {name: slots[name][start:stop] for name in elementwise},
                lr,
                constants,
            )
            if check_finite and finite:
                ok = self._finite_buffer(stop - start)
                np.isfinite(p, out=ok)
                finite = bool(ok.all())
        self._end(slots)
        return finite if check_finite else None

    def _begin(self, slots: dict[str, np.ndarray], lr: np.float32) -> Any:
        """Per-call values for ``_update`` (computed once, not per block); default None."""
        return None

    def _end(self, slots: dict[str, np.ndarray]) -> None:  # noqa: B027 (optional hook)
        """Per-call state changes after the last block (Adam's step count); default none."""

    @abc.abstractmethod
    def _update(
        self,
        params: np.ndarray,
        grad: np.ndarray,
        slots: dict[str, np.ndarray],
        lr: np.float32,
        constants: Any,
    ) -> None:
        """The optimizer's own step on one block, after weight decay (Keras' ``update_step``).

        ``params``, ``grad`` and the elementwise ``slots`` are views of the
        same block; ``constants`` is what ``_begin`` returned for this call.
        """

    def get_config(self) -> dict[str, Any]:
        """The hyperparameters, as passed to the constructor."""
        return {
            "learning_rate": self.learning_rate,
            **self._hparams(),
            "weight_decay": self.weight_decay,
        }

    @abc.abstractmethod
    def _hparams(self) -> dict[str, Any]:
        """The hyperparameters other than learning_rate and weight_decay."""

    def _tmp(self, size: int, index: int = 0) -> np.ndarray:
        """``size`` floats of scratch buffer number ``index``, reused across blocks and calls."""
        while len(self._scratch) <= index:
            self._scratch.append(np.empty(0, dtype=np.float32))
        if self._scratch[index].size < size:
            self._scratch[index] = np.empty(size, dtype=np.float32)
        return self._scratch[index][:size]

    def _finite_buffer(self, size: int) -> np.ndarray:
        """``size`` bools of scratch for ``check_finite``."""
        if self._finite.size < size:
            self._finite = np.empty(size, dtype=bool)
        return self._finite[:size]


class SGD(ServerOptimizer):
    """SGD with optional momentum and Nesterov momentum.

    As ``keras.optimizers.SGD``: with momentum ``m = m * momentum - g * lr``
    and ``w += m`` (Nesterov: ``w += m * momentum - g * lr``), without it
    ``w -= g * lr``.

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
        super().__init__(learning_rate, weight_decay)
        self.momentum = _fraction("momentum", momentum)
        self.nesterov = _flag("nesterov", nesterov)

    def init_slots(self, size: int) -> dict[str, np.ndarray]:
        return {"momentum": np.zeros(size, np.float32)} if self.momentum else {}

    def _update(self, params, grad, slots, lr, constants):
        tmp = self._tmp(params.size)
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

    def _hparams(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "nesterov": self.nesterov}


class Adagrad(ServerOptimizer):
    """Adagrad, as ``keras.optimizers.Adagrad``.

    ``a += g * g``, then ``w -= (lr * g) / sqrt(a + epsilon)``: epsilon is
    inside the square root, and ``a`` starts at ``initial_accumulator_value``.

    Args:
      learning_rate: Step size, > 0.
      initial_accumulator_value: Starting value of every accumulator, >= 0.
      epsilon: Added to the accumulator under the square root, > 0.
      weight_decay: Decoupled weight decay coefficient, >= 0.
    """

    name = "adagrad"

    def __init__(
        self,
        learning_rate: float = 0.001,
        initial_accumulator_value: float = 0.1,
        epsilon: float = 1e-7,
        weight_decay: float = 0.0,
    ):
        super().__init__(learning_rate, weight_decay)
        self.initial_accumulator_value = _non_negative(
            "initial_accumulator_value", initial_accumulator_value
        )
        self.epsilon = _positive("epsilon", epsilon)

    def init_slots(self, size: int) -> dict[str, np.ndarray]:
        return {"accumulator": np.full(size, self.initial_accumulator_value, np.float32)}

    def _update(self, params, grad, slots, lr, constants):
        acc = slots["accumulator"]
        denom = self._tmp(params.size)
        step = self._tmp(params.size, 1)
        np.square(grad, out=denom)
        acc += denom
        np.add(acc, np.float32(self.epsilon), out=denom)
        np.sqrt(denom, out=denom)
        np.multiply(grad, lr, out=step)
        step /= denom
        params -= step

    def _hparams(self) -> dict[str, Any]:
        return {
            "initial_accumulator_value": self.initial_accumulator_value,
            "epsilon": self.epsilon,
        }


class Adadelta(ServerOptimizer):
    """Adadelta, as ``keras.optimizers.Adadelta``.

    With ``rms(x) = sqrt(x + epsilon)``: ``a = rho * a + (1 - rho) * g * g``;
    ``d = -rms(ad) * g / rms(a)``; ``ad = rho * ad + (1 - rho) * d * d``;
    ``w += lr * d``. Unlike the paper, the step is scaled by the learning
    rate (Keras' default 0.001, where the paper has effectively 1.0).

    Args:
      learning_rate: Step size, > 0.
      rho: Decay rate of both running averages, in [0, 1).
      epsilon: Added under both square roots, > 0.
      weight_decay: Decoupled weight decay coefficient, >= 0.
    """

    name = "adadelta"

    def __init__(
        self,
        learning_rate: float = 0.001,
        rho: float = 0.95,
        epsilon: float = 1e-7,
        weight_decay: float = 0.0,
    ):
        super().__init__(learning_rate, weight_decay)
        self.rho = _fraction("rho", rho)
        self.epsilon = _positive("epsilon", epsilon)

    def init_slots(self, size: int) -> dict[str, np.ndarray]:
        return {
            "accumulated_grad": np.zeros(size, np.float32),
            "accumulated_delta_var": np.zeros(size, np.float32),
        }

    def _update(self, params, grad, slots, lr, constants):
        acc_grad = slots["accumulated_grad"]
        acc_delta = slots["accumulated_delta_var"]
        # Keras computes 1 - rho in double precision, then rounds it to float32.
        rho, one_minus_rho = np.float32(self.rho), np.float32(1 - self.rho)
        epsilon = np.float32(self.epsilon)
        delta = self._tmp(params.size)  # Holds -d, the negated update.
        tmp = self._tmp(params.size, 1)
        np.square(grad, out=delta)
        delta *= one_minus_rho
        acc_grad *= rho
        acc_grad += delta
        np.add(acc_delta, epsilon, out=delta)
        np.sqrt(delta, out=delta)
        delta *= grad
        np.add(acc_grad, epsilon, out=tmp)
        np.sqrt(tmp, out=tmp)
        delta /= tmp
        np.square(delta, out=tmp)
        tmp *= one_minus_rho
        acc_delta *= rho
        acc_delta += tmp
        # w + lr * d == w - lr * (-d) exactly: negation does not round.
        delta *= lr
        params -= delta

    def _hparams(self) -> dict[str, Any]:
        return {"rho": self.rho, "epsilon": self.epsilon}


class RMSprop(ServerOptimizer):
    """RMSprop, as ``keras.optimizers.RMSprop``.

    ``v = rho * v + (1 - rho) * g * g``; centered also keeps
    ``a = rho * a + (1 - rho) * g`` and uses ``v - a * a`` in place of ``v``;
    the increment is ``(lr * g) / sqrt(v + epsilon)`` (epsilon inside the
    root). With momentum ``m = momentum * m + increment`` and ``w -= m``,
    without it ``w -= increment``.

    Args:
      learning_rate: Step size, > 0.
      rho: Decay rate of the running averages, in [0, 1).
      momentum: In [0, 1).
      epsilon: Added under the square root, > 0.
      centered: Normalise by the variance estimate, not the raw second moment.
      weight_decay: Decoupled weight decay coefficient, >= 0.
    """

    name = "rmsprop"

    def __init__(
        self,
        learning_rate: float = 0.001,
        rho: float = 0.9,
        momentum: float = 0.0,
        epsilon: float = 1e-7,
        centered: bool = False,
        weight_decay: float = 0.0,
    ):
        super().__init__(learning_rate, weight_decay)
        self.rho = _fraction("rho", rho)
        self.momentum = _fraction("momentum", momentum)
        self.epsilon = _positive("epsilon", epsilon)
        self.centered = _flag("centered", centered)

    def init_slots(self, size: int) -> dict[str, np.ndarray]:
        slots = {"velocity": np.zeros(size, np.float32)}
        if self.momentum:
            slots["momentum"] = np.zeros(size, np.float32)
        if self.centered:
            slots["average_gradient"] = np.zeros(size, np.float32)
        return slots

    def _update(self, params, grad, slots, lr, constants):
        velocity = slots["velocity"]
        rho, one_minus_rho = np.float32(self.rho), np.float32(1 - self.rho)
        denom = self._tmp(params.size)
        step = self._tmp(params.size, 1)
        np.square(grad, out=denom)
        denom *= one_minus_rho
        velocity *= rho
        velocity += denom
        if self.centered:
            average = slots["average_gradient"]
            np.multiply(grad, one_minus_rho, out=denom)
            average *= rho
            average += denom
            # Keras: (velocity - square(average)) + epsilon, in that order.
            np.square(average, out=denom)
            np.subtract(velocity, denom, out=denom)
            denom += np.float32(self.epsilon)
        else:
            np.add(velocity, np.float32(self.epsilon), out=denom)
        np.sqrt(denom, out=denom)
        np.multiply(grad, lr, out=step)
        step /= denom
        if self.momentum:
            m = slots["momentum"]
            m *= np.float32(self.momentum)
            m += step
            params -= m
        else:
            params -= step

    def _hparams(self) -> dict[str, Any]:
        return {
            "rho": self.rho,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "centered": self.centered,
        }


class Adam(ServerOptimizer):
    """Adam, optionally AMSGrad, as ``keras.optimizers.Adam``.

    With ``t`` the 1-based step (``slots["iterations"] + 1``):
    ``alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)``;
    ``m += (g - m) * (1 - beta_1)``; ``v += (g * g - v) * (1 - beta_2)``;
    AMSGrad uses ``v_hat = max(v_hat, v)`` for ``v``; then
    ``w -= (m * alpha) / (sqrt(v) + epsilon)``. Epsilon is added outside the
    root and to the bias-corrected-in-alpha form, so it acts like
    ``epsilon * sqrt(1 - beta_2**t)`` in the paper's formulation.

    Args:
      learning_rate: Step size, > 0.
      beta_1: Decay rate of the first moment, in [0, 1).
      beta_2: Decay rate of the second moment, in [0, 1).
      epsilon: Added to the root of the second moment, > 0.
      amsgrad: Use the running maximum of the second moment (AMSGrad).
      weight_decay: Decoupled weight decay coefficient, >= 0.
    """

    name = "adam"

    def __init__(
        self,
        learning_rate: float = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        weight_decay: float = 0.0,
    ):
        super().__init__(learning_rate, weight_decay)
        self.beta_1 = _fraction("beta_1", beta_1)
        self.beta_2 = _fraction("beta_2", beta_2)
        self.epsilon = _positive("epsilon", epsilon)
        self.amsgrad = _flag("amsgrad", amsgrad)

    def init_slots(self, size: int) -> dict[str, np.ndarray]:
        slots = {
            "momentum": np.zeros(size, np.float32),
            "velocity": np.zeros(size, np.float32),
            # Steps applied so far, for the bias correction: state, so a slot.
            "iterations": np.zeros(1, np.int64),
        }
        if self.amsgrad:
            slots["velocity_hat"] = np.zeros(size, np.float32)
        return slots

    def _begin(self, slots, lr):
        iterations = slots["iterations"]
        # Keras raises the float32 betas to the float32 step with TensorFlow's
        # pow, which is not correctly rounded (nor is numpy's float32 power);
        # the double-precision power rounded once to float32 is, and agrees
        # with TensorFlow's more often than numpy's does. Off by one ulp, it
        # changes a step by about 1e-7 relatively.
        t = float(np.float32(iterations[0] + 1))
        beta_1_power = np.float32(math.pow(float(np.float32(self.beta_1)), t))
        beta_2_power = np.float32(math.pow(float(np.float32(self.beta_2)), t))
        # alpha = (lr * sqrt(1 - b2^t)) / (1 - b1^t), in float32 as Keras.
        one = np.float32(1)
        return lr * np.sqrt(one - beta_2_power) / (one - beta_1_power)

    def _end(self, slots):
        slots["iterations"] += 1

    def _update(self, params, grad, slots, lr, constants):
        alpha = constants
        m, v = slots["momentum"], slots["velocity"]
        tmp = self._tmp(params.size)
        step = self._tmp(params.size, 1)
        np.subtract(grad, m, out=tmp)
        tmp *= np.float32(1 - self.beta_1)
        m += tmp
        np.square(grad, out=tmp)
        tmp -= v
        tmp *= np.float32(1 - self.beta_2)
        v += tmp
        if self.amsgrad:
            v_hat = slots["velocity_hat"]
            np.maximum(v_hat, v, out=v_hat)
            v = v_hat
        np.sqrt(v, out=tmp)
        tmp += np.float32(self.epsilon)
        np.multiply(m, alpha, out=step)
        step /= tmp
        params -= step

    def _hparams(self) -> dict[str, Any]:
        return {
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
            "amsgrad": self.amsgrad,
        }


class DelayedNesterov(ServerOptimizer):
    """Delayed Nesterov momentum for asynchronous outer steps (Liu et al. 2024).

    From "Asynchronous Local-SGD Training for Language Modeling" (arXiv
    2401.09135, the Delayed Nesterov outer optimizer): with stale pushes
    arriving one at a time, Nesterov momentum on each of them accelerates
    in directions the other workers have already moved. So each push ``g``
    is applied at once as a plain step of ``lr / period``, and the momentum
    takes the average of the last ``period`` pushes only once every
    ``period`` pushes::

        buffer += g
        every period-th push:  m = momentum * m + buffer / period
                               w -= lr * (1 - c * period + c) * momentum * m
                               buffer = 0
        otherwise:             w -= lr * c * momentum * m
        every push:            w -= lr * g / period

    With ``period`` 1 and ``c`` 0 this is Nesterov SGD (``m`` is Keras'
    momentum divided by -lr). Per ``period`` pushes the momentum moves the
    parameters by ``lr * momentum * m`` whatever ``c`` is; ``c`` only
    spreads that movement over the pushes in between.

    Args:
      learning_rate: Step size, > 0.
      momentum: In [0, 1).
      dn_period: Pushes per momentum update (N in the paper; the config
        sets it to the number of workers by default), >= 1.
      dn_c: Share of the momentum step applied between updates, in [0, 1].
      weight_decay: Decoupled weight decay coefficient, >= 0.
    """

    name = "delayed_nesterov"

    def __init__(
        self,
        learning_rate: float = 0.7,
        momentum: float = 0.9,
        dn_period: int = 1,
        dn_c: float = 0.0,
        weight_decay: float = 0.0,
    ):
        super().__init__(learning_rate, weight_decay)
        self.momentum = _fraction("momentum", momentum)
        if isinstance(dn_period, bool) or not isinstance(dn_period, (int, np.integer)):
            raise ValueError(f"dn_period must be an integer >= 1, got {dn_period!r}")
        if dn_period < 1:
            raise ValueError(f"dn_period must be an integer >= 1, got {dn_period!r}")
        self.dn_period = int(dn_period)
        self.dn_c = _number("dn_c", dn_c)
        if not 0.0 <= self.dn_c <= 1.0:
            raise ValueError(f"dn_c must be in [0, 1], got {self.dn_c}")

    def init_slots(self, size: int) -> dict[str, np.ndarray]:
        return {
            "momentum": np.zeros(size, np.float32),
            "buffer": np.zeros(size, np.float32),
            # Pushes applied so far: which of them updates the momentum.
            "iterations": np.zeros(1, np.int64),
        }

    def _begin(self, slots, lr):
        period, c, beta = self.dn_period, self.dn_c, self.momentum
        update = (int(slots["iterations"][0]) + 1) % period == 0
        share = (1.0 - c * period + c) if update else c
        return update, np.float32(lr * share * beta), np.float32(lr / period)

    def _end(self, slots):
        slots["iterations"] += 1

    def _update(self, params, grad, slots, lr, constants):
        update, momentum_step, grad_step = constants
        m, buffer = slots["momentum"], slots["buffer"]
        buffer += grad
        if update:
            m *= np.float32(self.momentum)
            tmp = np.multiply(buffer, np.float32(1.0 / self.dn_period), out=self._tmp(m.size))
            m += tmp
            buffer[...] = 0
        if momentum_step:
            params -= np.multiply(m, momentum_step, out=self._tmp(m.size))
        params -= np.multiply(grad, grad_step, out=self._tmp(m.size))

    def _hparams(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "dn_period": self.dn_period, "dn_c": self.dn_c}


OPTIMIZERS: dict[str, type[ServerOptimizer]] = {
    cls.name: cls for cls in (SGD, Adagrad, Adadelta, RMSprop, Adam)
}


# Built by ps.staleness='delayed_nesterov' (not named by ps.optimizer: it is
# SGD's momentum, delayed; gasgd_tf/server/server_config.py).
POLICY_OPTIMIZERS: dict[str, type[ServerOptimizer]] = {DelayedNesterov.name: DelayedNesterov}


def make_optimizer(name: str, **hparams: Any) -> ServerOptimizer:
    """Builds a server optimizer by name, for example ``make_optimizer("sgd", momentum=0.9)``.

    Raises:
      ValueError: For an unknown name or hyperparameter, or a value out of range.
    """
    try:
        cls = OPTIMIZERS.get(name) or POLICY_OPTIMIZERS[name]
    except KeyError:
        raise ValueError(
            f"unknown server optimizer {name!r}; known: {sorted(OPTIMIZERS)}"
        ) from None
    try:
        return cls(**hparams)
    except TypeError as e:
        raise ValueError(f"bad hyperparameters for optimizer {name!r}: {e}") from None
