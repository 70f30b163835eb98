"""Write labelled images as an ultralytics (YOLO) dataset folder with a data yaml."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from formats.yolo import format_yolo_labels
from selection.detections import Detections

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LabeledImage:
    """One image file with its boxes.

    Attributes:
        path: the image file (any format ultralytics reads; grayscale PNG is fine).
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


def _trainable(labels: Detections, width: int, height: int) -> Detections:
    """Unscored boxes clipped to the image, without those of zero width or height (YOLO cannot learn them)."""
    clipped = labels.clip(width, height)
    wh = clipped.xyxy[:, 2:] - clipped.xyxy[:, :2]
    keep = (wh[:, 0] > 0) & (wh[:, 1] > 0)
    if not np.all(keep):
        logger.debug("dropped %d zero-size boxes", int((~keep).sum()))
    return Detections(xyxy=clipped.xyxy[keep], class_id=clipped.class_id[keep])


def _link_or_copy(src: Path, dst: Path) -> None:
    src = src.resolve()
    try:
        os.symlink(os.path.relpath(src, dst.parent), dst)
    except OSError as err:  # e.g. a filesystem without symlinks
        logger.debug("symlink %s -> %s failed (%s); copying", dst, src, err)
        shutil.copy2(src, dst)


def _write_split(root: Path, split: str, images: Sequence[LabeledImage], num_classes: int) -> None:
    image_dir = root / "images" / split
    label_dir = root / "labels" / split
    for folder in (image_dir, label_dir):
        if folder.is_symlink() or folder.is_file():
            folder.unlink()
        elif folder.exists():
            shutil.rmtree(folder)  # stale files from an earlier write would join the split
        folder.mkdir(parents=True)
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
        _link_or_copy(item.path, image_dir / f"{stem}{item.path.suffix.lower()}")
        labels = _trainable(item.labels, item.width, item.height)
        (label_dir / f"{stem}.txt").write_text(format_yolo_labels(labels, item.width, item.height))


def write_yolo_dataset(
    root: Path | str,
    train: Sequence[LabeledImage],
    val: Sequence[LabeledImage],
    names: Sequence[str],
    test: Sequence[LabeledImage] | None = None,
) -> Path:
    """Write an ultralytics dataset: ``images/<split>/`` symlinks, ``labels/<split>/*.txt``, ``data.yaml``.

    Images are relative symlinks to the originals (copies where symlinks fail), named
    ``<index>_<stem><suffix>`` so that equal file names from different folders do not collide. Images without
    boxes get an empty label file (background images). Re-writing a root replaces its splits and removes
    ultralytics' stale ``labels/*.cache``.

    Args:
        root: the dataset folder (created if missing).
        train: training images.
        val: validation images (ultralytics needs at least one).
        names: class names, index = class id.
        test: optional test images.

    Returns:
        Absolute path of ``root/data.yaml`` (its ``path:`` is the absolute root).

    Raises:
        ValueError: empty ``train``/``val``/``names``, or a class id outside ``names``.
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
    for split, images in splits.items():
        _write_split(root, split, images, len(names))
    data = {
        "path": str(root),
        **{split: f"images/{split}" for split in splits},
        "names": dict(enumerate(names)),
    }
    data_yaml = root / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
    logger.info("wrote YOLO dataset %s (%s)", root, ", ".join(f"{s}={len(v)}" for s, v in splits.items()))
    return data_yaml
