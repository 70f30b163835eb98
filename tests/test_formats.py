"""YOLO txt and COCO JSON conversions, and round trips YOLO <-> COCO <-> Label Studio."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_detections, random_boxes

from formats.coco import CocoImage, from_coco, to_coco
from formats.labelstudio import (
    crowd_labels_to_detections,
    detections_to_crowd_labels,
    detections_to_regions,
    rectangle_regions,
    regions_to_detections,
)
from formats.yolo import format_yolo_labels, parse_yolo_labels, read_yolo_labels, write_yolo_labels
from selection.detections import Detections


def test_yolo_hand_checked_line():
    dets = make_detections([[10, 20, 30, 60]])
    assert format_yolo_labels(dets, 100, 200) == "0 0.200000 0.200000 0.200000 0.200000\n"


def test_yolo_scores_become_a_sixth_column():
    dets = make_detections([[0, 0, 50, 50]], classes=[2], scores=[0.25])
    text = format_yolo_labels(dets, 100, 100)
    assert text == "2 0.250000 0.250000 0.500000 0.500000 0.250000\n"
    back = parse_yolo_labels(text, 100, 100)
    assert back.score is not None and back.score[0] == pytest.approx(0.25)
    assert back.class_id.tolist() == [2]


def test_yolo_file_round_trip(tmp_path, rng):
    boxes = random_boxes(30, rng, size=192)
    dets = make_detections(boxes, classes=rng.integers(0, 3, 30))
    path = tmp_path / "a" / "b.txt"
    write_yolo_labels(path, dets, 192, 160)
    back = read_yolo_labels(path, 192, 160)
    np.testing.assert_allclose(back.xyxy, dets.xyxy, atol=1e-3)
    assert back.class_id.tolist() == dets.class_id.tolist()
    assert back.score is None


def test_yolo_empty_file_is_no_boxes_and_missing_file_raises(tmp_path):
    write_yolo_labels(tmp_path / "e.txt", Detections.empty(), 64, 64)
    assert (tmp_path / "e.txt").read_text() == ""
    assert len(read_yolo_labels(tmp_path / "e.txt", 64, 64)) == 0
    with pytest.raises(FileNotFoundError, match="path"):
        read_yolo_labels(tmp_path / "missing.txt", 64, 64)


@pytest.mark.parametrize(
    ("text", "width", "error"),
    [
        ("0 0.5 0.5 0.1\n", 100, "class cx cy w h"),
        ("0 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.1 0.1 0.9\n", 100, "expected 5 columns"),
        ("x 0.5 0.5 0.1 0.1\n", 100, "expected numbers"),
        ("1.5 0.5 0.5 0.1 0.1\n", 100, "integer class"),
        ("0 0.5 0.5 -0.1 0.1\n", 100, "non-negative width"),
        ("0 0.5 0.5 0.1 0.1\n", 0, "width, height"),
    ],
)
def test_yolo_parse_errors(text, width, error):
    with pytest.raises(ValueError, match=error):
        parse_yolo_labels(text, width, 100, source="f.txt")


def test_coco_hand_checked_annotation():
    image = CocoImage(7, "a.png", 100, 80, make_detections([[10, 20, 30, 60]]), extra=({"noise": "clean"},))
    coco = to_coco([image], categories=["deposit"])
    assert coco["categories"] == [{"id": 1, "name": "deposit"}]
    assert coco["images"] == [{"id": 7, "file_name": "a.png", "width": 100, "height": 80}]
    ann = coco["annotations"][0]
    assert ann["bbox"] == [10, 20, 20, 40] and ann["area"] == 800 and ann["category_id"] == 1
    assert ann["image_id"] == 7 and ann["id"] == 1 and ann["noise"] == "clean"


def test_coco_round_trip_keeps_images_without_boxes_scores_and_extra(rng):
    dets = make_detections(random_boxes(5, rng), classes=[0, 1, 1, 0, 1], scores=rng.uniform(0, 1, 5))
    images = [
        CocoImage(3, "x.png", 200, 200, dets, extra=tuple({"annotator": i} for i in range(5))),
        CocoImage(4, "y.png", 200, 150, Detections.empty()),
    ]
    back = from_coco(json.loads(json.dumps(to_coco(images, categories=["a", "b"]))))
    assert sorted(back) == [3, 4]
    np.testing.assert_allclose(back[3].detections.xyxy, dets.xyxy, atol=2e-3)
    assert back[3].detections.class_id.tolist() == [0, 1, 1, 0, 1]
    np.testing.assert_allclose(back[3].detections.score, dets.score, atol=1e-6)
    assert [e["annotator"] for e in back[3].extra] == list(range(5))
    assert len(back[4].detections) == 0 and (back[4].width, back[4].height) == (200, 150)


@pytest.mark.parametrize(
    ("images", "categories", "error"),
    [
        ([CocoImage(1, "a", 9, 9, Detections.empty())] * 2, ["d"], "duplicate image id"),
        ([CocoImage(1, "a", 9, 9, make_detections([[0, 0, 1, 1]], classes=[1]))], ["d"], "no category"),
        ([CocoImage(1, "a", 9, 9, make_detections([[0, 0, 1, 1]]), extra=())], ["d"], "extra"),
    ],
)
def test_to_coco_errors(images, categories, error):
    with pytest.raises(ValueError, match=error):
        to_coco(images, categories=categories)


def test_from_coco_rejects_annotation_of_unknown_image():
    coco = {"images": [], "annotations": [{"id": 1, "image_id": 5, "category_id": 1, "bbox": [0, 0, 1, 1]}]}
    with pytest.raises(ValueError, match="image_id 5"):
        from_coco(coco)


def test_round_trip_yolo_coco_label_studio(tmp_path, rng):
    width, height = 192.0, 144.0
    labels = ["a", "b", "c"]
    label_to_id = {name: k for k, name in enumerate(labels)}
    classes = rng.permutation(np.arange(12) % 3)  # every class, four times, in no order
    original = make_detections(np.clip(random_boxes(12, rng, size=140), 0, 140), classes=classes)
    # YOLO file -> Detections
    write_yolo_labels(tmp_path / "l.txt", original, width, height)
    from_yolo = read_yolo_labels(tmp_path / "l.txt", width, height)
    # -> COCO JSON -> Detections
    coco = to_coco([CocoImage(1, "i.png", int(width), int(height), from_yolo)], categories=labels)
    from_coco_dets = from_coco(json.loads(json.dumps(coco)))[1].detections
    # -> Label Studio regions (percent) -> Detections
    regions = detections_to_regions(
        from_coco_dets, width=width, height=height, labels=labels, from_name="label", to_name="image"
    )
    assert [r["value"]["rectanglelabels"] for r in regions] == [[labels[k]] for k in classes]
    from_ls = regions_to_detections(json.loads(json.dumps(regions)), label_to_id=label_to_id)
    # -> crowd_labels records -> Detections
    records = detections_to_crowd_labels(from_ls, width=width, height=height, labels=labels)
    assert [r["label"] for r in records] == [labels[k] for k in classes]
    final = crowd_labels_to_detections(records, width=width, height=height, label_to_id=label_to_id)
    np.testing.assert_allclose(final.xyxy, original.xyxy, atol=0.02)
    assert final.class_id.tolist() == original.class_id.tolist() == classes.tolist()


def test_rectangle_regions_one_builder():
    # A box past the right edge is clipped to 100 %; scores are clipped and rounded; meta only when given.
    xyxy = np.array([[10, 20, 130, 60], [0, 0, 1, 1]], np.float32)
    common = {"width": 100, "height": 200, "from_name": "label", "to_name": "image", "ids": ["a", "b"]}
    regions = rectangle_regions(xyxy, ["x", "y"], scores=[1.2, 0.123456], meta_texts=["m1", "m2"], **common)
    assert regions[0]["value"]["width"] == 90.0 and regions[0]["value"]["rectanglelabels"] == ["x"]
    assert [r["score"] for r in regions] == [1.0, 0.1235] and regions[1]["meta"] == {"text": ["m2"]}
    assert [r["id"] for r in regions] == ["a", "b"] and regions[1]["value"]["height"] == 0.5
    bare = rectangle_regions(xyxy, ["x", "y"], **common)
    assert "score" not in bare[0] and "meta" not in bare[0]
    with pytest.raises(ValueError, match="labels: expected 2"):
        rectangle_regions(xyxy, ["x"], **common)
    # detections_to_regions goes through it: scored detections carry rounded scores.
    dets = make_detections([[10, 20, 30, 60]], classes=[1], scores=[0.98761])
    (r,) = detections_to_regions(dets, width=100, height=200, labels=["a", "b"], from_name="l", to_name="i")
    assert (r["id"], r["score"], r["value"]["rectanglelabels"]) == ("r0", 0.9876, ["b"])


def _record(**over: object) -> dict:
    return {"x": 10.0, "y": 20.0, "width": 30.0, "height": 40.0, "label": "deposit", **over}


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ({"rotation": 45}, r"crowd_labels\[1\]: rotated rectangles \(rotation 45\) are not supported"),
        ({"rotation": "a bit"}, r"crowd_labels\[1\]: rotated rectangles \(rotation 'a bit'\)"),
        ({"x": 150}, r"crowd_labels\[1\]: box x=150, .* lies outside the image \(0-100\)"),
        ({"x": -30, "width": 20}, r"crowd_labels\[1\]: box x=-30, .* lies outside the image"),
        ({"y": 100}, r"crowd_labels\[1\]: box .*y=100, .* lies outside the image"),
        ({"width": 0}, r"crowd_labels\[1\]: empty box \(width 0, height 40 percent\)"),
        ({"height": -5}, r"crowd_labels\[1\]: empty box \(width 30, height -5 percent\)"),
        ({"x": float("nan")}, r"crowd_labels\[1\]: x, y, width, height must be finite numbers"),
        ({"x": "ten"}, r"crowd_labels\[1\]: needs numeric x, y, width, height"),
        ({"label": "cat"}, r"label 'cat': not in the labelling config's labels"),
    ],
)
def test_crowd_record_errors_name_the_record(bad, error):
    """A record that cannot be a box of the image is an error naming it, never a box at the image's edge."""
    with pytest.raises(ValueError, match=error):
        crowd_labels_to_detections(
            [_record(), _record(**bad)], width=200, height=100, label_to_id={"deposit": 0}
        )


def test_crowd_records_partly_outside_are_clipped_as_label_studio_regions_are():
    """A box reaching past the edge (or a float overshoot of 100) is clipped, as ``regions_to_detections``
    clips a Label Studio rectangle; ``rotation: 0`` (what Label Studio exports) is a plain box."""
    records = [
        _record(x=-30, width=50, rotation=0),
        _record(x=90, width=10.00004, y=60, height=40.00001),
        _record(rotation=None),
    ]
    dets = crowd_labels_to_detections(records, width=200, height=100, label_to_id={"deposit": 0})
    np.testing.assert_allclose(dets.xyxy, [[0, 20, 40, 60], [180, 60, 200, 100], [20, 20, 80, 60]])
    regions = [
        {"type": "rectanglelabels", "value": {"rectanglelabels": ["deposit"], **rec}} for rec in records
    ]
    shown = regions_to_detections(regions, label_to_id={"deposit": 0}, width=200, height=100)
    np.testing.assert_array_equal(shown.xyxy, dets.xyxy)
