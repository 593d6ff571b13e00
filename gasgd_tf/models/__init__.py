"""Keras model builders, by name (see ``registry.MODELS``)."""

from gasgd_tf.models.registry import MODELS, build_model

__all__ = ["MODELS", "build_model"]
