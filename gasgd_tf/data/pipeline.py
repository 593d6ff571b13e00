"""tf.data input pipelines over tensorflow-datasets, one per worker and one for evaluation."""

from __future__ import annotations

import importlib

import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds

from gasgd_tf.data.registry import DATASETS, DatasetInfo


def dataset_info(data_config: ml_collections.ConfigDict) -> DatasetInfo:
    return DATASETS[data_config.name]


def _builder(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    info = dataset_info(data_config)
    if info.builder_module:
        importlib.import_module(info.builder_module)  # Registers the builder with tfds.
    return tfds.builder(info.tfds_name, data_dir=data_config.data_dir)


def prepare(data_config: ml_collections.ConfigDict) -> None:
    """Builds the dataset in its data_dir if needed (once, before workers start).

    For datasets that need a download (mnist, cifar10) this downloads them;
    ``sklearn_digits`` builds from the copy inside scikit-learn, offline.
    """
    builder = _builder(data_config)
    if not builder.is_prepared():
        tfds.disable_progress_bar()  # Progress bars garble the logs of a background run.
        builder.download_and_prepare()


def _normalize(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cast(image, tf.float32) / 255.0, label


def train_dataset(
    data_config: ml_collections.ConfigDict, batch_size: int, seed: int
) -> tf.data.Dataset:
    """An endless, shuffled stream of (images in [0, 1], labels) batches.

    Each worker passes its own ``seed``, so workers see the data in
    different orders, as the paper's clients did.
    """
    ds = _builder(data_config).as_dataset(split="train", as_supervised=True, shuffle_files=False)
    return (
        ds.cache()
        .repeat()
        .shuffle(data_config.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        .map(_normalize, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def eval_dataset(data_config: ml_collections.ConfigDict, batch_size: int) -> tf.data.Dataset:
    """The whole test split, in order, in batches (the last one may be smaller)."""
    ds = _builder(data_config).as_dataset(split="test", as_supervised=True, shuffle_files=False)
    return ds.map(_normalize).batch(batch_size).cache().prefetch(tf.data.AUTOTUNE)
