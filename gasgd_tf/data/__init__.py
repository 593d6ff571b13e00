"""Datasets: tfds builders (some that ship offline), input pipelines, the registry.

``gasgd_tf.data.registry`` is light; ``gasgd_tf.data.pipeline`` imports TensorFlow.
"""
