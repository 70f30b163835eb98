"""Tiled inference and training (model/tiling.py) and its wiring: settings, service, training job, bench."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from conftest import make_detections
from model.dataset import LabeledImage
from model.detector import PREDICT_CONF, TrainResult, register_family
from model.tiling import (
    Merge,
    TileConfig,
    TiledDetector,
    merge_tile_detections,
    tile_dataset,
    tile_windows,
)
from selection.detections import Detections

# ------------------------------------------------------------------------------------------- geometry


def test_tile_windows_hand_checked():
    # 1000 px, tiles of 400 overlapping >= 100: ceil(900 / 300) = 3 tiles at 0, 300, 600 (exact fit).
    assert tile_windows(1000, 300, size=400, overlap=100).tolist() == [
        [0, 0, 400, 300],
        [300, 0, 700, 300],
        [600, 0, 1000, 300],
    ]
    # 1024 px, tiles of 320 overlapping >= 64: ceil(960 / 256) = 4 tiles spread evenly, overlaps 85-86.
    xs = tile_windows(1024, 100, size=320, overlap=64)[:, 0].tolist()
    assert xs == [0, 234, 469, 704]
    # An image no larger than a tile is one window; row by row, top row first.
    assert tile_windows(200, 150, size=320, overlap=64).tolist() == [[0, 0, 200, 150]]
    assert tile_windows(500, 500, size=300, overlap=100).tolist() == [
        [0, 0, 300, 300],
        [200, 0, 500, 300],
        [0, 200, 300, 500],
        [200, 200, 500, 500],
    ]


@pytest.mark.parametrize("seed", range(5))
def test_tile_windows_cover_overlap_and_keep_full_size(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        size = int(rng.integers(32, 400))
        overlap = int(rng.integers(0, size // 2 + 1))
        width, height = (int(v) for v in rng.integers(1, 3000, 2))
        win = tile_windows(width, height, size=size, overlap=overlap)
        assert win.dtype == np.int64 and win.shape[1] == 4
        assert win[:, :2].min() == 0 and win[:, 2].max() == width and win[:, 3].max() == height
        assert np.all(win[:, 2] - win[:, 0] == min(size, width))  # edge tiles too: one scale
        assert np.all(win[:, 3] - win[:, 1] == min(size, height))
        xs = np.unique(win[:, [0, 2]], axis=0)
        ys = np.unique(win[:, [1, 3]], axis=0)
        assert len(win) == len(xs) * len(ys)
        for spans, side in ((xs, width), (ys, height)):
            if side > size:  # neighbours overlap by at least `overlap`, so nothing is left uncovered
                assert np.all(spans[:-1, 1] - spans[1:, 0] >= overlap)
                expected = math.ceil((side - overlap) / (size - overlap))
                assert len(spans) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 16}, "size: expected an integer tile side >= 32"),
        ({"size": 320.0}, "size"),
        ({"size": 320, "overlap": 161}, r"overlap: expected an integer in \[0, 160\]"),
        ({"size": 320, "overlap": -1}, "overlap"),
        ({"size": 320, "merge": "mean"}, "merge: expected one of nms, wbf"),
        ({"size": 320, "merge_iou": 0.0}, r"merge_iou: expected a value in \(0, 1\]"),
        ({"size": 320, "merge_ios": 1.5}, "merge_ios"),
        ({"size": 320, "edge": -1.0}, "edge"),
    ],
)
def test_tile_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TileConfig(**kwargs)


def test_tile_windows_errors_name_the_argument():
    with pytest.raises(ValueError, match="width"):
        tile_windows(0, 10, size=64, overlap=0)
    with pytest.raises(ValueError, match="overlap"):
        tile_windows(100, 100, size=64, overlap=40)
    assert TileConfig(size=64, overlap=0, merge="WBF").merge is Merge.WBF  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- merging

_WINS = np.array([[0, 0, 300, 100], [200, 0, 500, 100]])  # two tiles overlapping on x 200..300
_CFG = TileConfig(size=300, overlap=100)


def _scored(boxes, scores, classes=None) -> Detections:
    return make_detections(boxes, classes=classes, scores=np.asarray(scores, np.float32))


@pytest.mark.parametrize("merge", list(Merge))
def test_box_cut_by_a_border_merges_into_the_whole_box(merge):
    # A deposit at x 290..330: tile 0 sees x 290..300 (cut by its right edge at 300, inside the image),
    # tile 1 sees all of it at local x 90..130. IoU of the two is 10/40 = 0.25, yet they are one object.
    part = _scored([[290, 40, 300, 60]], [0.9])
    whole = _scored([[90, 40, 130, 60]], [0.7])
    cfg = TileConfig(size=300, overlap=100, merge=merge)
    out = merge_tile_detections([part, whole], _WINS, width=500, height=100, config=cfg)
    assert out.xyxy.tolist() == [[290, 40, 330, 60]]
    assert out.score.tolist() == pytest.approx([0.7])  # the whole box's score, not the fragment's


def test_object_larger_than_the_overlap_is_restored_as_the_union_of_its_parts():
    # x 150..350 spans the whole overlap: tile 0 sees 150..300 (cut right), tile 1 sees 200..350 (cut left).
    left = _scored([[150, 10, 300, 90]], [0.6])
    right = _scored([[0, 12, 150, 88]], [0.8])
    out = merge_tile_detections([left, right], _WINS, width=500, height=100, config=_CFG)
    assert out.xyxy.tolist() == [[150, 10, 350, 90]] and out.score.tolist() == pytest.approx([0.8])


def test_duplicates_of_a_whole_box_nms_keeps_the_best_wbf_averages():
    # A deposit at x 220..260 lies whole in both tiles; the two views differ by 2 px.
    a = _scored([[220, 40, 260, 60]], [0.9])
    b = _scored([[22, 40, 62, 60]], [0.3])  # tile 1 local: image x 222..262
    nms = merge_tile_detections([a, b], _WINS, width=500, height=100, config=_CFG)
    assert nms.xyxy.tolist() == [[220, 40, 260, 60]] and nms.score.tolist() == pytest.approx([0.9])
    wbf_cfg = TileConfig(size=300, overlap=100, merge=Merge.WBF)
    wbf = merge_tile_detections([a, b], _WINS, width=500, height=100, config=wbf_cfg)
    # score-weighted mean: 220 + 2 * 0.3 / 1.2 = 220.5; mean score 0.6
    np.testing.assert_allclose(wbf.xyxy, [[220.5, 40, 260.5, 60]], rtol=1e-6)
    assert wbf.score.tolist() == pytest.approx([0.6])


def test_merge_keeps_distinct_objects_classes_and_same_tile_boxes_apart():
    # Two boxes of tile 0 overlapping at IoU 0.6: the inner detector's NMS kept both, the merge does too.
    same_tile = _scored([[10, 10, 50, 50], [18, 10, 58, 50]], [0.9, 0.8])
    # Across tiles at the same place but another class: two objects.
    other_class = _scored([[20, 40, 60, 60]], [0.5], classes=[1])
    near = _scored([[220, 40, 260, 60]], [0.5])
    out = merge_tile_detections(
        [Detections.concat([same_tile, near]), other_class], _WINS, width=500, height=100, config=_CFG
    )
    assert len(out) == 4 and sorted(out.class_id.tolist()) == [0, 0, 0, 1]
    assert out.score.tolist() == sorted(out.score.tolist(), reverse=True)


def test_a_box_at_the_image_border_is_not_cut():
    # Tile 1's right edge is the image's: a box touching it is whole, and is not merged with tile 0's box
    # (no overlap at all); a box touching tile 0's left image edge neither.
    a = _scored([[0, 0, 30, 30]], [0.5])
    b = _scored([[270, 0, 300, 30]], [0.5])
    out = merge_tile_detections([a, b], _WINS, width=500, height=100, config=_CFG)
    assert sorted(out.xyxy[:, 0].tolist()) == [0, 470]


def test_merge_of_nothing_and_argument_errors():
    empty = Detections.empty(with_score=True)
    assert len(merge_tile_detections([empty, empty], _WINS, width=500, height=100, config=_CFG)) == 0
    with pytest.raises(ValueError, match="one Detections per window"):
        merge_tile_detections([empty], _WINS, width=500, height=100, config=_CFG)
    with pytest.raises(ValueError, match=r"tiles\[1\]: expected scored"):
        merge_tile_detections([empty, make_detections([[0, 0, 5, 5]])], _WINS, width=500, height=100,
                              config=_CFG)  # fmt: skip


# ------------------------------------------------------------------------------------------- wrapper


class _Blobs:
    """A fake detector that finds dark connected regions of a tile, exactly, scored by their darkness.

    Records every call's tile shapes, so the tests can count calls and chunk sizes.
    """

    names = ["deposit"]
    version = "v-fake"

    def __init__(self) -> None:
        self.calls: list[list[tuple[int, ...]]] = []

    def predict(self, images, *, conf=PREDICT_CONF, batch=16):
        self.calls.append([np.asarray(im).shape for im in images])
        out = []
        for image in images:
            pixels = np.asarray(Image.open(image)) if isinstance(image, str | Path) else image
            labels, n = ndimage.label(pixels < 128)
            boxes = [[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in ndimage.find_objects(labels)]
            out.append(_scored(boxes, [0.9] * n) if n else Detections.empty(with_score=True))
        return out


def _frame(width: int, height: int, squares: list[tuple[int, int, int]]) -> np.ndarray:
    image = np.full((height, width), 200, np.uint8)
    for x, y, side in squares:
        image[y : y + side, x : x + side] = 30
    return image


def test_tiled_detector_finds_each_object_once_across_borders():
    # 700 x 500, tiles 256 overlapping >= 64 -> x 0/148/296/444, y 0/122/244: squares straddle borders.
    squares = [(10, 10, 20), (240, 100, 30), (430, 230, 40), (600, 450, 30), (200, 240, 60), (690, 0, 10)]
    inner = _Blobs()
    tiled = TiledDetector(inner, TileConfig(size=256, overlap=64))
    (found,) = tiled.predict([_frame(700, 500, squares)], batch=4)
    expected = sorted([x, y, x + s, y + s] for x, y, s in squares)
    assert sorted(found.xyxy.tolist()) == expected
    assert tiled.names == ["deposit"] and tiled.version == "v-fake"
    assert [len(c) for c in inner.calls] == [4, 4, 4]  # 12 tiles in chunks of 4
    assert all(shape == (256, 256) for call in inner.calls for shape in call)


def test_tiled_detector_streams_images_in_chunks(tmp_path, monkeypatch):
    import model.tiling as tiling

    events: list[str] = []
    real_read = tiling._read_pixels

    def read(path, index):
        events.append(f"read {index}")
        return real_read(path, index)

    monkeypatch.setattr(tiling, "_read_pixels", read)

    class Logged(_Blobs):
        def predict(self, images, *, conf=PREDICT_CONF, batch=16):
            assert len(images) <= batch  # never more tiles at once than a chunk
            events.append(f"predict {len(images)}")
            return super().predict(images, conf=conf, batch=batch)

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(_frame(400, 300, [(20 + 50 * i, 20, 20)])).save(paths[-1])
    small = _frame(100, 80, [(5, 5, 10)])
    tiled = TiledDetector(Logged(), TileConfig(size=256, overlap=64))
    out = tiled.predict([paths[0], small, paths[1], paths[2]], batch=3)
    # Each 400 x 300 frame is 2 x 2 tiles; the small image passes through whole (one "tile").
    assert [o.xyxy.tolist() for o in out] == [
        [[20, 20, 40, 40]],
        [[5, 5, 15, 15]],
        [[70, 20, 90, 40]],
        [[120, 20, 140, 40]],
    ]
    # Frames are read only when their tiles are queued: never all at once.
    assert events == [
        "read 0", "predict 3",  # frame 0's tiles 1-3; its tile 4 and the small image wait in the chunk
        "read 2", "predict 3", "predict 3",
        "read 3", "predict 3", "predict 1",
    ]  # fmt: skip


def test_tiled_detector_argument_errors():
    tiled = TiledDetector(_Blobs(), TileConfig(size=64, overlap=0))
    with pytest.raises(TypeError, match="wrap a single image"):
        tiled.predict(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="batch"):
        tiled.predict([np.zeros((10, 10), np.uint8)], batch=0)
    with pytest.raises(ValueError, match="conf"):
        tiled.predict([np.zeros((10, 10), np.uint8)], conf=2.0)
    with pytest.raises(FileNotFoundError, match=r"images\[0\]"):
        tiled.predict([Path("/nonexistent/a.png")])
    with pytest.raises(TypeError, match="config"):
        TiledDetector(_Blobs(), {"size": 64})  # type: ignore[arg-type]
