"""A lab's own dataset for the benchmark: images with an expert and a crowd label set, in COCO JSON.

Layout (``bench.simulate --data DIR``)::

    DIR/
      expert.json    COCO detection JSON: every image, the expert's boxes
      crowd.json     COCO detection JSON: the same images (matched by file_name), the crowd's boxes
      <images>       wherever the ``file_name`` fields point, relative to DIR (or absolute)

Both files use the same category names; category ids must be 1..K in ``expert.json`` (``formats.coco``).
An image entry of ``expert.json`` may carry ``"split": "train" | "val" | "test"``; when no image has one, each
seed draws its own split (``SPLIT_FRACTIONS``). The crowd's errors are named from the expert boxes
(``selection.calibration.expert_truth``), so the benchmark's "noisy image" and per-type figures work as on
simulated data.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from formats.coco import from_coco
from selection.calibration import expert_truth
from selection.detections import Detections

SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


@dataclass(frozen=True, eq=False)
class UserRecord:
    """One image of a user's dataset, with the fields the benchmark reads (as ``synth.ImageRecord``).

    Attributes:
        crowd_noise: str (M,) each crowd box's error type by the expert boxes (clean, localization,
            box_in_box, background).
        missed: int64 (K,) expert boxes no crowd box stands for.
    """

    id: str
    split: str
    path: Path
    width: int
    height: int
    expert: Detections
    crowd: Detections
    crowd_noise: np.ndarray = field(repr=False)
    missed: np.ndarray = field(repr=False)


def _unscored(dets: Detections) -> Detections:
    return Detections(dets.xyxy, dets.class_id)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a --data folder needs expert.json and crowd.json (COCO)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a COCO object with images, annotations and categories")
    return data


def _names(data: Mapping[str, Any], path: Path) -> list[str]:
    cats = sorted(data.get("categories", []), key=lambda c: int(c["id"]))
    if not cats:
        raise ValueError(f"{path}: expected at least one category")
    ids = [int(c["id"]) for c in cats]
    if ids != list(range(1, len(cats) + 1)):
        raise ValueError(f"{path}: expected category ids 1..{len(cats)}, got {ids}")
    return [str(c["name"]) for c in cats]


def load_user_dataset(root: Path | str, *, seed: int) -> tuple[list[UserRecord], list[str]]:
    """Read a user's dataset (layout in the module docstring).

    Args:
        root: the dataset folder.
        seed: draws the train/val/test split when the JSON gives none.

    Returns:
        The records (every image of ``expert.json``) and the class names.

    Raises:
        FileNotFoundError: a JSON file or an image is missing.
        ValueError: malformed JSON, mismatched images or categories, a bad split value, or a split without
            training, validation or test images.
    """
    root = Path(root)
    expert_json, crowd_json = _read(root / "expert.json"), _read(root / "crowd.json")
    names = _names(expert_json, root / "expert.json")
    crowd_names = _names(crowd_json, root / "crowd.json")
    if crowd_names != names:
        raise ValueError(f"crowd.json: expected the categories of expert.json {names}, got {crowd_names}")
    expert = from_coco(expert_json)
    crowd_by_file = {im.file_name: im for im in from_coco(crowd_json).values()}
    splits_given = {int(im["id"]): im.get("split") for im in expert_json["images"]}
    if any(v is not None for v in splits_given.values()):
        bad = {k: v for k, v in splits_given.items() if v not in SPLIT_FRACTIONS}
        if bad:
            image_id, value = next(iter(bad.items()))
            raise ValueError(
                f"expert.json: image {image_id} has split {value!r}; give every image one of "
                f"{list(SPLIT_FRACTIONS)} or none at all"
            )
        split_of = dict(splits_given)
    else:
        ids = sorted(expert)
        order = np.random.default_rng(seed).permutation(len(ids))
        n_train = round(SPLIT_FRACTIONS["train"] * len(ids))
        n_val = max(1, round(SPLIT_FRACTIONS["val"] * len(ids)))
        split_of = {}
        for rank, k in enumerate(order):
            split_of[ids[k]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    records = []
    for image_id, im in sorted(expert.items()):
        if im.file_name not in crowd_by_file:
            raise ValueError(f"crowd.json: no image with file_name {im.file_name!r} (it is in expert.json)")
        path = Path(im.file_name) if Path(im.file_name).is_absolute() else root / im.file_name
        if not path.is_file():
            raise FileNotFoundError(f"expert.json: image {image_id}: no file at {path}")
        crowd = _unscored(crowd_by_file[im.file_name].detections)
        truth = expert_truth(crowd, im.detections)
        records.append(
            UserRecord(
                id=str(image_id),
                split=str(split_of[image_id]),
                path=path.resolve(),
                width=im.width,
                height=im.height,
                expert=_unscored(im.detections),
                crowd=crowd,
                crowd_noise=truth.crowd_type,
                missed=np.flatnonzero(truth.missed).astype(np.int64),
            )
        )
    for split in SPLIT_FRACTIONS:
        if not any(r.split == split for r in records):
            raise ValueError(f"{root}: no {split} images (need train, val and test images)")
    return records, names
