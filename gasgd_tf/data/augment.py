"""Data augmentation and evaluation crops, as TensorFlow ops for tf.data map functions.

Training views as in Krizhevsky et al. (2012) and Paine et al. (2013): optionally
rescale the image so that its shorter side is ``resize`` pixels (256 for
ImageNet), take a random ``crop`` x ``crop`` window (224) and mirror it
left-right half of the time. Small images (digits, CIFAR)
are instead zero-padded by ``pad`` pixels on each side and cropped back to
their own size, i.e. randomly shifted by up to ``pad`` pixels. Evaluation
takes the centre window, or (``eval_crops``) the centre, the four corners and
their mirror images, whose softmax outputs the evaluator averages.

Randomness is stateless: ``train_transform`` takes a seed tensor of shape [2]
and the same (image, seed) always gives the same output, whatever thread of a
parallel ``map`` runs it. ``gasgd_tf.data.pipeline`` gives the i-th element of
a worker's stream the seed ``[worker_seed, i]`` (from ``Dataset.enumerate``),
so a worker's augmented stream is reproducible from its seed alone, and two
workers with different seeds draw different crops and flips.

Every transform returns float32 in [0, 1]: uint8 images are divided by 255,
float images are taken to be in [0, 1] already.
"""

from __future__ import annotations

import tensorflow as tf

from gasgd_tf.data.geometry import check_args as _check_args
from gasgd_tf.data.geometry import output_shape  # noqa: F401 - part of this API

# eval_crops order, before the mirror images (which follow in the same order).
CROP_NAMES = ("centre", "top_left", "top_right", "bottom_left", "bottom_right")


def to_float(image: tf.Tensor) -> tf.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; a float image is cast to float32 unchanged.

    Raises:
      ValueError: For other dtypes, whose value range is not known here.
    """
    if image.dtype == tf.uint8:
        return tf.cast(image, tf.float32) / 255.0
    if image.dtype.is_floating:
        return tf.cast(image, tf.float32)
    raise ValueError(f"expected a uint8 or float image, got {image.dtype.name}")


def resize_shorter_side(image: tf.Tensor, size: int) -> tf.Tensor:
    """Rescales an [H, W, C] image, keeping its aspect ratio, so that min(H, W) == size.

    The longer side is rounded to the nearest pixel: 300 x 500 -> 256 x 427
    (500 * 256 / 300 = 426.67). Bilinear with antialiasing, so that
    downscaling large photographs does not alias.

    Args:
      image: [H, W, C], any real dtype; H and W may be dynamic.
      size: The shorter side after resizing, > 0.

    Returns:
      float32 [H', W', C] on the input's value scale (uint8 in -> 0..255 out).
    """
    if size <= 0:
        raise ValueError(f"resize_shorter_side: size must be > 0, got {size}")
    shape = tf.shape(image)
    height = tf.cast(shape[0], tf.float64)
    width = tf.cast(shape[1], tf.float64)
    shorter = tf.minimum(height, width)
    target = tf.constant(size, tf.float64)
    # The shorter side is set exactly, not through the float scale, so it never rounds to 255.
    new_height = tf.where(tf.equal(height, shorter), target, tf.round(height * target / shorter))
    new_width = tf.where(tf.equal(width, shorter), target, tf.round(width * target / shorter))
    new_size = tf.cast(tf.stack([new_height, new_width]), tf.int32)
    return tf.image.resize(image, new_size, method="bilinear", antialias=True)


def _prepare(image: tf.Tensor, resize: int, pad: int) -> tf.Tensor:
    """float32 in [0, 1], resized and zero-padded: the image that crops are taken from."""
    image = to_float(image)
    if resize:
        # The weights of the bilinear resampling sum to one, but float
        # rounding can step a hair past 1; keep the promised range exact.
        image = tf.clip_by_value(resize_shorter_side(image, resize), 0.0, 1.0)
    if pad:
        image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    return image


def _window(image: tf.Tensor, pad: int, crop: int) -> tuple[tf.Tensor | int, tf.Tensor | int]:
    """(height, width) of the crop window: crop x crop, or (crop 0) the unpadded image's size."""
    if crop:
        return crop, crop
    shape = tf.shape(image)
    return shape[0] - 2 * pad, shape[1] - 2 * pad


def _output_static_shape(image: tf.Tensor, resize: int, crop: int) -> list[int | None]:
    """The static [height, width, channels] of a view of ``image``, for ``tf.ensure_shape``."""
    height, width, channels = image.shape
    if crop:
        return [crop, crop, channels]
    if resize:
        return [None, None, channels]
    return [height, width, channels]


def train_transform(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    resize: int = 0,
    pad: int = 0,
    crop: int = 0,
    flip: bool = False,
) -> tf.Tensor:
    """A random training view of one image.

    Steps, each skipped when off: rescale the shorter side to ``resize``,
    zero-pad ``pad`` pixels on each side, take a uniformly random crop x crop
    window (crop 0: the unpadded image's own size, so with pad > 0 a random
    shift of up to +-pad pixels) and mirror it left-right with probability 1/2.

    Args:
      image: uint8 or float [H, W, C]; H and W may be dynamic.
      seed: int32 or int64 [2], e.g. ``[worker_seed, element_index]``; the
        output is a pure function of (image, seed).
      resize: Shorter side after resizing; 0: no resizing.
      pad: Zero padding on each side, in pixels.
      crop: Side of the square window; 0: the image's own size.
      flip: Whether to mirror half of the time.

    Returns:
      float32 [crop, crop, C] (or [H, W, C] for crop 0) in [0, 1].

    Raises:
      ValueError: A negative or non-integer resize, pad or crop.
    """
    _check_args(resize, pad, crop)
    out_shape = _output_static_shape(image, resize, crop)
    image = _prepare(image, resize, pad)
    # Independent streams for the crop and the flip, both derived from the one seed.
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    if pad or crop:
        height, width = _window(image, pad, crop)
        size = tf.stack([height, width, tf.shape(image)[2]])
        image = tf.image.stateless_random_crop(image, size, seed=crop_seed)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return tf.ensure_shape(image, out_shape)


def _crop_at(image: tf.Tensor, top, left, height, width) -> tf.Tensor:
    return image[top : top + height, left : left + width, :]


def eval_transform(image: tf.Tensor, *, resize: int = 0, pad: int = 0, crop: int = 0) -> tf.Tensor:
    """The deterministic evaluation view: the centre window of the resized, padded image.

    Where the margin is odd the window sits one pixel nearer the top / left
    (offset ``(H - crop) // 2``). With crop 0 and any pad this is the
    original image.

    Args:
      image: uint8 or float [H, W, C]; H and W may be dynamic.
      resize: As for ``train_transform``.
      pad: As for ``train_transform``.
      crop: As for ``train_transform``.

    Returns:
      float32 [crop, crop, C] (or [H, W, C] for crop 0) in [0, 1].
    """
    _check_args(resize, pad, crop)
    out_shape = _output_static_shape(image, resize, crop)
    image = _prepare(image, resize, pad)
    if pad or crop:
        height, width = _window(image, pad, crop)
        shape = tf.shape(image)
        image = _crop_at(image, (shape[0] - height) // 2, (shape[1] - width) // 2, height, width)
    return tf.ensure_shape(image, out_shape)


def eval_crops(
    image: tf.Tensor, *, resize: int = 0, pad: int = 0, crop: int = 0, flip: bool = False
) -> tf.Tensor:
    """The multi-crop evaluation views of one image (Krizhevsky et al. 2012).

    Order (``CROP_NAMES``): centre (as ``eval_transform``), top-left,
    top-right, bottom-left, bottom-right; with ``flip`` then the left-right
    mirror image of each of those five, in the same order.

    Args:
      image: uint8 or float [H, W, C]; H and W may be dynamic.
      resize: As for ``train_transform``.
      pad: As for ``train_transform``.
      crop: As for ``train_transform``.
      flip: Whether to add the mirror images (n = 10 instead of 5).

    Returns:
      float32 [n, crop, crop, C] (or [n, H, W, C] for crop 0) in [0, 1].
    """
    _check_args(resize, pad, crop)
    out_shape = _output_static_shape(image, resize, crop)
    image = _prepare(image, resize, pad)
    height, width = _window(image, pad, crop)
    shape = tf.shape(image)
    bottom, right = shape[0] - height, shape[1] - width
    offsets = [(bottom // 2, right // 2), (0, 0), (0, right), (bottom, 0), (bottom, right)]
    crops = tf.stack([_crop_at(image, top, left, height, width) for top, left in offsets])
    if flip:
        crops = tf.concat([crops, tf.reverse(crops, axis=[2])], axis=0)  # Axis 2: width.
    return tf.ensure_shape(crops, [2 * len(offsets) if flip else len(offsets), *out_shape])
