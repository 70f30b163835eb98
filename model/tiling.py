"""Tiled (sliced) inference and training for images larger than the detector's input, for any family.

A TEM frame of 2k-4k pixels holds deposits of a few dozen pixels: shrunk to a detector's input size (say
320 px) a deposit becomes a few pixels and is lost. Here the frame is cut into overlapping tiles of
``TileConfig.size`` pixels, each tile is predicted at its own scale, and the boxes are mapped back to the
frame and merged across tiles. Training writes the same tiles (:func:`tile_dataset`), so the model sees
deposits at the scale it will meet them.

* :func:`tile_windows`: the tile grid. Along each side, ``n = ceil((side - overlap) / (size - overlap))``
  windows of ``size`` pixels are spread evenly from 0 to ``side - size``, so neighbours overlap by at least
  ``overlap`` pixels (more where the side does not divide evenly) and every tile, edge tiles included, has the
  full size (no padding: the model sees one scale). A side no longer than ``size`` is one window of that side.
* :class:`TiledDetector`: a :class:`~model.detector.Detector` wrapping any other. Tiles stream through the
  inner detector in chunks of ``batch`` tiles; an image is decoded when its first tile is queued and released
  when its last tile is predicted, so at most the images of one chunk are held, whatever their number or size.
  Images no larger than a tile go through whole, as before. The inner detector's cap on boxes per image
  (``max_det``, the backend's ``MAX_DET``) applies per tile; the merge only joins the boxes of one object
  found in several tiles and cuts nothing back to the cap, so a tiled image may hold more boxes than the cap.
* :func:`merge_tile_detections`: the cross-tile merge. A box that touches a tile edge lying inside the image
  is *cut* (the object may continue in the neighbour tile). Boxes of different tiles are grouped greedily,
  whole boxes first, by score: two boxes match at IoU >= ``merge_iou``, or, when either is cut, at
  intersection over the smaller box >= ``merge_ios`` (a cut part lies mostly inside the whole box). Two boxes
  of one tile never merge (the inner detector already ran NMS on that tile). A group with a whole box gives
  that box (``nms``: the best-scored whole box; ``wbf``: the score-weighted mean of its whole boxes, with
  their mean score); a group of cut parts only (an object larger than the overlap) gives their union, which
  restores the object's extent, at the best part's score. NMS is the default: it keeps a box the detector
  actually drew; WBF pays off when tile views of one object disagree, which ``bench.tiling`` measures (both
  merges on the same tile predictions) once its detector is trained well enough to tell.

Why not SAHI (``sahi`` 0.12.8 installs here without touching a pin): its sliced prediction takes one of its
own ``DetectionModel`` classes (we would wrap our ``Detector`` in a second model abstraction), predicts the
slices of an image one by one instead of in batches, materialises every slice of an image at once
(``slice_image``), and converts every box to Python ``ObjectPrediction``/shapely objects before merging. The
slicer here is a few lines of integer arithmetic and the merge uses the project's one geometry kernel
(``selection.boxes.pair_geometry``), returns the shared ``Detections`` type and knows which boxes were cut.

Example (a fake "detector" that finds one 20 x 20 box in the middle of every tile)::

    >>> import numpy as np
    >>> tile_windows(1000, 300, size=400, overlap=100).tolist()
    [[0, 0, 400, 300], [300, 0, 700, 300], [600, 0, 1000, 300]]
    >>> class Centre:
    ...     names, version = ["deposit"], "demo"
    ...     def predict(self, images, *, conf=0.01, batch=16):
    ...         out = []
    ...         for im in images:
    ...             h, w = im.shape[:2]
    ...             box = np.array([[w / 2 - 10, h / 2 - 10, w / 2 + 10, h / 2 + 10]], np.float32)
    ...             out.append(Detections(box, np.zeros(1, np.int64), np.ones(1, np.float32)))
    ...         return out
    >>> tiled = TiledDetector(Centre(), TileConfig(size=400, overlap=100))
    >>> tiled.predict([np.zeros((300, 1000), np.uint8)])[0].xyxy.tolist()
    [[190.0, 140.0, 210.0, 160.0], [490.0, 140.0, 510.0, 160.0], [790.0, 140.0, 810.0, 160.0]]
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from formats.images import ImageNormalization, image_size, normalize_image, read_image, write_image
from model.dataset import LabeledImage
from model.detector import PREDICT_CONF, Detector, ImageInput
from selection.boxes import pair_geometry
from selection.detections import Detections

logger = logging.getLogger(__name__)

__all__ = [
    "MIN_TILE",
    "Merge",
    "TileConfig",
    "TilePrediction",
    "TiledDetector",
    "merge_tile_detections",
    "tile_dataset",
    "tile_windows",
]

MIN_TILE = 32
"""The smallest tile side accepted, in pixels (YOLO's largest stride)."""


class Merge(enum.StrEnum):
    """How boxes found in several tiles become one."""

    NMS = "nms"
    """Keep the best-scored whole box of each group."""
    WBF = "wbf"
    """Weighted box fusion: the score-weighted mean of a group's whole boxes, at their mean score."""


@dataclass(frozen=True)
class TileConfig:
    """How images are tiled.

    Attributes:
        size: tile side in pixels (>= :data:`MIN_TILE`); images whose width and height are both at most
            ``size`` are not tiled.
        overlap: minimum overlap of neighbouring tiles in pixels, in ``[0, size // 2]``. Make it at least the
            side of the largest object, so that every object lies whole in some tile.
        merge: how boxes found in several tiles are merged (:class:`Merge`).
        merge_iou: IoU at which two whole boxes of different tiles are the same object, in (0, 1].
        merge_ios: intersection over the smaller box at which a cut box joins another box, in (0, 1].
        edge: a box within this many pixels of a tile edge inside the image counts as cut, >= 0 (a few pixels:
            a detector's box edge is that imprecise, more so when tiles are shrunk to the network input; a
            whole box wrongly counted as cut costs nothing when its object is whole in a neighbour tile).
    """

    size: int
    overlap: int = 64
    merge: Merge = Merge.NMS
    merge_iou: float = 0.5
    merge_ios: float = 0.6
    edge: float = 4.0

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int | np.integer) or self.size < MIN_TILE:
            raise ValueError(f"size: expected an integer tile side >= {MIN_TILE} pixels, got {self.size!r}")
        if (
            isinstance(self.overlap, bool)
            or not isinstance(self.overlap, int | np.integer)
            or not 0 <= self.overlap <= self.size // 2
        ):
            raise ValueError(
                f"overlap: expected an integer in [0, {self.size // 2}] pixels (half the tile size "
                f"{self.size}), got {self.overlap!r}"
            )
        try:
            object.__setattr__(self, "merge", Merge(str(self.merge).lower()))
        except ValueError:
            raise ValueError(
                f"merge: expected one of {', '.join(m.value for m in Merge)}, got {self.merge!r}"
            ) from None
        for name in ("merge_iou", "merge_ios"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name}: expected a value in (0, 1], got {value}")
        if not math.isfinite(self.edge) or self.edge < 0:
            raise ValueError(f"edge: expected a finite number of pixels >= 0, got {self.edge}")

    def as_dict(self) -> dict[str, int | float | str]:
        """JSON values (e.g. for a model version's meta)."""
        return {
            "size": int(self.size),
            "overlap": int(self.overlap),
            "merge": self.merge.value,
            "merge_iou": self.merge_iou,
            "merge_ios": self.merge_ios,
            "edge": self.edge,
        }


def _spans(side: int, size: int, overlap: int) -> np.ndarray:
    """int64 (n, 2) [start, stop) windows covering ``0..side`` (see the module docstring)."""
    if side <= size:
        return np.array([[0, side]], np.int64)
    n = math.ceil((side - overlap) / (size - overlap))
    # floor(k * step) with step <= size - overlap (an integer): gaps never exceed it, so overlaps hold.
    starts = (np.arange(n, dtype=np.int64) * (side - size)) // (n - 1)
    return np.stack([starts, starts + size], axis=1)


def tile_windows(width: int, height: int, *, size: int, overlap: int) -> np.ndarray:
    """The tile grid of an image.

    Args:
        width: image width in pixels (> 0).
        height: image height in pixels (> 0).
        size: tile side in pixels.
        overlap: minimum overlap of neighbouring tiles in pixels, ``0 <= overlap <= size // 2``.

    Returns:
        int64 (T, 4) windows ``[x0, y0, x1, y1]`` in pixels (x1, y1 exclusive), row by row (top row first,
        left to right). Every window is ``size`` wide and high, except along a side no longer than ``size``,
        where it spans that side.

    Raises:
        ValueError: a non-positive image side, or a tile size or overlap ``TileConfig`` would refuse.
    """
    config = TileConfig(size=size, overlap=overlap)  # one validation of size and overlap
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
            raise ValueError(f"{name}: expected a positive integer number of pixels, got {value!r}")
    xs = _spans(int(width), config.size, config.overlap)
    ys = _spans(int(height), config.size, config.overlap)
    gx = np.repeat(xs[None, :, :], len(ys), axis=0).reshape(-1, 2)
    gy = np.repeat(ys[:, None, :], len(xs), axis=1).reshape(-1, 2)
    return np.stack([gx[:, 0], gy[:, 0], gx[:, 1], gy[:, 1]], axis=1)


def _cut_mask(local: np.ndarray, window: np.ndarray, width: int, height: int, edge: float) -> np.ndarray:
    """bool (N,): boxes (tile pixels) touching an edge of ``window`` that lies inside the image."""
    x0, y0, x1, y1 = (int(v) for v in window)
    tw, th = x1 - x0, y1 - y0
    return (
        ((local[:, 0] <= edge) & (x0 > 0))
        | ((local[:, 1] <= edge) & (y0 > 0))
        | ((local[:, 2] >= tw - edge) & (x1 < width))
        | ((local[:, 3] >= th - edge) & (y1 < height))
    )


def _group_across_tiles(
    xyxy: np.ndarray,
    score: np.ndarray,
    class_id: np.ndarray,
    tile: np.ndarray,
    cut: np.ndarray,
    config: TileConfig,
) -> list[tuple[list[int], np.ndarray]]:
    """Greedy grouping of tile boxes (image pixels) into objects: ``(member indices, extent)`` per group.

    Whole boxes first, each by descending score, so a group's anchor (its extent) is its best whole box when
    it has one; a group of cut parts only grows to their union. A box is compared only with the groups in the
    grid cells it touches (cells of a quarter tile), so the cost stays near linear in the number of boxes.
    """
    order = np.lexsort((-score, cut))
    cell = max(16, config.size // 4)
    grid: dict[tuple[int, int], list[int]] = {}
    extents = np.empty((len(xyxy), 4), np.float64)
    whole = np.empty(len(xyxy), bool)
    group_class = np.empty(len(xyxy), np.int64)
    tiles_of: list[set[int]] = []
    members: list[list[int]] = []

    def cells(box: np.ndarray) -> list[tuple[int, int]]:
        x0, y0, x1, y1 = (int(v) // cell for v in box)
        return [(cx, cy) for cx in range(x0, x1 + 1) for cy in range(y0, y1 + 1)]

    for i in order.tolist():
        box = xyxy[i]
        near = {g for c in cells(box) for g in grid.get(c, ())}
        if near:
            cand = np.sort(np.fromiter(near, np.int64, len(near)))  # ties go to the earlier (better) group
            cand = cand[(group_class[cand] == class_id[i])]
            cand = cand[[int(tile[i]) not in tiles_of[g] for g in cand.tolist()]]  # one box per tile
        else:
            cand = np.zeros(0, np.int64)
        if len(cand):
            iou, ioa_group = pair_geometry(box[None, :], extents[cand])  # share of each group inside box
            _, ioa_box = pair_geometry(extents[cand], box[None, :])  # share of box inside each group
            iou, ios = iou[0], np.maximum(ioa_group[0], ioa_box[:, 0])
            either_cut = bool(cut[i]) | ~whole[cand]
            ok = (iou >= config.merge_iou) | (either_cut & (ios >= config.merge_ios))
            if ok.any():
                strength = np.where(either_cut, np.maximum(ios, iou), iou)
                g = int(cand[int(np.argmax(np.where(ok, strength, -1.0)))])
                members[g].append(i)
                tiles_of[g].add(int(tile[i]))
                if not whole[g]:  # a group of cut parts grows to their union
                    extents[g, :2] = np.minimum(extents[g, :2], box[:2])
                    extents[g, 2:] = np.maximum(extents[g, 2:], box[2:])
                    for c in cells(extents[g]):
                        if g not in grid.setdefault(c, []):
                            grid[c].append(g)
                continue
        g = len(members)
        extents[g] = box
        whole[g] = not bool(cut[i])
        group_class[g] = class_id[i]
        tiles_of.append({int(tile[i])})
        members.append([i])
        for c in cells(box):
            grid.setdefault(c, []).append(g)
    return [(m, extents[g].copy()) for g, m in enumerate(members)]


def merge_tile_detections(
    tiles: Sequence[Detections],
    windows: np.ndarray,
    *,
    width: int,
    height: int,
    config: TileConfig,
) -> Detections:
    """Map per-tile detections to the image and merge the objects found in several tiles.

    Args:
        tiles: one scored ``Detections`` per window, in that tile's pixels.
        windows: int64 (T, 4) the tiles' ``[x0, y0, x1, y1]`` in image pixels (:func:`tile_windows`).
        width: image width in pixels.
        height: image height in pixels.
        config: ``merge``, ``merge_iou``, ``merge_ios`` and ``edge`` are used (rules in the module docstring).

    Returns:
        Scored ``Detections`` in image pixels, clipped to the image, best score first.

    Example (a deposit at x 290..330 cut by the right edge of tile 0 and whole in tile 1)::

        >>> wins = np.array([[0, 0, 300, 100], [200, 0, 500, 100]])
        >>> part = Detections(np.array([[290, 40, 300, 60]], np.float32), np.zeros(1, np.int64),
        ...                   np.array([0.9], np.float32))
        >>> whole = Detections(np.array([[90, 40, 130, 60]], np.float32), np.zeros(1, np.int64),
        ...                    np.array([0.8], np.float32))
        >>> merged = merge_tile_detections([part, whole], wins, width=500, height=100,
        ...                                config=TileConfig(size=300, overlap=100))
        >>> merged.xyxy.tolist(), merged.score.tolist()
        ([[290.0, 40.0, 330.0, 60.0]], [0.800000011920929])
    """
    windows = np.asarray(windows, np.int64).reshape(-1, 4)
    if len(tiles) != len(windows):
        raise ValueError(f"tiles: expected one Detections per window ({len(windows)}), got {len(tiles)}")
    parts_xyxy, parts_score, parts_class, parts_tile, parts_cut = [], [], [], [], []
    for t, (det, window) in enumerate(zip(tiles, windows, strict=True)):
        if not isinstance(det, Detections):
            raise TypeError(f"tiles[{t}]: expected Detections, got {type(det).__name__}")
        if len(det) == 0:
            continue
        if det.score is None:
            raise ValueError(f"tiles[{t}]: expected scored detections (score is None)")
        local = det.xyxy.astype(np.float64)
        parts_cut.append(_cut_mask(local, window, width, height, config.edge))
        parts_xyxy.append(local + window[[0, 1, 0, 1]])
        parts_score.append(det.score.astype(np.float64))
        parts_class.append(det.class_id)
        parts_tile.append(np.full(len(det), t, np.int64))
    if not parts_xyxy:
        return Detections.empty(with_score=True)
    xyxy = np.concatenate(parts_xyxy)
    score = np.concatenate(parts_score)
    class_id = np.concatenate(parts_class)
    tile = np.concatenate(parts_tile)
    cut = np.concatenate(parts_cut)
    if len(windows) == 1:
        order = np.argsort(-score, kind="stable")
        kept = Detections(xyxy[order].astype(np.float32), class_id[order], score[order].astype(np.float32))
        return kept.clip(width, height)

    groups = _group_across_tiles(xyxy, score, class_id, tile, cut, config)
    members = [m for m, _ in groups]
    extents = np.array([e for _, e in groups], np.float64).reshape(-1, 4)
    group_class = [int(class_id[m[0]]) for m in members]

    out_xyxy = np.empty((len(members), 4), np.float64)
    out_score = np.empty(len(members), np.float64)
    for g, idx in enumerate(members):
        index = np.asarray(idx)
        whole = index[~cut[index]]
        if len(whole) == 0:
            out_xyxy[g] = extents[g]
            out_score[g] = score[index].max()
        elif config.merge is Merge.WBF:
            weight = score[whole]
            out_xyxy[g] = (xyxy[whole] * weight[:, None]).sum(0) / max(float(weight.sum()), 1e-12)
            out_score[g] = weight.mean()
        else:
            out_xyxy[g] = xyxy[whole[0]]  # the anchor: best whole box
            out_score[g] = score[whole[0]]
    best = np.argsort(-out_score, kind="stable")
    merged = Detections(
        out_xyxy[best].astype(np.float32),
        np.asarray(group_class, np.int64)[best],
        np.clip(out_score[best], 0.0, 1.0).astype(np.float32),
    )
    return merged.clip(width, height)


def _read_pixels(path: Path, index: int, normalization: ImageNormalization | None = None) -> np.ndarray:
    """uint8 (H, W, 3) RGB pixels of an image file, decoded at its own depth and normalised like every other
    image the detectors see (``formats.images``; 8-bit files are unchanged under the default)."""
    if not path.is_file():
        raise FileNotFoundError(f"images[{index}]: no image file at {path}")
    return normalize_image(read_image(path), normalization or ImageNormalization())


def _image_size(image: ImageInput, index: int) -> tuple[int, int]:
    """(width, height) without decoding a file's pixels."""
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"images[{index}]: expected an HxW or HxWx3 array, got shape {image.shape}")
        return int(image.shape[1]), int(image.shape[0])
    if isinstance(image, str | Path):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"images[{index}]: no image file at {path}")
        return image_size(path)  # as shown: after EXIF orientation, as read_image decodes it
    raise TypeError(f"images[{index}]: expected a path or a numpy array, got {type(image).__name__}")


@dataclass
class TilePrediction:
    """The raw tile detections of one image, before the cross-tile merge.

    Attributes:
        width: image width in pixels.
        height: image height in pixels.
        windows: int64 (T, 4) tile windows in image pixels.
        tiles: one scored ``Detections`` per window, in tile pixels.
    """

    width: int
    height: int
    windows: np.ndarray
    tiles: list[Detections] = field(default_factory=list)

    def merge(self, config: TileConfig) -> Detections:
        """The image's detections: :func:`merge_tile_detections` of the tiles."""
        return merge_tile_detections(
            self.tiles, self.windows, width=self.width, height=self.height, config=config
        )


class TiledDetector:
    """Any :class:`~model.detector.Detector`, applied tile by tile to images larger than a tile.

    Args:
        inner: the detector that predicts each tile (it should have been trained on tiles of this size).
        config: tile size, overlap and merge rule.

    Attributes:
        names: the inner detector's class names.
        version: the inner detector's version.
    """

    def __init__(self, inner: Detector, config: TileConfig) -> None:
        if not isinstance(config, TileConfig):
            raise TypeError(f"config: expected TileConfig, got {type(config).__name__}")
        self.inner = inner
        self.config = config
        self.names: list[str] = list(inner.names)
        self.version: str = inner.version

    def predict(
        self, images: Sequence[ImageInput], *, conf: float = PREDICT_CONF, batch: int = 16
    ) -> list[Detections]:
        """Detect boxes, tiling every image larger than a tile (see the module docstring).

        Args:
            images: image paths, or uint8 arrays HxW (grayscale) or HxWx3 (RGB).
            conf: minimum confidence returned, in [0, 1] (applied per tile by the inner detector).
            batch: tiles per call of the inner detector (and per forward pass).

        Returns:
            One scored ``Detections`` per image, in that image's pixels (boxes clipped to it).
        """
        return [tp.merge(self.config) for tp in self.iter_tiles(images, conf=conf, batch=batch)]

    def iter_tiles(
        self, images: Sequence[ImageInput], *, conf: float = PREDICT_CONF, batch: int = 16
    ) -> Iterator[TilePrediction]:
        """The unmerged tile detections of each image, in order, computed lazily chunk by chunk.

        Arguments as :meth:`predict`. An image is read when its first tile is queued and dropped once its
        last tile is predicted.
        """
        if not 0.0 <= conf <= 1.0:
            raise ValueError(f"conf: expected a value in [0, 1], got {conf}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch: expected a positive integer, got {batch!r}")
        if isinstance(images, str | Path | np.ndarray):
            raise TypeError("images: expected a sequence of images; wrap a single image in a list")
        size, overlap = self.config.size, self.config.overlap
        chunk: list[ImageInput] = []
        owners: list[tuple[TilePrediction, int]] = []
        done: list[TilePrediction] = []  # finished, not yet yielded (order is kept: images finish in order)

        def flush() -> None:
            if not chunk:
                return
            found = self.inner.predict(list(chunk), conf=conf, batch=batch)
            if len(found) != len(chunk):
                raise RuntimeError(f"inner detector returned {len(found)} results for {len(chunk)} tiles")
            for (pending, w), det in zip(owners, found, strict=True):
                pending.tiles[w] = det
                if w == len(pending.windows) - 1:
                    done.append(pending)
            chunk.clear()
            owners.clear()

        for index, image in enumerate(images):
            width, height = _image_size(image, index)
            windows = tile_windows(width, height, size=size, overlap=overlap)
            pending = TilePrediction(
                width, height, windows, [Detections.empty(with_score=True)] * len(windows)
            )
            if len(windows) == 1:
                sources: Iterator[ImageInput] = iter([image])  # not tiled: the inner detector reads it
            else:
                pixels = image if isinstance(image, np.ndarray) else _read_pixels(Path(image), index)
                sources = (pixels[y0:y1, x0:x1] for x0, y0, x1, y1 in windows.tolist())
            for w, source in enumerate(sources):
                chunk.append(source)
                owners.append((pending, w))
                if len(chunk) >= batch:
                    flush()
                    yield from done
                    done.clear()
        flush()
        yield from done


def tile_dataset(
    images: Sequence[LabeledImage],
    out_dir: Path | str,
    *,
    config: TileConfig,
    min_visible: float = 0.25,
    negatives: float = 1.0,
    normalization: ImageNormalization | None = None,
) -> list[LabeledImage]:
    """Training images as tiles: images larger than a tile become tile files with their boxes.

    Every tile of :func:`tile_windows` (same grid as inference) is cut from the image and written to
    ``out_dir`` (TIFF sources as TIFF, others as PNG, the source's pixel mode kept, so 16-bit data stays
    16-bit). A box is clipped to each tile it overlaps and kept there only if at least ``min_visible`` of its
    area lies inside the tile: a sliver of a deposit at a tile edge is hard to recognise and would teach the
    model to fire on fragments. With the default 0.25, a box cut in half is kept in both tiles (as the cut
    boxes that inference merges), and a part showing less than a quarter of its box is dropped. Tiles
    without a box are kept up to ``negatives`` per tile with boxes (at least one per image unless
    ``negatives`` is 0; chosen evenly over the image), so background is learnt without drowning the deposits
    in empty tiles. Images no larger than a tile are returned unchanged.

    Args:
        images: labelled images (boxes in image pixels).
        out_dir: folder for the tile files (created).
        config: tile size and overlap.
        min_visible: share of a box's area that must lie in a tile for the box to be labelled there, (0, 1].
        negatives: empty tiles kept per tile with boxes, >= 0.
        normalization: when given, each image is normalised whole (``formats.images.normalize_image``) and
            its tiles written as 8-bit PNG: the pixels tiled prediction sees, since the backend normalises a
            whole image before cutting it (a per-tile stretch would differ). None keeps the source's depth.

    Returns:
        The tiles (and untiled images), in input order, tiles row by row.

    Raises:
        ValueError: ``min_visible`` or ``negatives`` out of range.
        FileNotFoundError: an image file is missing.
    """
    from PIL import Image, ImageOps

    if not 0.0 < min_visible <= 1.0:
        raise ValueError(f"min_visible: expected a share in (0, 1], got {min_visible}")
    if not math.isfinite(negatives) or negatives < 0:
        raise ValueError(f"negatives: expected a finite number >= 0, got {negatives}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result: list[LabeledImage] = []
    n_tiled = n_dropped = 0
    for index, item in enumerate(images):
        if not isinstance(item, LabeledImage):
            raise TypeError(f"images[{index}]: expected LabeledImage, got {type(item).__name__}")
        windows = tile_windows(item.width, item.height, size=config.size, overlap=config.overlap)
        if len(windows) == 1:
            result.append(item)
            continue
        if not item.path.is_file():
            raise FileNotFoundError(f"images[{index}].path: no image file at {item.path}")
        labels = item.labels.clip(item.width, item.height)
        boxes = labels.xyxy.astype(np.float64)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        win = windows.astype(np.float64)
        lo = np.maximum(boxes[None, :, :2], win[:, None, :2])  # (T, N, 2)
        hi = np.minimum(boxes[None, :, 2:], win[:, None, 2:])
        inter = np.clip(hi - lo, 0, None).prod(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            visible = np.where(area > 0, inter / area, 0.0)  # (T, N)
        keep = (visible >= min_visible) & (inter > 0)
        n_dropped += int(((inter > 0) & ~keep).sum())
        labelled = np.flatnonzero(keep.any(1))
        empty = np.flatnonzero(~keep.any(1))
        quota = min(len(empty), max(1 if negatives > 0 else 0, round(negatives * len(labelled))))
        spread = np.unique(np.linspace(0, len(empty) - 1, quota).round().astype(np.int64))
        chosen = empty[spread] if quota else np.zeros(0, np.int64)
        if normalization is not None:
            pixels = normalize_image(read_image(item.path), normalization)
            if pixels.shape[:2] != (item.height, item.width):
                raise ValueError(
                    f"images[{index}]: {item.path} is {pixels.shape[1]}x{pixels.shape[0]}, labelled as "
                    f"{item.width}x{item.height}"
                )
            for t in sorted([*labelled.tolist(), *chosen.tolist()]):
                x0, y0, x1, y1 = windows[t].tolist()
                path = write_image(out / f"{index:06d}_{item.path.stem}_x{x0}_y{y0}", pixels[y0:y1, x0:x1])
                sel = np.flatnonzero(keep[t])
                local = np.concatenate([lo[t, sel], hi[t, sel]], axis=1) - np.array([x0, y0, x0, y0])
                tile_labels = Detections(local.astype(np.float32), labels.class_id[sel])
                result.append(LabeledImage(path, tile_labels, x1 - x0, y1 - y0))
                n_tiled += 1
            continue
        suffix = ".tif" if item.path.suffix.lower() in (".tif", ".tiff") else ".png"
        with Image.open(item.path) as raw:
            img = ImageOps.exif_transpose(raw)  # the image as shown, as the labels and read_image see it
            if (img.width, img.height) != (item.width, item.height):
                raise ValueError(
                    f"images[{index}]: {item.path} is {img.width}x{img.height}, labelled as "
                    f"{item.width}x{item.height}"
                )
            img.load()
            for t in sorted([*labelled.tolist(), *chosen.tolist()]):
                x0, y0, x1, y1 = windows[t].tolist()
                path = out / f"{index:06d}_{item.path.stem}_x{x0}_y{y0}{suffix}"
                img.crop((x0, y0, x1, y1)).save(path)
                sel = np.flatnonzero(keep[t])
                local = np.concatenate([lo[t, sel], hi[t, sel]], axis=1) - np.array([x0, y0, x0, y0])
                tile_labels = Detections(local.astype(np.float32), labels.class_id[sel])
                result.append(LabeledImage(path, tile_labels, x1 - x0, y1 - y0))
                n_tiled += 1
    logger.info(
        "tiled %d images into %d tiles of %d px (%d box parts below %.0f%% visible dropped)",
        sum(1 for _ in images), n_tiled, config.size, n_dropped, 100 * min_visible,
    )  # fmt: skip
    return result
