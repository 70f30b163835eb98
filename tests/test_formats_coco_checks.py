"""The checks of a lab's COCO file (``formats.coco``) and of pixel boxes against their image
(``formats.boxes``), and the importer and ``bench.simulate --data`` accepting and refusing the same files with
the same messages, since both read COCO through them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from backend.ingest import IngestError
from backend.ingest.sources import ImageIndex, read_coco
from bench.userdata import load_user_dataset
from formats.boxes import clip_to_image
from formats.coco import (
    CocoCategories,
    CocoError,
    ImageFrame,
    check_coco_lists,
    check_image_size,
    image_entries,
    read_boxes,
    read_categories,
)

SOURCE = "lab/crowd.json"
W, H = 80, 40


def _coco() -> dict[str, Any]:
    """Two 80 x 40 px images, categories whose ids skip numbers, three boxes (the last past its image)."""
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}, {"id": 5, "file_name": "b.png"}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 9, "name": "dog"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 9, "bbox": [4, 2, 20, 10], "annotator": "u1"},
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [40, 20, 10, 10], "annotator": "u2"},
            {"id": 12, "image_id": 5, "category_id": 3, "bbox": [70, 30, 20, 20], "score": 0.3},
        ],
    }


FRAMES = {1: ImageFrame(W, H, "a.png"), 5: ImageFrame(W, H, "b.png")}


def _boxes(coco: dict[str, Any]) -> Any:
    return read_boxes(coco, SOURCE, images=FRAMES, categories=read_categories(coco, SOURCE))


# ------------------------------------------------------------------------------------- the file's lists


@pytest.mark.parametrize(
    ("coco", "error"),
    [
        ([], "lab/crowd.json: expected a COCO object with images, annotations and categories"),
        ({"images": [], "annotations": []}, "lab/crowd.json: categories: expected a list, got NoneType"),
        (
            {"images": {}, "annotations": [], "categories": []},
            "lab/crowd.json: images: expected a list, got dict",
        ),
    ],
)
def test_check_coco_lists_errors(coco, error):
    with pytest.raises(CocoError) as exc:
        check_coco_lists(coco, SOURCE)
    assert str(exc.value) == error


def test_coco_error_is_a_value_error():
    """The benchmark's CLI turns ValueError into exit 2; the importer turns it into its IngestError."""
    assert issubclass(CocoError, ValueError)


# ------------------------------------------------------------------------------------------- categories


def test_categories_any_integer_ids_in_listed_order():
    coco = {"categories": [{"id": 9, "name": "dog"}, {"id": 0, "name": "cat"}, {"id": -4, "name": "fox"}]}
    cats = read_categories(coco, SOURCE)
    assert cats.names == ("dog", "cat", "fox")
    assert dict(cats.class_of) == {9: 0, 0: 1, -4: 2}


@pytest.mark.parametrize(
    ("categories", "error"),
    [
        ([{"id": "1", "name": "cat"}], "categories[0]: expected {'id': int, 'name': str}"),
        ([{"id": True, "name": "cat"}], "categories[0]: expected {'id': int, 'name': str}"),
        ([{"id": 1}], "categories[0]: expected {'id': int, 'name': str}"),
        (["cat"], "categories[0]: expected {'id': int, 'name': str}"),
        ([{"id": 1, "name": " "}], "categories[0] (id 1): empty name"),
        (
            [{"id": 1, "name": "cat"}, {"id": 1, "name": "dog"}],
            "categories[1] (id 1): category id 1 is listed",
        ),
        (
            [{"id": 1, "name": "cat"}, {"id": 2, "name": "Cat"}],
            "categories: label 'Cat' is listed twice (as 'cat')",
        ),
        ([], "categories: empty; the label names come from it"),
    ],
)
def test_categories_errors(categories, error):
    with pytest.raises(CocoError) as exc:
        read_categories({"categories": categories}, SOURCE)
    assert str(exc.value).startswith(f"{SOURCE}: {error}"), str(exc.value)


def test_categories_matched_to_another_files_names_by_name():
    """Another file's ids and order may differ; class ids follow the reference's names, case-insensitively."""
    crowd = read_categories({"categories": [{"id": 1, "name": "Dog"}, {"id": 2, "name": "cat"}]}, SOURCE)
    matched = crowd.matched_to(("cat", "dog"), source=SOURCE, reference="expert.json")
    assert matched == CocoCategories(("cat", "dog"), {1: 1, 2: 0})
    with pytest.raises(CocoError, match=r"crowd.json: expected the categories of expert.json \['cat'\], got"):
        crowd.matched_to(("cat",), source=SOURCE, reference="expert.json")
    with pytest.raises(CocoError, match=r"expected the categories of expert\.json"):
        crowd.matched_to(("cat", "dog", "fox"), source=SOURCE, reference="expert.json")


# ----------------------------------------------------------------------------------------------- images


def test_image_entries():
    entries = list(image_entries(_coco(), SOURCE))
    assert [(e.id, e.file_name, e.entry) for e in entries] == [
        (1, "a.png", "images[0] (id 1)"),
        (5, "b.png", "images[1] (id 5)"),
    ]
    assert entries[1].where == f"{SOURCE}: images[1] (id 5)"
    assert entries[0].fields["width"] == W


@pytest.mark.parametrize(
    ("images", "error"),
    [
        ([{"file_name": "a.png"}], "images[0]: expected an object with an integer 'id'"),
        ([{"id": "1", "file_name": "a.png"}], "images[0]: expected an object with an integer 'id'"),
        ([{"id": False, "file_name": "a.png"}], "images[0]: expected an object with an integer 'id'"),
        ([{"id": 1}], "images[0] (id 1): expected a 'file_name' string, got None"),
        ([{"id": 1, "file_name": ""}], "images[0] (id 1): expected a 'file_name' string, got ''"),
        ([{"id": 1, "file_name": 3}], "images[0] (id 1): expected a 'file_name' string, got 3"),
        (
            [{"id": 1, "file_name": "a"}, {"id": 1, "file_name": "b"}],
            "images[1] (id 1): image id 1 is listed twice",
        ),
    ],
)
def test_image_entries_errors(images, error):
    with pytest.raises(CocoError) as exc:
        list(image_entries({"images": images}, SOURCE))
    assert str(exc.value).startswith(f"{SOURCE}: {error}"), str(exc.value)


def test_image_entries_are_checked_as_reached():
    """The caller finds each image before the next entry is checked: the first problem is the one reported."""
    entries = image_entries(
        {"images": [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}]}, SOURCE
    )
    assert next(entries).id == 1
    with pytest.raises(CocoError, match="listed twice"):
        next(entries)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({}, None),
        ({"width": W}, None),
        ({"width": W, "height": H}, None),
        ({"width": 81}, "width 81 but the image a.png has width 80"),
        ({"width": W, "height": 41}, "height 41 but the image a.png has height 40"),
        (
            {"width": H, "height": W},
            "width 40 but the image a.png has width 80 (as shown, turned by its EXIF",
        ),
    ],
)
def test_check_image_size(fields, error):
    (entry,) = image_entries({"images": [{"id": 1, "file_name": "a.png", **fields}]}, SOURCE)
    if error is None:
        check_image_size(entry, W, H, image="a.png")
        return
    with pytest.raises(CocoError) as exc:
        check_image_size(entry, W, H, image="a.png")
    assert str(exc.value).startswith(f"{SOURCE}: images[0] (id 1): {error}"), str(exc.value)


# ------------------------------------------------------------------------------------------------ boxes


def test_read_boxes_hand_checked():
    found = _boxes(_coco())
    assert sorted(found.boxes) == [1, 5]
    a, b = found.boxes[1], found.boxes[5]
    assert a.xyxy.tolist() == [[4, 2, 24, 12], [40, 20, 50, 30]]  # [x, y, w, h] -> xyxy, file order
    assert a.class_id.tolist() == [1, 0]  # category 9 is listed second: class 1
    assert a.xyxy.dtype == np.float32 and a.score is None
    assert b.xyxy.tolist() == [[70, 30, 80, 40]] and b.score is None  # clipped; its score is not read
    assert found.n_clipped == 1
    assert found.annotators == {1: ("u1", "u2"), 5: None}


def test_read_boxes_images_without_boxes_and_partial_annotators():
    coco = _coco()
    coco["annotations"] = coco["annotations"][:2]
    coco["annotations"][1]["annotator"] = None  # not every box names one
    found = _boxes(coco)
    assert found.boxes[5].xyxy.shape == (0, 4) and found.boxes[5].class_id.shape == (0,)
    assert found.annotators == {1: None, 5: None} and found.n_clipped == 0


def test_read_boxes_crowd_flags_that_are_not_crowd_regions():
    coco = _coco()
    for ann, flag in zip(coco["annotations"], (0, False, None), strict=True):
        ann["iscrowd"] = flag
    assert sum(len(d) for d in _boxes(coco).boxes.values()) == 3


_DELETE = object()

# (field of annotations[1] (id 11), value, the message after "lab/crowd.json: annotations[1] (id 11): ")
BAD_ANNOTATIONS = [
    ("image_id", 7, "image_id 7 is not among the images of crowd.json"),
    ("image_id", 1.0, "image_id 1.0 is not among the images of crowd.json"),
    ("image_id", True, "image_id True is not among the images of crowd.json"),
    ("image_id", _DELETE, "image_id None is not among the images of crowd.json"),
    ("category_id", 4, "category_id 4 is not among the categories (ids [3, 9])"),
    ("category_id", 3.0, "category_id 3.0 is not among the categories (ids [3, 9])"),
    ("iscrowd", 1, "iscrowd 1: a COCO crowd region (one box around a group of objects) cannot be used"),
    ("iscrowd", True, "iscrowd True: a COCO crowd region"),
    ("bbox", _DELETE, "bbox: expected [x, y, width, height] numbers, got None"),
    ("bbox", [40, 20, 10], "bbox: expected [x, y, width, height] numbers"),
    ("bbox", [40, 20, "10", 3], "bbox: expected [x, y, width, height] numbers"),
    ("bbox", [40, 20, True, 3], "bbox: expected [x, y, width, height] numbers"),
    ("bbox", (40, 20, 10, 10), "bbox: expected [x, y, width, height] numbers"),
    ("bbox", [float("nan"), 20, 10, 10], "bbox: expected finite numbers"),
    ("bbox", [40, 20, float("inf"), 10], "bbox: expected finite numbers"),
    ("bbox", [40, 20, 0, 10], "empty box (0 x 10 px); width and height must be > 0"),
    ("bbox", [40, 20, 10, -5], "empty box (10 x -5 px)"),
    ("bbox", [1e39, 20, 5, 5], "bbox: coordinates [1e+39, 20, 5, 5] are beyond any image"),
    ("bbox", [40, 20, 1e-9, 5], "empty box (0 x 5 px)"),  # too thin for the float32 pixels boxes are
    ("bbox", [90, 20, 5, 5], "box [90.0, 20.0, 95.0, 25.0] (xyxy px) lies outside the 80 x 40 image a.png"),
    ("bbox", [-10, 20, 10, 5], "box [-10.0, 20.0, 0.0, 25.0] (xyxy px) lies outside the 80 x 40 image a.png"),
]


@pytest.mark.parametrize(("key", "value", "error"), BAD_ANNOTATIONS)
def test_read_boxes_errors_name_the_file_and_the_annotation(key, value, error):
    coco = _coco()
    if value is _DELETE:
        del coco["annotations"][1][key]
    else:
        coco["annotations"][1][key] = value
    with pytest.raises(CocoError) as exc:
        _boxes(coco)
    assert str(exc.value).startswith(f"{SOURCE}: annotations[1] (id 11): {error}"), str(exc.value)


def test_read_boxes_names_an_annotation_without_id_by_its_place():
    coco = _coco()
    coco["annotations"].append([1, 2])
    with pytest.raises(CocoError, match=r"^lab/crowd.json: annotations\[3\]: expected an object, got list$"):
        _boxes(coco)
    coco["annotations"][3] = {"image_id": 9}
    with pytest.raises(CocoError, match=r"^lab/crowd.json: annotations\[3\]: image_id 9 is not among"):
        _boxes(coco)


def test_read_boxes_lists_many_consecutive_category_ids_as_a_range():
    coco = _coco()
    coco["categories"] = [{"id": k, "name": f"c{k}"} for k in range(1, 81)]
    coco["annotations"][0]["category_id"] = 90
    with pytest.raises(CocoError, match=r"category_id 90 is not among the categories \(ids 1\.\.80\)"):
        _boxes(coco)


# ------------------------------------------------------------------------------------------ formats.boxes


def test_clip_to_image_clips_and_counts():
    xyxy = np.array([[4, 2, 24, 12], [-5, -5, 10, 10], [70, 30, 90, 50]], np.float64)
    boxes, n = clip_to_image(
        xyxy, np.array([0, 1, 2]), width=W, height=H, where=["a", "b", "c"], image="a.png"
    )
    assert boxes.xyxy.tolist() == [[4, 2, 24, 12], [0, 0, 10, 10], [70, 30, 80, 40]]
    assert boxes.class_id.tolist() == [0, 1, 2] and boxes.score is None and n == 2
    empty, n = clip_to_image(np.zeros((0, 4)), np.zeros(0, np.int64), width=W, height=H, where=[], image="a")
    assert empty.xyxy.shape == (0, 4) and empty.class_id.shape == (0,) and n == 0


@pytest.mark.parametrize(
    ("box", "error"),
    [
        ([np.nan, 2, 24, 12], "b: box coordinates must be finite numbers, got [nan, 2.0, 24.0, 12.0]"),
        ([4, 2, 4, 12], "b: empty box (0 x 10 px); width and height must be > 0"),
        ([4, 12, 24, 2], "b: empty box (20 x -10 px); width and height must be > 0"),
        ([80, 2, 90, 12], "b: box [80.0, 2.0, 90.0, 12.0] (xyxy px) lies outside the 80 x 40 image a.png"),
        ([4, -12, 24, 0], "b: box [4.0, -12.0, 24.0, 0.0] (xyxy px) lies outside the 80 x 40 image a.png"),
    ],
)
def test_clip_to_image_errors_name_the_box(box, error):
    xyxy = np.array([[4, 2, 24, 12], box], np.float64)
    with pytest.raises(ValueError) as exc:
        clip_to_image(xyxy, np.array([0, 0]), width=W, height=H, where=["a", "b"], image="a.png")
    assert str(exc.value) == error


# --------------------------------------------------------------------- the importer and the benchmark agree


def _lab(root: Path) -> dict[str, Any]:
    """A --data folder: three 80 x 40 images (train, val, test) and expert.json (crowd.json: the caller's)."""
    (root / "img").mkdir(parents=True)
    images = []
    for k, split in enumerate(("train", "val", "test")):
        Image.new("RGB", (W, H)).save(root / "img" / f"{k}.png")
        images.append({"id": k + 1, "file_name": f"img/{k}.png", "width": W, "height": H, "split": split})
    coco = {
        "images": images,
        "categories": [{"id": 3, "name": "cat"}, {"id": 9, "name": "dog"}],
        "annotations": [
            {"id": 10 + k, "image_id": k + 1, "category_id": (3, 9)[k % 2], "bbox": [4, 2, 20, 10]}
            for k in range(3)
        ],
    }
    (root / "expert.json").write_text(json.dumps(coco))
    return coco


AGREED = [
    ("annotations.1.bbox", [90, 2, 5, 5]),
    ("annotations.1.bbox", [4, 2, 0, 5]),
    ("annotations.1.bbox", [4, 2, float("nan"), 5]),
    ("annotations.1.bbox", [4, 2, 5]),
    ("annotations.1.category_id", 4),
    ("annotations.1.image_id", 2.0),
    ("annotations.1.iscrowd", 1),
    ("images.1.id", 1),
    ("images.1.width", 81),
    ("images.1.file_name", ""),
    ("categories.0.id", 9),
    ("categories.1.name", "CAT"),
    ("categories", []),
]


@pytest.mark.parametrize(("path", "value"), AGREED)
def test_importer_and_benchmark_refuse_a_crowd_file_with_one_message(tmp_path, path, value):
    """``python -m backend.ingest --crowd-format coco`` and ``bench.simulate --data`` read the same crowd.json
    through formats.coco: the same entry refused with the same words."""
    root = tmp_path / "lab"
    crowd = copy.deepcopy(_lab(root))
    *head, last = path.split(".")
    node: Any = crowd
    for part in head:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(last) if isinstance(node, list) else last] = value
    (root / "crowd.json").write_text(json.dumps(crowd))
    with pytest.raises(IngestError) as imported:
        read_coco(root / "crowd.json", ImageIndex.scan(root))
    with pytest.raises(ValueError) as benched:
        load_user_dataset(root, seed=0)
    assert str(imported.value) == str(benched.value)
    assert str(imported.value).startswith(f"{root / 'crowd.json'}: "), str(imported.value)


def test_importer_and_benchmark_accept_any_category_ids(tmp_path):
    root = tmp_path / "lab"
    crowd = _lab(root)
    crowd["categories"] = [{"id": 0, "name": "Dog"}, {"id": -2, "name": "cat"}]  # other ids, order and case
    for ann in crowd["annotations"]:
        ann["category_id"] = {3: -2, 9: 0}[ann["category_id"]]
    (root / "crowd.json").write_text(json.dumps(crowd))
    imported = read_coco(root / "crowd.json", ImageIndex.scan(root))
    assert imported.names == ("Dog", "cat")
    assert [imported.images[f"img/{k}"].boxes.class_id.tolist() for k in range(3)] == [[1], [0], [1]]
    records, names = load_user_dataset(root, seed=0)
    assert names == ["cat", "dog"]  # expert.json's labels
    assert [r.crowd.class_id.tolist() for r in records] == [r.expert.class_id.tolist() for r in records]
    assert [r.expert.class_id.tolist() for r in records] == [[0], [1], [0]]
