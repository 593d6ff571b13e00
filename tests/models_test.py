"""Tests for the model registry, the model builders and their layers (gasgd_tf.models)."""

import importlib
import inspect
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from gasgd_tf.models import MODELS, build_model
from gasgd_tf.models.digits_cnn import digits_cnn
from gasgd_tf.models.layers import (
    LocalResponseNormalization,
    SpatialResponseNormalization,
    ceil_mode_size,
    scaled,
)
from gasgd_tf.models.paper_imagenet import paper_imagenet, paper_imagenet_small


def _conv_params(k, c_in, c_out):
    return k * k * c_in * c_out + c_out


def _dense_params(n_in, n_out):
    return n_in * n_out + n_out


def _w(units, width):
    # The width rule of the contract, written out independently of layers.scaled.
    return max(1, round(units * width))


def _digits_params(input_shape, num_classes, width=1.0):
    h, w, c = input_shape
    c1, c2, hidden = _w(32, width), _w(64, width), _w(128, width)
    return (
        _conv_params(3, c, c1)  # conv1, "same" padding keeps the size.
        + _conv_params(3, c1, c2)  # conv2
        + _dense_params((h // 2) * (w // 2) * c2, hidden)  # 2x2 max pooling, flattened.
        + _dense_params(hidden, num_classes)
    )


def _alexnet_params(in_channels, num_classes, width, *, conv1_kernel, feature_pixels):
    f1, f2, f3, f4, f5 = (_w(f, width) for f in (96, 256, 384, 384, 256))
    hidden = _w(4096, width)
    return (
        _conv_params(conv1_kernel, in_channels, f1)
        + _conv_params(5, f1, f2)
        + _conv_params(3, f2, f3)
        + _conv_params(3, f3, f4)
        + _conv_params(3, f4, f5)
        + _dense_params(feature_pixels * f5, hidden)  # fc6 on the flattened pool5.
        + _dense_params(hidden, hidden)  # fc7
        + _dense_params(hidden, num_classes)
    )


def _paper_imagenet_params(input_shape, num_classes, width=1.0):
    # 11x11 conv1 and a 6x6 pool5 for 224 or 227 inputs (Krizhevsky et al. 2012).
    assert input_shape[:2] in ((224, 224), (227, 227))
    return _alexnet_params(
        input_shape[2], num_classes, width, conv1_kernel=11, feature_pixels=6 * 6
    )


def _paper_imagenet_small_params(input_shape, num_classes, width=0.25):
    # 5x5 conv1 keeps the size; each of the three "same" pools halves it, rounding up.
    h, w, c = input_shape
    pixels = math.ceil(h / 8) * math.ceil(w / 8)
    return _alexnet_params(c, num_classes, width, conv1_kernel=5, feature_pixels=pixels)


def _cifar_params(input_shape, num_classes, width, hidden):
    h, w, c = input_shape
    c1, c2, c3 = _w(32, width), _w(32, width), _w(64, width)
    features = math.ceil(h / 8) * math.ceil(w / 8) * c3  # Three "same" 3x3/2 pools.
    convs = _conv_params(5, c, c1) + _conv_params(5, c1, c2) + _conv_params(5, c2, c3)
    if hidden is None:
        return convs + _dense_params(features, num_classes)
    hidden = _w(hidden, width)
    return convs + _dense_params(features, hidden) + _dense_params(hidden, num_classes)


def _cifar10_18pct_params(input_shape, num_classes, width=1.0):
    return _cifar_params(input_shape, num_classes, width, hidden=None)


def _cifar10_80sec_params(input_shape, num_classes, width=1.0):
    return _cifar_params(input_shape, num_classes, width, hidden=64)


# One case per registered model: (input shape, classes, dropout, default lrn,
# number of normalisation layers with lrn=True, param formula, default width).
CASES = {
    "digits_cnn": ((8, 8, 1), 10, 0.25, False, 2, _digits_params, 1.0),
    "paper_imagenet": ((224, 224, 3), 1000, 0.5, True, 2, _paper_imagenet_params, 1.0),
    "paper_imagenet_small": ((8, 8, 1), 10, 0.5, True, 2, _paper_imagenet_small_params, 0.25),
    "cifar10_18pct": ((32, 32, 3), 10, 0.0, True, 2, _cifar10_18pct_params, 1.0),
    "cifar10_80sec": ((24, 24, 3), 10, 0.0, False, 2, _cifar10_80sec_params, 1.0),
}
NAMES = sorted(CASES)

# Cheaper inputs and widths for the tests that build each model several times.
SMALL = {
    "digits_cnn": ((8, 8, 1), 0.5),
    "paper_imagenet": ((227, 227, 3), 1 / 16),
    "paper_imagenet_small": ((28, 28, 1), 0.125),
    "cifar10_18pct": ((24, 24, 3), 0.5),
    "cifar10_80sec": ((32, 32, 3), 0.5),
}


def _build(name, input_shape=None, num_classes=None, **overrides):
    """Builds `name` the way the worker does: dropout, width and lrn as keywords."""
    shape, classes, dropout, lrn, _, _, width = CASES[name]
    kwargs = {"dropout": dropout, "width": width, "lrn": lrn, **overrides}
    return build_model(name, input_shape or shape, num_classes or classes, **kwargs)


@pytest.fixture(scope="module")
def built():
    """Each registered model at its CASES size, built once per module on first use."""
    cache = {}

    def get(name):
        if name not in cache:
            keras.utils.set_random_seed(0)
            cache[name] = _build(name)
        return cache[name]

    yield get
    cache.clear()


def _random_batch(input_shape, num_classes, batch, seed):
    rng = np.random.default_rng(seed)
    x = rng.random((batch, *input_shape), dtype=np.float32)
    y = rng.integers(0, num_classes, size=batch)
    return x, y


def _norm_layers(model):
    return [
        layer
        for layer in model.layers
        if isinstance(layer, (LocalResponseNormalization, SpatialResponseNormalization))
    ]


# Registry.


def test_every_registered_model_has_a_test_case():
    assert set(CASES) == set(MODELS)
    assert set(SMALL) == set(MODELS)


def test_unknown_model_name_raises():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build_model("resnet", (8, 8, 1), 10)


@pytest.mark.parametrize("name", NAMES)
def test_builder_follows_the_registry_contract(name):
    module, function = MODELS[name].split(":")
    fn = getattr(importlib.import_module(module), function)
    params = inspect.signature(fn).parameters
    assert list(params)[:2] == ["input_shape", "num_classes"]
    for keyword in ("dropout", "width", "lrn", "name"):
        assert params[keyword].kind is inspect.Parameter.KEYWORD_ONLY, keyword
    _, _, _, lrn, _, _, width = CASES[name]
    assert params["lrn"].default is lrn
    assert params["width"].default == width
    assert params["name"].default == name


# Every registered model.


@pytest.mark.parametrize("name", NAMES)
def test_output_is_logits_of_shape_batch_by_classes(built, name):
    model = built(name)
    shape, classes = CASES[name][:2]
    x, _ = _random_batch(shape, classes, batch=2, seed=0)
    y = model(x, training=False)
    assert tuple(y.shape) == (2, classes)
    assert np.all(np.isfinite(y))
    # Logits, not probabilities: no softmax in the model.
    assert not np.allclose(np.sum(y, axis=-1), 1.0)
    assert isinstance(model, keras.Model) and model.name == name


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_matches_layer_sizes(built, name):
    shape, classes, _, _, _, formula, _ = CASES[name]
    assert built(name).count_params() == formula(shape, classes)


@pytest.mark.parametrize("name", NAMES)
def test_get_config_round_trip_gives_same_outputs(built, name):
    model = built(name)
    clone = keras.Model.from_config(model.get_config())
    assert clone.count_params() == model.count_params()
    assert [w.shape for w in clone.weights] == [w.shape for w in model.weights]
    assert [type(layer) for layer in clone.layers] == [type(layer) for layer in model.layers]
    clone.set_weights(model.get_weights())
    shape, classes = CASES[name][:2]
    x, _ = _random_batch(shape, classes, batch=2, seed=1)
    np.testing.assert_allclose(
        clone(x, training=False), model(x, training=False), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "name",
    # A train step of the 62M-parameter net at 224x224 takes seconds on a
    # loaded 2-core machine; its shapes and parameter count stay in the fast suite.
    [pytest.param(n, marks=pytest.mark.slow) if n == "paper_imagenet" else n for n in NAMES],
)
def test_one_train_step_changes_every_weight(built, name):
    model = built(name)
    shape, classes = CASES[name][:2]
    x, y = _random_batch(shape, classes, batch=2 if name == "paper_imagenet" else 16, seed=2)
    before = [w.numpy().copy() for w in model.trainable_weights]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_weights)
    assert all(g is not None for g in grads)
    keras.optimizers.SGD(learning_rate=0.1).apply_gradients(zip(grads, model.trainable_weights))
    assert np.isfinite(float(loss))
    for w, old in zip(model.trainable_weights, before):
        assert np.all(np.isfinite(w.numpy())), w.path
        assert not np.array_equal(w.numpy(), old), w.path


@pytest.mark.parametrize("name", NAMES)
def test_width_scales_filters_and_hidden_units(name):
    shape, width = SMALL[name]
    classes, formula = CASES[name][1], CASES[name][5]
    model = _build(name, shape, width=width)
    assert model.count_params() == formula(shape, classes, width)
    assert model.count_params() < formula(shape, classes, 1.0)
    x, _ = _random_batch(shape, classes, batch=2, seed=3)
    assert tuple(model(x).shape) == (2, classes)


@pytest.mark.parametrize("name", NAMES)
def test_lrn_adds_normalisation_layers_without_parameters(name):
    shape, width = SMALL[name]
    on = _build(name, shape, width=width, lrn=True)
    off = _build(name, shape, width=width, lrn=False)
    assert len(_norm_layers(on)) == CASES[name][4]
    assert _norm_layers(off) == []
    assert len(on.layers) == len(off.layers) + CASES[name][4]
    assert on.count_params() == off.count_params()


def test_width_rounds_and_keeps_at_least_one_unit():
    assert scaled(96, 0.25) == 24
    assert scaled(4096, 0.25) == 1024
    assert scaled(32, 1.0) == 32
    assert scaled(10, 0.001) == 1
    assert scaled(3, 0.5) == 2  # round(1.5), not a floor.
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="width"):
            scaled(32, bad)


# digits_cnn.


def test_digits_cnn_default_is_unchanged():
    m = digits_cnn(dropout=0.25)
    assert m.count_params() == _digits_params((8, 8, 1), 10) == 151306
    assert len(m.trainable_weights) == 8
    assert _norm_layers(m) == []


def test_digits_cnn_num_classes_and_input_shape_are_used():
    m = digits_cnn(input_shape=(16, 16, 3), num_classes=7, dropout=0.0)
    assert tuple(m.output_shape) == (None, 7)
    assert m.count_params() == _digits_params((16, 16, 3), 7)


# paper_imagenet.


def test_paper_imagenet_has_about_62m_parameters(built):
    count = built("paper_imagenet").count_params()
    assert 57_000_000 < count < 64_000_000
    assert count == _paper_imagenet_params((224, 224, 3), 1000) == 62_378_344


def test_paper_imagenet_maps_224_to_55_and_6x6x256(built):
    model = built("paper_imagenet")
    assert tuple(model.get_layer("conv1").output.shape) == (None, 55, 55, 96)
    assert tuple(model.get_layer("pool2").output.shape) == (None, 13, 13, 256)
    assert tuple(model.get_layer("pool5").output.shape) == (None, 6, 6, 256)
    # cuda-convnet's rounding up: 3 zero rows and columns at the bottom/right.
    assert model.get_layer("pad1").padding == ((0, 3), (0, 3))


def test_paper_imagenet_maps_227_to_55_and_6x6x256():
    model = paper_imagenet((227, 227, 3), 1000, dropout=0.5)
    assert tuple(model.get_layer("conv1").output.shape) == (None, 55, 55, 96)
    assert tuple(model.get_layer("pool5").output.shape) == (None, 6, 6, 256)
    assert model.get_layer("pad1").padding == ((0, 0), (0, 0))
    assert model.count_params() == _paper_imagenet_params((227, 227, 3), 1000)


def test_paper_imagenet_rejects_inputs_too_small_for_pool5():
    assert tuple(paper_imagenet((64, 64, 3), 10, dropout=0.0).output_shape) == (None, 10)
    with pytest.raises(ValueError, match="paper_imagenet_small"):
        paper_imagenet((63, 63, 3), 10, dropout=0.0)


@pytest.mark.parametrize(
    "size, pool5", [(8, 1), (28, 4), (32, 4), (64, 8)], ids=["digits", "mnist", "cifar", "64"]
)
def test_paper_imagenet_small_fits_small_images(size, pool5):
    model = paper_imagenet_small((size, size, 3), 10, dropout=0.5)
    assert tuple(model.get_layer("pool5").output.shape) == (None, pool5, pool5, 64)
    # Default width 0.25: filters 24/64/96/96/64, fc6/fc7 1024 units.
    assert [model.get_layer(f"conv{i}").filters for i in range(1, 6)] == [24, 64, 96, 96, 64]
    assert model.get_layer("fc6").units == model.get_layer("fc7").units == 1024
    assert model.count_params() == _paper_imagenet_small_params((size, size, 3), 10)


# cuda-convnet's CIFAR-10 nets.


@pytest.mark.parametrize("name", ["cifar10_18pct", "cifar10_80sec"])
@pytest.mark.parametrize("size", [24, 32])
def test_cifar_nets_take_crops_and_full_images(name, size):
    model = _build(name, (size, size, 3), 10)
    assert tuple(model.get_layer("pool3").output.shape) == (None, size // 8, size // 8, 64)
    assert model.count_params() == CASES[name][5]((size, size, 3), 10)
    # No dropout layer at dropout 0, as in the originals.
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in model.layers)


@pytest.mark.parametrize("name", ["cifar10_18pct", "cifar10_80sec"])
def test_cifar_nets_put_dropout_before_the_logits(name):
    model = _build(name, dropout=0.5)
    names = [layer.name for layer in model.layers]
    assert names[-2:] == ["dropout", "logits"]
    assert model.get_layer("dropout").rate == 0.5


def test_cifar10_18pct_uses_cuda_convnets_rnorm_parameters():
    layers = _norm_layers(_build("cifar10_18pct"))
    assert [type(layer) for layer in layers] == [SpatialResponseNormalization] * 2
    for layer in layers:
        # layer-params-18pct.cfg: scale=0.00005 over a 3x3 window, pow=.75.
        assert (layer.size, layer.bias, layer.beta) == (3, 1.0, 0.75)
        assert layer.alpha == pytest.approx(0.00005 / 9)


# Normalisation layers.


def _lrn_reference(a, depth_radius, bias, alpha, beta):
    """Across-channel LRN, one channel at a time (Krizhevsky et al. 2012, eq. 2)."""
    out = np.empty_like(a, dtype=np.float64)
    channels = a.shape[-1]
    for c in range(channels):
        lo, hi = max(0, c - depth_radius), min(channels, c + depth_radius + 1)
        sums = np.sum(a[..., lo:hi].astype(np.float64) ** 2, axis=-1)
        out[..., c] = a[..., c] / (bias + alpha * sums) ** beta
    return out


def _spatial_reference(a, size, bias, alpha, beta):
    """Within-channel normalisation, one pixel at a time (cuda-convnet's kCNorm_*)."""
    _, height, width, _ = a.shape
    out = np.empty_like(a, dtype=np.float64)
    for y in range(height):
        for x in range(width):
            y0, x0 = y - size // 2, x - size // 2
            window = a[:, max(0, y0) : y0 + size, max(0, x0) : x0 + size, :].astype(np.float64)
            sums = np.sum(window**2, axis=(1, 2))
            out[:, y, x, :] = a[:, y, x, :] / (bias + alpha * sums) ** beta
    return out


def test_lrn_defaults_are_alexnets():
    layer = LocalResponseNormalization()
    assert (layer.depth_radius, layer.bias, layer.alpha, layer.beta) == (2, 2.0, 1e-4, 0.75)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"depth_radius": 1, "bias": 1.0, "alpha": 0.3, "beta": 0.5}, {"depth_radius": 0}],
    ids=["alexnet", "strong", "radius0"],
)
def test_lrn_matches_numpy_reference(kwargs):
    # Large inputs, so that the sum of squares matters even at alpha 1e-4.
    a = np.random.default_rng(0).normal(scale=30.0, size=(2, 5, 4, 9)).astype(np.float32)
    layer = LocalResponseNormalization(**kwargs)
    expected = _lrn_reference(a, layer.depth_radius, layer.bias, layer.alpha, layer.beta)
    assert not np.allclose(expected, a / layer.bias**layer.beta, rtol=1e-3)
    np.testing.assert_allclose(layer(a), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_spatial_response_normalization_matches_numpy_reference(size):
    a = np.random.default_rng(1).normal(scale=3.0, size=(2, 6, 5, 4)).astype(np.float32)
    layer = SpatialResponseNormalization(size=size, bias=1.0, alpha=0.05, beta=0.75)
    expected = _spatial_reference(a, size, 1.0, 0.05, 0.75)
    np.testing.assert_allclose(layer(a), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "layer",
    [
        LocalResponseNormalization(depth_radius=1, bias=1.5, alpha=0.01, beta=0.6, name="n"),
        SpatialResponseNormalization(size=5, bias=1.5, alpha=0.01, beta=0.6, name="n"),
    ],
    ids=["lrn", "spatial"],
)
def test_normalisation_layer_get_config_round_trip(layer):
    a = np.random.default_rng(2).normal(scale=5.0, size=(1, 4, 4, 6)).astype(np.float32)
    copy = type(layer).from_config(layer.get_config())
    assert copy.get_config() == layer.get_config()
    np.testing.assert_array_equal(copy(a), layer(a))
    # By registered name too, as keras.Model.from_config finds it.
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == f"gasgd_tf>{type(layer).__name__}"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(layer)
    np.testing.assert_array_equal(restored(a), layer(a))


def test_normalisation_layers_reject_bad_sizes():
    with pytest.raises(ValueError, match="depth_radius"):
        LocalResponseNormalization(depth_radius=-1)
    with pytest.raises(ValueError, match="size"):
        SpatialResponseNormalization(size=0)


def test_ceil_mode_size_rounds_up_like_cuda_convnet():
    assert ceil_mode_size(224, 11, 4) == 55  # The paper's 224 -> 55.
    assert ceil_mode_size(227, 11, 4) == 55
    assert ceil_mode_size(32, 3, 2) == 16
    assert ceil_mode_size(7, 3, 2) == 3
    assert ceil_mode_size(2, 3, 2) == 1
