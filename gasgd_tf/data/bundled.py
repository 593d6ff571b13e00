"""Shared parts of the tfds builders of real data bundled in installed packages.

``sklearn_digits`` and ``mnist5k`` both serve uint8 images with labels 0-9
under a fixed stratified train/test split, made here.
"""

import numpy as np
import tensorflow_datasets as tfds


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Fixed stratified train/test indices into ``labels``, sorted.

    Every class gives ``round(count * test_fraction)`` of its examples, drawn
    with ``np.random.default_rng(seed)``, to the test split; the rest are train.
    The same labels, fraction and seed always give the same split.
    """
    rng = np.random.default_rng(seed)
    test = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        test.extend(idx[: int(round(len(idx) * test_fraction))])
    test = np.sort(np.asarray(test, dtype=np.int64))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return {"train": train, "test": test}


def image_features(shape: tuple[int, int, int], num_classes: int) -> tfds.features.FeaturesDict:
    """The features of an image dataset: {"image": uint8 ``shape``, "label": ClassLabel}."""
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=shape, dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=num_classes),
        }
    )
