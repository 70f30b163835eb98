"""What an import will create: every input read and checked, tasks built in the backend's import form.

Pure apart from reading the input files: nothing here talks to Label Studio. :func:`plan_import` raises
:class:`~backend.ingest.sources.IngestError` on any problem, so a plan that exists is importable in full.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from backend.ingest.sources import ImageFile, ImageIndex, IngestError, InputFormat, LabelSet, read_labels
from backend.labelconfig import LabelSchema
from formats.labelstudio import CROWD_FIELD, detections_to_crowd_labels, detections_to_regions
from selection.detections import Detections

__all__ = [
    "CROWD_MODEL_VERSION",
    "ImportPlan",
    "PlannedImage",
    "build_task",
    "expert_result",
    "label_mapping",
    "local_files_url",
    "plan_import",
    "remap_classes",
]

CROWD_MODEL_VERSION = "crowd"  # the prediction that shows the crowd boxes to annotators (docs/CONTRACTS.md)


@dataclass(frozen=True)
class PlannedImage:
    """One task to import.

    Attributes:
        image: the image file.
        crowd: crowd boxes in pixels; ``class_id`` indexes :attr:`ImportPlan.labels`.
        annotators: per crowd box, who drew it (when the source says), else None.
        expert: expert boxes (an annotation marked ground truth), or None when no expert labelled the image.
    """

    image: ImageFile
    crowd: Detections
    annotators: tuple[str, ...] | None
    expert: Detections | None


@dataclass(frozen=True)
class ImportPlan:
    """Everything an import needs, checked.

    Attributes:
        images_root: the images folder (becomes the project's Local Files storage).
        document_root: Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT`` (contains ``images_root``).
        labels: label names of the dataset (crowd's first, then expert-only ones), index = class id.
        items: one per image to import, in the crowd source's order.
        crowd: the crowd labels as read.
        expert: the expert labels as read, or None.
        n_unlisted: images under the folder that the crowd source does not list (not imported).
    """

    images_root: Path
    document_root: Path
    labels: tuple[str, ...]
    items: tuple[PlannedImage, ...]
    crowd: LabelSet
    expert: LabelSet | None
    n_unlisted: int

    def summary(self) -> list[str]:
        """Human-readable lines: images, boxes, labels, expert labels, clipped boxes."""
        n_crowd = sum(len(item.crowd) for item in self.items)
        with_boxes = sum(len(item.crowd) > 0 for item in self.items)
        lines = [
            f"images: {len(self.items)} under {self.images_root}"
            + (
                f" ({self.n_unlisted} more not listed in {self.crowd.source}: skipped)"
                if self.n_unlisted
                else ""
            ),
            f"crowd labels ({self.crowd.format.value}, {self.crowd.source}): {_count(n_crowd, 'box')} on "
            f"{_count(with_boxes, 'image')}",
            f"labels: {', '.join(self.labels)}",
        ]
        if self.expert is not None:
            expert_items = [item for item in self.items if item.expert is not None]
            n_expert = sum(len(item.expert) for item in expert_items if item.expert is not None)
            lines.append(
                f"expert labels ({self.expert.format.value}, {self.expert.source}): "
                f"{_count(n_expert, 'box')} on {_count(len(expert_items), 'image')} "
                "(imported as ground-truth annotations)"
            )
        clipped = self.crowd.n_clipped + (self.expert.n_clipped if self.expert is not None else 0)
        if clipped:
            lines.append(f"note: {_count(clipped, 'box')} reached outside the image and were clipped to it")
        return lines


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}{'es' if word.endswith('x') else 's'}"


def _merge_names(first: Sequence[str], second: Sequence[str]) -> tuple[tuple[str, ...], list[int]]:
    """Names of ``first`` then those of ``second`` not in it (case-insensitive); ``second``'s new indices."""
    names = list(first)
    lower = {name.lower(): i for i, name in enumerate(names)}
    remap = []
    for name in second:
        if name.lower() not in lower:
            lower[name.lower()] = len(names)
            names.append(name)
        remap.append(lower[name.lower()])
    return tuple(names), remap


def remap_classes(dets: Detections, mapping: Sequence[int]) -> Detections:
    """``dets`` with class id ``c`` replaced by ``mapping[c]``."""
    if len(dets) == 0:
        return dets
    return Detections(xyxy=dets.xyxy, class_id=np.asarray(mapping, np.int64)[dets.class_id], score=dets.score)


def _check_document_root(images_root: Path, document_root: Path) -> Path:
    document_root = Path(document_root).expanduser()
    if not document_root.is_dir():
        raise IngestError(f"--document-root {document_root}: no such folder (LOCAL_FILES_DOCUMENT_ROOT)")
    document_root = document_root.resolve()
    if images_root == document_root or document_root not in images_root.parents:
        raise IngestError(
            f"--images {images_root}: must be a folder strictly inside the document root {document_root} "
            "(Label Studio serves Local Files only from subfolders of LOCAL_FILES_DOCUMENT_ROOT)"
        )
    return document_root


def plan_import(
    *,
    images: str | Path,
    crowd: str | Path,
    crowd_format: InputFormat | str,
    document_root: str | Path,
    expert: str | Path | None = None,
    expert_format: InputFormat | str | None = None,
    classes: str | Path | None = None,
    progress: bool = False,
) -> ImportPlan:
    """Read and check the images, the crowd labels and (optionally) the expert labels.

    Which images are imported: those the crowd source lists (COCO ``images``, Label Studio tasks), or
    every image under the folder for YOLO (no label file = no crowd box). Expert labels must name images
    among those.

    Args:
        images: the images folder, inside ``document_root``.
        crowd: the crowd labels (COCO JSON file, YOLO labels folder, Label Studio JSON export).
        crowd_format: ``coco`` | ``yolo`` | ``ls``.
        document_root: Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT``.
        expert: optional expert labels (same kinds of input).
        expert_format: their format (default: ``crowd_format``).
        classes: YOLO class-names file (``classes.txt`` or data YAML), for both label sets.
        progress: show a progress bar while reading image sizes.

    Raises:
        IngestError: the first problem found, naming the file and the line, JSON path or id.

    Example:
        >>> import tempfile, json
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "lab" / "images").mkdir(parents=True)
        >>> Image.new("L", (100, 50)).save(root / "lab" / "images" / "a.png")
        >>> coco = {"images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 50}],
        ...         "categories": [{"id": 1, "name": "cat"}],
        ...         "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [10, 5, 20, 10]}]}
        >>> _ = (root / "lab" / "crowd.json").write_text(json.dumps(coco))
        >>> plan = plan_import(images=root / "lab" / "images", crowd=root / "lab" / "crowd.json",
        ...                    crowd_format="coco", document_root=root)
        >>> [item.image.key for item in plan.items], plan.labels, plan.items[0].crowd.xyxy.tolist()
        (['a'], ('cat',), [[10.0, 5.0, 30.0, 15.0]])
    """
    index = ImageIndex.scan(images, progress=progress)
    doc_root = _check_document_root(index.root, Path(document_root))
    crowd_set = read_labels(crowd_format, crowd, index, role="crowd", classes=classes, document_root=doc_root)
    expert_set = None
    if expert is not None:
        expert_set = read_labels(
            expert_format or crowd_format,
            expert,
            index,
            role="expert",
            classes=classes,
            document_root=doc_root,
        )
        missing = [key for key in expert_set.images if key not in crowd_set.images]
        if missing:
            raise IngestError(
                f"{expert_set.source}: expert labels for {len(missing)} image(s) that the crowd labels "
                f"({crowd_set.source}) do not list, e.g. {missing[0]!r}"
            )
        labels, expert_map = _merge_names(crowd_set.names, expert_set.names)
    else:
        labels, expert_map = crowd_set.names, []
    items = []
    for key, crowd_labels in crowd_set.images.items():
        expert_labels = expert_set.images.get(key) if expert_set is not None else None
        items.append(
            PlannedImage(
                image=crowd_labels.image,
                crowd=crowd_labels.boxes,
                annotators=crowd_labels.annotators,
                expert=None if expert_labels is None else remap_classes(expert_labels.boxes, expert_map),
            )
        )
    if not items:
        raise IngestError(f"{crowd_set.source}: lists no image to import")
    return ImportPlan(
        images_root=index.root,
        document_root=doc_root,
        labels=labels,
        items=tuple(items),
        crowd=crowd_set,
        expert=expert_set,
        n_unlisted=len(index.files) - len(items),
    )


def label_mapping(labels: Sequence[str], schema: LabelSchema, *, project: str = "the project") -> list[int]:
    """Dataset label index -> index into the config's labels, matched by case-insensitive name.

    Raises:
        IngestError: some dataset labels are not in the config (all of them are named).
    """
    by_lower = {name.lower(): i for i, name in enumerate(schema.labels)}
    missing = [name for name in labels if name.lower() not in by_lower]
    if missing:
        raise IngestError(
            f"{project}: its labelling config has no label {', '.join(repr(m) for m in missing)} "
            f"(RectangleLabels {schema.from_name!r} lists {list(schema.labels)}); add them in the project's "
            "Settings > Labeling Interface, or import into a new project"
        )
    return [by_lower[name.lower()] for name in labels]


def local_files_url(image: ImageFile, document_root: Path) -> str:
    """The ``/data/local-files/?d=<path under the document root>`` URL Label Studio serves the image at."""
    rel = image.path.relative_to(document_root).as_posix()
    return f"/data/local-files/?d={quote(rel, safe='/')}"


def expert_result(dets: Detections, image: ImageFile, schema: LabelSchema) -> list[dict[str, Any]]:
    """Expert boxes (``class_id`` indexing ``schema.labels``) as rectangle results of an annotation."""
    return detections_to_regions(
        dets,
        width=image.width,
        height=image.height,
        labels=schema.labels,
        from_name=schema.from_name,
        to_name=schema.to_name,
        id_prefix="expert",
    )


def build_task(
    item: PlannedImage, *, schema: LabelSchema, mapping: Sequence[int], document_root: Path
) -> dict[str, Any]:
    """The import form of one task (docs/CONTRACTS.md): data with ``crowd_labels`` in percent, the ``crowd``
    prediction that shows them, and the expert boxes as a ground-truth annotation when there are any.

    Args:
        item: the planned image.
        schema: the project's labelling config (label names, control and object names, image field).
        mapping: dataset label index -> index into ``schema.labels`` (:func:`label_mapping`).
        document_root: Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT``.
    """
    image = item.image
    size = {"width": image.width, "height": image.height}
    crowd = remap_classes(item.crowd, mapping)
    extra: list[Mapping[str, Any]] | None = None
    if item.annotators is not None:
        extra = [{"annotator": name} for name in item.annotators]
    task: dict[str, Any] = {
        "data": {
            schema.image_key: local_files_url(image, document_root),
            "image_id": image.key,
            **size,
            CROWD_FIELD: detections_to_crowd_labels(crowd, **size, labels=schema.labels, extra=extra),
        },
        "predictions": [
            {
                "model_version": CROWD_MODEL_VERSION,
                "score": 0.0,
                "result": detections_to_regions(
                    crowd,
                    **size,
                    labels=schema.labels,
                    from_name=schema.from_name,
                    to_name=schema.to_name,
                    id_prefix="crowd",
                ),
            }
        ],
    }
    if item.expert is not None:
        result = expert_result(remap_classes(item.expert, mapping), image, schema)
        task["annotations"] = [{"result": result, "ground_truth": True}]
    return task
