"""The datasets a config can name, without importing TensorFlow."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """A tfds dataset of labelled images.

    Attributes:
      tfds_name: Name for ``tfds.builder``.
      image_shape: (height, width, channels).
      num_classes: Number of labels.
      builder_module: Module that defines the builder, for datasets of ours;
        importing it registers the builder with tfds.
      offline: Whether it builds with no network (ships with an installed package).
    """

    tfds_name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    builder_module: str | None = None
    offline: bool = False


DATASETS: dict[str, DatasetInfo] = {
    # scikit-learn's bundled handwritten digits: 1,797 real 8x8 images.
    "sklearn_digits": DatasetInfo(
        "sklearn_digits", (8, 8, 1), 10, builder_module="gasgd_tf.data.sklearn_digits", offline=True
    ),
    # Downloaded by tfds into the user's data_dir on first use.
    "mnist": DatasetInfo("mnist", (28, 28, 1), 10),
    "cifar10": DatasetInfo("cifar10", (32, 32, 3), 10),
}
