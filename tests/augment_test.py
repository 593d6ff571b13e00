"""Tests for gasgd_tf.data.augment: random crops and flips, centre and multi-crop views."""

import numpy as np
import pytest
import tensorflow as tf

from gasgd_tf.data import augment

DRAWS = 64


def _image(height, width, channels=1):
    """A uint8 image whose every pixel differs, so that a crop shows where it was taken."""
    return np.arange(height * width * channels, dtype=np.uint8).reshape(height, width, channels)


def _seed(i, worker=7):
    return tf.constant([worker, i], tf.int64)


def _padded(image, pad):
    return np.pad(image, [(pad, pad), (pad, pad), (0, 0)])


def _windows(image, size):
    """{(top, left): image[top:top+size, left:left+size]} for every position."""
    height, width, _ = image.shape
    return {
        (top, left): image[top : top + size, left : left + size]
        for top in range(height - size + 1)
        for left in range(width - size + 1)
    }


def _as_uint8(x):
    """A float view back on the 0..255 scale, for exact comparison with numpy slices."""
    x = np.asarray(x)
    assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0
    return np.round(x * 255.0).astype(np.uint8)


def _where(view, windows):
    """The (position, mirrored) of the window that ``view`` equals; fails if none."""
    for position, window in windows.items():
        if np.array_equal(view, window):
            return position, False
        if np.array_equal(view, window[:, ::-1]):
            return position, True
    raise AssertionError("the view is not a window of the padded image nor its mirror")


def test_to_float():
    np.testing.assert_allclose(
        augment.to_float(tf.constant([[[0], [51], [255]]], tf.uint8)), [[[0.0], [0.2], [1.0]]]
    )
    x = tf.constant([[[0.25]]], tf.float64)
    assert augment.to_float(x).dtype == tf.float32 and float(augment.to_float(x)[0, 0, 0]) == 0.25
    with pytest.raises(ValueError, match="uint8 or float"):
        augment.to_float(tf.zeros([2, 2, 1], tf.int32))


@pytest.mark.parametrize(
    "shape, kwargs, expected",
    [
        ((8, 8, 1), {}, (8, 8, 1)),
        ((8, 8, 1), dict(pad=2, flip=True), (8, 8, 1)),
        ((32, 32, 3), dict(pad=4, crop=28), (28, 28, 3)),
        ((40, 60, 3), dict(resize=32, crop=24, flip=True), (24, 24, 3)),
        ((60, 40, 3), dict(resize=32, pad=1, crop=34), (34, 34, 3)),
    ],
)
def test_train_transform_shape_dtype_range(shape, kwargs, expected):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    image[0, 0] = 255  # The full range, so that a resize could overshoot 1.
    out = augment.train_transform(tf.constant(image), _seed(0), **kwargs)
    assert out.shape == expected and out.dtype == tf.float32
    assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 1.0
    # Float input in [0, 1] gives the same view.
    again = augment.train_transform(tf.constant(image / 255.0), _seed(0), **kwargs)
    np.testing.assert_allclose(again, out, atol=1e-6)


def test_train_transform_with_dynamic_size_has_static_output_shape():
    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def transform(image):
        out = augment.train_transform(image, _seed(0), resize=16, crop=12, flip=True)
        assert out.shape == (12, 12, 3)  # Known while tracing: batching needs it.
        return out

    for shape in [(20, 30, 3), (17, 16, 3), (40, 18, 3)]:
        assert transform(tf.zeros(shape, tf.uint8)).shape == (12, 12, 3)


def test_pad_without_crop_shifts_by_up_to_pad_pixels():
    image, pad = _image(8, 8), 2
    windows = _windows(_padded(image, pad), 8)  # 25 shifts, -2..+2 in each direction.
    positions = []
    for i in range(DRAWS):
        out = augment.train_transform(image, _seed(i), pad=pad)
        position, mirrored = _where(_as_uint8(out), windows)
        assert not mirrored  # flip is off.
        positions.append(position)
    assert len(set(positions)) >= 15  # Random: about 23 of the 25 shifts in 64 draws.
    assert {top for top, _ in positions} == set(range(5))
    assert {left for _, left in positions} == set(range(5))


def test_crop_without_pad_is_a_window_of_the_image():
    image = _image(10, 12, 2)
    windows = _windows(image, 7)
    positions = {
        _where(_as_uint8(augment.train_transform(image, _seed(i), crop=7)), windows)
        for i in range(DRAWS)
    }
    assert len(positions) > 10 and not any(mirrored for _, mirrored in positions)


def test_same_seed_same_view_and_other_seeds_differ():
    image = _image(8, 8)
    kwargs = dict(pad=2, flip=True)
    first = augment.train_transform(image, _seed(3), **kwargs)
    np.testing.assert_array_equal(augment.train_transform(image, _seed(3), **kwargs), first)
    others = [augment.train_transform(image, _seed(3, worker=w), **kwargs) for w in range(8)]
    assert any(not np.array_equal(o, first) for o in others)


def test_flip_sometimes_and_not_always_and_is_the_mirror_image():
    image = _image(6, 9, 3)
    flips = 0
    for i in range(DRAWS):
        out = _as_uint8(augment.train_transform(image, _seed(i), flip=True))
        if np.array_equal(out, image):
            continue
        np.testing.assert_array_equal(out, image[:, ::-1])  # The only other outcome.
        flips += 1
    assert 16 <= flips <= DRAWS - 16  # About half.


def test_crops_and_flips_together():
    image, pad = _image(8, 8), 1
    windows = _windows(_padded(image, pad), 6)
    views = {
        _where(
            _as_uint8(augment.train_transform(image, _seed(i), pad=pad, crop=6, flip=True)), windows
        )
        for i in range(DRAWS)
    }
    mirrored = [m for _, m in views]
    assert any(mirrored) and not all(mirrored)
    assert len({position for position, _ in views}) > 5


def test_eval_transform_is_deterministic_and_the_centre():
    image = _image(9, 10, 2)
    out = augment.eval_transform(image, pad=1, crop=6)
    np.testing.assert_array_equal(augment.eval_transform(image, pad=1, crop=6), out)
    # Padded 11x12: margins 5 and 6, so the window starts at (2, 3).
    np.testing.assert_array_equal(_as_uint8(out), _padded(image, 1)[2:8, 3:9])
    # crop 0 with a pad: the original image.
    np.testing.assert_array_equal(_as_uint8(augment.eval_transform(image, pad=2)), image)
    np.testing.assert_array_equal(_as_uint8(augment.eval_transform(image)), image)


@pytest.mark.parametrize("flip", [False, True])
def test_eval_crops_are_centre_then_corners_then_mirrors(flip):
    image = _image(7, 9, 2)
    crops = augment.eval_crops(image, crop=4, flip=flip)
    expected = [
        image[1:5, 2:6],  # Centre: margins 3 and 5 -> offsets 1 and 2.
        image[0:4, 0:4],  # Top-left.
        image[0:4, 5:9],  # Top-right.
        image[3:7, 0:4],  # Bottom-left.
        image[3:7, 5:9],  # Bottom-right.
    ]
    if flip:
        expected += [e[:, ::-1] for e in expected]
    assert crops.shape == (len(expected), 4, 4, 2) and crops.dtype == tf.float32
    np.testing.assert_array_equal(_as_uint8(crops), np.stack(expected))
    np.testing.assert_array_equal(crops[0], augment.eval_transform(image, crop=4))


def test_eval_crops_of_padded_image_with_crop_0():
    image = _image(8, 8)
    crops = _as_uint8(augment.eval_crops(image, pad=2))
    padded = _padded(image, 2)
    assert crops.shape == (5, 8, 8, 1)
    np.testing.assert_array_equal(crops[0], image)  # The centre is the image itself.
    for crop, (top, left) in zip(crops[1:], [(0, 0), (0, 4), (4, 0), (4, 4)]):
        np.testing.assert_array_equal(crop, padded[top : top + 8, left : left + 8])


def test_resize_shorter_side_keeps_the_aspect_ratio():
    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def resize(image):
        return augment.resize_shorter_side(image, 256)

    # 500 * 256 / 300 = 426.67, rounded to the nearest pixel.
    assert resize(tf.zeros([300, 500, 3], tf.uint8)).shape == (256, 427, 3)
    assert resize(tf.zeros([500, 300, 3], tf.uint8)).shape == (427, 256, 3)
    assert resize(tf.zeros([256, 256, 3], tf.uint8)).shape == (256, 256, 3)
    assert resize(tf.zeros([100, 120, 3], tf.uint8)).shape == (256, 307, 3)  # Upscaling.
    flat = resize(tf.fill([300, 500, 3], tf.constant(200, tf.uint8)))
    assert flat.dtype == tf.float32
    np.testing.assert_allclose(flat, 200.0, atol=1e-3)  # On the input's scale.
    with pytest.raises(ValueError, match="size must be > 0"):
        augment.resize_shorter_side(tf.zeros([4, 4, 3], tf.uint8), 0)


def test_resized_views_stay_in_range():
    image = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    image[::2, ::2] = 255  # Sharp edges, where resampling could overshoot.
    for view in [
        augment.train_transform(image, _seed(0), resize=20, crop=20, flip=True),
        augment.eval_transform(image, resize=20, crop=18),
        augment.eval_crops(image, resize=20, pad=2, crop=16, flip=True),
    ]:
        assert float(tf.reduce_min(view)) >= 0.0 and float(tf.reduce_max(view)) <= 1.0


def test_output_shape():
    assert augment.output_shape((8, 8, 1)) == (8, 8, 1)
    assert augment.output_shape((8, 8, 1), pad=2) == (8, 8, 1)
    assert augment.output_shape((32, 32, 3), pad=4, crop=40) == (40, 40, 3)
    assert augment.output_shape((28, 20, 1), crop=20) == (20, 20, 1)
    assert augment.output_shape((None, None, 3), resize=256, crop=224) == (224, 224, 3)
    assert augment.output_shape((None, None, 3), resize=256, pad=4, crop=264) == (264, 264, 3)


@pytest.mark.parametrize(
    "shape, kwargs, message",
    [
        ((None, None, 3), {}, "crop=0 keeps each image's own size"),
        ((None, None, 3), dict(pad=4), "crop=0 keeps each image's own size"),
        ((None, None, 3), dict(resize=256), "resize=256 needs a crop size"),
        ((32, 32, 3), dict(resize=32), "resize=32 needs a crop size"),
        ((None, None, 3), dict(crop=224), "may not fit images of varying size"),
        ((8, 8, 1), dict(pad=1, crop=11), "crop=11 exceeds the padded image's shorter side 10"),
        ((28, 20, 1), dict(crop=21), "crop=21 exceeds"),
        ((None, None, 3), dict(resize=256, crop=257), "crop=257 exceeds"),
        ((8, 8, None), {}, "channels is unknown"),
        ((8, 8, 1), dict(pad=-1), "pad must be an integer >= 0"),
        ((8, 8), {}, r"must be \(height, width, channels\)"),
    ],
)
def test_output_shape_errors(shape, kwargs, message):
    with pytest.raises(ValueError, match=message):
        augment.output_shape(shape, **kwargs)
