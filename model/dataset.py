"""Write labelled images as an ultralytics (YOLO) dataset folder with a data yaml.

ultralytics reads the dataset's image files itself, with its own conversion (a 16-bit image keeps its high
byte: 12-bit data becomes nearly black), and silently skips a file whose suffix is not one of its image
formats (``.pgm``, ``.gif``, ``.jfif``, no suffix). So that training sees exactly the pixels prediction sees,
an image is linked only when it is a PNG, JPEG, BMP or WebP by name and ``formats.images`` decodes it to 8-bit
pixels the normalisation leaves unchanged (what ultralytics reads from it too); any other image (16-bit,
float, every TIFF, any other suffix, every image under the ``percentile`` mode) is written as an 8-bit PNG of
``formats.images.normalize_image``. :func:`links_unchanged` is that rule and :func:`write_normalized_png` that
file, shared with ``python -m backend.export``'s YOLO layout.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from formats.images import ImageNormalization, normalize_image, read_image
from formats.yolo import format_yolo_labels
from selection.detections import Detections

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LabeledImage:
    """One image file with its boxes.

    Attributes:
        path: the image file (any depth and format ``formats.images.read_image`` decodes: PNG, TIFF, JPEG...).
        labels: boxes in pixels of this image (scores, if any, are ignored).
        width: image width in pixels.
        height: image height in pixels.
    """

    path: Path
    labels: Detections
    width: int
    height: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if not isinstance(self.labels, Detections):
            raise TypeError(f"labels: expected Detections, got {type(self.labels).__name__}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
                raise ValueError(f"{name}: expected a positive integer number of pixels, got {value!r}")
            object.__setattr__(self, name, int(value))


def epoch_repeats(n_images: int, epoch_images: int) -> int:
    """How many times each of ``n_images`` training images appears per epoch so that an epoch holds about
    ``epoch_images`` images (``TRAIN_EPOCH_IMAGES``; the benchmark's matched-steps fine-tunes use this rule).

    A few expert images fine-tuned for a set number of epochs take few gradient steps; repeating them gives a
    fine-tune as many steps as a training on the full set. ``epoch_images`` 0 (or no larger than
    ``n_images``) means no repetition.

    >>> epoch_repeats(24, 240), epoch_repeats(24, 0), epoch_repeats(300, 240), epoch_repeats(70, 240)
    (10, 1, 1, 3)

    Raises:
        ValueError: a negative count.
    """
    if n_images < 0 or epoch_images < 0:
        raise ValueError(f"expected counts >= 0, got n_images={n_images}, epoch_images={epoch_images}")
    if n_images == 0 or epoch_images <= n_images:
        return 1
    return max(1, round(epoch_images / n_images))


def _trainable(labels: Detections, width: int, height: int) -> Detections:
    """Unscored boxes clipped to the image, without those of zero width or height (YOLO cannot learn them)."""
    clipped = labels.clip(width, height)
    wh = clipped.xyxy[:, 2:] - clipped.xyxy[:, :2]
    keep = (wh[:, 0] > 0) & (wh[:, 1] > 0)
    if not np.all(keep):
        logger.debug("dropped %d zero-size boxes", int((~keep).sum()))
    return Detections(xyxy=clipped.xyxy[keep], class_id=clipped.class_id[keep])


# Suffixes an image may be linked under: among ultralytics' image formats (ultralytics.data.utils.IMG_FORMATS)
# and read by it with OpenCV as formats.images decodes them. Every other file is written as a PNG: ultralytics
# skips unknown suffixes without a word (.pgm, .gif, .jfif, none), reads multi-page, multi-band and oriented
# TIFFs by its own rules, and HEIF/AVIF through Pillow.
_LINKED_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})


def links_unchanged(suffix: str, dtype: np.dtype[Any] | type, normalization: ImageNormalization) -> bool:
    """Whether ultralytics, reading an image file as it is, gets the pixels prediction gets from it.

    True for a PNG, JPEG, BMP or WebP (by ``suffix``) that ``formats.images`` decodes to uint8 when
    ``normalization`` leaves 8-bit pixels unchanged; such a file may be linked or copied. Any other image must
    be written as :func:`write_normalized_png` of its normalised pixels.

    >>> from formats.images import Normalize
    >>> auto = ImageNormalization()
    >>> links_unchanged(".PNG", np.uint8, auto), links_unchanged(".png", np.uint16, auto)
    (True, False)
    >>> links_unchanged(".tif", np.uint8, auto)  # ultralytics reads TIFF by its own rules
    False
    >>> links_unchanged(".jpg", np.uint8, ImageNormalization(Normalize.PERCENTILE))  # 8-bit stretched too
    False

    Args:
        suffix: the file's suffix (any case).
        dtype: the sample type the file decodes to (``formats.images.decode_image``).
        normalization: the normalisation prediction uses.
    """
    return (
        suffix.lower() in _LINKED_SUFFIXES
        and np.dtype(dtype) == np.uint8
        and not normalization.stretches(np.uint8)
    )


def write_normalized_png(rgb: np.ndarray, stem: Path, *, gray: bool) -> Path:
    """Write normalised pixels as the 8-bit PNG ``<stem>.png``, which ultralytics reads back exactly.

    Args:
        rgb: uint8 (H, W, 3) RGB, as ``formats.images.normalize_image`` returns it.
        stem: the file path without its suffix.
        gray: the image decoded to one channel: written as a gray PNG (ultralytics replicates it to three).

    Returns:
        The file written.

    Raises:
        OSError: the file cannot be written.
    """
    import cv2

    out = rgb[:, :, 0] if gray else rgb[:, :, ::-1]  # cv2 writes BGR
    dst = stem.with_name(stem.name + ".png")
    if not cv2.imwrite(str(dst), out):
        raise OSError(f"cannot write {dst}")
    return dst


def _place_image(item: LabeledImage, dst_stem: Path, normalization: ImageNormalization) -> bool:
    """Link the image as ``dst_stem + suffix`` when ultralytics would read the pixels we would give it, else
    write the normalised 8-bit PNG ``dst_stem.png``; True when converted.

    Raises:
        ValueError: the file does not decode, or its size is not the item's ``width`` x ``height``.
    """
    src = item.path
    pixels = read_image(src)
    if pixels.shape[:2] != (item.height, item.width):
        raise ValueError(
            f"{src} is {pixels.shape[1]}x{pixels.shape[0]} pixels, but width x height say "
            f"{item.width}x{item.height} (the labels would be scaled wrongly)"
        )
    suffix = src.suffix.lower()
    if links_unchanged(suffix, pixels.dtype, normalization):
        dst = dst_stem.with_name(dst_stem.name + suffix)
        _link_or_copy(src, dst)
        return False
    write_normalized_png(normalize_image(pixels, normalization), dst_stem, gray=pixels.ndim == 2)
    return True


def _link_or_copy(src: Path, dst: Path) -> None:
    src = src.resolve()
    try:
        os.symlink(os.path.relpath(src, dst.parent), dst)
    except OSError as err:  # e.g. a filesystem without symlinks
        logger.debug("symlink %s -> %s failed (%s); copying", dst, src, err)
        shutil.copy2(src, dst)


def _write_split(
    root: Path,
    split: str,
    images: Sequence[LabeledImage],
    num_classes: int,
    normalization: ImageNormalization,
) -> int:
    """Write one split; returns how many images were converted rather than linked."""
    image_dir = root / "images" / split
    label_dir = root / "labels" / split
    for folder in (image_dir, label_dir):
        if folder.is_symlink() or folder.is_file():
            folder.unlink()
        elif folder.exists():
            shutil.rmtree(folder)  # stale files from an earlier write would join the split
        folder.mkdir(parents=True)
    converted = 0
    for index, item in enumerate(images):
        if not isinstance(item, LabeledImage):
            raise TypeError(f"{split}[{index}]: expected LabeledImage, got {type(item).__name__}")
        if not item.path.is_file():
            raise FileNotFoundError(f"{split}[{index}].path: no image file at {item.path}")
        if len(item.labels) and int(item.labels.class_id.max()) >= num_classes:
            raise ValueError(
                f"{split}[{index}].labels: class id {int(item.labels.class_id.max())} but only "
                f"{num_classes} names given"
            )
        # Image ids may repeat across source folders: the index prefix keeps the stems unique.
        stem = f"{index:06d}_{item.path.stem}"
        try:
            converted += _place_image(item, image_dir / stem, normalization)
        except ValueError as exc:
            raise ValueError(f"{split}[{index}].path: {exc}") from None
        labels = _trainable(item.labels, item.width, item.height)
        (label_dir / f"{stem}.txt").write_text(format_yolo_labels(labels, item.width, item.height))
    return converted


def write_yolo_dataset(
    root: Path | str,
    train: Sequence[LabeledImage],
    val: Sequence[LabeledImage],
    names: Sequence[str],
    test: Sequence[LabeledImage] | None = None,
    *,
    normalization: ImageNormalization | None = None,
) -> Path:
    """Write an ultralytics dataset: ``images/<split>/`` symlinks, ``labels/<split>/*.txt``, ``data.yaml``.

    Plain 8-bit PNG, JPEG, BMP and WebP images are relative symlinks to the originals (copies where symlinks
    fail); other images are 8-bit PNGs normalised with ``normalization`` (see the module docstring). Files
    are named ``<index>_<stem><suffix>`` so that equal file names from different folders do not collide.
    Images without boxes get an empty label file (background images). Re-writing a root replaces its splits
    and removes ultralytics' stale ``labels/*.cache``.

    Args:
        root: the dataset folder (created if missing).
        train: training images.
        val: validation images (ultralytics needs at least one).
        names: class names, index = class id.
        test: optional test images.
        normalization: how images become 8-bit; must be the one prediction will use (default:
            ``ImageNormalization()``, which links every 8-bit PNG/JPEG unchanged).

    Returns:
        Absolute path of ``root/data.yaml`` (its ``path:`` is the absolute root).

    Raises:
        ValueError: empty ``train``/``val``/``names``, a class id outside ``names``, or an image file that
            does not decode.
        FileNotFoundError: an image file is missing.
    """
    import yaml

    names = [str(n) for n in names]
    if not names:
        raise ValueError("names: expected at least one class name, got none")
    if not train:
        raise ValueError("train: expected at least one image, got none")
    if not val:
        raise ValueError("val: expected at least one image, got none (ultralytics validates on it)")
    normalization = normalization if normalization is not None else ImageNormalization()
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    splits: dict[str, Sequence[LabeledImage]] = {"train": train, "val": val}
    if test:
        splits["test"] = test
    for cache in (root / "labels").glob("*.cache"):
        cache.unlink()
    for split in SPLITS:
        if split not in splits:
            for sub in ("images", "labels"):
                if (root / sub / split).is_dir():
                    shutil.rmtree(root / sub / split)
    converted = 0
    for split, images in splits.items():
        converted += _write_split(root, split, images, len(names), normalization)
    data = {
        "path": str(root),
        **{split: f"images/{split}" for split in splits},
        "names": dict(enumerate(names)),
    }
    data_yaml = root / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
    logger.info(
        "wrote YOLO dataset %s (%s; %d images converted to 8-bit PNG, %s)",
        root,
        ", ".join(f"{s}={len(v)}" for s, v in splits.items()),
        converted,
        normalization.as_dict(),
    )
    return data_yaml
