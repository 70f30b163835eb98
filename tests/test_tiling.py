"""Tiled inference and training (model/tiling.py) and its wiring: settings, service, training job, bench."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import make_detections
from PIL import Image
from scipy import ndimage

from formats.images import read_image
from model.dataset import LabeledImage
from model.detector import PREDICT_CONF, TrainResult, register_family
from model.tiling import (
    Merge,
    TileConfig,
    TiledDetector,
    _image_size,
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

    def __init__(self) -> None:
        self.names = ["deposit"]
        self.version = "v-fake"
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


# ------------------------------------------------------------------------------------------- tiled training


def _labelled_png(path: Path, pixels: np.ndarray, boxes, classes=None) -> LabeledImage:
    Image.fromarray(pixels).save(path)
    return LabeledImage(path, make_detections(boxes, classes=classes), pixels.shape[1], pixels.shape[0])


def test_tile_dataset_normalises_the_whole_image_like_prediction(tmp_path):
    # 12-bit data in a 16-bit PNG: with a normalisation, the tiles are 8-bit crops of the image normalised
    # whole (what the backend cuts at prediction time), not of a per-tile stretch.
    from formats.images import ImageNormalization, normalize_image, read_image, write_image

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 4096, (300, 600), dtype=np.uint16)
    pixels[:, :150] //= 8  # a dark left part: a per-tile stretch would brighten its tile
    path = write_image(tmp_path / "frame16", pixels)
    labels = Detections(np.array([[280, 100, 320, 140]], np.float32), np.zeros(1, np.int64))
    item = LabeledImage(path, labels, 600, 300)
    norm = ImageNormalization()
    tiles = tile_dataset(
        [item], tmp_path / "tiles", config=TileConfig(size=300, overlap=100), normalization=norm
    )
    whole = normalize_image(read_image(path), norm)
    assert len(tiles) >= 2
    for tile in tiles:
        x0 = int(tile.path.stem.split("_x")[1].split("_")[0])
        got = read_image(tile.path)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, whole[:, x0 : x0 + 300])


def test_tile_dataset_clips_boxes_and_drops_slivers(tmp_path):
    # 600 x 300, tiles of 300 overlapping >= 100 -> x 0/150/300, one row.
    pixels = np.random.default_rng(0).integers(0, 255, (300, 600), dtype=np.uint8)
    boxes = [
        [280, 100, 320, 140],  # across x 300: 50 % in tile 0 and tile 2, whole in tile 1
        [446, 10, 466, 30],  # 4 of its 20 px (20 %) in tile 1: a sliver, dropped there; whole in tile 2
        [445, 50, 465, 70],  # 5 of 20 px (25 %, the threshold) in tile 1: kept there
    ]
    item = _labelled_png(tmp_path / "frame.png", pixels, boxes, classes=[0, 1, 0])
    tiles = tile_dataset([item], tmp_path / "tiles", config=TileConfig(size=300, overlap=100))
    assert [(t.path.name, t.width, t.height) for t in tiles] == [
        ("000000_frame_x0_y0.png", 300, 300),
        ("000000_frame_x150_y0.png", 300, 300),
        ("000000_frame_x300_y0.png", 300, 300),
    ]
    assert tiles[0].labels.xyxy.tolist() == [[280, 100, 300, 140]]
    assert tiles[1].labels.xyxy.tolist() == [[130, 100, 170, 140], [295, 50, 300, 70]]
    assert tiles[2].labels.xyxy.tolist() == [[0, 100, 20, 140], [146, 10, 166, 30], [145, 50, 165, 70]]
    assert tiles[2].labels.class_id.tolist() == [0, 1, 0]
    for tile in tiles:  # the files are the image's pixels under each window
        x0 = int(tile.path.stem.split("_x")[1].split("_")[0])
        assert np.array_equal(np.asarray(Image.open(tile.path)), pixels[:, x0 : x0 + 300])
    small = _labelled_png(tmp_path / "small.png", pixels[:100, :100], [[1, 1, 5, 5]])
    assert tile_dataset([small], tmp_path / "tiles", config=TileConfig(size=300, overlap=100)) == [small]


def test_tiles_of_an_exif_rotated_image_are_cut_from_the_image_as_shown(tmp_path):
    # Stored 300 wide x 600 high with EXIF orientation 6 (turn 90 degrees clockwise to show): shown 600 x 300,
    # as Label Studio, read_image and ultralytics see it, and as its labels are drawn.
    shown = np.random.default_rng(1).integers(0, 255, (300, 600), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "turned.png"
    Image.fromarray(np.rot90(shown)).save(path, exif=exif)
    assert np.array_equal(read_image(path), shown)  # the decoder turns it
    assert _image_size(path, 0) == (600, 300)  # what the tiled detector plans its windows on
    item = LabeledImage(path, make_detections([[280, 100, 320, 140]]), 600, 300)
    tiles = tile_dataset([item], tmp_path / "tiles", config=TileConfig(size=300, overlap=100))
    assert [(t.width, t.height) for t in tiles] == [(300, 300)] * 3
    for tile in tiles:
        x0 = int(tile.path.stem.split("_x")[1].split("_")[0])
        assert np.array_equal(np.asarray(Image.open(tile.path)), shown[:, x0 : x0 + 300])


def test_tile_dataset_keeps_few_empty_tiles_and_16_bit_pixels(tmp_path):
    # 1000 x 1000 in 5 x 5 tiles of 256 (overlap >= 64); one box: a single tile has a label.
    pixels = (np.arange(1000 * 1000, dtype=np.uint32).reshape(1000, 1000) % 4096).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(pixels).save(path)
    item = LabeledImage(path, make_detections([[10, 10, 30, 30]]), 1000, 1000)
    config = TileConfig(size=256, overlap=64)
    assert len(tile_windows(1000, 1000, size=256, overlap=64)) == 25
    one = tile_dataset([item], tmp_path / "a", config=config)
    assert [len(t.labels) for t in one] == [1, 0]  # one tile with the box, one empty tile (negatives=1)
    assert len(tile_dataset([item], tmp_path / "b", config=config, negatives=3)) == 4
    assert len(tile_dataset([item], tmp_path / "c", config=config, negatives=0)) == 1
    tile = np.asarray(Image.open(one[0].path))
    assert tile.dtype == np.uint16 and np.array_equal(tile, pixels[:256, :256])  # 16-bit data stays 16-bit
    with pytest.raises(ValueError, match="min_visible"):
        tile_dataset([item], tmp_path / "d", config=config, min_visible=0)
    with pytest.raises(ValueError, match="negatives"):
        tile_dataset([item], tmp_path / "d", config=config, negatives=-1)
    wrong = LabeledImage(path, make_detections([[1, 1, 2, 2]]), 900, 1000)
    with pytest.raises(ValueError, match="labelled as 900x1000"):
        tile_dataset([wrong], tmp_path / "d", config=config)


# ------------------------------------------------------------------------------------------- wiring


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TILE_SIZE": "16"}, "TILE_SIZE: expected 0 .off. or a tile side >= 32 pixels, got 16"),
        ({"TILE_SIZE": "big"}, "TILE_SIZE: expected an integer"),
        ({"TILE_SIZE": "320", "TILE_OVERLAP": "200"}, r"TILE_OVERLAP: expected an integer in \[0, 160\]"),
        ({"TILE_SIZE": "320", "TILE_OVERLAP": "-5"}, "TILE_OVERLAP: expected an integer >= 0"),
        ({"TILE_SIZE": "320", "TILE_MERGE": "mean"}, "TILE_MERGE: expected one of nms, wbf, got 'mean'"),
    ],
)
def test_tile_settings_errors_name_the_variable(tmp_path, env, message):
    from backend.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match=message):
        Settings.from_env({"MODEL_DIR": str(tmp_path), **env})


def test_tile_settings(tmp_path):
    from backend.settings import Settings

    assert Settings.from_env({"MODEL_DIR": str(tmp_path)}).tiling is None
    assert Settings.from_env({"MODEL_DIR": str(tmp_path), "TILE_SIZE": "0"}).tiling is None
    on = Settings.from_env({"MODEL_DIR": str(tmp_path), "TILE_SIZE": "320", "TILE_MERGE": "WBF"}).tiling
    assert on == TileConfig(size=320, overlap=64, merge=Merge.WBF)
    assert Settings.from_env({"MODEL_DIR": str(tmp_path), "TILE_SIZE": "64"}).tiling.overlap == 32


class _BlobFamily:
    name = "tilefake"
    default_init = "scratch"

    def __init__(self) -> None:
        self.trained: list[dict] = []

    def check_init(self, init):
        pass

    def load(self, weights, *, device="auto", version=""):
        blobs = _Blobs()
        blobs.version = version
        return blobs

    def train(self, *, train, val, names, out_dir, init=None, epochs, batch, **options):
        self.trained.append({"train": list(train), "val": list(val), **options})
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "w.pt").write_bytes(b"fake")
        return TrainResult(weights=out_dir / "w.pt", seconds=0.0, epochs=epochs, options={"init": "scratch"})


@pytest.fixture
def blob_family():
    import model.detector as detector_module

    family = _BlobFamily()
    register_family("tilefake", lambda: family)
    yield family
    detector_module._FACTORIES.pop("tilefake", None)
    detector_module._CACHE.pop("tilefake", None)


def test_service_predicts_tiled_when_tile_size_is_set(tmp_path, blob_family, caplog):
    from backend.images import ImageLoader
    from backend.service import ModelService
    from backend.settings import Settings
    from model.registry import ModelRegistry

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"fake")
    meta = {"family": "tilefake", "train_options": {"tiling": None}}
    ModelRegistry(tmp_path / "models").publish(weights, meta)
    settings = Settings(
        model_dir=tmp_path / "models", tiling=TileConfig(size=256, overlap=64), predict_batch=5
    )
    service = ModelService(settings, loader=ImageLoader())
    with caplog.at_level("WARNING"):
        preds, names, _ = service.detect([_frame(700, 500, [(240, 100, 30)]), _frame(50, 50, [])])
    assert isinstance(service.current()[0], TiledDetector) and names == ["deposit"]
    assert preds[0].xyxy.tolist() == [[240, 100, 270, 130]] and len(preds[1]) == 0
    assert "trained on whole images but predicts on 256 px tiles" in caplog.text
    inner = service.current()[0].inner
    assert [len(c) for c in inner.calls] == [5, 5, 3]  # 12 tiles + 1 small image, PREDICT_BATCH chunks


class _CappedBlobs(_Blobs):
    """:class:`_Blobs` with a detector's cap on boxes per image (per tile here), the darkest first."""

    def __init__(self, max_det: int) -> None:
        super().__init__()
        self.max_det = max_det
        self.found: list[int] = []

    def predict(self, images, *, conf=PREDICT_CONF, batch=16):
        out = [d.subset(np.arange(len(d)) < self.max_det) for d in super().predict(images, conf=conf)]
        self.found += [len(d) for d in out]
        return out


class _CappedFamily(_BlobFamily):
    name = "cappedfake"

    def load(self, weights, *, device="auto", version="", max_det=300):
        return _CappedBlobs(max_det)


def test_max_det_caps_each_tile_and_the_merge_keeps_more(tmp_path):
    """``MAX_DET`` reaches the family's load; under ``TILE_SIZE`` it caps each tile, and the merge does not
    cut the image back to the cap."""
    import model.detector as detector_module
    from backend.images import ImageLoader
    from backend.service import ModelService
    from backend.settings import Settings
    from model.registry import ModelRegistry

    register_family("cappedfake", _CappedFamily)
    try:
        weights = tmp_path / "w.pt"
        weights.write_bytes(b"fake")
        meta = {"family": "cappedfake", "train_options": {"tiling": {"size": 256}}}
        ModelRegistry(tmp_path / "models").publish(weights, meta)
        # 20 deposits, 10 px, spread over a 700 x 500 frame: 12 tiles of 256 px, each holding at most 9.
        squares = [(40 + 130 * i, 40 + 110 * j, 10) for i in range(5) for j in range(4)]
        frame = _frame(700, 500, squares)
        found = {}
        for cap in (4, 1000):
            settings = Settings.from_env(
                {"MODEL_DIR": str(tmp_path / "models"), "TILE_SIZE": "256", "MAX_DET": str(cap)}
            )
            service = ModelService(settings, loader=ImageLoader())
            preds, _, _ = service.detect([frame])
            inner = service.current()[0].inner
            assert inner.max_det == cap and max(inner.found) <= cap
            found[cap] = len(preds[0])
        assert max(inner.found) > 4  # uncapped, a tile holds more than 4 deposits; capped at 4 per tile, the
        assert found == {4: 20, 1000: 20}  # overlapping tiles still find all 20, and the image keeps them
    finally:
        detector_module._FACTORIES.pop("cappedfake", None)
        detector_module._CACHE.pop("cappedfake", None)


def test_training_job_trains_on_tiles_and_records_them(tmp_path, blob_family):
    from backend.train_job import run_job
    from model.registry import ModelRegistry

    item = _labelled_png(tmp_path / "f.png", _frame(600, 300, [(280, 100, 40)]), [[280, 100, 320, 140]])
    small = _labelled_png(tmp_path / "s.png", _frame(100, 100, [(5, 5, 10)]), [[5, 5, 15, 15]])

    def as_json(it: LabeledImage) -> dict:
        boxes, classes = it.labels.xyxy.tolist(), it.labels.class_id.tolist()
        return {
            "path": str(it.path),
            "xyxy": boxes,
            "class_id": classes,
            "width": it.width,
            "height": it.height,
        }

    job = {
        "work_dir": str(tmp_path / "job"),
        "model_dir": str(tmp_path / "models"),
        "names": ["deposit"],
        "train": [as_json(item), as_json(small)],
        "val": [as_json(small)],
        "epochs": 1,
        "batch": 2,
        "family": "tilefake",
        "tiling": TileConfig(size=300, overlap=100).as_dict(),
        "task_ids": [4, 9],
        "skipped": {"12": "annotation 30: region 0: rotated rectangles are not supported"},
    }
    version = run_job(json.loads(json.dumps(job)))
    (trained,) = blob_family.trained
    assert [(t.width, t.height, len(t.labels)) for t in trained["train"]] == [
        (300, 300, 1), (300, 300, 1), (300, 300, 1), (100, 100, 1)
    ]  # fmt: skip
    assert trained["train"][0].path.parent == tmp_path / "job" / "tiles" / "train"
    assert trained["val"][0].path == small.path
    meta = ModelRegistry(tmp_path / "models").get(version).meta
    assert meta["train_options"]["tiling"]["size"] == 300 and meta["n_train"] == 2
    # What the training used and what it left out (training_items' skipped tasks) stay with the version.
    assert meta["trained_on"] == [4, 9] and meta["skipped"] == job["skipped"]


# ------------------------------------------------------------------------------------------- bench


def test_bench_plain_nms_keeps_the_fragment_the_cut_aware_merge_absorbs():
    from bench.tiling import plain_nms
    from model.tiling import TilePrediction

    part = _scored([[290, 40, 300, 60]], [0.9])  # IoU 0.25 with the whole box: plain NMS keeps both
    whole = _scored([[90, 40, 130, 60]], [0.7])
    tp = TilePrediction(500, 100, _WINS, [part, whole])
    assert plain_nms(tp).xyxy.tolist() == [[290, 40, 300, 60], [290, 40, 330, 60]]
    assert tp.merge(_CFG).xyxy.tolist() == [[290, 40, 330, 60]]
    dup = TilePrediction(
        500, 100, _WINS, [_scored([[220, 40, 260, 60]], [0.9]), _scored([[21, 40, 61, 60]], [0.5])]
    )
    assert plain_nms(dup).xyxy.tolist() == [[220, 40, 260, 60]]
    assert len(plain_nms(TilePrediction(500, 100, _WINS, [Detections.empty(with_score=True)] * 2))) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tile", "16"], "size"),
        (["--tile", "256", "--overlap", "200"], "overlap"),
        (["--epochs", "0"], "--epochs"),
        (["--memory", "10,x"], "comma-separated integers"),
        (["--frame-epochs", "-1"], "--frame-epochs"),
        (["--frame-imgsz", "-1"], "--frame-imgsz"),
        (["--frame-repeat", "-2"], "--frame-repeat"),
    ],
)
def test_bench_tiling_arguments(argv, message, capsys):
    from bench.tiling import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_bench_tiling_trains_a_whole_frame_model_with_the_tile_models_steps(tmp_path, capsys):
    """One tiny run of the whole benchmark with a whole-frame model at its own input size: each frame repeats
    as often as the tile model's epoch holds tiles, and its row and difference are reported."""
    from bench.tiling import frame_arm, main

    out = tmp_path / "bench"
    argv = ["--n-train", "1", "--n-val", "1", "--n-test", "1", "--epochs", "1", "--imgsz", "64",
            "--frame-epochs", "1", "--frame-imgsz", "96", "--memory", "1", "--memory-model", "1",
            "--threads", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    tiles, frame = report["training"]["tile_model"]["tiles"], report["training"]["frame_model"]
    assert tiles > 1 and frame == {**frame, "frames": 1, "repeat": tiles, "imgsz": 96, "epochs": 1}
    assert set(report["ap"]) >= {"resized frame, tile model", frame_arm(96)}
    printed = capsys.readouterr().out
    assert f"1 whole frames at 96 px, each {tiles} times per epoch" in printed
    assert "tiled - whole frame:" in printed and "; whole frame " in printed
    assert set(report["speed"]["frame_s_per_mp"]) == {"wall", "cpu"}


@pytest.mark.slow
def test_tiled_detector_around_a_real_yolo_detector():
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from backend_helpers import disc_image, tiny_weights

    from model.detector import Detector, get_family

    yolo = get_family("yolo").load(tiny_weights(), device="cpu")
    tiled = TiledDetector(yolo, TileConfig(size=96, overlap=32))
    assert isinstance(tiled, Detector)
    frame = disc_image(240, [(40, 40, 10), (120, 90, 12), (200, 180, 9)], seed=3)[:200]  # 240 x 200
    with_grid = len(tile_windows(240, 200, size=96, overlap=32))
    calls: list[int] = []
    real_predict = yolo.predict

    def counting(images, **options):
        calls.append(len(images))
        return real_predict(images, **options)

    yolo.predict = counting  # type: ignore[method-assign]
    (found,) = tiled.predict([frame], conf=0.0, batch=4)
    assert sum(calls) == with_grid and max(calls) <= 4
    assert found.score is not None and np.all((found.score >= 0) & (found.score <= 1))
    assert (
        np.all(found.xyxy >= 0)
        and np.all(found.xyxy[:, [0, 2]] <= 240)
        and np.all(found.xyxy[:, [1, 3]] <= 200)
    )


# ------------------------------------------------------------------------------------------- simulator


def test_large_preset_has_small_deposits_on_large_frames():
    from synth import generate, get_preset
    from synth.dataset import with_overrides

    large = get_preset("large")
    assert large.image_size == 2048 and (large.n_train, large.n_val, large.n_test) == (12, 4, 12)
    ds = generate(with_overrides(large, n_train=6, n_val=0, n_test=0), 0, render=False)
    boxes = np.concatenate([r.expert.xyxy for r in ds.images])
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert len(boxes) >= 6 * 6 and sides.min() >= 10 and sides.max() <= 90  # a few dozen pixels


def test_wide_noise_on_large_frames_is_smooth_and_normalised(rng):
    from synth.render import _smooth_noise

    field = _smooth_noise((700, 600), 40.0, rng)  # above 512 px: the reduced-resolution path
    assert field.shape == (700, 600) and abs(field.std() - 1) < 1e-9
    assert np.corrcoef(field[:, :-1].ravel(), field[:, 1:].ravel())[0, 1] > 0.99  # smooth at pixel scale
    small = _smooth_noise((300, 300), 40.0, np.random.default_rng(0))  # small frames: the exact filter
    exact = ndimage.gaussian_filter(np.random.default_rng(0).standard_normal((300, 300)), 40.0, mode="wrap")
    np.testing.assert_allclose(small, exact / exact.std())
