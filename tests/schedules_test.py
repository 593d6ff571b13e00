"""The server's learning-rate schedules match keras.optimizers.schedules."""

import math

import keras
import numpy as np
import pytest

from gasgd_tf.server.schedules import (
    SCHEDULES,
    Constant,
    Cosine,
    StepDecay,
    make_schedule,
)

VERSIONS = [0, 1, 2, 99, 100, 101, 250, 499, 500, 999, 1000, 1001, 5000, 123457]


def _keras_values(schedule):
    return np.array([float(schedule(v)) for v in VERSIONS])


def _values(schedule):
    return np.array([schedule(v) for v in VERSIONS])


def test_constant():
    schedule = make_schedule("constant", 0.05, decay_steps=None, decay_rate=None)
    assert isinstance(schedule, Constant)
    assert all(schedule(v) == 0.05 for v in VERSIONS)
    assert schedule.get_config() == {"learning_rate": 0.05}


# Rates exact in float32 where the exponent gets large: Keras rounds the rate
# to float32 first, so 0.99 (0.99000001) drifts by about 1e-8 x exponent,
# 5e-5 relatively after 5000 decays. Ours are computed in double precision.
@pytest.mark.parametrize("decay_steps,decay_rate", [(100, 0.5), (1, 0.96875), (250, 0.1), (7, 1.0)])
def test_step_decay_matches_keras_staircase_exponential_decay(decay_steps, decay_rate):
    schedule = make_schedule("step", 0.1, decay_steps=decay_steps, decay_rate=decay_rate)
    assert isinstance(schedule, StepDecay)
    expected = keras.optimizers.schedules.ExponentialDecay(
        0.1, decay_steps, decay_rate, staircase=True
    )
    # Keras works in float32 (and flushes values below 1e-38 to zero).
    np.testing.assert_allclose(_values(schedule), _keras_values(expected), rtol=2e-6, atol=1e-37)
    assert schedule(decay_steps - 1) == 0.1
    assert schedule(decay_steps) == pytest.approx(0.1 * decay_rate)


@pytest.mark.parametrize("decay_steps,alpha", [(1000, 0.0), (1000, 0.1), (1, 0.0), (37, 0.5)])
def test_cosine_matches_keras_cosine_decay(decay_steps, alpha):
    schedule = make_schedule("cosine", 0.2, decay_steps=decay_steps, alpha=alpha)
    assert isinstance(schedule, Cosine)
    expected = keras.optimizers.schedules.CosineDecay(0.2, decay_steps, alpha=alpha)
    # Keras rounds 1 + cos(...) in float32: near the end of the decay that
    # cancellation leaves it only absolute accuracy of about 1e-7 x the rate.
    np.testing.assert_allclose(_values(schedule), _keras_values(expected), rtol=1e-6, atol=1e-7)
    assert schedule(0) == pytest.approx(0.2)
    assert schedule(decay_steps) == pytest.approx(0.2 * alpha, abs=1e-15)
    assert schedule(10 * decay_steps) == schedule(decay_steps)  # Flat after the decay.


def test_step_decay_formula():
    schedule = StepDecay(0.1, decay_steps=1, decay_rate=0.99)
    assert [schedule(v) for v in (0, 1, 5000)] == [0.1, 0.1 * 0.99, 0.1 * 0.99**5000]


def test_cosine_formula():
    schedule = Cosine(1.0, decay_steps=100, alpha=0.2)
    assert schedule(50) == pytest.approx(0.8 * 0.5 + 0.2)
    assert schedule(25) == pytest.approx(0.8 * 0.5 * (1 + math.cos(math.pi / 4)) + 0.2)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_get_config_round_trips(name):
    schedule = make_schedule(name, 0.3, decay_steps=10, decay_rate=0.5, alpha=0.1)
    assert type(schedule).__name__ in repr(schedule)
    rebuilt = type(schedule)(**schedule.get_config())
    assert rebuilt.get_config() == schedule.get_config()
    assert [rebuilt(v) for v in VERSIONS] == [schedule(v) for v in VERSIONS]


def test_versions_beyond_float32_precision_are_exact():
    # Keras casts the step to float32, which cannot tell 2**24 + 1 from 2**24.
    schedule = StepDecay(1.0, decay_steps=2**24 + 1, decay_rate=0.5)
    assert schedule(2**24) == 1.0
    assert schedule(2**24 + 1) == 0.5


@pytest.mark.parametrize(
    "name,kwargs,message",
    [
        ("linear", {}, "unknown learning-rate schedule 'linear'"),
        ("constant", dict(learning_rate=0.0), "learning_rate must be > 0"),
        ("cosine", dict(learning_rate=float("nan")), "learning_rate must be > 0"),
        ("step", dict(learning_rate="0.1"), "learning_rate must be a number"),
        ("step", dict(decay_steps=0), "decay_steps must be an integer >= 1"),
        ("step", dict(decay_steps=None), "decay_steps must be an integer >= 1"),
        ("cosine", dict(decay_steps=10.5), "decay_steps must be an integer >= 1"),
        ("cosine", dict(decay_steps=True), "decay_steps must be an integer >= 1"),
        ("step", dict(decay_rate=0.0), "decay_rate must be > 0"),
        ("step", dict(decay_rate=None), "decay_rate must be a number"),
        ("step", dict(decay_rate=10.0), r"decay_rate must be in \(0, 1\]"),
        ("cosine", dict(alpha=-0.1), r"alpha must be in \[0, 1\]"),
        ("cosine", dict(alpha=1.5), r"alpha must be in \[0, 1\]"),
        ("cosine", dict(alpha=None), "alpha must be a number"),
    ],
)
def test_make_schedule_errors(name, kwargs, message):
    args = dict(learning_rate=0.1, decay_steps=100, decay_rate=0.5, alpha=0.0) | kwargs
    with pytest.raises(ValueError, match=message):
        make_schedule(name, **args)
