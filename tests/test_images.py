"""Bit depth and channels: one decode and one normalisation (formats.images) for training and prediction."""

from __future__ import annotations

import base64
import io
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from backend_helpers import LABEL_CONFIG, data_uri, disc_image, make_task
from conftest import REPO, make_detections

from backend.app import create_app
from backend.images import ImageLoader, ImageLoadError
from backend.settings import Settings, SettingsError
from formats.images import (
    DEFAULT_PERCENTILES,
    ImageNormalization,
    Normalize,
    decode_image,
    load_image,
    normalize_image,
    read_image,
    write_image,
)
from model.dataset import LabeledImage, write_yolo_dataset
from selection.detections import Detections

AUTO = ImageNormalization()


def twelve_bit(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """uint16 12-bit data (0..4095) with a smooth ramp plus noise, so every output level is used."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 4095, shape[1])[None, :] * np.ones(shape[:2])
    if len(shape) == 3:
        ramp = ramp[:, :, None] * np.linspace(0.6, 1.0, shape[2])
    return np.clip(ramp + rng.normal(0, 20, shape), 0, 4095).astype(np.uint16)


def encode(pixels: np.ndarray, ext: str) -> bytes:
    """Encode (H, W) or (H, W, 3) RGB pixels with OpenCV (which writes 16-bit PNG and TIFF)."""
    bgr = pixels if pixels.ndim == 2 else pixels[:, :, ::-1]
    ok, buf = cv2.imencode(ext, bgr)
    assert ok
    return buf.tobytes()


# ------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("channels", [1, 3])
def test_12_bit_data_in_16_bit_files_decodes_with_full_range(ext, channels):
    raw = twelve_bit((40, 64) if channels == 1 else (40, 64, 3))
    data = encode(raw, ext)
    decoded = decode_image(data)
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, raw)  # RGB order, every value kept
    out = load_image(data, AUTO)
    assert out.dtype == np.uint8 and out.shape == (40, 64, 3)
    # The old decode (IMREAD_COLOR) kept the high byte: 0..15. Now the range is used.
    assert int(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).max()) <= 16
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) > 200
    if channels == 3:  # one stretch for all channels: the dimmer channel stays dimmer
        assert out[..., 0].mean() < out[..., 2].mean()


def test_12_bit_tiff_through_the_backend_loader(tmp_path):
    raw = twelve_bit((30, 50))
    (tmp_path / "a.tif").write_bytes(encode(raw, ".tiff"))
    loader = ImageLoader(document_root=tmp_path)
    loaded = loader.load("/data/local-files/?d=a.tif", task="1")
    assert loaded.path == tmp_path / "a.tif"
    np.testing.assert_array_equal(loaded.pixels, normalize_image(raw, AUTO))
    assert loaded.pixels.max() == 255
    decoded = loader.decode("/data/local-files/?d=a.tif", task="1")
    np.testing.assert_array_equal(decoded.pixels, raw)
    none = loader.load("/data/local-files/?d=a.tif", task="1", normalization=ImageNormalization("none"))
    assert none.pixels.max() <= 16  # asked for no stretch: 12 bits in 16 stay dark


def _pil_bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _eight_bit_files() -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (9, 13, 3)).astype(np.uint8)
    gray = disc_image(24, [(12, 12, 5)])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: browsers and IMREAD_COLOR apply it
    return {
        "gray png": _pil_bytes(Image.fromarray(gray), "PNG"),
        "rgb png": _pil_bytes(Image.fromarray(rgb), "PNG"),
        "rgba png": _pil_bytes(Image.fromarray(np.dstack([rgb, rgb[..., :1]])), "PNG"),
        "gray+alpha png": _pil_bytes(Image.fromarray(np.dstack([gray, gray]), "LA"), "PNG"),
        "palette png": _pil_bytes(Image.fromarray(rgb).convert("P"), "PNG"),
        "1-bit png": _pil_bytes(Image.fromarray(gray > 100), "PNG"),
        "rgb jpeg with exif rotation": _pil_bytes(Image.fromarray(rgb), "JPEG", exif=exif),
        "gray jpeg": _pil_bytes(Image.fromarray(gray), "JPEG"),
        "bmp": _pil_bytes(Image.fromarray(rgb), "BMP"),
    }


@pytest.mark.parametrize(("name", "data"), list(_eight_bit_files().items()))
def test_8_bit_images_are_unchanged_by_the_default_and_match_what_ultralytics_reads(tmp_path, name, data):
    # What ultralytics' own reader gives for the file (training reads linked 8-bit files with it) and what
    # the backend decoded before normalisation existed (IMREAD_COLOR): the default must not change either.
    from ultralytics.utils.patches import imread

    decoded = decode_image(data)
    assert decoded.dtype == np.uint8
    out = load_image(data, AUTO)
    old = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    np.testing.assert_array_equal(out, old)
    suffix = ".jpg" if "jpeg" in name else ".bmp" if name == "bmp" else ".png"
    path = tmp_path / f"x{suffix}"
    path.write_bytes(data)
    np.testing.assert_array_equal(out, imread(str(path))[:, :, ::-1])
    if "exif" in name:
        assert out.shape[:2] == (13, 9)


def test_8_bit_default_is_measured_unchanged_on_realistic_images(rng):
    # Low-contrast and full-range 8-bit images, gray and RGB: the default leaves every pixel as it is.
    for pixels in (
        disc_image(64, [(20, 20, 6), (40, 44, 9)], seed=1),
        np.clip(rng.normal(120, 8, (50, 70)), 0, 255).astype(np.uint8),  # low contrast: not stretched
        rng.integers(0, 256, (33, 17, 3)).astype(np.uint8),
    ):
        out = normalize_image(pixels, AUTO)
        expected = pixels if pixels.ndim == 3 else np.repeat(pixels[:, :, None], 3, axis=2)
        np.testing.assert_array_equal(out, expected)
        assert out is not pixels


def test_undecodable_bytes_raise():
    with pytest.raises(ValueError, match=r"not a readable image \(7 bytes\)"):
        decode_image(b"garbage")
    with pytest.raises(ValueError, match=r"not a readable image \(0 bytes\)"):
        decode_image(b"")


# --------------------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int8])
def test_histogram_percentiles_equal_numpy_inverted_cdf(dtype, rng):
    # The fast path (a histogram) must give the same stretch as numpy's percentile definition.
    info = np.iinfo(dtype)
    for low, high in ((0.1, 99.9), (0.0, 100.0), (5.0, 50.0)):
        pixels = rng.integers(info.min, int(info.max) + 1, (37, 41)).astype(dtype)
        lo, hi = (float(v) for v in np.percentile(pixels, [low, high], method="inverted_cdf"))
        expected = np.clip(np.rint((pixels.astype(np.float64) - lo) * 255 / (hi - lo)), 0, 255)
        out = normalize_image(pixels, ImageNormalization("percentile", (low, high)))
        np.testing.assert_array_equal(out[..., 0], expected.astype(np.uint8))


def test_percentile_stretch_hand_case():
    # 1000 values 0..999: the 10th/90th percentiles are 99 and 899 -> 0 and 255, clipped outside.
    pixels = np.arange(1000, dtype=np.uint16).reshape(10, 100)
    out = normalize_image(pixels, ImageNormalization(percentiles=(10, 90)))[..., 0]
    assert out.flat[99] == 0 and out.flat[899] == 255 and out.flat[0] == 0 and out.flat[999] == 255
    assert out.flat[599] == 159  # 255 * 500 / 800 = 159.4


def test_float_images_ignore_nan_and_clip_infinities():
    pixels = np.array([[np.nan, 0.0, 0.5], [1.0, np.inf, -np.inf]], np.float32)
    out = normalize_image(pixels, ImageNormalization(percentiles=(0, 100)))[..., 0]
    assert out.tolist() == [[0, 0, 128], [255, 255, 0]]
    assert normalize_image(pixels, ImageNormalization("none"))[..., 0].tolist() == [
        [0, 0, 128],
        [255, 255, 0],
    ]


def test_degenerate_images():
    # Mostly one value (sparse bright spots): percentiles coincide, the min-max range is used instead.
    sparse = np.zeros((100, 100), np.uint16)
    sparse[5, 5], sparse[50, 60] = 300, 600
    out = normalize_image(sparse, AUTO)[..., 0]
    assert (out[5, 5], out[50, 60], out[0, 0]) == (128, 255, 0)
    # A constant image has no range: scaled from its type's range as under "none".
    assert normalize_image(np.full((4, 4), 65535, np.uint16), AUTO).min() == 255
    assert normalize_image(np.full((4, 4), 7, np.uint8), AUTO).max() == 7
    assert normalize_image(np.full((4, 4), np.nan, np.float32), AUTO).max() == 0


def test_modes():
    eight = np.array([[100, 110], [120, 130]], np.uint8)
    assert normalize_image(eight, ImageNormalization("percentile", (0, 100)))[..., 0].tolist() == [
        [0, 85],
        [170, 255],
    ]
    assert normalize_image(eight, ImageNormalization("none"))[..., 0].tolist() == eight.tolist()
    sixteen = np.array([[0, 257, 65535]], np.uint16)
    assert normalize_image(sixteen, ImageNormalization("none"))[..., 0].tolist() == [[0, 1, 255]]
    signed = np.array([[-32768, 0, 32767]], np.int16)
    assert normalize_image(signed, ImageNormalization("none"))[..., 0].tolist() == [[0, 128, 255]]


def test_channel_layouts():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert normalize_image(gray[:, :, None], AUTO).shape == (3, 4, 3)
    rgba = np.dstack([gray, gray + 1, gray + 2, np.zeros_like(gray)])
    np.testing.assert_array_equal(normalize_image(rgba, AUTO), rgba[..., :3])
    with pytest.raises(ValueError, match=r"pixels: expected an \(H, W\) or \(H, W, 1\|3\|4\) array"):
        normalize_image(np.zeros((2, 2, 2), np.uint8), AUTO)
    with pytest.raises(TypeError, match="pixels: expected an integer or float numpy array, got bool"):
        normalize_image(np.zeros((2, 2), bool), AUTO)
    with pytest.raises(TypeError, match="got list"):
        normalize_image([[1, 2]], AUTO)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "stretch"}, "mode: expected one of auto, percentile, none, got 'stretch'"),
        ({"percentiles": (50, 50)}, r"percentiles: expected 0 <= low < high <= 100, got \(50.0, 50.0\)"),
        ({"percentiles": (-1, 99)}, "percentiles: expected 0 <= low < high <= 100"),
        ({"percentiles": (1, 101)}, "percentiles: expected 0 <= low < high <= 100"),
        ({"percentiles": (1,)}, "percentiles: expected two numbers"),
        ({"percentiles": ("a", 2)}, "percentiles: expected two numbers"),
        ({"percentiles": (float("nan"), 2)}, "percentiles: expected 0 <= low"),
    ],
)
def test_normalization_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageNormalization(**kwargs)


def test_normalization_json_round_trip():
    norm = ImageNormalization("PERCENTILE", (1, 99))
    assert norm.mode is Normalize.PERCENTILE and norm.percentiles == (1.0, 99.0)
    assert norm.as_dict() == {"mode": "percentile", "percentiles": [1.0, 99.0]}
    assert ImageNormalization.from_dict(norm.as_dict()) == norm
    assert ImageNormalization.from_dict({}) == AUTO
    for bad in ({"percentiles": 5}, {"percentiles": "ab"}, {"percentiles": [1, 2, 3]}, {"mode": 3}, "auto"):
        with pytest.raises(ValueError, match=r"^(percentiles|mode|expected a mapping)"):
            ImageNormalization.from_dict(bad)  # type: ignore[arg-type]
    assert AUTO.percentiles == DEFAULT_PERCENTILES
    assert not AUTO.stretches(np.uint8) and AUTO.stretches(np.uint16) and AUTO.stretches(np.float32)
    assert ImageNormalization("percentile").stretches(np.uint8)
    assert not ImageNormalization("none").stretches(np.uint16)


@pytest.mark.parametrize(
    ("pixels", "suffix"),
    [
        (np.arange(12, dtype=np.uint8).reshape(3, 4), ".png"),
        (twelve_bit((5, 6, 3)), ".png"),
        (np.linspace(-1, 2, 20, dtype=np.float32).reshape(4, 5), ".tiff"),
        (np.arange(-6, 6, dtype=np.int16).reshape(3, 4), ".tiff"),
    ],
)
def test_write_image_is_lossless(tmp_path, pixels, suffix):
    path = write_image(tmp_path / "x", pixels)
    assert path == tmp_path / f"x{suffix}"
    back = read_image(path)
    assert back.dtype == pixels.dtype
    np.testing.assert_array_equal(back, pixels)


def test_read_image_names_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match=r"bad.png: not a readable image"):
        read_image(tmp_path / "bad.png")


# ------------------------------------------------------------------------------------------- settings


def test_image_settings(tmp_path):
    base = {"MODEL_DIR": str(tmp_path)}
    assert Settings.from_env(base).image_normalization == AUTO
    s = Settings.from_env({**base, "IMAGE_NORMALIZE": "Percentile", "IMAGE_PERCENTILES": " 1 , 99.5 "})
    assert s.image_normalization == ImageNormalization("percentile", (1.0, 99.5))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"IMAGE_NORMALIZE": "stretch"},
            "IMAGE_NORMALIZE: expected one of auto, percentile, none, got 'stretch'",
        ),
        ({"IMAGE_PERCENTILES": "1"}, "IMAGE_PERCENTILES: expected two numbers 'low,high'"),
        ({"IMAGE_PERCENTILES": "1,2,3"}, "IMAGE_PERCENTILES: expected two numbers"),
        ({"IMAGE_PERCENTILES": "a,b"}, "IMAGE_PERCENTILES: expected two numbers"),
        (
            {"IMAGE_PERCENTILES": "99,1"},
            r"IMAGE_PERCENTILES: expected 0 <= low < high <= 100, got \(99.0, 1.0\)",
        ),
    ],
)
def test_image_settings_errors_name_the_variable(tmp_path, env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({"MODEL_DIR": str(tmp_path), **env})


# -------------------------------------------------------------------------------- training sees the same


def test_dataset_writer_links_8_bit_and_writes_normalised_copies_of_the_rest(tmp_path):
    from ultralytics.utils.patches import imread

    src = tmp_path / "src"
    src.mkdir()
    eight = disc_image(32, [(16, 16, 5)])
    Image.fromarray(eight).save(src / "eight.png")
    gray16, rgb16 = twelve_bit((32, 48)), twelve_bit((32, 48, 3), seed=1)
    (src / "gray16.png").write_bytes(encode(gray16, ".png"))
    (src / "rgb16.tif").write_bytes(encode(rgb16, ".tif"))
    (src / "eight.tif").write_bytes(encode(eight, ".tif"))
    box = make_detections([[2, 2, 10, 10]])
    items = [
        LabeledImage(src / "eight.png", box, 32, 32),
        LabeledImage(src / "gray16.png", box, 48, 32),
        LabeledImage(src / "rgb16.tif", box, 48, 32),
        LabeledImage(src / "eight.tif", box, 32, 32),
    ]
    for norm in (AUTO, ImageNormalization("percentile", (1, 99))):
        root = tmp_path / f"ds-{norm.mode}"
        write_yolo_dataset(root, train=items, val=items[:1], names=["deposit"], normalization=norm)
        files = sorted((root / "images" / "train").iterdir())
        assert [f.name for f in files] == [
            "000000_eight.png",
            "000001_gray16.png",
            "000002_rgb16.png",
            "000003_eight.png",
        ]
        assert files[0].is_symlink() == (norm.mode is Normalize.AUTO)
        assert not any(f.is_symlink() for f in files[1:])  # 16-bit, and every TIFF, are converted
        for item, file in zip(items, files, strict=True):
            # What ultralytics reads from the dataset is what prediction feeds the model.
            expected = normalize_image(read_image(item.path), norm)
            np.testing.assert_array_equal(imread(str(file))[:, :, ::-1], expected)
        assert read_image(files[1]).ndim == 2  # gray stays one channel on disk
        labels = sorted((root / "labels" / "train").glob("*.txt"))
        assert [f.stem for f in labels] == [f.stem for f in files]


def test_dataset_writer_checks_the_image_size(tmp_path):
    Image.fromarray(disc_image(32, [])).save(tmp_path / "a.png")
    item = LabeledImage(tmp_path / "a.png", Detections.empty(), 40, 32)
    with pytest.raises(
        ValueError, match=r"train\[0\].path: .*a.png is 32x32 pixels, but width x height say 40x32"
    ):
        write_yolo_dataset(tmp_path / "ds", train=[item], val=[item], names=["deposit"])
    (tmp_path / "bad.png").write_bytes(b"nope")
    bad = LabeledImage(tmp_path / "bad.png", Detections.empty(), 4, 4)
    with pytest.raises(ValueError, match=r"val\[0\].path: .*bad.png: not a readable image"):
        write_yolo_dataset(
            tmp_path / "ds",
            train=[LabeledImage(tmp_path / "a.png", Detections.empty(), 32, 32)],
            val=[bad],
            names=["d"],
        )


def test_dataset_writer_gives_ultralytics_every_image_under_a_suffix_it_reads(tmp_path):
    # ultralytics skips a file whose suffix is not one of its image formats, without a word: its task would
    # not train. Such images are written as PNGs, with the pixels prediction sees.
    from ultralytics.data.utils import IMG_FORMATS, img2label_paths
    from ultralytics.utils.patches import imread

    eight = disc_image(32, [(16, 16, 5)])
    rgb = np.dstack([eight, eight[::-1], eight[:, ::-1]])
    files = {
        "gray.pgm": encode(eight, ".pgm"),
        "rgb.ppm": encode(rgb, ".ppm"),
        "deep.pgm": encode(eight.astype(np.uint16) * 16, ".pgm"),  # 12-bit: normalised as a 16-bit PNG is
        "anim.gif": _pil_bytes(Image.fromarray(eight), "GIF"),
        "photo.jfif": _pil_bytes(Image.fromarray(rgb), "JPEG"),
        "scan": encode(eight, ".png"),
        "plain.png": encode(eight, ".png"),
    }
    items = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        items.append(LabeledImage(tmp_path / name, make_detections([[2, 2, 10, 10]]), 32, 32))
    root = tmp_path / "ds"
    write_yolo_dataset(root, train=items, val=items[:1], names=["deposit"])
    written = sorted((root / "images" / "train").iterdir())
    assert [f.name for f in written] == [
        "000000_gray.png",
        "000001_rgb.png",
        "000002_deep.png",
        "000003_anim.png",
        "000004_photo.png",
        "000005_scan.png",
        "000006_plain.png",
    ]
    assert [f.is_symlink() for f in written] == [False] * 6 + [True]
    for item, file, label in zip(items, written, img2label_paths([str(f) for f in written]), strict=True):
        assert file.suffix[1:] in IMG_FORMATS
        np.testing.assert_array_equal(
            imread(str(file))[:, :, ::-1], normalize_image(read_image(item.path), AUTO)
        )
        assert Path(label).read_text().split()[0] == "0"  # its box, where ultralytics looks for it


def test_images_are_linked_only_under_suffixes_ultralytics_reads():
    from ultralytics.data.utils import IMG_FORMATS

    from model.dataset import _LINKED_SUFFIXES

    assert {suffix[1:] for suffix in _LINKED_SUFFIXES} <= IMG_FORMATS


def test_training_items_keep_the_depth_of_downloaded_images(tmp_path):
    from backend.labelconfig import LabelSchema
    from backend.settings import ExpertPolicy
    from backend.training import training_items

    raw = twelve_bit((20, 30))
    uri = "data:image/png;base64," + base64.b64encode(encode(raw, ".png")).decode()
    region = {
        "from_name": "label",
        "to_name": "image",
        "type": "rectanglelabels",
        "value": {"x": 10.0, "y": 10.0, "width": 20.0, "height": 20.0, "rectanglelabels": ["deposit"]},
    }
    tasks = [{"id": 3, "data": {"image": uri}, "annotations": [{"id": 1, "result": [region]}]}]
    schema = LabelSchema("label", "image", "image", ("deposit",), ((),))
    items = training_items(
        tasks,
        schema=schema,
        names=["deposit"],
        policy=ExpertPolicy(),
        loader=ImageLoader(),
        image_dir=tmp_path,
    ).items
    assert items[0].path == tmp_path / "task3.png" and (items[0].width, items[0].height) == (30, 20)
    np.testing.assert_array_equal(read_image(items[0].path), raw)  # the writer normalises it, once


def test_bootstrap_items_keep_the_depth_of_downloaded_images(tmp_path):
    from backend.bootstrap import crowd_training_items
    from backend.labelconfig import LabelSchema

    raw = twelve_bit((20, 30), seed=2)
    uri = "data:image/png;base64," + base64.b64encode(encode(raw, ".png")).decode()
    crowd = [{"x": 10.0, "y": 10.0, "width": 20.0, "height": 20.0, "label": "deposit"}]
    schema = LabelSchema("label", "image", "image", ("deposit",), ((),))
    items = crowd_training_items(
        [make_task(8, uri, crowd)], schema=schema, names=["deposit"], loader=ImageLoader(), image_dir=tmp_path
    )
    assert items[0].path == tmp_path / "task8.png" and (items[0].width, items[0].height) == (30, 20)
    np.testing.assert_array_equal(read_image(items[0].path), raw)


def test_service_predicts_with_the_normalisation_of_the_version(tmp_path, monkeypatch):
    # A version's meta decides how its input is normalised; versions without it use the settings.
    import model.detector as detector_module
    from backend.labelconfig import LabelSchema
    from backend.service import ModelService

    seen: list[np.ndarray] = []

    class Recorder:
        def __init__(self) -> None:
            self.names = ["deposit"]
            self.version = ""

        def predict(self, images, *, conf, batch):
            seen.extend(images)
            return [Detections.empty(with_score=True) for _ in images]

    class Family:
        name = "recorder"
        default_init = ""

        def check_init(self, init):
            pass

        def load(self, weights, *, device="auto", version=""):
            return Recorder()

    monkeypatch.setitem(detector_module._CACHE, "recorder", Family())
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"w")
    settings = Settings.from_env({"MODEL_DIR": str(tmp_path / "models"), "IMAGE_PERCENTILES": "0,100"})
    service = ModelService(settings, loader=ImageLoader())
    raw = np.array([[1000, 2000], [3000, 4000]], np.uint16)
    uri = "data:image/png;base64," + base64.b64encode(encode(raw, ".png")).decode()
    schema = LabelSchema("label", "image", "image", ("deposit",), ((),))

    def served_pixels() -> list[list[int]]:
        scored = service.score_tasks([make_task(1, uri)], schema)
        assert scored[0].prediction["model_version"] == service.loaded_version
        return seen[-1][..., 0].tolist()

    first = service.registry.publish(weights, {"family": "recorder"})  # no normalisation recorded
    assert served_pixels() == [[0, 85], [170, 255]]  # IMAGE_PERCENTILES=0,100
    service.registry.publish(weights, {"family": "recorder", "image_normalization": {"mode": "none"}})
    assert served_pixels() == [[4, 8], [12, 16]]  # 1000/257 ...
    service.registry.publish(weights, {"family": "recorder", "image_normalization": {"mode": "bad"}})
    # An unreadable normalisation fails the switch: the previous version keeps serving, with its own.
    assert served_pixels() == [[4, 8], [12, 16]]
    assert service.loaded_version is not None and service.loaded_version.startswith("v0002")
    assert service.image_normalization(first.version) == settings.image_normalization
    with pytest.raises(ValueError, match=r"model version v0003-\S+: meta.image_normalization: mode"):
        service.image_normalization(service.registry.latest().version)


def test_initial_version_records_the_normalisation(tmp_path):
    from backend.service import ModelService

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"w")
    settings = Settings.from_env(
        {"MODEL_DIR": str(tmp_path / "m"), "MODEL_WEIGHTS": str(weights), "IMAGE_NORMALIZE": "none"}
    )
    service = ModelService(settings, loader=ImageLoader())
    service.publish_initial()
    latest = service.registry.latest()
    assert latest is not None
    assert latest.meta["image_normalization"] == {"mode": "none", "percentiles": [0.1, 99.9]}


def test_data_uri_16_bit_is_loaded_and_normalised():
    raw = twelve_bit((16, 16))
    uri = "data:image/png;base64," + base64.b64encode(encode(raw, ".png")).decode()
    loaded = ImageLoader().load(uri, task="4")
    np.testing.assert_array_equal(loaded.pixels, normalize_image(raw, AUTO))
    eight = disc_image(16, [])
    np.testing.assert_array_equal(ImageLoader().load(data_uri(eight)).pixels[..., 1], eight)


# ----------------------------------------------------- a 16-bit image scores like its 8-bit stretched copy

DISCS_CACHE = REPO / ".work" / "test-cache" / "images-discs-v1"


def disc_detector_weights() -> Path:
    """A 1-class yolov8n that finds dark discs on 64 px images (trained once in a few minutes, then cached).

    The suite's 1-epoch checkpoint answers every image with the same few boxes, so it cannot tell two inputs
    apart; this one is trained until its predictions follow the pixels.
    """
    weights = DISCS_CACHE / "weights.pt"
    if weights.is_file():
        return weights
    from model.train import train_detector

    work = DISCS_CACHE.with_name(DISCS_CACHE.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    (work / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    items = []
    for i in range(48):
        discs = []
        for _ in range(int(rng.integers(1, 3))):
            r = float(rng.uniform(6.4, 10.24))
            cx, cy = rng.uniform(r, 64 - r, 2)
            discs.append((float(cx), float(cy), r))
        path = work / "img" / f"{i}.png"
        Image.fromarray(disc_image(64, discs, seed=i)).save(path)
        boxes = [[cx - r, cy - r, cx + r, cy + r] for cx, cy, r in discs]
        items.append(LabeledImage(path, make_detections(boxes), 64, 64))
    data_yaml = write_yolo_dataset(work / "ds", train=items, val=items[:8], names=["deposit"])
    result = train_detector(
        data_yaml=data_yaml,
        init="yolov8n.yaml",
        out_dir=work / "runs",
        epochs=25,
        imgsz=64,
        batch=8,
        device="cpu",
        val=False,
        # Few images: step the optimiser every batch (nbs = batch), no mosaic, no warm-up.
        extra={
            "optimizer": "AdamW",
            "lr0": 0.002,
            "nbs": 8,
            "mosaic": 0.0,
            "warmup_epochs": 0.0,
            "close_mosaic": 0,
        },
    )
    DISCS_CACHE.mkdir(parents=True, exist_ok=True)
    tmp = DISCS_CACHE / "weights.pt.part"
    shutil.copyfile(result.weights, tmp)
    tmp.rename(weights)
    shutil.rmtree(work, ignore_errors=True)
    return weights


def _matched(a: Detections, b: Detections, *, min_score: float) -> tuple[np.ndarray, np.ndarray]:
    """IoU and score difference of each confident box of ``a`` with its best box in ``b``."""
    from selection.boxes import box_iou

    keep = a.score >= min_score
    if not keep.any():
        return np.zeros(0), np.zeros(0)
    iou = box_iou(a.xyxy[keep], b.xyxy)
    best = iou.argmax(axis=1) if iou.shape[1] else np.zeros(int(keep.sum()), int)
    best_iou = iou.max(axis=1) if iou.shape[1] else np.zeros(int(keep.sum()))
    diff = np.abs(a.score[keep] - (b.score[best] if iou.shape[1] else 0.0))
    return best_iou, diff


@pytest.mark.slow
def test_16_bit_image_scores_like_its_8_bit_stretched_copy(tmp_path):
    root = tmp_path / "files"
    root.mkdir()
    settings = Settings.from_env(
        {
            "MODEL_DIR": str(tmp_path / "models"),
            "MODEL_WEIGHTS": str(disc_detector_weights()),
            "LOCAL_FILES_DOCUMENT_ROOT": str(root),
            "DEVICE": "cpu",
        }
    )
    app = create_app(settings)
    client = TestClient(app)
    rng = np.random.default_rng(7)
    discs = [(18.0, 20.0, 8.0), (44.0, 40.0, 9.5)]
    eight = disc_image(64, discs, seed=11)
    # The camera frame: 12-bit data, offset and scaled, with its own noise (not a multiple of the 8-bit one).
    raw = np.clip(eight * 11.3 + 350 + rng.normal(0, 6, eight.shape), 0, 4095).astype(np.uint16)
    # Its 8-bit copy as a viewer would stretch it (display range = min..max), made here independently.
    stretched = np.rint((raw - raw.min()) * 255.0 / (raw.max() - raw.min())).astype(np.uint8)
    (root / "frame16.png").write_bytes(encode(raw, ".png"))
    (root / "frame16.tif").write_bytes(encode(raw, ".tif"))
    Image.fromarray(stretched).save(root / "frame8.png")
    names = ("frame8.png", "frame16.png", "frame16.tif")
    crowd = [{"x": 15.0, "y": 15.0, "width": 25.0, "height": 25.0, "label": "deposit"}]
    tasks = [make_task(i, f"/data/local-files/?d={name}", crowd) for i, name in enumerate(names)]

    service = app.state.service
    seen: list[np.ndarray] = []
    detector, _ = service.current()
    predict = detector.predict

    def spy(images, **kwargs):
        seen.extend(np.array(im) for im in images)
        return predict(images, **kwargs)

    detector.predict = spy  # type: ignore[method-assign]
    resp = client.post("/predict", json={"tasks": tasks, "label_config": LABEL_CONFIG})
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]

    # The pixels the model saw: the 16-bit files within a few levels of the stretched copy (the copy's range
    # is set by its two most extreme noise pixels, ours by the percentiles); the old decode (high byte) was
    # about 160 levels off.
    eight_seen, png_seen, tif_seen = seen
    np.testing.assert_array_equal(png_seen, tif_seen)
    assert np.abs(png_seen.astype(int) - eight_seen).mean() < 16
    old = cv2.imdecode(np.frombuffer(encode(raw, ".png"), np.uint8), cv2.IMREAD_COLOR)
    assert np.abs(old.astype(int) - eight_seen).mean() > 100

    # What the model answered: the same confident boxes (IoU > 0.9) with close scores, the same grades.
    norm = service.image_normalization(service.loaded_version)
    preds, _, _ = service.detect([service.loader.load(t["data"]["image"], normalization=norm) for t in tasks])
    assert preds[0].score.max() > 0.5, "the test model must find the discs for this test to mean anything"
    # A path given to the detector is read the same way (not by ultralytics, which keeps the high byte).
    by_path = predict([root / "frame16.png"], conf=settings.predict_conf)[0]
    np.testing.assert_allclose(by_path.xyxy, preds[1].xyxy, atol=1e-2)
    np.testing.assert_allclose(by_path.score, preds[1].score, atol=1e-3)
    for other in preds[1:]:
        for a, b in ((preds[0], other), (other, preds[0])):
            iou, diff = _matched(a, b, min_score=0.25)
            assert iou.size and (iou > 0.9).all() and (diff < 0.1).all(), (iou, diff)
    ref = results[0]
    for res in results[1:]:
        assert abs(res["score"] - ref["score"]) < 0.05
        assert sorted(r["id"] for r in res["result"]) == sorted(r["id"] for r in ref["result"])


def test_training_job_trains_and_records_with_the_normalisation_of_the_job(tmp_path, monkeypatch):
    import model.detector as detector_module
    from backend.train_job import run_job
    from model.detector import TrainResult
    from model.registry import ModelRegistry

    received: dict[str, object] = {}

    class Family:
        name = "recorder"
        default_init = ""

        def train(self, *, out_dir, image_normalization, **options):
            received["normalization"] = image_normalization
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "w.pt").write_bytes(b"w")
            return TrainResult(weights=out_dir / "w.pt", seconds=0.0, epochs=1, options={})

    monkeypatch.setitem(detector_module._CACHE, "recorder", Family())
    item = {"path": str(tmp_path / "a.png"), "xyxy": [], "class_id": [], "width": 4, "height": 4}
    norm = ImageNormalization("percentile", (2, 98))
    job = {
        "work_dir": str(tmp_path / "job"),
        "model_dir": str(tmp_path / "models"),
        "names": ["deposit"],
        "train": [item],
        "val": [item],
        "epochs": 1,
        "batch": 1,
        "family": "recorder",
        "image_normalization": norm.as_dict(),
    }
    version = run_job(job)
    assert received["normalization"] == norm
    meta = ModelRegistry(tmp_path / "models").get(version).meta
    assert meta["image_normalization"] == {"mode": "percentile", "percentiles": [2.0, 98.0]}


@pytest.mark.parametrize(
    ("epoch_images", "n_seen", "repeats"), [(0, 3, 1), (3, 3, 1), (30, 30, 10), (7, 6, 2)]
)
def test_training_job_repeats_the_images_to_the_epoch_size(
    tmp_path, monkeypatch, epoch_images, n_seen, repeats
):
    """TRAIN_EPOCH_IMAGES: each image k times per epoch (model.dataset.epoch_repeats), in the meta."""
    import model.detector as detector_module
    from backend.settings import Settings
    from backend.train_job import job_settings, run_job
    from model.detector import TrainResult
    from model.registry import ModelRegistry

    seen: list[list[str]] = []

    class Family:
        name = "recorder"
        default_init = ""

        def train(self, *, out_dir, train, **options):
            seen.append([str(it.path) for it in train])
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "w.pt").write_bytes(b"w")
            return TrainResult(weights=out_dir / "w.pt", seconds=0.0, epochs=1, options={})

    monkeypatch.setitem(detector_module._CACHE, "recorder", Family())
    env = {"MODEL_DIR": str(tmp_path / "models"), "TRAIN_EPOCH_IMAGES": str(epoch_images)}
    settings = Settings.from_env(env)
    assert settings.train_epoch_images == epoch_images
    items = [
        {"path": str(tmp_path / f"{k}.png"), "xyxy": [], "class_id": [], "width": 4, "height": 4}
        for k in range(3)
    ]
    job = {
        **job_settings(settings),
        "work_dir": str(tmp_path / "job"),
        "names": ["deposit"],
        "train": items,
        "val": items[:1],
        "family": "recorder",
    }
    version = run_job(job)
    assert len(seen[0]) == n_seen
    assert sorted(set(seen[0])) == sorted(it["path"] for it in items)
    assert all(seen[0].count(it["path"]) == repeats for it in items)
    meta = ModelRegistry(tmp_path / "models").get(version).meta
    assert meta["epoch_repeats"] == repeats and meta["n_train"] == 3


# ------------------------------------------------------------------------------------ image references


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://[host/a.png", "not a valid URL (Invalid IPv6 URL)"),
        ("https://[::1/a.png", "not a valid URL (Invalid IPv6 URL)"),
        ("http://[x]:99/a.png", "not a valid URL ("),  # the reason's wording varies by Python version
        ("http://", "not a valid URL (Invalid URL 'http://': No host supplied"),
        ("/data/local-files/?d=a%00.png", "not a valid Local Files reference (embedded null byte)"),
        ("http://ls:8080/data/local-files/?d=a%00.png", "not a valid Local Files reference (embedded null"),
    ],
)
def test_malformed_references_raise_image_load_errors_naming_task_and_reference(tmp_path, url, message):
    with pytest.raises(ImageLoadError) as info:
        ImageLoader(document_root=tmp_path).load(url, task="7")
    assert str(info.value).startswith(f"task 7: image {url!r}: {message}")
    assert info.value.cause == "reference"


def test_a_malformed_reference_fails_its_task_alone(tmp_path, monkeypatch):
    # Through ModelService.score_tasks, which /predict and bulk scoring call: the bad tasks fail with their
    # cause, the good one between them is scored.
    import model.detector as detector_module
    from backend.labelconfig import LabelSchema
    from backend.service import ModelService

    class Empty:
        def __init__(self) -> None:
            self.names = ["deposit"]
            self.version = ""

        def predict(self, images, *, conf, batch):
            return [Detections.empty(with_score=True) for _ in images]

    class Family:
        name = "empty"
        default_init = ""

        def check_init(self, init):
            pass

        def load(self, weights, *, device="auto", version=""):
            return Empty()

    monkeypatch.setitem(detector_module._CACHE, "empty", Family())
    (tmp_path / "w.pt").write_bytes(b"w")
    service = ModelService(
        Settings.from_env({"MODEL_DIR": str(tmp_path / "models")}), loader=ImageLoader(document_root=tmp_path)
    )
    service.registry.publish(tmp_path / "w.pt", {"family": "empty"})
    tasks = [
        make_task(1, "http://[host/a.png"),
        make_task(2, data_uri(disc_image(32, []))),
        make_task(3, "/data/local-files/?d=a%00.png"),
    ]
    scored = service.score_tasks(tasks, LabelSchema("label", "image", "image", ("deposit",), ((),)))
    assert [s.ok for s in scored] == [False, True, False]
    assert [s.error_cause for s in scored] == ["image_reference", None, "image_reference"]
    assert scored[0].error is not None and scored[0].error.startswith("task 1: image 'http://[host/a.png'")
    assert scored[2].error is not None and "task 3: image '/data/local-files/?d=a%00.png'" in scored[2].error


def test_local_files_paths_are_percent_decoded_once_as_label_studio_serves_them(tmp_path):
    # Label Studio writes ?d={quote(relative path)} and serves request.GET["d"]: decoded once, "+" a space.
    from urllib.parse import quote

    (tmp_path / "imgs").mkdir()
    names = ["scan%20a.png", "scan%2Bb.png", "scan a.png", "scan+c.png", "ünï código.png"]
    for k, name in enumerate(names):
        Image.fromarray(disc_image(16 + k, [])).save(tmp_path / "imgs" / name)
    loader = ImageLoader(document_root=tmp_path)
    for k, name in enumerate(names):
        url = f"/data/local-files/?d={quote(f'imgs/{name}')}"
        assert loader.local_path(url) == tmp_path / "imgs" / name, url
        assert loader.load(url, task="1").width == 16 + k
    # A query written with "+" for a space (HTML form encoding) names the file with the space, as in Django.
    assert loader.local_path("/data/local-files/?d=imgs/scan+a.png") == tmp_path / "imgs" / "scan a.png"
