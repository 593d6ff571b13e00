"""A small ReLU/dropout CNN for 8x8 (or larger) digit images, fast on CPU."""

from __future__ import annotations

import keras

from gasgd_tf.models.layers import LocalResponseNormalization, scaled


def digits_cnn(
    input_shape: tuple[int, int, int] = (8, 8, 1),
    num_classes: int = 10,
    *,
    dropout: float = 0.25,
    width: float = 1.0,
    lrn: bool = False,
    name: str = "digits_cnn",
) -> keras.Model:
    """Two 3x3 conv layers (32, 64), 2x2 max pooling, dropout, dense 128, logits.

    Args:
      input_shape: (height, width, channels) of the images.
      num_classes: Number of logits.
      dropout: Dropout rate before each dense layer.
      width: Multiplies the filter and hidden-unit counts 32/64/128 (rounded, >= 1).
      lrn: AlexNet's local response normalisation after each conv layer
        (no parameters; off by default).
      name: Model name.

    Returns:
      A Keras functional model returning logits (151,306 parameters on 8x8x1
      with 10 classes at width 1).
    """
    filters1, filters2, hidden = scaled(32, width), scaled(64, width), scaled(128, width)
    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Conv2D(filters1, 3, padding="same", activation="relu", name="conv1")(inputs)
    if lrn:
        x = LocalResponseNormalization(name="lrn1")(x)
    x = keras.layers.Conv2D(filters2, 3, padding="same", activation="relu", name="conv2")(x)
    if lrn:
        x = LocalResponseNormalization(name="lrn2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(dropout, name="dropout1")(x)
    x = keras.layers.Dense(hidden, activation="relu", name="fc1")(x)
    x = keras.layers.Dropout(dropout, name="dropout2")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)
