"""Read a folder of images and its labels (COCO JSON, YOLO txt, Label Studio JSON export), all checked.

Nothing here talks to Label Studio. Every reader returns a :class:`LabelSet`: pixel boxes per image, class ids
indexing the set's ``names``, boxes clipped to their image. Malformed input raises :class:`IngestError` whose
message starts with the file and the place in it: ``labels/a.txt:3:`` (file and line) for text files,
``crowd.json: annotations[12] (id 345):`` (JSON path and id) for JSON, ``crowd.json:7:15:`` for JSON syntax.

Layouts (see docs/CONTRACTS.md, "Import layouts"):

* images: every ``.png .jpg .jpeg .bmp .tif .tiff .webp`` file under the images folder, recursively; an
  image's key (the task's ``image_id``) is its path relative to that folder without the extension.
* COCO: one JSON file; ``images[].file_name`` is a path relative to the images folder (or a file name found
  once under it); ``categories`` give the label names; every listed image is labelled (no annotation = no
  boxes); ``bbox`` is ``[x, y, w, h]`` in pixels; ``iscrowd`` regions are refused. The checks are
  :mod:`formats.coco`'s, those of ``bench.simulate --data``.
* YOLO: a folder of ``.txt`` files mirroring the images folder (``a/b.png`` -> ``a/b.txt``), lines ``class cx
  cy w h`` normalised to [0, 1]; names from ``classes.txt`` (one per line) or a ``data.yaml`` (``names:``)
  in that folder or its parent, or an explicit file.
* Label Studio: a JSON export (a list of tasks). ``data.image`` is matched to the images folder (a Local
  Files URL by its path, an upload or URL by its file name). Crowd boxes come from ``data.crowd_labels`` when
  the task has them (an export of a project made by this importer), else from all its annotations (one per
  crowd annotator); expert boxes from the ground-truth annotation, or the only one.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from formats.boxes import clip_to_image
from formats.coco import (
    CocoError,
    ImageFrame,
    check_coco_lists,
    check_image_size,
    image_entries,
    read_boxes,
    read_categories,
)
from formats.images import image_size
from formats.labelstudio import CROWD_FIELD, percent_to_xyxy
from formats.yolo import parse_yolo_labels
from selection.detections import Detections

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageFile",
    "ImageIndex",
    "ImageLabels",
    "IngestError",
    "InputFormat",
    "LabelSet",
    "read_coco",
    "read_label_studio",
    "read_labels",
    "read_yolo",
    "read_yolo_names",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")  # Label Studio prefixes uploaded file names with 8 hex chars


class IngestError(ValueError):
    """Malformed or inconsistent import input; the message names the file and the line, JSON path or id."""


class InputFormat(enum.StrEnum):
    """Label file formats the importer reads."""

    COCO = "coco"
    YOLO = "yolo"
    LS = "ls"


@dataclass(frozen=True)
class ImageFile:
    """One image under the images folder.

    Attributes:
        key: path relative to the images folder, POSIX, without extension (``train/000012``): the task's
            ``image_id``, the key that makes a re-run skip images already imported.
        rel: path relative to the images folder, POSIX, with extension.
        path: absolute path (the folder resolved, the file name kept, so symlinks stay under the folder).
        width, height: image size in pixels as shown, after its EXIF orientation (as browsers, the backend's
            decoder and ultralytics turn it).
    """

    key: str
    rel: str
    path: Path
    width: int
    height: int


def _image_size(path: Path) -> tuple[int, int]:
    """Width and height as shown (after EXIF orientation): :func:`formats.images.image_size`."""
    try:
        return image_size(path)
    except ValueError as exc:
        raise IngestError(str(exc)) from None


class ImageIndex:
    """The images under a folder, found by relative path, absolute path, or a file name that occurs once.

    Args:
        root: the images folder.
        files: its images (see :meth:`scan`).
    """

    def __init__(self, root: Path, files: Sequence[ImageFile]) -> None:
        self.root = Path(root)
        self.files = tuple(files)
        self.by_key = {f.key: f for f in self.files}
        self.by_rel = {f.rel: f for f in self.files}
        self.by_path = {f.path: f for f in self.files}
        self.by_name: dict[str, list[ImageFile]] = {}
        for f in self.files:
            self.by_name.setdefault(PurePosixPath(f.rel).name, []).append(f)

    @classmethod
    def scan(cls, root: str | Path, *, progress: bool = False) -> ImageIndex:
        """Find every image under ``root`` (recursively, hidden folders skipped) and read its size.

        Raises:
            IngestError: no such folder, no image in it, an unreadable image, or two images with the same
                key (``a.png`` and ``a.jpg`` in one folder).
        """
        root = Path(root).expanduser()
        if not root.is_dir():
            raise IngestError(f"{root}: the images folder does not exist")
        root = root.resolve()
        paths = sorted(
            p
            for p in root.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        if not paths:
            raise IngestError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        files: list[ImageFile] = []
        seen: dict[str, Path] = {}
        iterator: Iterable[Path] = paths
        if progress:
            from tqdm import tqdm

            iterator = tqdm(paths, desc="reading images", unit="img", leave=False)
        for path in iterator:
            rel = path.relative_to(root).as_posix()
            key = rel[: -len(path.suffix)]
            if key in seen:
                raise IngestError(
                    f"{path}: same name as {seen[key]} but another extension (ambiguous image_id)"
                )
            seen[key] = path
            width, height = _image_size(path)
            files.append(ImageFile(key=key, rel=rel, path=path, width=width, height=height))
        return cls(root, files)

    def find(self, ref: str) -> ImageFile | None:
        """The image ``ref`` names: an absolute path, a path relative to the folder, a path ending in one,
        or a file name that occurs once; None when nothing (or more than one image) fits."""
        ref = ref.strip()
        if not ref:
            return None
        path = Path(ref)
        if path.is_absolute():
            hit = self.by_path.get(path) or self.by_path.get(path.resolve())
            if hit is not None:
                return hit
        posix = PurePosixPath(ref.replace("\\", "/"))
        parts = [p for p in posix.parts if p not in ("/", ".")]
        for start in range(len(parts)):  # longest tail first: "data/images/a/b.png" -> "a/b.png"
            hit = self.by_rel.get("/".join(parts[start:]))
            if hit is not None:
                return hit
        named = self.by_name.get(posix.name, [])
        return named[0] if len(named) == 1 else None

    def resolve(self, ref: str, *, where: str) -> ImageFile:
        """Like :meth:`find`, but raises :class:`IngestError` starting with ``where`` when nothing fits."""
        hit = self.find(ref)
        if hit is not None:
            return hit
        named = self.by_name.get(PurePosixPath(ref.replace("\\", "/")).name, [])
        if len(named) > 1:
            raise IngestError(
                f"{where}: image {ref!r} is ambiguous: {len(named)} images under {self.root} have that name "
                f"({', '.join(f.rel for f in named[:3])}); give its path relative to the folder"
            )
        raise IngestError(f"{where}: image {ref!r} not found under {self.root}")


@dataclass(frozen=True)
class ImageLabels:
    """The boxes one source gives one image.

    Attributes:
        image: the image.
        boxes: pixel xyxy, clipped to the image; ``class_id`` indexes :attr:`LabelSet.names`; unscored.
        annotators: per box, who drew it (when the source says), else None.
    """

    image: ImageFile
    boxes: Detections
    annotators: tuple[str, ...] | None = None


@dataclass(frozen=True)
class LabelSet:
    """Labels read from one file or folder.

    Attributes:
        source: the file or folder (for messages).
        format: its format.
        names: label names, index = class id.
        images: the images it labels, by image key, in source order (an image with no boxes is still
            labelled: reviewed and found empty).
        n_clipped: boxes that reached outside their image and were clipped to it.
    """

    source: Path
    format: InputFormat
    names: tuple[str, ...]
    images: dict[str, ImageLabels] = field(default_factory=dict)
    n_clipped: int = 0

    @property
    def n_boxes(self) -> int:
        return sum(len(labels.boxes) for labels in self.images.values())


# ------------------------------------------------------------------------------------------ shared checks


def _checked_boxes(
    xyxy: np.ndarray, class_id: np.ndarray, image: ImageFile, where: Sequence[str]
) -> tuple[Detections, int]:
    """Check pixel boxes of one image and clip them to it (:func:`formats.boxes.clip_to_image`); returns
    (boxes, how many were clipped).

    Args:
        xyxy: float (N, 4) pixel boxes as read, unclipped.
        class_id: int (N,) class ids (already checked).
        image: the image (its size bounds the boxes).
        where: per box, the location to name in an error (``file:line``).
    """
    try:
        return clip_to_image(
            xyxy, class_id, width=image.width, height=image.height, where=where, image=image.rel
        )
    except ValueError as exc:
        raise IngestError(str(exc)) from None


def _read_text(path: Path) -> str:
    """A UTF-8 text file's contents; IngestError naming the file when it cannot be read as such."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise IngestError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise IngestError(f"{path}: no such file")
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise IngestError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_names(names: Sequence[str], where: str) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise IngestError(f"{where}: label names must be non-empty strings, got {name!r}")
        if name.lower() in seen:
            raise IngestError(f"{where}: label {name!r} is listed twice (as {seen[name.lower()]!r})")
        seen[name.lower()] = name
    return tuple(names)


# ------------------------------------------------------------------------------------------------- COCO


def read_coco(path: str | Path, index: ImageIndex) -> LabelSet:
    """Read a COCO detection JSON file: its images (matched to ``index``), categories and boxes.

    The checks are :mod:`formats.coco`'s, as ``bench.simulate --data`` reads a lab's COCO files. Category
    ids may be any integers (real COCO skips some; some files start at 0): names are listed in category
    order, and class ids index that list. ``width``/``height`` of an image, when given, must equal the image
    file's size as shown (after its EXIF orientation). ``iscrowd`` regions are refused.

    Raises:
        IngestError: naming the JSON path and id of the first problem found.
    """
    path = Path(path)
    raw = _load_json(path)
    try:
        coco = check_coco_lists(raw, path)
        categories = read_categories(coco, path)
        images: dict[int, ImageFile] = {}
        by_key: dict[str, int] = {}
        for entry in image_entries(coco, path):
            image = index.resolve(entry.file_name, where=entry.where)
            check_image_size(entry, image.width, image.height, image=image.rel)
            if image.key in by_key:
                raise IngestError(
                    f"{entry.where}: the same image as image id {by_key[image.key]} ({image.rel})"
                )
            by_key[image.key] = entry.id
            images[entry.id] = image
        frames = {image_id: ImageFrame(im.width, im.height, im.rel) for image_id, im in images.items()}
        found = read_boxes(coco, path, images=frames, categories=categories)
    except CocoError as exc:
        raise IngestError(str(exc)) from None
    out = {
        image.key: ImageLabels(
            image=image, boxes=found.boxes[image_id], annotators=found.annotators[image_id]
        )
        for image_id, image in images.items()
    }
    return LabelSet(path, InputFormat.COCO, categories.names, out, found.n_clipped)


# ------------------------------------------------------------------------------------------------- YOLO


def read_yolo_names(path: str | Path) -> tuple[str, ...]:
    """Class names from ``classes.txt`` (one per line) or a YOLO data YAML (``names:`` list or mapping)."""
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"{path}: no such file (YOLO class names)")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(_read_text(path))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise IngestError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        raw = data.get("names") if isinstance(data, Mapping) else None
        if isinstance(raw, Mapping):
            if not all(_is_int(k) for k in raw) or set(raw) != set(range(len(raw))):
                raise IngestError(f"{path}: names: expected keys 0..{len(raw) - 1}, got {list(raw)}")
            raw = [raw[i] for i in range(len(raw))]
        if not isinstance(raw, list) or not raw:
            raise IngestError(f"{path}: expected a non-empty 'names:' list or mapping")
        return _check_names([str(n) for n in raw], f"{path}: names")
    names = [line.strip() for line in _read_text(path).splitlines()]
    while names and not names[-1]:
        names.pop()
    for lineno, name in enumerate(names, 1):
        if not name:
            raise IngestError(f"{path}:{lineno}: empty class name (class ids are line numbers - 1)")
    if not names:
        raise IngestError(f"{path}: no class names in it")
    return _check_names(names, str(path))


def _find_yolo_names(folder: Path) -> Path:
    for base in (folder, folder.parent):
        for name in ("classes.txt", "data.yaml", "dataset.yaml"):
            if (base / name).is_file():
                return base / name
    raise IngestError(
        f"{folder}: YOLO labels need class names: put a classes.txt (one name per line) or a data.yaml "
        "(names: [...]) in this folder or its parent, or pass --classes FILE"
    )


def _check_yolo_numbers(text: str, source: Path) -> None:
    """NaN and inf are numbers to ``float()``: refuse them here, where the line is known."""
    for lineno, line in enumerate(text.splitlines(), 1):
        for part in line.split():
            try:
                value = float(part)
            except ValueError:
                continue  # formats.yolo reports it, with the line
            if not np.isfinite(value):
                raise IngestError(f"{source}:{lineno}: expected finite numbers, got {line.strip()!r}")


def read_yolo(
    folder: str | Path,
    index: ImageIndex,
    *,
    classes: str | Path | None = None,
    missing_means_empty: bool = True,
) -> LabelSet:
    """Read YOLO label files mirroring the images folder (``<folder>/<image key>.txt``).

    Args:
        folder: the labels folder.
        index: the images.
        classes: class-names file; by default ``classes.txt``/``data.yaml`` in ``folder`` or its parent.
        missing_means_empty: an image without a label file is labelled with no boxes (the YOLO convention,
            right for crowd labels); False: it is not labelled at all (expert labels: not reviewed).

    Raises:
        IngestError: ``file:line:`` of the first bad line, or a label file without its image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise IngestError(f"{folder}: the YOLO labels folder does not exist")
    names_path = Path(classes) if classes is not None else _find_yolo_names(folder)
    names = read_yolo_names(names_path)
    files = {
        p.relative_to(folder).as_posix()[:-4]: p
        for p in sorted(folder.rglob("*.txt"))
        if p.name != "classes.txt" and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }
    orphans = sorted(set(files) - set(index.by_key))
    if orphans:
        shown = ", ".join(str(files[k]) for k in orphans[:3])
        raise IngestError(
            f"{shown}{' ...' if len(orphans) > 3 else ''}: {len(orphans)} label file(s) without an image "
            f"under {index.root} (label files must mirror the images folder: a/b.png -> a/b.txt)"
        )
    out: dict[str, ImageLabels] = {}
    n_clipped = 0
    for image in index.files:
        label_file = files.get(image.key)
        if label_file is None:
            if missing_means_empty:
                out[image.key] = ImageLabels(image=image, boxes=Detections.empty())
            continue
        text = _read_text(label_file)
        _check_yolo_numbers(text, label_file)
        try:
            dets = parse_yolo_labels(text, image.width, image.height, source=str(label_file))
        except ValueError as exc:  # formats.yolo names the file and the line
            raise IngestError(str(exc)) from None
        linenos = [n for n, line in enumerate(text.splitlines(), 1) if line.split()]
        for i, cls in enumerate(dets.class_id.tolist()):
            if cls >= len(names):
                raise IngestError(
                    f"{label_file}:{linenos[i]}: class {cls} is not in {names_path} ({len(names)} names: "
                    f"0..{len(names) - 1})"
                )
        where = [f"{label_file}:{n}" for n in linenos]
        boxes, clipped = _checked_boxes(dets.xyxy, dets.class_id, image, where)
        n_clipped += clipped
        out[image.key] = ImageLabels(image=image, boxes=boxes)
    return LabelSet(folder, InputFormat.YOLO, names, out, n_clipped)


# --------------------------------------------------------------------------------- Label Studio export


def _image_ref(url: str, document_root: Path | None) -> str:
    """A path or file name to look the task's image up by (Local Files, uploads, URLs, plain paths)."""
    parsed = urlparse(url)
    path = unquote(parsed.path)
    query = parse_qs(parsed.query)
    if path.rstrip("/").endswith("/data/local-files") and "d" in query:
        rel = query["d"][0]  # parse_qs has unquoted it
        return str(document_root / rel) if document_root is not None else rel
    if "/data/upload/" in path:  # relative or on the Label Studio host
        return _UPLOAD_PREFIX.sub("", PurePosixPath(path).name)
    if parsed.scheme in ("http", "https", "s3", "gs", "azure-blob"):
        return path.lstrip("/")
    return path if parsed.scheme == "file" else url


def _annotator(annotation: Mapping[str, Any]) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, Mapping):
        return str(who.get("email") or who.get("id") or "unknown")
    return f"user-{who}" if who is not None else "unknown"


class _Labels:
    """Label names in order of first appearance (a Label Studio export does not carry its config)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.lower: dict[str, int] = {}

    def index(self, name: str) -> int:
        key = name.lower()
        if key not in self.lower:
            self.lower[key] = len(self.names)
            self.names.append(name)
        return self.lower[key]


def _percent_box(values: Mapping[str, Any], where: str) -> list[float]:
    try:
        box = [values[k] for k in ("x", "y", "width", "height")]
    except KeyError as exc:
        raise IngestError(
            f"{where}: needs x, y, width, height (percent of the image); {exc} missing"
        ) from None
    if not all(_is_number(v) for v in box):
        raise IngestError(f"{where}: x, y, width, height must be numbers, got {box!r}")
    return [float(v) for v in box]


def _regions_boxes(
    regions: Any, where: str, labels: _Labels
) -> tuple[list[list[float]], list[int], list[str]]:
    """Rectangle results of one annotation -> (percent boxes, class ids, locations); others are skipped."""
    if not isinstance(regions, list):
        raise IngestError(f"{where}: expected a list of results, got {type(regions).__name__}")
    boxes, classes, wheres = [], [], []
    for k, region in enumerate(regions):
        loc = f"{where}[{k}]"
        if not isinstance(region, Mapping):
            raise IngestError(f"{loc}: expected an object, got {type(region).__name__}")
        if region.get("type") not in ("rectanglelabels", "rectangle"):
            continue
        value = region.get("value")
        if not isinstance(value, Mapping):
            raise IngestError(f"{loc}: expected a 'value' object")
        names = value.get("rectanglelabels") or value.get("labels")
        if not isinstance(names, list) or not names or not isinstance(names[0], str):
            raise IngestError(f"{loc}: a rectangle without a label (value.rectanglelabels)")
        if len(names) > 1:
            raise IngestError(f"{loc}: a rectangle with several labels {names}; expected one")
        rotation = value.get("rotation", 0) or 0
        if not _is_number(rotation) or rotation != 0:
            raise IngestError(f"{loc}: rotated rectangles (rotation {rotation!r}) are not supported")
        boxes.append(_percent_box(value, f"{loc}.value"))
        classes.append(labels.index(names[0]))
        wheres.append(loc)
    return boxes, classes, wheres


def _crowd_records(
    records: Any, where: str, labels: _Labels
) -> tuple[list[list[float]], list[int], list[str], list[str | None]]:
    """``data.crowd_labels`` records -> (percent boxes, class ids, locations, annotators)."""
    if not isinstance(records, list):
        raise IngestError(f"{where}: expected a list of boxes, got {type(records).__name__}")
    boxes, classes, wheres, who = [], [], [], []
    for k, rec in enumerate(records):
        loc = f"{where}[{k}]"
        if not isinstance(rec, Mapping):
            raise IngestError(f"{loc}: expected an object, got {type(rec).__name__}")
        if not isinstance(rec.get("label"), str) or not rec["label"]:
            raise IngestError(f"{loc}: expected a 'label' string, got {rec.get('label')!r}")
        boxes.append(_percent_box(rec, loc))
        classes.append(labels.index(rec["label"]))
        wheres.append(loc)
        who.append(None if rec.get("annotator") is None else str(rec["annotator"]))
    return boxes, classes, wheres, who


def read_label_studio(
    path: str | Path, index: ImageIndex, *, role: str, document_root: Path | None = None
) -> LabelSet:
    """Read a Label Studio JSON export (a list of tasks) as crowd or expert labels.

    Args:
        path: the export file.
        index: the images.
        role: ``"crowd"``: boxes from ``data.crowd_labels`` when the task has that field, else from every
            (not cancelled) annotation, each annotation's author recorded per box; tasks without either are
            labelled with no boxes. ``"expert"``: boxes of the annotation marked ground truth, or of the
            only annotation; tasks without an annotation are not labelled.
        document_root: resolves ``/data/local-files/?d=...`` URLs to files (else matched by their path).

    Raises:
        IngestError: naming the file, ``tasks[i] (id N)`` and the place in it.
    """
    if role not in ("crowd", "expert"):
        raise ValueError(f"role: expected 'crowd' or 'expert', got {role!r}")
    path = Path(path)
    tasks = _load_json(path)
    if isinstance(tasks, Mapping):
        tasks = [tasks]
    if not isinstance(tasks, list):
        raise IngestError(f"{path}: expected a Label Studio JSON export (a list of tasks)")
    labels = _Labels()
    # First pass: structure and labels (names must be complete before class ids are final).
    parsed: list[tuple[ImageFile, list[list[float]], list[int], list[str], tuple[str, ...] | None]] = []
    first_task: dict[str, str] = {}
    for i, task in enumerate(tasks):
        task_id = task.get("id") if isinstance(task, Mapping) else None
        where = f"{path}: tasks[{i}]" + (f" (id {task_id})" if task_id is not None else "")
        if not isinstance(task, Mapping) or not isinstance(task.get("data"), Mapping):
            raise IngestError(f"{where}: expected a task object with a 'data' object")
        data = task["data"]
        if not isinstance(data.get("image"), str):
            raise IngestError(f"{where}.data: expected an 'image' URL or path, got {data.get('image')!r}")
        image = index.resolve(_image_ref(data["image"], document_root), where=f"{where}.data.image")
        if image.key in first_task:
            raise IngestError(f"{where}: the same image {image.rel} as {first_task[image.key]}")
        first_task[image.key] = where
        annotations = task.get("annotations", [])
        if not isinstance(annotations, list):
            raise IngestError(f"{where}.annotations: expected a list")
        valid = [
            (k, a) for k, a in enumerate(annotations) if isinstance(a, Mapping) and not a.get("was_cancelled")
        ]
        if role == "crowd" and CROWD_FIELD in data:
            boxes, classes, wheres, who = _crowd_records(
                data[CROWD_FIELD], f"{where}.data.{CROWD_FIELD}", labels
            )
            annotators = tuple(w or "unknown" for w in who) if any(w is not None for w in who) else None
        elif role == "crowd":
            boxes, classes, wheres, names = [], [], [], []
            for k, annotation in valid:
                b, c, w = _regions_boxes(annotation.get("result"), f"{where}.annotations[{k}].result", labels)
                boxes += b
                classes += c
                wheres += w
                names += [_annotator(annotation)] * len(b)
            annotators = tuple(names) if names else None
        else:
            if not valid:
                continue  # not reviewed by an expert
            truth = [(k, a) for k, a in valid if a.get("ground_truth")]
            if len(valid) > 1 and len(truth) != 1:
                raise IngestError(
                    f"{where}.annotations: {len(valid)} annotations and {len(truth)} marked ground truth; "
                    "expert labels need one annotation per task (or exactly one marked ground truth)"
                )
            k, annotation = truth[0] if len(valid) > 1 else valid[0]
            boxes, classes, wheres = _regions_boxes(
                annotation.get("result"), f"{where}.annotations[{k}].result", labels
            )
            annotators = None
        parsed.append((image, boxes, classes, wheres, annotators))
    if not labels.names:
        raise IngestError(f"{path}: no labelled rectangle in any task, so no label names to import")
    out: dict[str, ImageLabels] = {}
    n_clipped = 0
    for image, boxes, classes, wheres, annotators in parsed:
        raw = np.array(boxes, np.float64).reshape(-1, 4)
        if not np.all(np.isfinite(raw)):
            bad = int(np.flatnonzero(~np.all(np.isfinite(raw), axis=1))[0])
            raise IngestError(f"{wheres[bad]}: x, y, width, height must be finite, got {raw[bad].tolist()}")
        xyxy = percent_to_xyxy(raw, image.width, image.height)
        dets, clipped = _checked_boxes(xyxy, np.array(classes, np.int64), image, wheres)
        n_clipped += clipped
        out[image.key] = ImageLabels(image=image, boxes=dets, annotators=annotators)
    return LabelSet(path, InputFormat.LS, _check_names(labels.names, str(path)), out, n_clipped)


def read_labels(
    fmt: InputFormat | str,
    path: str | Path,
    index: ImageIndex,
    *,
    role: str,
    classes: str | Path | None = None,
    document_root: Path | None = None,
) -> LabelSet:
    """Read crowd (``role="crowd"``) or expert (``role="expert"``) labels in any supported format.

    See the module docstring for each format's layout and :func:`read_coco`, :func:`read_yolo`,
    :func:`read_label_studio` for the details.
    """
    try:
        fmt = InputFormat(fmt)
    except ValueError:
        raise IngestError(f"format: expected one of {[f.value for f in InputFormat]}, got {fmt!r}") from None
    if fmt is InputFormat.COCO:
        return read_coco(path, index)
    if fmt is InputFormat.YOLO:
        return read_yolo(path, index, classes=classes, missing_means_empty=role == "crowd")
    return read_label_studio(path, index, role=role, document_root=document_root)
