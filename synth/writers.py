"""Write a simulated dataset to disk: manifest, PNGs, YOLO, COCO and Label Studio views.

``synth.dataset.SynthDataset.write`` calls ``write_dataset``; this module reads the dataset only through
``synth.records.DatasetView`` and never imports ``synth.dataset``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from formats.coco import CocoImage, to_coco
from formats.labelstudio import detections_to_crowd_labels, detections_to_regions
from formats.yolo import write_yolo_labels
from synth.records import MANIFEST, NAMES, SPLITS, DatasetView, ImageRecord

LABEL_SETS: tuple[str, ...] = ("expert", "crowd")
FROM_NAME = "label"
"""The RectangleLabels control's name in ``LABEL_CONFIG_XML``."""
TO_NAME = "image"
"""The Image object's name in ``LABEL_CONFIG_XML`` (it reads the task field of the same name)."""
LABEL_CONFIG_XML = f"""<View>
  <Image name="{TO_NAME}" value="${TO_NAME}" zoom="true"/>
  <RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}">
    <Label value="{NAMES[0]}" background="#e6194b"/>
  </RectangleLabels>
</View>
"""


def _labels(record: ImageRecord, label_set: str):
    return record.expert if label_set == "expert" else record.crowd


def write_manifest(dataset: DatasetView, root: Path) -> Path:
    """``root/manifest.json`` (byte-identical for the same dataset)."""
    path = root / MANIFEST
    path.write_text(json.dumps(dataset.manifest(), indent=1, sort_keys=True) + "\n")
    return path


def write_images(dataset: DatasetView, root: Path) -> None:
    """``root/images/<split>/<id>.png`` grayscale PNGs (rendered from the seed when not held)."""
    for record in dataset.images:
        path = root / "images" / record.split / f"{record.id}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(dataset.pixels(record)), mode="L").save(path)


def write_yolo(dataset: DatasetView, root: Path) -> dict[str, Path]:
    """``root/yolo/<set>/{images,labels}/<split>/`` and ``root/yolo/<set>.yaml`` for expert and crowd."""
    yamls = {}
    for label_set in LABEL_SETS:
        base = root / "yolo" / label_set
        for record in dataset.images:
            link = base / "images" / record.split / f"{record.id}.png"
            link.parent.mkdir(parents=True, exist_ok=True)
            target = root / "images" / record.split / f"{record.id}.png"
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(os.path.relpath(target, link.parent))
            write_yolo_labels(
                base / "labels" / record.split / f"{record.id}.txt",
                _labels(record, label_set),
                record.width,
                record.height,
            )
        lines = [f"path: {base.resolve()}"]
        lines += [f"{split}: images/{split}" for split in SPLITS]
        lines.append("names:")
        lines += [f"  {i}: {name}" for i, name in enumerate(NAMES)]
        yaml_path = root / "yolo" / f"{label_set}.yaml"
        yaml_path.write_text("\n".join(lines) + "\n")
        yamls[label_set] = yaml_path
    return yamls


def write_coco(dataset: DatasetView, root: Path) -> None:
    """``root/coco/{expert,crowd}_<split>.json``; image ids are the integer image ids (stable)."""
    (root / "coco").mkdir(parents=True, exist_ok=True)
    for label_set in LABEL_SETS:
        for split in SPLITS:
            images = []
            for record in dataset.split(split):
                extra = None
                if label_set == "crowd":
                    extra = tuple(
                        {"noise": str(n), "annotator": int(a), "match": int(m)}
                        for n, a, m in zip(
                            record.crowd_noise, record.crowd_annotator, record.crowd_match, strict=True
                        )
                    )
                images.append(
                    CocoImage(
                        id=int(record.id),
                        file_name=f"images/{split}/{record.id}.png",
                        width=record.width,
                        height=record.height,
                        detections=_labels(record, label_set),
                        extra=extra,
                    )
                )
            coco = to_coco(images, categories=NAMES)
            (root / "coco" / f"{label_set}_{split}.json").write_text(json.dumps(coco, indent=1) + "\n")


def label_studio_tasks(
    dataset: DatasetView, root: Path, *, document_root: Path, splits: Sequence[str] = ("train",)
) -> list[dict[str, Any]]:
    """Label Studio import tasks (see docs/CONTRACTS.md), one per image of ``splits``.

    Args:
        dataset: the dataset.
        root: the folder its images are (or will be) written to.
        document_root: Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT``; every image must lie under it.
        splits: which splits get tasks.
    """
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"splits: expected names from {SPLITS}, got {split!r}")
    doc_root = document_root.resolve()
    tasks: list[dict[str, Any]] = []
    for record in dataset.images:
        if record.split not in splits:
            continue
        image_path = (root / "images" / record.split / f"{record.id}.png").resolve()
        try:
            rel = image_path.relative_to(doc_root)
        except ValueError as exc:
            raise ValueError(
                f"document_root: {doc_root} does not contain the image {image_path}; "
                "pass the LOCAL_FILES_DOCUMENT_ROOT Label Studio serves"
            ) from exc
        extra = [{"annotator": f"crowd-{int(a)}"} for a in record.crowd_annotator]
        size: dict[str, Any] = {"width": record.width, "height": record.height}
        tasks.append(
            {
                "data": {
                    "image": f"/data/local-files/?d={rel.as_posix()}",
                    "image_id": record.key,
                    **size,
                    "crowd_labels": detections_to_crowd_labels(
                        record.crowd, **size, labels=NAMES, extra=extra
                    ),
                },
                "predictions": [
                    {
                        "model_version": "crowd",
                        "score": 0.0,
                        "result": detections_to_regions(
                            record.crowd, **size, labels=NAMES, from_name=FROM_NAME, to_name=TO_NAME
                        ),
                    }
                ],
            }
        )
    return tasks


def write_label_studio(
    dataset: DatasetView,
    root: Path,
    *,
    document_root: Path | None = None,
    splits: Sequence[str] = ("train",),
) -> Path:
    """``root/label_studio/tasks.json`` and ``label_config.xml``; returns the tasks path."""
    doc_root = root.resolve().parent if document_root is None else document_root
    tasks = label_studio_tasks(dataset, root, document_root=doc_root, splits=splits)
    out = root / "label_studio"
    out.mkdir(parents=True, exist_ok=True)
    (out / "label_config.xml").write_text(LABEL_CONFIG_XML)
    path = out / "tasks.json"
    path.write_text(json.dumps(tasks, indent=1) + "\n")
    return path


def write_dataset(
    dataset: DatasetView,
    root: Path,
    *,
    document_root: Path | None = None,
    label_studio_splits: Sequence[str] = ("train",),
) -> None:
    """Write every file of the layout under ``root``; ``SynthDataset.write`` then draws the contact sheet."""
    root.mkdir(parents=True, exist_ok=True)
    write_images(dataset, root)
    write_manifest(dataset, root)
    write_yolo(dataset, root)
    write_coco(dataset, root)
    write_label_studio(dataset, root, document_root=document_root, splits=label_studio_splits)
