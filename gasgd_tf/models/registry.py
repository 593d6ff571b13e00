"""Model builders by name, imported lazily so that configs can be checked without TensorFlow."""

from __future__ import annotations

import importlib
from typing import Any

# name -> "module:function"; each function takes (input_shape, num_classes,
# **model config) and returns an unbuilt-weights-free keras.Model.
MODELS: dict[str, str] = {
    "digits_cnn": "gasgd_tf.models.digits_cnn:digits_cnn",
}


def build_model(name: str, input_shape, num_classes: int, **kwargs: Any):
    """Builds the named Keras model.

    Raises:
      ValueError: Unknown name.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    module, function = MODELS[name].split(":")
    return getattr(importlib.import_module(module), function)(input_shape, num_classes, **kwargs)
