"""cuda-convnet's example CIFAR-10 nets (Krizhevsky 2011), as used by Paine et al. 2013.

From the ``example-layers`` files of Alex Krizhevsky's cuda-convnet:
``layers-18pct.cfg`` (about 18% test error, 20 minutes on a GPU) and
``layers-80sec.cfg`` (about 26% error in 80 seconds). Every convolution is 5x5
with padding 2, so it keeps the size; every pool is 3x3 with stride 2.

Known deviations from the originals:

* Pools are Keras "same" pools. cuda-convnet rounds the output size up with
  the overhang at the bottom/right, which gives the same windows for even
  sizes (32 -> 16 -> 8 -> 4, 24 -> 12 -> 6 -> 3); for odd sizes Keras pads
  both sides and may give one more output. At the bottom/right edge Keras
  averages over the in-image pixels, cuda-convnet divides by all 9.
* Keras' default initialisers (Glorot-uniform weights, zero biases) instead of
  N(0, initW) with initW = 1e-4 for conv1 and 0.01 or 0.1 elsewhere.
* The layer-params files' per-layer learning rates, momenta and weight decay
  (``wc=0.004`` on the convs, ``wc=1`` on the last layer of 18pct) belong to
  the optimizer config here and are not reproduced by the model.
* `dropout` > 0 and `width` != 1 are additions; the originals have neither.
"""

from __future__ import annotations

import keras

from gasgd_tf.models.layers import SpatialResponseNormalization, scaled


def _rnorm(name: str) -> keras.layers.Layer:
    # ``[rnorm1]``/``[rnorm2]`` of layers-18pct.cfg: type=rnorm (within each
    # map, not across maps), size=3; layer-params-18pct.cfg: scale=0.00005,
    # pow=.75. cuda-convnet divides scale by size**2 and adds 1.
    return SpatialResponseNormalization(size=3, bias=1.0, alpha=0.00005 / 9, beta=0.75, name=name)


def _cifar_net(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    dropout: float,
    width: float,
    lrn: bool,
    hidden: int | None,
    name: str,
) -> keras.Model:
    """conv/max pool/ReLU, conv/avg pool, conv/avg pool, [dense `hidden`], logits."""
    inputs = keras.Input(shape=input_shape, name="image")
    # conv1 is linear: cuda-convnet applies its ReLU after the max pool (the
    # pool's neuron=relu), which gives the same values for less work.
    x = keras.layers.Conv2D(scaled(32, width), 5, padding="same", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(3, 2, padding="same", name="pool1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    if lrn:
        x = _rnorm("rnorm1")(x)
    x = keras.layers.Conv2D(scaled(32, width), 5, padding="same", activation="relu", name="conv2")(
        x
    )
    x = keras.layers.AveragePooling2D(3, 2, padding="same", name="pool2")(x)
    if lrn:
        x = _rnorm("rnorm2")(x)
    x = keras.layers.Conv2D(scaled(64, width), 5, padding="same", activation="relu", name="conv3")(
        x
    )
    x = keras.layers.AveragePooling2D(3, 2, padding="same", name="pool3")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    if hidden is not None:
        x = keras.layers.Dense(scaled(hidden, width), activation="relu", name="fc1")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def cifar10_18pct(
    input_shape: tuple[int, int, int] = (32, 32, 3),
    num_classes: int = 10,
    *,
    dropout: float = 0.0,
    width: float = 1.0,
    lrn: bool = True,
    name: str = "cifar10_18pct",
) -> keras.Model:
    """cuda-convnet's ``layers-18pct.cfg``: about 18% test error on CIFAR-10.

    conv1 32 5x5, max pool 3x3/2, ReLU, rnorm; conv2 32 5x5 ReLU, avg pool
    3x3/2, rnorm; conv3 64 5x5 ReLU, avg pool 3x3/2; logits. The two "rnorm"
    layers normalise each map over a 3x3 neighbourhood (cuda-convnet's
    ``type=rnorm``, not AlexNet's across-maps LRN). 89,578 parameters on
    32x32x3 (4x4x64 into the logits), 85,098 on 24x24 crops.

    Args:
      input_shape: (height, width, channels) of the images.
      num_classes: Number of logits.
      dropout: Dropout rate before the logits (0: no dropout layer, as in the original).
      width: Multiplies the filter counts (rounded, >= 1).
      lrn: The two response-normalisation layers (on in the original).
      name: Model name.

    Returns:
      A Keras functional model returning logits.
    """
    return _cifar_net(
        input_shape, num_classes, dropout=dropout, width=width, lrn=lrn, hidden=None, name=name
    )


def cifar10_80sec(
    input_shape: tuple[int, int, int] = (32, 32, 3),
    num_classes: int = 10,
    *,
    dropout: float = 0.0,
    width: float = 1.0,
    lrn: bool = False,
    name: str = "cifar10_80sec",
) -> keras.Model:
    """cuda-convnet's ``layers-80sec.cfg``: about 26% error on CIFAR-10 after 80 s on a GPU.

    conv1 32 5x5, max pool 3x3/2, ReLU; conv2 32 5x5 ReLU, avg pool 3x3/2;
    conv3 64 5x5 ReLU, avg pool 3x3/2; dense 64 ReLU; logits. 145,578
    parameters on 32x32x3.

    Args:
      input_shape: (height, width, channels) of the images.
      num_classes: Number of logits.
      dropout: Dropout rate before the logits (0: no dropout layer, as in the original).
      width: Multiplies the filter and hidden-unit counts (rounded, >= 1).
      lrn: Adds 18pct's two response-normalisation layers (not in the original).
      name: Model name.

    Returns:
      A Keras functional model returning logits.
    """
    return _cifar_net(
        input_shape, num_classes, dropout=dropout, width=width, lrn=lrn, hidden=64, name=name
    )
