"""The image geometry of the augmentation, without TensorFlow (configs check it up front)."""

from __future__ import annotations

from collections.abc import Sequence


def check_args(resize: int, pad: int, crop: int) -> None:
    for name, value in (("resize", resize), ("pad", pad), ("crop", crop)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def output_shape(
    image_shape: Sequence[int | None], *, resize: int = 0, pad: int = 0, crop: int = 0
) -> tuple[int, int, int]:
    """The (height, width, channels) the transforms give, i.e. the model's input shape.

    Args:
      image_shape: The dataset's (height, width, channels); None for a size
        that varies between images (ImageNet).
      resize: As for ``train_transform``.
      pad: As for ``train_transform``.
      crop: As for ``train_transform``.

    Raises:
      ValueError: The shape would not be one fixed size (crop 0 with resize
        or with images of varying size), the window would not fit inside
        every padded image, or the channels are unknown.
    """
    check_args(resize, pad, crop)
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (height, width, channels), got {image_shape}")
    height, width, channels = image_shape
    if channels is None:
        raise ValueError(f"the number of channels is unknown in image_shape {image_shape}")
    if not crop:
        if resize:
            raise ValueError(
                f"resize={resize} needs a crop size (crop > 0): resizing the shorter side "
                "keeps the aspect ratio, so the images would still differ in size"
            )
        if height is None or width is None:
            raise ValueError(
                f"crop=0 keeps each image's own size, which varies for image_shape "
                f"{tuple(image_shape)}; set resize and crop (e.g. 256 and 224 for ImageNet)"
            )
        return height, width, channels
    if resize:
        # After resizing the shorter side is exactly `resize`, whatever the original size.
        smallest = resize + 2 * pad
    elif height is None or width is None:
        raise ValueError(
            f"a {crop}x{crop} crop may not fit images of varying size {tuple(image_shape)}; "
            "set resize so that every image's shorter side is known"
        )
    else:
        smallest = min(height, width) + 2 * pad
    if crop > smallest:
        raise ValueError(
            f"crop={crop} exceeds the padded image's shorter side {smallest} "
            f"(image_shape {tuple(image_shape)}, resize={resize}, pad={pad})"
        )
    return crop, crop, channels
