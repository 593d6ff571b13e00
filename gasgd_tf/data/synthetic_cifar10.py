"""A tensorflow-datasets builder of random images with CIFAR-10's shapes, for benchmarks.

32x32x3 uint8 images with uniform random pixels and labels 0-9, made from a
fixed seed: 4,096 train and 1,024 test images. Nothing can be learned from
them; they exist so that throughput benchmarks and GPU checks run CIFAR-10's
models through the real input pipeline (tfds, cache, shuffle, batch) with no
download. Like ``sklearn_digits`` it builds offline, in a second or two.
"""

import numpy as np
import tensorflow_datasets as tfds

SPLITS = {"train": (4096, 1), "test": (1024, 2)}  # split: (examples, seed)
SHAPE = (32, 32, 3)


class SyntheticCifar10(tfds.core.GeneratorBasedBuilder):
    """Random 32x32x3 uint8 images with random labels 0-9."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "4,096 train and 1,024 test images, seeds 1 and 2."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split):
        count, seed = SPLITS[split]
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, size=(count, *SHAPE), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count)
        for i in range(count):
            yield i, {"image": images[i], "label": int(labels[i])}
