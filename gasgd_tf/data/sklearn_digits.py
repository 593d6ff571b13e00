"""A tensorflow-datasets builder for scikit-learn's bundled handwritten digits.

The data (1,797 real 8x8 grey images of the digits 0-9, from the UCI optical
recognition set) ships inside the installed scikit-learn package, so this
dataset builds with no network. It goes through tfds like every other
dataset: ``tfds.load("sklearn_digits", data_dir=...)`` after importing this
module. The split is fixed: a stratified 80/20 train/test split with seed 0
(1,438 train and 359 test images).
"""

import numpy as np
import tensorflow_datasets as tfds

from gasgd_tf.data.bundled import image_features, stratified_split

TEST_FRACTION = 0.2
SPLIT_SEED = 0


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's handwritten digits as 8x8x1 uint8 images."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Stratified 80/20 split with seed 0."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=image_features((8, 8, 1), num_classes=10),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        return {split: self._generate_examples(split) for split in ("train", "test")}

    def _generate_examples(self, split):
        from sklearn.datasets import load_digits  # Reads the file bundled with sklearn.

        digits = load_digits()
        # Pixel values are 0..16; spread them over 0..255 like other image data.
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        for i in stratified_split(digits.target, TEST_FRACTION, SPLIT_SEED)[split]:
            yield int(i), {"image": images[i], "label": int(digits.target[i])}
