"""Model builders by name, imported lazily so that configs can be checked without TensorFlow."""

from __future__ import annotations

import importlib
from typing import Any

# name -> "module:function". Each function is
#   fn(input_shape, num_classes, *, dropout, width=<its default>, lrn=<its default>, name=...)
# and returns a keras.Model (weights created) that outputs logits; `width`
# multiplies filter and hidden-unit counts, `lrn` switches the response
# normalisation where the model has it. Strings, so that configs can be
# checked without importing TensorFlow.
MODELS: dict[str, str] = {
    "digits_cnn": "gasgd_tf.models.digits_cnn:digits_cnn",
    # Paine et al. 2013's ImageNet net (Krizhevsky et al. 2012, single tower).
    "paper_imagenet": "gasgd_tf.models.paper_imagenet:paper_imagenet",
    # The same layers scaled for 8x8 to 64x64 images.
    "paper_imagenet_small": "gasgd_tf.models.paper_imagenet:paper_imagenet_small",
    # cuda-convnet's CIFAR-10 example nets (layers-18pct.cfg, layers-80sec.cfg).
    "cifar10_18pct": "gasgd_tf.models.cuda_convnet:cifar10_18pct",
    "cifar10_80sec": "gasgd_tf.models.cuda_convnet:cifar10_80sec",
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
