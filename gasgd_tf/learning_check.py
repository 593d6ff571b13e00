"""The rule that says a run has failed to learn, and the likely cause (no TensorFlow).

A run whose test loss, past a quarter of its steps, is still at or above its
first evaluation, or at chance, has not learned and will not: asynchronous
SGD that overshoots (the server's step too large for the sum of ``n_push``
gradients each push carries) ends at chance without any error. The
evaluator applies this rule to each evaluation and the launcher passes its
text along (progress line, summary.json), so that such a run says so.
"""

from __future__ import annotations

import dataclasses
import math

# Accuracy this close to 1 / num_classes is chance too: a model that predicts
# one class scores that class's share of the test split (0.09 to 0.11 on the
# 359 test digits), a little above 1 / num_classes.
CHANCE_ACCURACY_MARGIN = 0.02
# Before this fraction of the run (in the workers' mean step) no verdict:
# a run may start slowly.
GRACE_FRACTION = 0.25
# A learning rate this small leaves float32 parameters as they are: the cause
# is then a step too small, not too large.
TINY_LEARNING_RATE = 1e-6
# Server optimizers whose step scales with the gradient: there the sum of
# n_push gradients makes the step ps.learning_rate x n_push (adaptive ones
# normalise the scale away).
_LINEAR_OPTIMIZERS = ("sgd",)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What the rule needs to know of the run's config.

    Attributes:
      num_classes: Labels of the dataset (chance: ln(num_classes), 1 / num_classes).
      num_steps: Steps per worker of the whole run.
      n_push: Local steps per push.
      worker_push: What a push carries, "gradient" or "delta".
      worker_learning_rate: The workers' local learning rate.
      ps_optimizer: The server's optimizer.
      ps_learning_rate: The server's learning rate.
      ps_momentum: The server's momentum (sgd, rmsprop).
    """

    num_classes: int
    num_steps: int
    n_push: int = 1
    worker_push: str = "gradient"
    worker_learning_rate: float = 0.0
    ps_optimizer: str = "sgd"
    ps_learning_rate: float = 0.0
    ps_momentum: float = 0.0

    @classmethod
    def from_config(cls, config, num_classes: int) -> RunSettings:
        """The settings of a finalized config (``n_push`` resolved)."""
        return cls(
            num_classes=num_classes,
            num_steps=config.num_steps,
            n_push=config.n_push,
            worker_push=config.worker.push,
            worker_learning_rate=config.worker.learning_rate,
            ps_optimizer=config.ps.optimizer,
            ps_learning_rate=config.ps.learning_rate,
            ps_momentum=config.ps.momentum,
        )


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One evaluation, as the rule sees it.

    Attributes:
      version: The server version evaluated.
      loss: Mean test cross-entropy.
      accuracy: Test accuracy.
      steps_per_client: The workers' mean step when the parameters were fetched.
    """

    version: int
    loss: float
    accuracy: float
    steps_per_client: float


@dataclasses.dataclass(frozen=True)
class NotLearning:
    """The warning: what was seen, and the likely cause."""

    finding: str
    cause: str

    @property
    def text(self) -> str:
        return f"{self.finding}. Likely cause: {self.cause}."


def start_loss(settings: RunSettings, first: Evaluation) -> float | None:
    """The loss later evaluations must beat: the first one's, if it was early in the run.

    A first evaluation past the grace period (the evaluator of a resumed
    run) is no start: a converged run must not be told it stopped learning.
    """
    return first.loss if not _past_grace(settings, first) else None


def check(settings: RunSettings, start: float | None, evaluation: Evaluation) -> NotLearning | None:
    """The warning for ``evaluation``, or None while the run learns (or it is too early).

    Not learning: past a quarter of the run (``steps_per_client`` beyond
    ``num_steps / 4``), the test loss is not finite, at or above ``start``
    (the first evaluation's), or at or above chance (ln(num_classes)), or the
    accuracy is at or below 1 / num_classes + ``CHANCE_ACCURACY_MARGIN``.

    Args:
      settings: The run's settings.
      start: ``start_loss`` of the first evaluation (None: no start to compare).
      evaluation: The evaluation to judge.
    """
    if not _past_grace(settings, evaluation):
        return None
    loss, accuracy = evaluation.loss, evaluation.accuracy
    chance_loss = math.log(settings.num_classes)
    chance_accuracy = 1.0 / settings.num_classes
    seen = []
    if not math.isfinite(loss):
        seen.append("not finite")
    else:
        if start is not None and loss >= start:
            seen.append(f"at or above its start ({start:.4f})")
        if loss >= chance_loss:
            seen.append(f"at or above chance ({chance_loss:.4f})")
    if accuracy <= chance_accuracy + CHANCE_ACCURACY_MARGIN:
        seen.append(
            f"accuracy {accuracy:.4f} at or below chance "
            f"({chance_accuracy:.4f} + {CHANCE_ACCURACY_MARGIN})"
        )
    if not seen:
        return None
    finding = (
        f"the run is not learning: test loss {loss:.4f} at version {evaluation.version} "
        f"({evaluation.steps_per_client:.0f} steps per worker, past a quarter of the run's "
        f"{settings.num_steps}) is {' / '.join(seen)}"
    )
    return NotLearning(finding, likely_cause(settings))


def likely_cause(settings: RunSettings) -> str:
    """The config values that most likely made the server's step too large, and the fix."""
    s = settings
    lr = f"ps.learning_rate {s.ps_learning_rate:g}"
    if s.ps_optimizer in _LINEAR_OPTIMIZERS:
        how = f"with ps.momentum {s.ps_momentum:g}" if s.ps_momentum else "without momentum"
    else:
        how = f"with ps.optimizer {s.ps_optimizer}"
    tiny = s.ps_learning_rate <= TINY_LEARNING_RATE or (
        s.worker_push == "delta" and s.worker_learning_rate <= TINY_LEARNING_RATE
    )
    if tiny:
        # Then no step is too large: there is hardly any.
        return (
            f"the parameters hardly move: {lr}, worker.push {s.worker_push}, "
            f"worker.learning_rate {s.worker_learning_rate:g}; raise the learning rate"
        )
    if s.worker_push == "delta":
        return (
            f"the server's step on each pushed delta ({s.n_push} local steps at "
            f"worker.learning_rate {s.worker_learning_rate:g}) is too large: {lr} {how}; "
            "lower ps.learning_rate, ps.momentum or worker.learning_rate"
        )
    if s.n_push > 1 and s.ps_optimizer in _LINEAR_OPTIMIZERS:
        return (
            "the server's step is too large for what each push carries: ps.learning_rate x "
            f"n_push (sum of {s.n_push} gradients) = {s.ps_learning_rate:g} x {s.n_push} = "
            f"{s.ps_learning_rate * s.n_push:g} {how}; lower ps.learning_rate or n_push, "
            "or use worker.push=delta"
        )
    return f"the server's step is too large: {lr} {how}; lower ps.learning_rate"


def _past_grace(settings: RunSettings, evaluation: Evaluation) -> bool:
    return evaluation.steps_per_client > settings.num_steps * GRACE_FRACTION
