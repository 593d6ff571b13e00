"""From ``config.ps`` to the server's optimizer, learning-rate schedule and staleness policy.

Kept apart from server.py (grpc) so that config validation can build them
to check their hyperparameters; numpy only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from gasgd_tf.server.optimizers import (
    OPTIMIZERS,
    POLICY_OPTIMIZERS,
    ServerOptimizer,
    make_optimizer,
)
from gasgd_tf.server.schedules import make_schedule
from gasgd_tf.server.staleness import StalenessConfig


def _hyperparameters(optimizer: type[ServerOptimizer]) -> tuple[str, ...]:
    """The keyword arguments of an optimizer besides the learning rate: the
    ``config.ps`` fields it reads (named as in keras.optimizers)."""
    names = inspect.signature(optimizer.__init__).parameters
    return tuple(n for n in names if n not in ("self", "learning_rate"))


# Derived from the one registry of optimizers (gasgd_tf.server.optimizers.OPTIMIZERS).
OPTIMIZER_HPARAMS: dict[str, tuple[str, ...]] = {
    name: _hyperparameters(cls) for name, cls in {**OPTIMIZERS, **POLICY_OPTIMIZERS}.items()
}


def build_optimizer(ps_config) -> ServerOptimizer:
    """The server optimizer named by ``ps_config.optimizer``, with its hyperparameters.

    ``ps.staleness='delayed_nesterov'`` makes it ``DelayedNesterov`` with the
    SGD's learning rate and momentum (the config checks it is SGD).

    Raises:
      ValueError: Unknown optimizer or a bad hyperparameter.
    """
    name = ps_config.optimizer
    if ps_config.get("staleness") in POLICY_OPTIMIZERS:
        name = ps_config.staleness
    if name not in OPTIMIZER_HPARAMS:
        raise ValueError(f"unknown server optimizer {name!r}; known: {sorted(OPTIMIZER_HPARAMS)}")
    hparams = {k: ps_config[k] for k in OPTIMIZER_HPARAMS[name] if ps_config.get(k) is not None}
    return make_optimizer(name, learning_rate=ps_config.learning_rate, **hparams)


def build_schedule(ps_config) -> Callable[[int], float]:
    """The learning rate by server version (``ps_config.lr_schedule``).

    Raises:
      ValueError: Unknown schedule or bad parameters.
    """
    return make_schedule(
        ps_config.lr_schedule,
        learning_rate=ps_config.learning_rate,
        decay_steps=ps_config.lr_decay_steps,
        decay_rate=ps_config.lr_decay_rate,
        alpha=ps_config.lr_alpha,
    )


def build_staleness(ps_config) -> StalenessConfig:
    """The staleness policy of ``ps_config.staleness``.

    Raises:
      ValueError: Unknown policy or bad parameters.
    """
    return StalenessConfig(
        policy=ps_config.staleness,
        bound=ps_config.staleness_bound,
        dc_lambda=ps_config.dc_lambda,
        straggler_secs=ps_config.straggler_secs,
    )
