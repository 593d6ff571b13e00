"""The TensorFlow side of a replica: its variables as one flat buffer, and its gradient sums.

Shared by the command-line worker, the Keras callback and the evaluator;
``gasgd_tf.replica`` (TF-free) talks to the model through these.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import tensorflow as tf

from gasgd_tf.tensors import TensorSpec


class VariableSync:
    """Moves a list of variables to and from one flat float32 buffer.

    The tensor names are the Keras variable paths, so every replica of a
    model has the same signature.
    """

    def __init__(self, variables: list[tf.Variable]):
        self.variables = list(variables)
        self.specs = tuple(TensorSpec(v.path, tuple(v.shape), "float32") for v in self.variables)
        self._sizes = [int(np.prod(v.shape)) for v in self.variables]
        size = sum(self._sizes)

        @tf.function(input_signature=[tf.TensorSpec([size], tf.float32)])
        def assign(flat):
            for v, part in zip(self.variables, tf.split(flat, self._sizes)):
                v.assign(tf.reshape(part, v.shape))

        @tf.function
        def read():
            return tf.concat([tf.reshape(v, [-1]) for v in self.variables], axis=0)

        self._assign = assign
        self._read = read

    def read(self) -> np.ndarray:
        return self._read().numpy()

    def assign(self, flat: np.ndarray) -> None:
        self._assign(flat)


class GradientSums:
    """A float32 sum per variable of the gradients since the last ``take``.

    ``add`` runs inside a compiled step (a few ``assign_add`` ops in the same
    graph, no host round trip per step); ``take`` returns the sums as one
    flat buffer, in the variables' order, and resets them.
    """

    def __init__(self, variables: list[tf.Variable]):
        self.sums = [tf.Variable(tf.zeros(v.shape, tf.float32), trainable=False) for v in variables]
        sums = self.sums

        @tf.function
        def take():
            flat = tf.concat([tf.reshape(a, [-1]) for a in sums], axis=0)
            with tf.control_dependencies([flat]):
                for a in sums:
                    a.assign(tf.zeros_like(a))
            return flat

        self._take = take

    def add(self, index: int, grad: tf.Tensor | tf.IndexedSlices, scale=None) -> None:
        """Adds ``grad`` (divided by ``scale`` when given) to variable ``index``'s sum.

        An ``IndexedSlices`` gradient (an embedding's) adds its rows only.
        """
        if isinstance(grad, tf.IndexedSlices):
            values = tf.cast(grad.values, tf.float32)
            if scale is not None:
                values = values / scale
            self.sums[index].scatter_add(tf.IndexedSlices(values, grad.indices, grad.dense_shape))
            return
        grad = tf.cast(grad, tf.float32)
        if scale is not None:
            grad = grad / scale
        self.sums[index].assign_add(grad)

    def add_all(self, grads: Iterable[tf.Tensor]) -> None:
        """Adds one gradient per variable, in order."""
        for i, grad in enumerate(grads):
            self.add(i, grad)

    def take(self) -> np.ndarray:
        """The sums since the last call, flat; resets them."""
        return self._take().numpy()
