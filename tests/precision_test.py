"""Mixed precision and GPU placement: pushes stay float32 and unscaled; one GPU per worker."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from worker_test import small_config

from gasgd_tf import config_base, devices, worker
from gasgd_tf.server import SGD, ParameterStore


@pytest.fixture(autouse=True)
def float32_afterwards():
    yield
    keras.mixed_precision.set_global_policy("float32")  # The policy is process-wide.


def _dense_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(hidden))


def _batch():
    rng = np.random.default_rng(0)
    return tf.constant(rng.normal(size=(32, 8)), tf.float32), tf.constant(rng.integers(0, 3, 32))


def test_loss_scaling_pushes_the_unscaled_gradient():
    keras.mixed_precision.set_global_policy("mixed_float16")
    images, labels = _batch()
    plain = worker.TrainStep(_dense_model(), keras.optimizers.SGD(0.1), return_gradient=True)
    scaled_opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
    scaled = worker.TrainStep(_dense_model(), scaled_opt, return_gradient=True)
    g_plain, g_scaled = plain(images, labels), scaled(images, labels)
    assert g_scaled.dtype == np.float32
    # The loss scale is 2**15 at first: unscaled, the gradients agree up to float16 rounding.
    np.testing.assert_allclose(g_scaled, g_plain, rtol=2e-2, atol=1e-4)
    assert np.abs(g_plain).max() > 1e-3  # Not trivially equal.


def test_a_step_whose_scaled_gradient_overflows_pushes_nothing():
    keras.mixed_precision.set_global_policy("mixed_float16")
    images, labels = _batch()
    model = _dense_model()
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
    step = worker.TrainStep(model, optimizer)
    before = [v.numpy() for v in model.trainable_variables]
    optimizer.dynamic_scale.assign(2.0**40)  # float16 overflows: the step must be skipped.
    step(images, labels)
    np.testing.assert_array_equal(step.take_gradient(), 0.0)
    for v, old in zip(model.trainable_variables, before):
        np.testing.assert_array_equal(v.numpy(), old)
    assert optimizer.dynamic_scale.numpy() == 2.0**39  # Halved for the next step.
    optimizer.dynamic_scale.assign(128.0)  # At a sane scale a step counts again.
    step(images, labels)
    assert np.abs(step.take_gradient()).max() > 0


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_a_mixed_precision_worker_trains_against_a_float32_server(
    serve, digits_data_dir, tmp_path, precision
):
    store = ParameterStore(SGD(learning_rate=0.05))
    server = serve(store)
    config = small_config(
        digits_data_dir, num_steps=6, n_sync=2, **{"worker.precision": precision}
    )
    result = worker.train(config, 0, server.address, str(tmp_path))
    assert result.pushes == 3 and store.version == 3
    assert np.isfinite(result.loss)
    assert all(s.dtype == "float32" for s in store.specs)  # Variables stay float32.


def test_one_gpu_per_worker_unless_sharing_is_asked_for(monkeypatch):
    assert devices.pick_gpu(1, num_gpus=2) == 1
    with pytest.raises(devices.DeviceError, match="local rank 2 but the process sees 2 GPU"):
        devices.pick_gpu(2, num_gpus=2)
    assert devices.pick_gpu(3, num_gpus=2, share_gpus=True) == 1
    assert devices.pick_gpu(3, num_gpus=1) == 0  # The scheduler gave this process one GPU.
    # configure() raises it too (a review found it taken for "already initialised").
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: ["gpu:0", "gpu:1"])
    with pytest.raises(devices.DeviceError):
        devices.configure(2)


def test_an_unknown_precision_is_refused():
    config = config_base.get_base_config()
    config.worker.precision = "float16"
    with pytest.raises(ValueError, match="worker.precision 'float16' is not one of"):
        config_base.finalize(config)
