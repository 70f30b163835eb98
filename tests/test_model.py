"""model/: device choice, YOLO dataset writer, checkpoint registry, and one tiny real train + predict."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TEST_DEVICE, make_detections
from PIL import Image

from model.dataset import LabeledImage, write_yolo_dataset
from model.detector import (
    PREDICT_CONF,
    Detector,
    TrainResult,
    family_names,
    get_family,
    load_detector,
    register_family,
)
from model.device import configure_threads, resolve_device
from model.registry import ModelRegistry, ModelVersion
from selection.detections import Detections

# ---------------------------------------------------------------- device


def test_resolve_device_auto_and_cpu():
    import torch

    assert resolve_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(" CPU ") == "cpu"


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [("gpu", ValueError, "device"), ("cuda:x", ValueError, "device"), (0, TypeError, "device")],
)
def test_resolve_device_rejects_bad_spec(spec, error, message):
    with pytest.raises(error, match=message):
        resolve_device(spec)


def test_resolve_device_cuda_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device(spec)


def test_configure_threads():
    import torch

    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1
        assert torch.get_num_threads() == 1
        assert configure_threads(None) == (os.cpu_count() or 1)
        for bad in (0, -1, 1.5, True):
            with pytest.raises(ValueError, match="n:"):
                configure_threads(bad)
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- dataset writer


def _png(path: Path, size: tuple[int, int] = (40, 20), value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0]), value, np.uint8)).save(path)
    return path


def test_labeled_image_validates():
    with pytest.raises(ValueError, match="width"):
        LabeledImage(Path("a.png"), Detections.empty(), 0, 10)
    with pytest.raises(ValueError, match="height"):
        LabeledImage(Path("a.png"), Detections.empty(), 10, 2.5)
    with pytest.raises(TypeError, match="labels"):
        LabeledImage(Path("a.png"), [[0, 0, 1, 1]], 10, 10)
    assert isinstance(LabeledImage("a.png", Detections.empty(), 10, 10).path, Path)


def test_write_yolo_dataset_files_yaml_and_links(tmp_path):
    # Two images named "x.png" in different folders must not collide.
    a = _png(tmp_path / "src" / "one" / "x.png")
    b = _png(tmp_path / "src" / "two" / "x.png", value=7)
    c = _png(tmp_path / "src" / "c.png")
    train = [
        # 40 x 20 image; box (4, 2)-(12, 10): cx 8/40, cy 6/20, w 8/40, h 8/20.
        LabeledImage(a, make_detections([[4, 2, 12, 10]]), 40, 20),
        LabeledImage(b, Detections.empty(), 40, 20),  # background image
    ]
    # Box partly outside the image is clipped to (30, 10)-(40, 20); a zero-size one is dropped.
    val = [LabeledImage(c, make_detections([[30, 10, 50, 30], [5, 5, 5, 9]], classes=[1, 0]), 40, 20)]
    root = tmp_path / "ds"
    data_yaml = write_yolo_dataset(root, train, val, ["deposit", "other"])

    assert data_yaml == (root / "data.yaml").resolve()
    data = yaml.safe_load(data_yaml.read_text())
    assert data == {
        "path": str(root.resolve()),
        "train": "images/train",
        "val": "images/val",
        "names": {0: "deposit", 1: "other"},
    }
    images = sorted((root / "images" / "train").iterdir())
    assert [p.name for p in images] == ["000000_x.png", "000001_x.png"]
    for link, source in zip(images, [a, b], strict=True):
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        assert link.resolve() == source.resolve()
    labels = root / "labels" / "train"
    assert (labels / "000000_x.txt").read_text() == "0 0.200000 0.300000 0.200000 0.400000\n"
    assert (labels / "000001_x.txt").read_text() == ""
    assert (root / "labels" / "val" / "000000_c.txt").read_text() == "1 0.875000 0.750000 0.250000 0.500000\n"


def test_write_yolo_dataset_rewrite_removes_stale_files(tmp_path):
    a = _png(tmp_path / "a.png")
    b = _png(tmp_path / "b.png")
    item_a = LabeledImage(a, Detections.empty(), 40, 20)
    item_b = LabeledImage(b, Detections.empty(), 40, 20)
    root = tmp_path / "ds"
    write_yolo_dataset(root, [item_a, item_b], [item_a], ["deposit"], test=[item_b])
    (root / "labels" / "train.cache").write_text("stale")
    data_yaml = write_yolo_dataset(root, [item_b], [item_a], ["deposit"])
    assert not (root / "labels" / "train.cache").exists()
    assert [p.name for p in (root / "images" / "train").iterdir()] == ["000000_b.png"]
    assert [p.name for p in (root / "labels" / "train").iterdir()] == ["000000_b.txt"]
    assert not (root / "images" / "test").exists()
    assert "test" not in yaml.safe_load(data_yaml.read_text())


@pytest.mark.parametrize(
    ("case", "error", "message"),
    [
        ("class out of range", ValueError, "class id 1"),
        ("missing image", FileNotFoundError, "no image file"),
        ("no train", ValueError, "train"),
        ("no val", ValueError, "val"),
        ("no names", ValueError, "names"),
    ],
)
def test_write_yolo_dataset_errors(tmp_path, case, error, message):
    ok = LabeledImage(_png(tmp_path / "a.png"), Detections.empty(), 40, 20)
    train, val, names = [ok], [ok], ["deposit"]
    if case == "class out of range":
        train = [LabeledImage(ok.path, make_detections([[0, 0, 4, 4]], classes=[1]), 40, 20)]
    elif case == "missing image":
        train = [LabeledImage(tmp_path / "missing.png", Detections.empty(), 40, 20)]
    elif case == "no train":
        train = []
    elif case == "no val":
        val = []
    else:
        names = []
    with pytest.raises(error, match=message):
        write_yolo_dataset(tmp_path / "ds", train, val, names)


# ---------------------------------------------------------------- registry


def _fake_weights(path: Path, payload: bytes) -> Path:
    path.write_bytes(payload)
    return path


def test_registry_publish_and_restart(tmp_path):
    registry = ModelRegistry(tmp_path / "models")
    assert registry.latest() is None and registry.versions() == []
    first = registry.publish(_fake_weights(tmp_path / "a.pt", b"first"), {"map50": 0.5})
    second = registry.publish(_fake_weights(tmp_path / "b.pt", b"second"), {"map50": 0.6})
    assert first.version.startswith("v0001-") and second.version.startswith("v0002-")
    assert second.weights == tmp_path / "models" / "versions" / second.version / "weights.pt"
    assert second.weights.read_bytes() == b"second"
    assert second.meta["map50"] == 0.6 and second.meta["version"] == second.version
    assert (tmp_path / "models" / "LATEST").read_text().strip() == second.version
    # Nothing temporary is left behind.
    assert sorted(p.name for p in (tmp_path / "models" / "versions").iterdir()) == [
        first.version,
        second.version,
    ]
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]

    restarted = ModelRegistry(tmp_path / "models")
    assert restarted.latest() == second
    assert [v.version for v in restarted.versions()] == [first.version, second.version]
    assert restarted.get(first.version).weights.read_bytes() == b"first"
    assert sorted(v.version for v in restarted.versions()) == [v.version for v in restarted.versions()]


@pytest.mark.parametrize("latest_text", [None, "", "garbage\n", "v0009-20260101T000000\n", "../../etc\n"])
def test_registry_latest_falls_back_to_newest_complete(tmp_path, latest_text):
    registry = ModelRegistry(tmp_path)
    registry.publish(_fake_weights(tmp_path / "a.pt", b"a"), {})
    newest = registry.publish(_fake_weights(tmp_path / "b.pt", b"b"), {})
    latest_file = tmp_path / "LATEST"
    if latest_text is None:
        latest_file.unlink()
    else:
        latest_file.write_text(latest_text)
    assert ModelRegistry(tmp_path).latest() == newest


def test_registry_ignores_incomplete_versions(tmp_path):
    registry = ModelRegistry(tmp_path)
    good = registry.publish(_fake_weights(tmp_path / "a.pt", b"a"), {})
    # A crash mid-copy: a newer version folder without meta.json, one with broken meta, and a staging folder.
    (tmp_path / "versions" / "v0005-20990101T000000").mkdir()
    _fake_weights(tmp_path / "versions" / "v0005-20990101T000000" / "weights.pt", b"half")
    broken = tmp_path / "versions" / "v0006-20990101T000000"
    broken.mkdir()
    (broken / "meta.json").write_text("{not json")
    (tmp_path / "versions" / ".tmp-crashed").mkdir()
    (tmp_path / "LATEST").write_text("v0005-20990101T000000\n")
    assert registry.latest() == good
    assert [v.version for v in registry.versions()] == [good.version]
    with pytest.raises(KeyError, match="v0005"):
        registry.get("v0005-20990101T000000")
    # The next publish numbers past the incomplete folders, never reusing their names.
    nxt = registry.publish(_fake_weights(tmp_path / "b.pt", b"b"), {})
    assert nxt.version.startswith("v0007-") and registry.latest() == nxt


def test_registry_errors(tmp_path):
    registry = ModelRegistry(tmp_path)
    with pytest.raises(KeyError, match="no complete model version"):
        registry.get("v0001-20260101T000000")
    with pytest.raises(FileNotFoundError, match="weights"):
        registry.publish(tmp_path / "missing.pt", {})
    with pytest.raises(TypeError, match="meta"):
        registry.publish(_fake_weights(tmp_path / "a.pt", b"a"), {"bad": object()})
    assert registry.versions() == []  # the failed publish left nothing


def test_model_version_is_frozen():
    version = ModelVersion("v0001-20260101T000000", Path("w.pt"), {})
    assert version.number == 1
    with pytest.raises(AttributeError):
        version.version = "x"  # type: ignore[misc]


# ---------------------------------------------------------------- train/predict argument checks


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"init": "missing.pt"}, FileNotFoundError, "init"),
        ({"init": "model.txt"}, ValueError, "init"),
        ({"epochs": 0}, ValueError, "epochs"),
        ({"imgsz": -32}, ValueError, "imgsz"),
        ({"extra": {"epochs": 3}}, ValueError, "extra"),
        ({"data_yaml": "missing.yaml"}, FileNotFoundError, "data_yaml"),
    ],
)
def test_train_detector_rejects_bad_arguments(tmp_path, kwargs, error, message):
    from model.train import train_detector

    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text("path: .\n")
    args = {"data_yaml": data_yaml, "out_dir": tmp_path / "out", **kwargs}
    if "data_yaml" in kwargs:
        args["data_yaml"] = tmp_path / kwargs["data_yaml"]
    with pytest.raises(error, match=message):
        train_detector(**args)


def test_detector_load_missing_weights(tmp_path):
    from model.predict import YoloDetector

    with pytest.raises(FileNotFoundError, match="weights"):
        YoloDetector.load(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="weights"):
        get_family("yolo").load(tmp_path / "missing.pt")


# ---------------------------------------------------------------- detector interface and families


class _FakeDetector:
    """Returns, for every image, one box over its left half, scored 0.5."""

    def __init__(self, weights: Path, version: str) -> None:
        self.names = ["deposit"]
        self.version = version
        self.weights = weights

    def predict(self, images, *, conf=PREDICT_CONF, batch=16):
        out = []
        for image in images:
            h, w = np.asarray(image).shape[:2]
            box = make_detections([[0, 0, w / 2, h]], scores=[0.5])
            out.append(box if conf <= 0.5 else Detections.empty(with_score=True))
        return out


class _FakeFamily:
    name = "fake"
    default_init = "scratch"

    def __init__(self) -> None:
        self.trained: list[dict] = []

    def check_init(self, init):
        if init != "scratch" and not Path(init).is_file():
            raise ValueError(f"init: expected 'scratch' or a file, got {init!r}")

    def load(self, weights, *, device="auto", version=""):
        if not Path(weights).is_file():
            raise FileNotFoundError(f"weights: no checkpoint file at {weights}")
        return _FakeDetector(Path(weights), version)

    def train(self, *, train, val, names, out_dir, init=None, epochs, batch, **options):
        self.trained.append({"n_train": len(train), "names": list(names), "init": init, **options})
        out_dir.mkdir(parents=True, exist_ok=True)
        weights = out_dir / "fake.pt"
        weights.write_bytes(b"fake")
        return TrainResult(weights=weights, seconds=0.0, epochs=epochs, options={"init": init or "scratch"})


@pytest.fixture
def fake_family():
    import model.detector as detector_module

    family = _FakeFamily()
    register_family("fake", lambda: family)
    yield family
    detector_module._FACTORIES.pop("fake", None)
    detector_module._CACHE.pop("fake", None)


def test_family_registry_and_load_detector_by_recorded_family(tmp_path, fake_family):
    assert "fake" in family_names() and "yolo" in family_names()
    assert get_family("fake") is fake_family
    assert get_family("yolo").name == "yolo"
    with pytest.raises(ValueError, match=r"family: expected one of \[.*'yolo'\], got 'nope'"):
        get_family("nope")
    with pytest.raises(ValueError, match="name"):
        register_family(" ", _FakeFamily)

    registry = ModelRegistry(tmp_path / "models")
    fake = registry.publish(_fake_weights(tmp_path / "a.pt", b"a"), {"family": "fake"})
    legacy = registry.publish(_fake_weights(tmp_path / "b.pt", b"b"), {})
    assert fake.family == "fake" and legacy.family == "yolo"  # versions without a family are YOLO's
    detector = load_detector(registry.get(fake.version), device="cpu")
    assert isinstance(detector, Detector) and detector.version == fake.version
    assert detector.weights == fake.weights
    preds = detector.predict([np.zeros((10, 20), np.uint8)])
    assert preds[0].xyxy.tolist() == [[0, 0, 10, 10]]
    unknown = registry.publish(_fake_weights(tmp_path / "c.pt", b"c"), {"family": "rcnn"})
    with pytest.raises(ValueError, match="got 'rcnn'"):
        load_detector(unknown)
    with pytest.raises(TypeError, match=r"meta\.family"):
        registry.publish(_fake_weights(tmp_path / "d.pt", b"d"), {"family": 3})


def test_yolo_family_sizes_and_init():
    from model.yolo import YoloFamily, yolo_imgsz

    family = YoloFamily()
    assert isinstance(get_family("yolo"), YoloFamily)
    item = lambda w, h: LabeledImage(Path("a.png"), Detections.empty(), w, h)  # noqa: E731
    assert yolo_imgsz([item(96, 96)]) == 96
    assert yolo_imgsz([item(97, 20), item(10, 60)]) == 128
    assert yolo_imgsz([item(5, 5)]) == 32
    with pytest.raises(ValueError, match="images"):
        yolo_imgsz([])
    family.check_init("yolov8n.yaml")
    with pytest.raises(ValueError, match="init: expected a model yaml"):
        family.check_init("resnet")
    with pytest.raises(ValueError, match="keep"):
        family.train(train=[item(8, 8)], val=[item(8, 8)], names=["d"], out_dir=Path("x"), epochs=1, batch=1,
                     keep="middle")  # fmt: skip


def test_image_sources_are_converted_for_ultralytics(tmp_path):
    from model.predict import _as_source

    gray = np.arange(6, dtype=np.uint8).reshape(2, 3)
    out = _as_source(gray, 0)
    assert out.shape == (2, 3, 3) and np.all(out == gray[:, :, None])
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 255  # red
    assert np.all(_as_source(rgb, 0)[..., 2] == 255)  # BGR: red last
    assert _as_source(_png(tmp_path / "a.png"), 0) == str(tmp_path / "a.png")
    with pytest.raises(TypeError, match=r"images\[3\]"):
        _as_source(gray.astype(np.float32), 3)
    with pytest.raises(ValueError, match="HxW"):
        _as_source(np.zeros((2, 2, 4), np.uint8), 0)
    with pytest.raises(FileNotFoundError, match=r"images\[1\]"):
        _as_source(tmp_path / "missing.png", 1)


# ---------------------------------------------------------------- the cap on boxes per image (MAX_DET)


class _RecordingUltralytics:
    """Stands in for ``ultralytics.YOLO`` behind ``YoloDetector``: records each predict call's options."""

    def __init__(self) -> None:
        self.names = {0: "deposit"}
        self.options: list[dict] = []

    def predict(self, chunk, *, stream, batch, **options):
        from types import SimpleNamespace

        self.options.append(options)
        return [SimpleNamespace(boxes=None, orig_shape=np.asarray(im).shape[:2]) for im in chunk]


def test_max_det_default_is_ultralytics_own():
    from model.detector import MAX_DET
    from model.device import import_ultralytics

    import_ultralytics()
    from ultralytics.cfg import DEFAULT_CFG

    assert MAX_DET == DEFAULT_CFG.max_det == 300  # MAX_DET unset predicts exactly as before


def test_yolo_detector_passes_max_det_to_ultralytics():
    from model.predict import YoloDetector

    def detector(**kw):
        model = _RecordingUltralytics()
        return YoloDetector(model, weights=Path("w.pt"), device="cpu", threads=1, version="v", **kw), model

    image = [np.zeros((8, 8), np.uint8)]
    plain, model = detector()
    plain.predict(image)
    assert plain.max_det == 300 and model.options[-1]["max_det"] == 300
    raised, model = detector(max_det=1000)
    raised.predict(image)
    raised.predict(image, max_det=5)
    assert [o["max_det"] for o in model.options] == [1000, 5]
    for bad in (0, -1, 2.5, True, "300"):
        with pytest.raises(ValueError, match="max_det: expected an integer >= 1"):
            detector(max_det=bad)
        with pytest.raises(ValueError, match="max_det: expected an integer >= 1"):
            plain.predict(image, max_det=bad)


def test_load_detector_passes_max_det_to_the_family(tmp_path, fake_family):
    from model.detector import MAX_DET

    loaded: list[int] = []

    class _CappedFamily(_FakeFamily):
        def load(self, weights, *, device="auto", version="", max_det=MAX_DET):
            loaded.append(max_det)
            return super().load(weights, device=device, version=version)

    registry = ModelRegistry(tmp_path / "models")
    fake = registry.get(registry.publish(_fake_weights(tmp_path / "a.pt", b"a"), {"family": "fake"}).version)
    # A family whose load takes no max_det (written before it existed) loads under the default ...
    assert load_detector(fake, device="cpu").version == fake.version
    # ... and is refused another cap, by name, rather than silently keeping its own.
    with pytest.raises(ValueError, match=r"max_det: the 'fake' detector family has no cap .*MAX_DET at 300"):
        load_detector(fake, device="cpu", max_det=1000)
    with pytest.raises(ValueError, match="max_det: expected an integer >= 1, got 0"):
        load_detector(fake, device="cpu", max_det=0)
    register_family("fake", _CappedFamily)
    load_detector(fake, device="cpu", max_det=1000)
    assert loaded == [1000]


def test_a_real_yolo_returns_up_to_max_det_boxes_past_ultralytics_300(tmp_path):
    """An untrained network at conf 0 (and an NMS that keeps nearly everything) fills any cap it is given."""
    from model.device import import_ultralytics

    import_ultralytics()
    from ultralytics import YOLO

    weights = tmp_path / "untrained.pt"
    YOLO("yolov8n.yaml").save(str(weights))
    image = [np.random.default_rng(0).integers(0, 256, (320, 320, 3), np.uint8)]
    counts = {}
    for cap in (3, 300, 1000):
        detector = get_family("yolo").load(weights, device=TEST_DEVICE, max_det=cap)
        counts[cap] = len(detector.predict(image, conf=0.0, iou=0.99, imgsz=320)[0])
    assert counts == {3: 3, 300: 300, 1000: 1000}


# ---------------------------------------------------------------- one tiny real YOLO run


def _synthetic_discs(folder: Path, n: int, seed: int) -> list[LabeledImage]:
    """Dark discs on a noisy light background, 96 or 128 px square, 1-3 discs each."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        size = 128 if i % 2 else 96
        image = rng.normal(170, 12, (size, size))
        yy, xx = np.mgrid[:size, :size]
        boxes = []
        for _ in range(int(rng.integers(1, 4))):
            r = rng.uniform(8, 14)
            cx, cy = rng.uniform(r, size - r, 2)
            image[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = rng.normal(60, 8)
            boxes.append([cx - r, cy - r, cx + r, cy + r])
        path = folder / f"img{i:02d}.png"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
        items.append(LabeledImage(path, make_detections(boxes), size, size))
    return items


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from model.train import train_detector

    root = tmp_path_factory.mktemp("yolo")
    items = _synthetic_discs(root / "src", 16, seed=0)
    data_yaml = write_yolo_dataset(root / "ds", items[:12], items[12:], ["deposit"])
    progress: list[tuple[int, int]] = []
    result = train_detector(
        data_yaml=data_yaml,
        init="yolov8n.yaml",
        out_dir=root / "runs",
        epochs=2,
        imgsz=128,
        batch=8,
        seed=0,
        device=TEST_DEVICE,
        on_epoch=lambda e, n: progress.append((e, n)),
    )
    return root, items, data_yaml, result, progress


@pytest.mark.slow
def test_tiny_train_predict_warm_start_and_registry(tiny_run):
    from model.train import train_detector

    root, items, data_yaml, result, progress = tiny_run
    assert result.weights.is_file() and result.weights.is_relative_to(root / "runs")
    assert result.weights.name == "best.pt" and result.epochs == 2 and result.seconds > 0
    assert progress == [(1, 2), (2, 2)]
    assert "metrics/mAP50(B)" in result.metrics
    assert not (root / "runs" / "train" / "results.png").exists()  # plots=False
    run_args = yaml.safe_load((root / "runs" / "train" / "args.yaml").read_text())
    assert run_args["amp"] == ("bf16" if TEST_DEVICE.startswith("cuda") else False)  # bf16 autocast on CUDA

    registry = ModelRegistry(root / "models")
    published = registry.publish(result.weights, {"metrics": result.metrics, "family": "yolo"})
    detector = load_detector(ModelRegistry(root / "models").latest(), device=TEST_DEVICE)
    assert isinstance(detector, Detector)
    assert detector.names == ["deposit"] and detector.version == published.version

    val = items[12:]
    gray = [np.asarray(Image.open(item.path)) for item in val]
    from_paths = detector.predict([item.path for item in val], conf=0.001, batch=3)
    from_arrays = detector.predict(gray, conf=0.001, batch=16)
    assert len(from_paths) == len(val) == len(from_arrays)
    for item, dets, same in zip(val, from_paths, from_arrays, strict=True):
        assert isinstance(dets, Detections) and dets.score is not None
        assert dets.score.dtype == np.float32 and np.all((dets.score >= 0) & (dets.score <= 1))
        assert np.all(dets.score >= 0.001)
        assert np.all(dets.xyxy >= 0)
        assert np.all(dets.xyxy[:, [0, 2]] <= item.width) and np.all(dets.xyxy[:, [1, 3]] <= item.height)
        assert np.all(dets.class_id == 0)
        # A grayscale PNG read from disk and the same pixels as an array give the same boxes.
        np.testing.assert_allclose(dets.xyxy, same.xyxy, atol=1e-3)
    assert detector.predict([]) == []

    warm = train_detector(
        data_yaml=data_yaml,
        init=published.weights,
        out_dir=root / "runs",
        name="warm",
        epochs=1,
        imgsz=128,
        batch=8,
        seed=0,
        device=TEST_DEVICE,
        val=False,
    )
    assert warm.weights.is_file() and warm.weights.name == "last.pt" and warm.epochs == 1
    assert warm.weights.parent.parent == root / "runs" / "warm"


@pytest.mark.slow
def test_yolo_family_trains_at_the_images_size_and_keeps_last(tmp_path):
    items = _synthetic_discs(tmp_path / "src", 6, seed=1)  # 96 and 128 px images
    family = get_family("yolo")
    result = family.train(
        train=items[:4],
        val=items[4:],
        names=["deposit"],
        out_dir=tmp_path / "out",
        epochs=1,
        batch=4,
        device=TEST_DEVICE,
        validate=True,
        keep="last",
    )
    assert result.options == {"imgsz": 128, "init": "yolov8n.yaml"}
    assert result.weights.name == "last.pt" and result.weights.is_relative_to(tmp_path / "out" / "run")
    assert (tmp_path / "out" / "dataset" / "data.yaml").is_file()
    detector = family.load(result.weights, device=TEST_DEVICE, version="v")
    assert detector.version == "v" and len(detector.predict([items[0].path])) == 1


@pytest.mark.slow
def test_cpu_training_is_repeatable_at_a_fixed_thread_count(tiny_run):
    """The same data, seed and torch thread count give the same detector (what ``--threads`` relies on)."""
    import torch

    from model.train import train_detector

    root, _items, data_yaml, _result, _progress = tiny_run
    weights = []
    for name in ("first", "again"):
        run = train_detector(
            data_yaml=data_yaml,
            init="yolov8n.yaml",
            out_dir=root / "repeat",
            name=name,
            epochs=1,
            imgsz=96,
            batch=8,
            seed=3,
            device="cpu",
            val=False,
            threads=1,
        )
        model = torch.load(run.weights, map_location="cpu", weights_only=False)["model"]
        weights.append({k: v.float() for k, v in model.state_dict().items()})
    assert weights[0].keys() == weights[1].keys()
    for key, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][key]), key


_ONLINE_PROBE = """
import os, socket
socket.getaddrinfo = lambda *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, '', ('1.1.1.1', 0))]
from model.device import import_ultralytics
import_ultralytics()
from ultralytics.utils import ONLINE
print(os.environ['YOLO_OFFLINE'], ONLINE)
"""


@pytest.mark.parametrize(("preset", "expected"), [(None, "1 False"), ("0", "0 True")])
def test_ultralytics_is_imported_offline_unless_told_otherwise(tmp_path, preset, expected):
    # DNS is made to answer, as on a machine with internet: ultralytics would then count itself online and
    # send usage events and PyPI queries. import_ultralytics sets YOLO_OFFLINE=1 unless the user set it.
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "YOLO_OFFLINE"}
    env["YOLO_CONFIG_DIR"] = str(tmp_path)
    if preset is not None:
        env["YOLO_OFFLINE"] = preset
    out = subprocess.run(
        [sys.executable, "-c", _ONLINE_PROBE],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.split("\n")[-2] == expected
