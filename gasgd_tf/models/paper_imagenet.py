"""The ImageNet net of Paine et al. 2013 ("GPU Asynchronous SGD"): Krizhevsky et al. 2012's net.

Paine et al. trained the ILSVRC-2012 net of Krizhevsky, Sutskever and Hinton
2012 ("ImageNet Classification with Deep Convolutional Neural Networks") as
implemented by cuda-convnet, with one model replica per GPU, so it is built
here as a single tower: the original's two-GPU split (grouped conv2/4/5 and
half of every layer on each GPU) is gone, which gives conv2, conv4 and conv5
all input channels and 1.4M more weights (62.4M in all at 1000 classes,
against the original's 61.0M). Every conv and dense layer but the last is
followed by a ReLU.

Known deviations from the original: single tower (above); the LRN sits after
the ReLU and before the pooling as in the paper's text (cuda-convnet's
ImageNet layer files normalise the linear conv output and apply the ReLU at
the pool); He-normal weights and zero biases instead of N(0, 0.01) weights
with some biases at 1 (see ``_INIT``); weight decay and
learning rates belong to the optimizer config, not the model.

``paper_imagenet_small`` keeps the layer sequence but fits small inputs (8x8
digits, 28x28 MNIST, 32x32 CIFAR, 64x64 downsampled ImageNet) and CPUs.
"""

from __future__ import annotations

import keras

from gasgd_tf.models.layers import LocalResponseNormalization, ceil_mode_size, scaled

# Filters of conv1..conv5 and units of fc6/fc7 at width 1.
_FILTERS = (96, 256, 384, 384, 256)
_HIDDEN = 4096
# He et al. 2015's initialisation for ReLU layers. With Keras' default
# (Glorot uniform) the small variant did not leave chance level in 10 epochs
# of SGD on the digits (momentum 0.9, learning rates 0.01 to 0.1, with or
# without LRN and dropout, and with the paper's biases of 1); with He normal
# it reached 0.94 validation accuracy (BUILD_NOTES.md, "Models").
_INIT = "he_normal"


def _lrn(name: str) -> keras.layers.Layer:
    # Krizhevsky et al. 2012, section 3.3: k = 2, n = 5, alpha = 1e-4,
    # beta = 0.75, alpha on the plain sum of squares.
    return LocalResponseNormalization(depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75, name=name)


def _alexnet(
    x,
    num_classes: int,
    *,
    dropout: float,
    width: float,
    lrn: bool,
    conv1_kernel: int,
    conv1_stride: int,
    conv1_padding: str,
    pool_padding: str,
):
    """The layer sequence after the input (and any conv1 padding), returning the logits."""
    f1, f2, f3, f4, f5 = (scaled(f, width) for f in _FILTERS)
    hidden = scaled(_HIDDEN, width)
    x = keras.layers.Conv2D(
        f1,
        conv1_kernel,
        conv1_stride,
        padding=conv1_padding,
        activation="relu",
        kernel_initializer=_INIT,
        name="conv1",
    )(x)
    if lrn:
        x = _lrn("lrn1")(x)
    x = keras.layers.MaxPooling2D(3, 2, padding=pool_padding, name="pool1")(x)
    x = keras.layers.Conv2D(
        f2, 5, padding="same", activation="relu", kernel_initializer=_INIT, name="conv2"
    )(x)
    if lrn:
        x = _lrn("lrn2")(x)
    x = keras.layers.MaxPooling2D(3, 2, padding=pool_padding, name="pool2")(x)
    x = keras.layers.Conv2D(
        f3, 3, padding="same", activation="relu", kernel_initializer=_INIT, name="conv3"
    )(x)
    x = keras.layers.Conv2D(
        f4, 3, padding="same", activation="relu", kernel_initializer=_INIT, name="conv4"
    )(x)
    x = keras.layers.Conv2D(
        f5, 3, padding="same", activation="relu", kernel_initializer=_INIT, name="conv5"
    )(x)
    x = keras.layers.MaxPooling2D(3, 2, padding=pool_padding, name="pool5")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(hidden, activation="relu", kernel_initializer=_INIT, name="fc6")(x)
    x = keras.layers.Dropout(dropout, name="dropout6")(x)
    x = keras.layers.Dense(hidden, activation="relu", kernel_initializer=_INIT, name="fc7")(x)
    x = keras.layers.Dropout(dropout, name="dropout7")(x)
    return keras.layers.Dense(num_classes, name="logits")(x)


def paper_imagenet(
    input_shape: tuple[int, int, int] = (224, 224, 3),
    num_classes: int = 1000,
    *,
    dropout: float = 0.5,
    width: float = 1.0,
    lrn: bool = True,
    name: str = "paper_imagenet",
) -> keras.Model:
    """Krizhevsky et al. 2012's ImageNet net, single tower, as trained by Paine et al. 2013.

    conv1 96 11x11 stride 4, LRN, max pool 3x3/2; conv2 256 5x5, LRN, max
    pool; conv3 384, conv4 384, conv5 256 (3x3); max pool; fc6 4096, dropout,
    fc7 4096, dropout, logits. conv1 rounds up as cuda-convnet does (the image
    is zero-padded at the bottom/right only as far as the last window needs:
    3 pixels for 224, none for 227), so both 224x224 and 227x227 inputs give
    conv1 55x55 and pool5 6x6x256. The other convolutions keep their size
    (padding 2 and 1) and the pools are unpadded: 55 -> 27 -> 13 -> 6.

    Args:
      input_shape: (height, width, channels); at least 64x64.
      num_classes: Number of logits.
      dropout: Dropout rate after fc6 and fc7 (0.5 in the paper).
      width: Multiplies every filter and hidden-unit count (rounded, >= 1).
      lrn: Local response normalisation after conv1 and conv2.
      name: Model name.

    Returns:
      A Keras functional model returning logits; 62,378,344 parameters at
      width 1 with 1000 classes (any input that gives a 6x6 pool5).

    Raises:
      ValueError: The input is too small to leave a non-empty pool5.
    """
    height, width_px = input_shape[0], input_shape[1]
    pads, sizes = [], []
    for size in (height, width_px):
        out = ceil_mode_size(size, 11, 4)
        pads.append(max(0, (out - 1) * 4 + 11 - size))
        for _ in range(3):  # pool1, pool2, pool5; conv2..conv5 keep the size.
            out = (out - 3) // 2 + 1
        sizes.append(out)
    if min(sizes) < 1:
        raise ValueError(
            f"paper_imagenet needs inputs of at least 64x64, got {input_shape}; "
            "use paper_imagenet_small for small images"
        )
    inputs = keras.Input(shape=input_shape, name="image")
    # Explicit padding rather than "same": "same" would pad 224 to 56x56 (and
    # 227 to 57x57) and put pixels on the top/left that cuda-convnet never saw.
    x = keras.layers.ZeroPadding2D(((0, pads[0]), (0, pads[1])), name="pad1")(inputs)
    outputs = _alexnet(
        x,
        num_classes,
        dropout=dropout,
        width=width,
        lrn=lrn,
        conv1_kernel=11,
        conv1_stride=4,
        conv1_padding="valid",
        pool_padding="valid",
    )
    return keras.Model(inputs, outputs, name=name)


def paper_imagenet_small(
    input_shape: tuple[int, int, int] = (32, 32, 3),
    num_classes: int = 10,
    *,
    dropout: float = 0.5,
    width: float = 0.25,
    lrn: bool = True,
    name: str = "paper_imagenet_small",
) -> keras.Model:
    """``paper_imagenet`` scaled down in width and resolution for small images.

    The same layers in the same order (five convs, LRN after conv1 and conv2,
    three 3x3/2 max pools, two dense layers with dropout, logits), with two
    changes so that 8x8 to 64x64 inputs train: conv1 is 5x5 with stride 1 and
    "same" padding instead of 11x11 with stride 4 (which would leave nothing
    of an 8x8 image), and the pools are "same"-padded, so each halves the size
    rounding up and never reaches zero: 8 -> 4 -> 2 -> 1, 28 -> 14 -> 7 -> 4,
    32 -> 16 -> 8 -> 4, 64 -> 32 -> 16 -> 8. The default width 0.25 gives
    filters 24/64/96/96/64 and fc6/fc7 of 1024 units (1.36M parameters on
    8x8x1, 2.34M on 32x32x3 with 10 classes). This variant is not in either
    paper: it stands in for the ImageNet net where ImageNet training does not
    fit.

    Args:
      input_shape: (height, width, channels) of the images.
      num_classes: Number of logits.
      dropout: Dropout rate after fc6 and fc7.
      width: Multiplies the full net's filter and hidden-unit counts (rounded, >= 1).
      lrn: Local response normalisation after conv1 and conv2.
      name: Model name.

    Returns:
      A Keras functional model returning logits.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    outputs = _alexnet(
        inputs,
        num_classes,
        dropout=dropout,
        width=width,
        lrn=lrn,
        conv1_kernel=5,
        conv1_stride=1,
        conv1_padding="same",
        pool_padding="same",
    )
    return keras.Model(inputs, outputs, name=name)
