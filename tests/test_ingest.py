"""The importer's input side (no Label Studio): reading and checking COCO, YOLO and Label Studio exports,
the tasks it builds, and the CLI's exit status and messages on bad input. The e2e side is test_e2e_ingest.py.
"""

from __future__ import annotations

import copy
import doctest
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import backend.ingest.plan
import backend.lsproject
from backend.ingest import IngestError, build_task, plan_import, run_import
from backend.ingest.__main__ import main
from backend.ingest.plan import label_mapping
from backend.ingest.sources import ImageIndex, read_coco, read_label_studio, read_yolo, read_yolo_names
from backend.labelconfig import parse_label_config
from backend.lsproject import api_error_message, label_config_for
from formats.coco import from_coco
from formats.images import read_image
from formats.labelstudio import crowd_labels_to_detections, regions_to_detections

W, H = 80, 40  # every test image is 80 x 40 px


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    """``tmp/root/lab/images/{a,b}.png`` and ``sub/c.jpg``; ``tmp/root`` is the document root."""
    images = tmp_path / "root" / "lab" / "images"
    (images / "sub").mkdir(parents=True)
    for name in ("a.png", "b.png", "sub/c.jpg"):
        Image.new("RGB", (W, H)).save(images / name)
    return tmp_path / "root" / "lab"


def _coco() -> dict[str, Any]:
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": W, "height": H},
            {"id": 2, "file_name": "b.png", "width": W, "height": H},
            {"id": 5, "file_name": "sub/c.jpg", "width": W, "height": H},
        ],
        # Real COCO category ids skip numbers: names are listed in category order, ids need not be 1..K.
        "categories": [{"id": 3, "name": "cat"}, {"id": 9, "name": "dog"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [4, 2, 20, 10], "annotator": "u1"},
            {"id": 11, "image_id": 1, "category_id": 9, "bbox": [40, 20, 10, 10], "annotator": "u2"},
            {"id": 12, "image_id": 5, "category_id": 9, "bbox": [70, 30, 20, 20], "annotator": "u1"},
        ],
    }


def _write(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj, indent=1))
    return path


def _index(lab: Path) -> ImageIndex:
    return ImageIndex.scan(lab / "images")


# ----------------------------------------------------------------------------------------------- images


def test_image_index_keys_sizes_and_lookup(lab: Path) -> None:
    (lab / "images" / ".thumbs").mkdir()
    Image.new("RGB", (2, 2)).save(lab / "images" / ".thumbs" / "a.png")  # hidden: skipped
    index = _index(lab)
    assert [f.key for f in index.files] == ["a", "b", "sub/c"]
    assert {(f.width, f.height) for f in index.files} == {(W, H)}
    assert index.find("sub/c.jpg") is index.find("c.jpg") is index.find("/data/x/lab/images/sub/c.jpg")
    assert index.find(str(lab.resolve() / "images" / "a.png")).key == "a"
    assert index.find("nope.png") is None


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: (d / "a.jpg").write_bytes((d / "a.png").read_bytes()), "ambiguous image_id"),
        (lambda d: (d / "broken.png").write_bytes(b"not a png"), "broken.png: not a readable image"),
    ],
)
def test_image_index_errors(lab: Path, setup: Any, message: str) -> None:
    setup(lab / "images")
    with pytest.raises(IngestError, match=message):
        _index(lab)


def test_image_index_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no images"):
        ImageIndex.scan(tmp_path)
    with pytest.raises(IngestError, match="does not exist"):
        ImageIndex.scan(tmp_path / "missing")


def test_image_index_reads_sizes_past_pils_bomb_limit(lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PIL refuses to open images over its bomb limit (~179 M px by default); the backend tiles them, so
    the importer reads their size anyway, and leaves the limit as it found it."""
    from PIL import Image as PILImage

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)  # 80 x 40 = 3200 px: over twice the limit
    index = _index(lab)
    assert {(f.width, f.height) for f in index.files} == {(W, H)}
    assert PILImage.MAX_IMAGE_PIXELS == 100


def _rotated(path: Path) -> Path:
    """An 80 x 40 px image whose EXIF orientation (6: rotate 90 clockwise) makes it 40 x 80 on screen."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (W, H), (200, 50, 50)).save(path, exif=exif.tobytes())
    return path


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif"])
def test_image_index_applies_exif_orientation(lab: Path, suffix: str) -> None:
    """Browsers, the backend's decoder and ultralytics turn the image: its size is the turned one."""
    path = _rotated(lab / "images" / f"turned{suffix}")
    turned = _index(lab).by_key["turned"]
    assert (turned.width, turned.height) == (H, W)
    assert read_image(path).shape[:2] == (turned.height, turned.width)  # what the backend decodes


def test_read_coco_boxes_on_an_exif_rotated_image(lab: Path) -> None:
    _rotated(lab / "images" / "turned.jpg")
    coco = _coco()
    coco["images"].append({"id": 7, "file_name": "turned.jpg", "width": H, "height": W})
    coco["annotations"].append({"id": 13, "image_id": 7, "category_id": 3, "bbox": [4, 50, 30, 20]})
    labels = read_coco(_write(lab / "crowd.json", coco), _index(lab))
    np.testing.assert_allclose(labels.images["turned"].boxes.xyxy, [[4, 50, 34, 70]])  # inside 40 x 80
    assert labels.n_clipped == 1  # sub/c's box only
    coco["images"][-1].update(width=W, height=H)  # the stored, unturned size: boxes drawn on another frame
    with pytest.raises(IngestError, match=r"width 80 but .* has width 40 \(as shown, turned by its EXIF"):
        read_coco(_write(lab / "crowd.json", coco), _index(lab))


# ------------------------------------------------------------------------------------------------- COCO


def test_read_coco(lab: Path) -> None:
    labels = read_coco(_write(lab / "crowd.json", _coco()), _index(lab))
    assert labels.names == ("cat", "dog")
    assert list(labels.images) == ["a", "b", "sub/c"]
    a = labels.images["a"]
    np.testing.assert_allclose(a.boxes.xyxy, [[4, 2, 24, 12], [40, 20, 50, 30]])
    assert a.boxes.class_id.tolist() == [0, 1]
    assert a.annotators == ("u1", "u2")
    assert len(labels.images["b"].boxes) == 0  # listed without annotations: no boxes
    # [70, 30, 90, 50] reaches outside the 80 x 40 image: clipped, and counted.
    np.testing.assert_allclose(labels.images["sub/c"].boxes.xyxy, [[70, 30, 80, 40]])
    assert labels.n_clipped == 1


def test_read_coco_optional_fields(lab: Path) -> None:
    coco = _coco()
    for image in coco["images"]:  # width/height are optional (the files say)
        del image["width"], image["height"]
    coco["annotations"][0]["score"] = "high"  # a stray score is ignored
    labels = read_coco(_write(lab / "crowd.json", coco), _index(lab))
    np.testing.assert_allclose(labels.images["a"].boxes.xyxy, [[4, 2, 24, 12], [40, 20, 50, 30]])
    assert labels.images["a"].boxes.score is None


def _set(obj: dict[str, Any], path: str, value: Any) -> None:
    *head, last = path.split(".")
    for part in head:
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    if isinstance(obj, list):
        obj[int(last)] = value
    elif value is _DELETE:
        del obj[last]
    else:
        obj[last] = value


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            "annotations.1.bbox",
            [40, 20, 10],
            r"crowd.json: annotations\[1\] \(id 11\): bbox: expected \[x, y",
        ),
        ("annotations.1.bbox", [40, 20, "10", 3], r"annotations\[1\] \(id 11\): bbox"),
        ("annotations.1.bbox", [40, 20, 0, 10], r"annotations\[1\] \(id 11\): empty box"),
        ("annotations.1.bbox", [40, 20, -5, 10], r"annotations\[1\] \(id 11\): empty box"),
        (
            "annotations.1.bbox",
            [90, 20, 5, 5],
            r"annotations\[1\] \(id 11\): box .* lies outside the 80 x 40",
        ),
        (
            "annotations.1.bbox",
            [1e39, 20, 5, 5],  # finite as JSON, infinite as the float32 of a box
            r"annotations\[1\] \(id 11\): bbox: .* beyond",
        ),
        ("annotations.2.image_id", 77, r"annotations\[2\] \(id 12\): image_id 77 is not among the images"),
        ("annotations.0.category_id", 4, r"annotations\[0\] \(id 10\): category_id 4 is not among"),
        ("images.1.file_name", "missing.png", r"images\[1\] \(id 2\): image 'missing.png' not found"),
        ("images.1.width", 81, r"images\[1\] \(id 2\): width 81 but the image b.png has width 80"),
        ("images.1.file_name", "a.png", r"images\[1\] \(id 2\): the same image as image id 1"),
        ("images.1.id", 1, r"images\[1\] \(id 1\): image id 1 is listed twice"),
        ("categories.1.name", "Cat", r"categories: label 'Cat' is listed twice"),
        ("categories", [], r"categories: empty"),
        ("annotations", _DELETE, r"crowd.json: annotations: expected a list"),
    ],
)
def test_read_coco_errors_name_the_place(lab: Path, path: str, value: Any, expected: str) -> None:
    coco = copy.deepcopy(_coco())
    _set(coco, path, value)
    with pytest.raises(IngestError, match=expected):
        read_coco(_write(lab / "crowd.json", coco), _index(lab))


@pytest.mark.parametrize("ids", [(0, 1), (0, -7), (-1, 5)])
def test_read_coco_any_integer_category_ids(lab: Path, ids: tuple[int, int]) -> None:
    """Category id 0 (and negative ids) are ids like any other: names in listed order, class = position."""
    coco = _coco()
    coco["categories"] = [{"id": ids[0], "name": "cat"}, {"id": ids[1], "name": "dog"}]
    for ann, category in zip(coco["annotations"], (ids[0], ids[1], ids[0]), strict=True):
        ann["category_id"] = category
    labels = read_coco(_write(lab / "crowd.json", coco), _index(lab))
    assert labels.names == ("cat", "dog")
    assert labels.images["a"].boxes.class_id.tolist() == [0, 1]
    assert labels.images["sub/c"].boxes.class_id.tolist() == [0]


def test_cli_coco_category_id_zero(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    coco = _coco()
    coco["categories"][0]["id"] = 0
    coco["annotations"][0]["category_id"] = 0
    crowd = _write(lab / "crowd.json", coco)
    status = main([*_cli(lab, "--crowd", str(crowd), "--crowd-format", "coco"), "--dry-run", "--no-progress"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "3 boxes on 2 images" in out and "labels: cat, dog" in out


def test_from_coco_names_the_annotation_of_a_reserved_category_id() -> None:
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}], "categories": []}
    coco["annotations"] = [{"id": 4, "image_id": 1, "category_id": 0, "bbox": [1, 1, 2, 2]}]
    with pytest.raises(ValueError, match=r"annotation 4: category_id 0: expected 1 or more"):
        from_coco(coco)


def test_read_coco_syntax_error_gives_line_and_column(lab: Path) -> None:
    text = json.dumps(_coco(), indent=1).replace('"bbox": [\n', '"bbox": [,\n', 1)
    (lab / "crowd.json").write_text(text)
    line = text[: text.index("[,")].count("\n") + 1
    with pytest.raises(IngestError, match=rf"crowd.json:{line}:\d+: not valid JSON"):
        read_coco(lab / "crowd.json", _index(lab))


# ------------------------------------------------------------------------------------------------- YOLO


def _yolo(lab: Path, files: dict[str, str], classes: str | None = "cat\ndog\n") -> Path:
    folder = lab / "labels"
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    if classes is not None:
        (folder / "classes.txt").write_text(classes)
    return folder


def test_read_yolo(lab: Path) -> None:
    folder = _yolo(lab, {"a.txt": "0 0.5 0.5 0.25 0.5\n\n1 0.1 0.1 0.1 0.1\n", "sub/c.txt": ""})
    labels = read_yolo(folder, _index(lab))
    assert labels.names == ("cat", "dog")
    np.testing.assert_allclose(labels.images["a"].boxes.xyxy, [[30, 10, 50, 30], [4, 2, 12, 6]], atol=1e-4)
    assert labels.images["a"].boxes.class_id.tolist() == [0, 1]
    # Crowd: an image without a label file has no boxes; expert: it was not reviewed.
    assert set(labels.images) == {"a", "b", "sub/c"} and len(labels.images["b"].boxes) == 0
    assert set(read_yolo(folder, _index(lab), missing_means_empty=False).images) == {"a", "sub/c"}


def test_read_yolo_names_from_yaml(tmp_path: Path) -> None:
    (tmp_path / "data.yaml").write_text("path: .\nnames:\n  0: cat\n  1: dog\n")
    assert read_yolo_names(tmp_path / "data.yaml") == ("cat", "dog")
    (tmp_path / "d2.yaml").write_text("names: [cat, dog]\n")
    assert read_yolo_names(tmp_path / "d2.yaml") == ("cat", "dog")
    (tmp_path / "bad.yaml").write_text("names:\n  0: cat\n  2: dog\n")
    with pytest.raises(IngestError, match=r"bad.yaml: names: expected keys 0..1"):
        read_yolo_names(tmp_path / "bad.yaml")
    (tmp_path / "mixed.yaml").write_text("names:\n  0: cat\n  x: dog\n")  # keys that do not sort together
    with pytest.raises(IngestError, match=r"mixed.yaml: names: expected keys 0..1, got \[0, 'x'\]"):
        read_yolo_names(tmp_path / "mixed.yaml")
    (tmp_path / "latin1.txt").write_bytes("chat\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(IngestError, match=r"latin1.txt: not UTF-8 text"):
        read_yolo_names(tmp_path / "latin1.txt")


@pytest.mark.parametrize(
    ("files", "classes", "expected"),
    [
        (
            {"a.txt": "0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n"},
            "cat\n",
            r"labels/a.txt:2: expected 'class cx cy w h",
        ),
        ({"a.txt": "0 0.5 0.5 0.2 0.2\n\n0 0.5 x 0.2 0.2\n"}, "cat\n", r"labels/a.txt:3: expected numbers"),
        (
            {"a.txt": "\n\n2 0.5 0.5 0.2 0.2\n"},
            "cat\ndog\n",
            r"labels/a.txt:3: class 2 is not in .*classes.txt",
        ),
        ({"a.txt": "0 0.5 0.5 0 0.2\n"}, "cat\n", r"labels/a.txt:1: empty box"),
        ({"a.txt": "0 1.5 0.5 0.2 0.2\n"}, "cat\n", r"labels/a.txt:1: box .* lies outside"),
        (
            {"a.txt": "0 0.5 0.5 0.2 0.2\n", "z.txt": ""},
            "cat\n",
            r"labels/z.txt: 1 label file\(s\) without an image",
        ),
        ({"a.txt": "0 0.5 0.5 0.2 0.2\nnan 0.5 0.5 0.2 0.2\n"}, "cat\n", r"labels/a.txt:2: expected finite"),
        ({"a.txt": "0 0.5 inf 0.2 0.2\n"}, "cat\n", r"labels/a.txt:1: expected finite numbers"),
        (
            {"a.txt": "0 0.5 0.5 0.2 0.2 0.9\n0 0.5 0.5 0.2 0.2 1.5\n"},
            "cat\n",
            r"labels/a.txt:2: expected a score in \[0, 1\], got '1.5'",
        ),
        ({"a.txt": "0 0.5 0.5 0.2 0.2 -0.1\n"}, "cat\n", r"labels/a.txt:1: expected a score in \[0, 1\]"),
        ({"a.txt": "0 0.5 0.5 0.2 0.2\n0 1e38 0.5 0.2 0.2\n"}, "cat\n", r"labels/a.txt:2: .* beyond"),
        ({"a.txt": ""}, None, r"labels: YOLO labels need class names"),
        ({"a.txt": ""}, "cat\n\ndog\n", r"classes.txt:2: empty class name"),
    ],
)
def test_read_yolo_errors_name_file_and_line(
    lab: Path, files: dict[str, str], classes: str | None, expected: str
) -> None:
    folder = _yolo(lab, files, classes)
    with pytest.raises(IngestError, match=expected):
        read_yolo(folder, _index(lab))


# ----------------------------------------------------------------------------------- Label Studio export


def _region(x: float, y: float, w: float, h: float, label: str, **extra: Any) -> dict[str, Any]:
    value = {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]}
    return {"type": "rectanglelabels", "from_name": "label", "to_name": "image", "value": value, **extra}


def _ls_export() -> list[dict[str, Any]]:
    return [
        {  # two crowd annotators; the second annotation is the expert's (ground truth)
            "id": 5,
            "data": {"image": "/data/local-files/?d=lab/images/a.png"},
            "annotations": [
                {"completed_by": {"email": "ann@lab.org"}, "result": [_region(10, 10, 25, 50, "cat")]},
                {"completed_by": 7, "ground_truth": True, "result": [_region(50, 0, 10, 20, "Dog")]},
                {"completed_by": 8, "was_cancelled": True, "result": [_region(0, 0, 5, 5, "cat")]},
            ],
        },
        {
            "id": 6,
            "data": {"image": "http://ls.lab.org:8080/data/upload/3/0a1b2c3d-b.png"},
            "annotations": [],
        },
        {  # an export of a project made by the importer: crowd boxes in data.crowd_labels
            "id": 7,
            "data": {
                "image": "http://files.lab.org/sets/c.jpg",
                "crowd_labels": [
                    {"x": 0, "y": 0, "width": 50, "height": 50, "label": "dog", "annotator": "x"}
                ],
            },
            "annotations": [{"result": [_region(1, 1, 2, 2, "cat"), {"type": "choices", "value": {}}]}],
        },
    ]


def test_read_label_studio_crowd_and_expert(lab: Path) -> None:
    path = _write(lab / "export.json", _ls_export())
    doc_root = lab.parent.resolve()
    crowd = read_label_studio(path, _index(lab), role="crowd", document_root=doc_root)
    assert crowd.names == ("cat", "Dog")  # first appearance; names match case-insensitively
    a = crowd.images["a"]
    np.testing.assert_allclose(a.boxes.xyxy, [[8, 4, 28, 24], [40, 0, 48, 8]], atol=1e-4)
    assert a.annotators == ("ann@lab.org", "user-7")  # the cancelled annotation is left out
    assert len(crowd.images["b"].boxes) == 0
    np.testing.assert_allclose(crowd.images["sub/c"].boxes.xyxy, [[0, 0, 40, 20]], atol=1e-4)
    assert crowd.images["sub/c"].annotators == ("x",) and crowd.images["sub/c"].boxes.class_id.tolist() == [1]

    expert = read_label_studio(path, _index(lab), role="expert", document_root=doc_root)
    assert list(expert.images) == ["a", "sub/c"]  # task 6 has no annotation: not reviewed
    assert expert.images["a"].boxes.class_id.tolist() == [expert.names.index("Dog")]


@pytest.mark.parametrize(
    ("edit", "role", "expected"),
    [
        (
            lambda t: t[0]["annotations"][1].pop("ground_truth"),
            "expert",
            r"tasks\[0\] \(id 5\).annotations: 2 an",
        ),
        (
            lambda t: t[1]["data"].update(image="/data/upload/3/zz.png"),
            "crowd",
            r"tasks\[1\] \(id 6\).data.image: ",
        ),
        (lambda t: t[1]["data"].pop("image"), "crowd", r"tasks\[1\] \(id 6\).data: expected an 'image'"),
        (
            lambda t: t[2]["data"].update(image="/x/a.png"),
            "crowd",
            r"tasks\[2\] \(id 7\): the same image a.png",
        ),
        (
            lambda t: t[0]["annotations"][0]["result"][0]["value"].update(rectanglelabels=[]),
            "crowd",
            r"tasks\[0\] \(id 5\).annotations\[0\].result\[0\]: a rectangle without a label",
        ),
        (
            lambda t: t[0]["annotations"][0]["result"][0]["value"].update(rotation=30),
            "crowd",
            r"annotations\[0\].result\[0\]: rotated rectangles",
        ),
        (
            lambda t: t[0]["annotations"][0]["result"][0]["value"].pop("width"),
            "crowd",
            r"annotations\[0\].result\[0\].value: needs x, y, width, height",
        ),
        (
            lambda t: t[2]["data"]["crowd_labels"][0].update(width=-3),
            "crowd",
            r"tasks\[2\] \(id 7\).data.crowd_labels\[0\]: empty box",
        ),
        (
            lambda t: t[2]["data"]["crowd_labels"][0].update(x=float("nan")),
            "crowd",
            r"data.crowd_labels\[0\]: x, y, width, height must be finite",
        ),
    ],
)
def test_read_label_studio_errors_name_task_and_path(lab: Path, edit: Any, role: str, expected: str) -> None:
    tasks = _ls_export()
    edit(tasks)
    path = _write(lab / "export.json", tasks)
    with pytest.raises(IngestError, match=expected):
        read_label_studio(path, _index(lab), role=role, document_root=lab.parent.resolve())


# -------------------------------------------------------------------------------------- plan and tasks


def test_plan_and_task_form(lab: Path) -> None:
    expert = {**_coco(), "images": _coco()["images"][:1], "annotations": [_coco()["annotations"][0]]}
    plan = plan_import(
        images=lab / "images",
        crowd=_write(lab / "crowd.json", _coco()),
        crowd_format="coco",
        expert=_write(lab / "expert.json", expert),
        document_root=lab.parent,
    )
    assert plan.labels == ("cat", "dog") and plan.n_unlisted == 0
    assert [item.expert is not None for item in plan.items] == [True, False, False]
    # A project whose config spells the labels otherwise and in another order: matched by name.
    schema = parse_label_config(label_config_for(["Dog", "CAT", "bird"]))
    mapping = label_mapping(plan.labels, schema)
    assert mapping == [1, 0]
    task = build_task(plan.items[0], schema=schema, mapping=mapping, document_root=plan.document_root)
    data = task["data"]
    assert data["image"] == "/data/local-files/?d=lab/images/a.png"
    assert (data["image_id"], data["width"], data["height"]) == ("a", W, H)
    assert [r["label"] for r in data["crowd_labels"]] == ["CAT", "Dog"]
    assert [r["annotator"] for r in data["crowd_labels"]] == ["u1", "u2"]
    # crowd_labels read back (as the backend reads them) equal the input boxes within rounding.
    back = crowd_labels_to_detections(data["crowd_labels"], width=W, height=H, label_to_id=schema.label_ids)
    np.testing.assert_allclose(back.xyxy, plan.items[0].crowd.xyxy, atol=1e-2)
    (prediction,) = task["predictions"]
    assert prediction["model_version"] == "crowd"
    shown = regions_to_detections(prediction["result"], label_to_id=schema.label_ids)
    np.testing.assert_allclose(shown.xyxy, back.xyxy, atol=1e-2)
    (annotation,) = task["annotations"]
    assert annotation["ground_truth"] is True
    truth = regions_to_detections(annotation["result"], label_to_id=schema.label_ids)
    np.testing.assert_allclose(truth.xyxy, [[4, 2, 24, 12]], atol=1e-4)
    assert [schema.labels[c] for c in truth.class_id] == ["CAT"]
    assert "annotations" not in build_task(
        plan.items[1], schema=schema, mapping=mapping, document_root=lab.parent
    )


def test_label_mapping_names_missing_labels() -> None:
    schema = parse_label_config(label_config_for(["cat"]))
    with pytest.raises(IngestError, match=r"project 4: its labelling config has no label 'dog', 'fox'"):
        label_mapping(("cat", "dog", "fox"), schema, project="project 4")


@pytest.mark.parametrize(
    ("document_root", "expected"),
    [
        (lambda lab: lab / "images", r"must be a folder strictly inside the document root"),
        (lambda lab: lab / "elsewhere", r"--document-root .*elsewhere: no such folder"),
    ],
)
def test_plan_checks_document_root(lab: Path, document_root: Any, expected: str) -> None:
    (lab / "elsewhere").mkdir() if "inside" in expected else None
    with pytest.raises(IngestError, match=expected):
        plan_import(
            images=lab / "images",
            crowd=_write(lab / "crowd.json", _coco()),
            crowd_format="coco",
            document_root=document_root(lab),
        )


def test_plan_expert_images_must_be_imported(lab: Path) -> None:
    crowd = {**_coco(), "images": _coco()["images"][:1], "annotations": _coco()["annotations"][:2]}
    with pytest.raises(IngestError, match=r"expert.json: expert labels for 2 image\(s\) .* e.g. 'b'"):
        plan_import(
            images=lab / "images",
            crowd=_write(lab / "crowd.json", crowd),
            crowd_format="coco",
            expert=_write(lab / "expert.json", _coco()),
            document_root=lab.parent,
        )


def test_dry_run_without_label_studio(lab: Path) -> None:
    plan = plan_import(
        images=lab / "images",
        crowd=_yolo(lab, {"a.txt": "0 0.5 0.5 0.2 0.2\n"}),
        crowd_format="yolo",
        document_root=lab.parent,
    )
    report = run_import(None, plan, title="New lab", dry_run=True, progress=False)
    assert (report.project, report.created, report.new_tasks, report.existing_tasks) == (None, True, 3, 0)
    with pytest.raises(ValueError, match="client: required unless dry_run"):
        run_import(None, plan, title="New lab", progress=False)


# -------------------------------------------------------------------------------------------------- CLI


def _cli(lab: Path, *extra: str) -> list[str]:
    return ["--title", "Lab", "--images", str(lab / "images"), "--document-root", str(lab.parent), *extra]


def test_cli_dry_run_prints_the_plan(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crowd = _write(lab / "crowd.json", _coco())
    status = main([*_cli(lab, "--crowd", str(crowd), "--crowd-format", "coco"), "--dry-run", "--no-progress"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "crowd labels (coco" in out and "3 boxes on 2 images" in out and "labels: cat, dog" in out
    assert "tasks: 3 would be created" in out and "dry run: nothing was written" in out


def test_cli_malformed_input_exits_2_naming_file_and_line(
    lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _yolo(lab, {"sub/c.txt": "0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 nope\n"})
    status = main(
        [*_cli(lab, "--crowd", str(folder), "--crowd-format", "yolo"), "--dry-run", "--no-progress"]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert f"error: {folder / 'sub' / 'c.txt'}:2: expected numbers" in err and "nothing was imported" in err


@pytest.mark.parametrize("given", [(), ("--url", "http://ls:8080"), ("--api-key", "k")])
def test_cli_needs_connection_unless_dry_run(
    lab: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], given: tuple[str, ...]
) -> None:
    """Without both the URL and the key: exit 2 saying what to set (not some other usage error); a dry
    run needs neither."""
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    crowd = _write(lab / "crowd.json", _coco())
    argv = [*_cli(lab, "--crowd", str(crowd), "--crowd-format", "coco"), "--no-progress", *given]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "--url and --api-key (or LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY) are required" in (
        capsys.readouterr().err
    )
    assert main([*argv, "--dry-run"]) == 0


# --------------------------------------------------------------------------------------------- helpers


def test_label_config_for_escapes_and_parses_back() -> None:
    names = ["cat", 'big "dog"', "a&b <c>"]
    schema = parse_label_config(label_config_for(names))
    assert schema.labels == tuple(names)
    assert (schema.from_name, schema.to_name, schema.image_key) == ("label", "image", "image")
    with pytest.raises(ValueError, match="labels: expected at least one"):
        label_config_for([])


def test_api_error_message() -> None:
    from label_studio_sdk.core.api_error import ApiError

    body = {"detail": "Validation error", "validation_errors": {"non_field_errors": ["path does not exist"]}}
    assert api_error_message(ApiError(status_code=400, body=body)) == "HTTP 400: path does not exist"
    not_found = ApiError(status_code=404, body={"detail": "Not found."})
    assert api_error_message(not_found) == "HTTP 404: Not found."
    assert api_error_message(OSError("refused")) == "OSError: refused"


@pytest.mark.parametrize("module", [backend.ingest.plan, backend.lsproject])
def test_docstring_examples_run(module: Any) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
