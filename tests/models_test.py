"""Tests for the model registry and the digits CNN (gasgd_tf.models)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gasgd_tf.models import MODELS, build_model
from gasgd_tf.models.digits_cnn import digits_cnn


def _conv_params(k, c_in, c_out):
    return k * k * c_in * c_out + c_out


def _dense_params(n_in, n_out):
    return n_in * n_out + n_out


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return build_model("digits_cnn", (8, 8, 1), 10, dropout=0.25)


def test_registry_builds_the_named_model(model):
    assert "digits_cnn" in MODELS
    assert isinstance(model, keras.Model) and model.name == "digits_cnn"


def test_output_is_logits_of_shape_batch_by_classes(model):
    x = np.random.default_rng(0).random((5, 8, 8, 1), dtype=np.float32)
    y = model(x, training=False)
    assert tuple(y.shape) == (5, 10)
    # Logits, not probabilities: no softmax in the model.
    assert not np.allclose(np.sum(y, axis=-1), 1.0)


def test_parameter_count_matches_layer_sizes(model):
    expected = (
        _conv_params(3, 1, 32)  # conv1, "same" padding keeps 8x8.
        + _conv_params(3, 32, 64)  # conv2
        + _dense_params(4 * 4 * 64, 128)  # 2x2 max pooling: 8x8 -> 4x4, flattened.
        + _dense_params(128, 10)
    )
    assert expected == 151306
    assert model.count_params() == expected
    assert len(model.trainable_weights) == 8


def test_num_classes_and_input_shape_are_used():
    m = digits_cnn(input_shape=(16, 16, 3), num_classes=7, dropout=0.0)
    assert tuple(m.output_shape) == (None, 7)
    assert m.count_params() == (
        _conv_params(3, 3, 32)
        + _conv_params(3, 32, 64)
        + _dense_params(8 * 8 * 64, 128)
        + _dense_params(128, 7)
    )


def test_get_config_round_trip_gives_same_outputs(model):
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    x = np.random.default_rng(1).random((4, 8, 8, 1), dtype=np.float32)
    np.testing.assert_allclose(
        clone(x, training=False), model(x, training=False), rtol=1e-5, atol=1e-6
    )
    assert [w.shape for w in clone.weights] == [w.shape for w in model.weights]


def test_unknown_model_name_raises():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build_model("resnet", (8, 8, 1), 10)


def test_one_train_step_changes_every_weight():
    keras.utils.set_random_seed(0)
    m = build_model("digits_cnn", (8, 8, 1), 10, dropout=0.0)
    rng = np.random.default_rng(0)
    x = rng.random((16, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, 10, size=16)
    before = [w.numpy().copy() for w in m.trainable_weights]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(y, m(x, training=True))
    grads = tape.gradient(loss, m.trainable_weights)
    keras.optimizers.SGD(learning_rate=0.1).apply_gradients(zip(grads, m.trainable_weights))
    assert np.isfinite(float(loss))
    for w, old in zip(m.trainable_weights, before):
        assert not np.array_equal(w.numpy(), old), w.path
