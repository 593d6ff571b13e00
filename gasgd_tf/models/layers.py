"""Layers and size helpers shared by the model builders: response normalisation, width scaling.

Both normalisation layers divide each activation by a power of a local sum of
squares, ``b = a / (bias + alpha * sum(a**2))**beta``, and follow one
convention for ``alpha``: it multiplies the plain sum of squares, as in
Krizhevsky et al. 2012 (eq. 2: k = 2, n = 5, alpha = 1e-4, beta = 0.75) and in
``tf.nn.local_response_normalization``. cuda-convnet's ``scale`` and Caffe's
``alpha`` are instead divided by the window (``size`` across maps,
``size**2`` within a map), so reproduce a layer-params ``scale=s`` of a
``size=n`` layer with ``alpha=s / n`` (across maps) or ``alpha=s / n**2``
(within a map).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf


def scaled(units: int, width: float) -> int:
    """Filters or hidden units of a layer of a model scaled by `width`.

    Args:
      units: The count at width 1.
      width: The multiplier (> 0).

    Returns:
      ``round(units * width)``, at least 1.

    Raises:
      ValueError: `width` is not a positive finite number.
    """
    if not (math.isfinite(width) and width > 0):
        raise ValueError(f"width must be positive, got {width}")
    return max(1, round(units * width))


def ceil_mode_size(size: int, kernel: int, stride: int) -> int:
    """Output size of a cuda-convnet convolution or pooling without padding.

    cuda-convnet rounds up (``1 + ceil((size - kernel) / stride)``): the last
    window may run off the bottom/right edge, where the image counts as zeros.
    That is how its ImageNet net maps 224x224 crops to 55x55 by an 11x11,
    stride 4 convolution, and the same as Caffe's 227x227 input without padding.

    Args:
      size: Input height or width.
      kernel: Window size.
      stride: Window step.

    Returns:
      The output height or width, at least 1.
    """
    return 1 + max(0, -(-(size - kernel) // stride))


@keras.saving.register_keras_serializable(package="gasgd_tf")
class LocalResponseNormalization(keras.layers.Layer):
    """Response normalisation across channels (AlexNet's LRN, cuda-convnet's ``cmrnorm``).

    ``b[..., c] = a[..., c] / (bias + alpha * sum(a[..., c - r : c + r + 1]**2))**beta``
    with ``r = depth_radius`` and channels past either end left out of the sum.
    `alpha` multiplies the plain sum, not the sum divided by the window size
    (see the module docstring), so the defaults are Krizhevsky et al. 2012's
    k = 2, n = 5, alpha = 1e-4, beta = 0.75.

    Computed by ``tf.nn.local_response_normalization`` in float32 (its kernels
    do not take every float type) and cast back to the input's dtype.
    Channels last.
    """

    def __init__(
        self,
        depth_radius: int = 2,
        bias: float = 2.0,
        alpha: float = 1e-4,
        beta: float = 0.75,
        **kwargs,
    ):
        """Initializes the layer.

        Args:
          depth_radius: Channels on each side of a channel in its sum (window
            size ``2 * depth_radius + 1``).
          bias: The additive constant (AlexNet's k).
          alpha: Scale of the sum of squares (not divided by the window size).
          beta: Exponent.
          **kwargs: keras.layers.Layer arguments (name, dtype, ...).

        Raises:
          ValueError: Negative depth_radius.
        """
        super().__init__(**kwargs)
        if int(depth_radius) != depth_radius or depth_radius < 0:
            raise ValueError(f"depth_radius must be an int >= 0, got {depth_radius}")
        self.depth_radius = int(depth_radius)
        self.bias = float(bias)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def call(self, inputs):
        y = tf.nn.local_response_normalization(
            tf.cast(inputs, tf.float32),
            depth_radius=self.depth_radius,
            bias=self.bias,
            alpha=self.alpha,
            beta=self.beta,
        )
        return tf.cast(y, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "depth_radius": self.depth_radius,
            "bias": self.bias,
            "alpha": self.alpha,
            "beta": self.beta,
        }


@keras.saving.register_keras_serializable(package="gasgd_tf")
class SpatialResponseNormalization(keras.layers.Layer):
    """Response normalisation within each channel over a square window (cuda-convnet's ``rnorm``).

    ``b[y, x, c] = a[y, x, c] / (bias + alpha * sum(a[y', x', c]**2))**beta``,
    summed over the ``size`` x ``size`` window starting ``size // 2`` pixels
    above and left of (y, x); pixels outside the image count as zeros, as in
    cuda-convnet (``kCNorm_*``, which also fixes bias at 1). `alpha`
    multiplies the plain sum (cuda-convnet's ``scale / size**2``). Channels last.
    """

    def __init__(
        self,
        size: int = 3,
        bias: float = 1.0,
        alpha: float = 1e-4,
        beta: float = 0.75,
        **kwargs,
    ):
        """Initializes the layer.

        Args:
          size: Window height and width.
          bias: The additive constant.
          alpha: Scale of the sum of squares (not divided by the window area).
          beta: Exponent.
          **kwargs: keras.layers.Layer arguments (name, dtype, ...).

        Raises:
          ValueError: size < 1.
        """
        super().__init__(**kwargs)
        if int(size) != size or size < 1:
            raise ValueError(f"size must be an int >= 1, got {size}")
        self.size = int(size)
        self.bias = float(bias)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def call(self, inputs):
        x = tf.cast(inputs, tf.float32)
        before = self.size // 2
        after = self.size - 1 - before
        padded = tf.pad(tf.square(x), [[0, 0], [before, after], [before, after], [0, 0]])
        # A window mean over zero-padded squares, times the window area, is
        # the sum over the in-image pixels for every channel at once.
        sums = tf.nn.avg_pool2d(padded, self.size, 1, "VALID") * float(self.size**2)
        y = x * tf.pow(self.bias + self.alpha * sums, -self.beta)
        return tf.cast(y, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "size": self.size,
            "bias": self.bias,
            "alpha": self.alpha,
            "beta": self.beta,
        }
