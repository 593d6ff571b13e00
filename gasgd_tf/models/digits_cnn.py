"""A small ReLU/dropout CNN for 8x8 (or larger) digit images, fast on CPU."""

from __future__ import annotations

import keras


def digits_cnn(
    input_shape: tuple[int, int, int] = (8, 8, 1),
    num_classes: int = 10,
    dropout: float = 0.25,
    name: str = "digits_cnn",
) -> keras.Model:
    """Two 3x3 conv layers (32, 64), 2x2 max pooling, dropout, dense 128, logits.

    Args:
      input_shape: (height, width, channels) of the images.
      num_classes: Number of logits.
      dropout: Dropout rate before each dense layer.
      name: Model name.

    Returns:
      A Keras functional model returning logits (about 150k parameters on 8x8).
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(dropout, name="dropout1")(x)
    x = keras.layers.Dense(128, activation="relu", name="fc1")(x)
    x = keras.layers.Dropout(dropout, name="dropout2")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)
