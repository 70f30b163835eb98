"""AP (faster-coco-eval, numpy reference, pycocotools) and label F1 on hand-checkable cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import make_detections, random_boxes

from metrics.ap import APResult, ap_reference, evaluate_ap
from metrics.f1 import count_matches, label_f1, main, per_image_f1
from selection.detections import Detections

BOX = [0, 0, 10, 10]
FAR = [50, 50, 60, 60]
TIE_A, TIE_B = [0, 0, 10, 10], [4, 0, 14, 10]
TIE_PRED = [[2, 0, 12, 10], [-2, 0, 8, 10]]


def scored(boxes, scores, classes=None) -> Detections:
    return make_detections(boxes, classes=classes, scores=np.asarray(scores, np.float32))


# ---------------------------------------------------------------- AP, hand-computed
# 101-point interpolation: AP = (number of recall points r in 0:0.01:1 reached) * precision / 101.
AP_CASES = [
    # (name, gt boxes per image, pred boxes per image, scores, expected ap50)
    ("one perfect box", [[BOX]], [[BOX]], [[0.9]], 1.0),
    # FP ranked above the only TP: precision 1/2 at recall 1 -> envelope 0.5 everywhere.
    ("FP above TP", [[BOX]], [[FAR, BOX]], [[0.9, 0.8]], 0.5),
    # TP ranked above FP: precision 1 at recall 1.
    ("TP above FP", [[BOX]], [[FAR, BOX]], [[0.8, 0.9]], 1.0),
    # Two GT, one found: recall reaches 0.5 -> 51 of 101 points at precision 1.
    ("missed GT", [[BOX, FAR]], [[BOX]], [[0.9]], 51 / 101),
    # FP above TP and a missed GT: precision 0.5 on 51 points.
    ("FP above TP, missed GT", [[BOX, [20, 20, 30, 30]]], [[FAR, BOX]], [[0.9, 0.8]], 0.5 * 51 / 101),
    # Second image: one GT, no prediction -> recall 1/2.
    ("image without predictions", [[BOX], [BOX]], [[BOX], []], [[0.7], []], 51 / 101),
    # The first prediction ties (IoU 2/3) with both GT; COCO gives it the GT listed last. Listed A, B it takes
    # B and the second prediction (IoU 2/3 with A, 1/4 with B) finds A free: AP 1. Listed B, A it takes A,
    # and the second prediction is an FP above nothing: recall 1/2 at precision 1.
    ("IoU tie goes to the last GT (A, B)", [[TIE_A, TIE_B]], [TIE_PRED], [[0.9, 0.8]], 1.0),
    ("IoU tie goes to the last GT (B, A)", [[TIE_B, TIE_A]], [TIE_PRED], [[0.9, 0.8]], 51 / 101),
]


@pytest.mark.parametrize(("name", "gt", "pred", "scores", "expected"), AP_CASES, ids=[c[0] for c in AP_CASES])
def test_ap_hand_cases(name, gt, pred, scores, expected):
    gt_d = [make_detections(g) for g in gt]
    pred_d = [scored(p, s) for p, s in zip(pred, scores, strict=True)]
    result = evaluate_ap(gt_d, pred_d)
    assert result.ap50 == pytest.approx(expected, abs=1e-9)
    assert ap_reference(gt_d, pred_d) == pytest.approx(expected, abs=1e-9)


def test_ap50_95_of_a_shifted_box():
    # Box shifted by 1 px horizontally: IoU = 90/110 = 0.818 -> matches at thresholds 0.50..0.80 (7 of 10).
    gt = [make_detections([BOX])]
    pred = [scored([[1, 0, 11, 10]], [0.9])]
    result = evaluate_ap(gt, pred)
    assert result.ap50 == pytest.approx(1.0)
    assert result.ap50_95 == pytest.approx(0.7)
    assert result == APResult(ap50=result.ap50, ap50_95=result.ap50_95, n_images=1, n_gt=1, n_pred=1)


def test_ap_empty_cases():
    no_gt = evaluate_ap([Detections.empty()], [scored([BOX], [0.5])])
    assert math.isnan(no_gt.ap50) and math.isnan(no_gt.ap50_95)
    assert (no_gt.n_gt, no_gt.n_pred) == (0, 1)
    no_pred = evaluate_ap([make_detections([BOX])], [Detections.empty(with_score=True)])
    assert (no_pred.ap50, no_pred.ap50_95) == (0.0, 0.0)
    nothing = evaluate_ap([], [])
    assert math.isnan(nothing.ap50) and nothing.n_images == 0
    assert math.isnan(ap_reference([Detections.empty()], [Detections.empty(with_score=True)]))
    assert ap_reference([make_detections([BOX])], [Detections.empty(with_score=True)]) == 0.0


def test_ap_averages_over_classes_with_gt():
    # Class 0 perfect, class 1 missed entirely, class 2 has no GT (ignored): mean of 1 and 0.
    gt = [make_detections([BOX, FAR], classes=[0, 1])]
    pred = [scored([BOX, [100, 100, 110, 110]], [0.9, 0.9], classes=[0, 2])]
    assert evaluate_ap(gt, pred, num_classes=3).ap50 == pytest.approx(0.5)
    assert ap_reference(gt, pred, num_classes=3) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("gt", "pred", "kwargs", "error", "match"),
    [
        ([make_detections([BOX])], [], {}, ValueError, "pred: expected one Detections per gt image"),
        ([make_detections([BOX])], [make_detections([BOX])], {}, ValueError, "expected scored detections"),
        (
            [make_detections([BOX], classes=[1])],
            [scored([BOX], [0.5])],
            {},
            ValueError,
            r"gt\[0\]: class id 1",
        ),
        (
            [make_detections([BOX])],
            [scored([BOX], [0.5])],
            {"num_classes": 0},
            ValueError,
            "num_classes: expected",
        ),
        (["not detections"], [scored([BOX], [0.5])], {}, TypeError, "expected Detections, got str"),
    ],
)
def test_ap_rejects_bad_input(gt, pred, kwargs, error, match):
    with pytest.raises(error, match=match):
        evaluate_ap(gt, pred, **kwargs)
    with pytest.raises(error, match=match):
        ap_reference(gt, pred, **kwargs)


def _noisy_predictions(rng: np.random.Generator, n_images: int, num_classes: int):
    gt, pred = [], []
    for _ in range(n_images):
        n = int(rng.integers(0, 7))
        boxes = random_boxes(n, rng)
        classes = rng.integers(0, num_classes, n)
        gt.append(make_detections(boxes, classes=classes))
        jitter = boxes + rng.normal(0, 3, boxes.shape)
        extra = random_boxes(int(rng.integers(0, 4)), rng)
        both = np.concatenate([jitter, extra])
        both = np.concatenate([np.minimum(both[:, :2], both[:, 2:]), np.maximum(both[:, :2], both[:, 2:])], 1)
        keep = rng.random(len(both)) > 0.2  # some GT missed
        cls = np.concatenate([classes, rng.integers(0, num_classes, len(extra))])
        pred.append(scored(both[keep], rng.random(len(both)).astype(np.float32)[keep], classes=cls[keep]))
    return gt, pred


@pytest.mark.parametrize(("seed", "num_classes"), [(0, 1), (1, 1), (2, 3)])
def test_evaluate_ap_matches_numpy_reference(seed, num_classes):
    gt, pred = _noisy_predictions(np.random.default_rng(seed), 40, num_classes)
    result = evaluate_ap(gt, pred, num_classes=num_classes)
    assert 0.0 < result.ap50 < 1.0  # a non-trivial case
    assert result.ap50 == pytest.approx(ap_reference(gt, pred, num_classes=num_classes), abs=1e-3)
    mean_over_thresholds = np.mean(
        [ap_reference(gt, pred, iou_threshold=t, num_classes=num_classes) for t in np.linspace(0.5, 0.95, 10)]
    )
    assert result.ap50_95 == pytest.approx(mean_over_thresholds, abs=1e-3)


def _grid_predictions(rng: np.random.Generator, n_images: int):
    """Boxes on a 2 px grid: many predictions tie in IoU between ground-truth boxes, and scores tie too."""
    gt, pred = [], []
    for _ in range(n_images):
        corners = rng.integers(0, 8, (int(rng.integers(1, 6)), 2)) * 2.0
        boxes = np.concatenate([corners, corners + 8], 1)
        shift = rng.integers(-2, 3, (len(boxes) + 2, 2)) * 2.0
        guesses = boxes[rng.integers(0, len(boxes), len(shift))] + np.concatenate([shift, shift], 1)
        gt.append(make_detections(boxes))
        pred.append(scored(guesses, rng.integers(1, 4, len(guesses)) / 4))
    return gt, pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_ap_matches_numpy_reference_on_ties(seed):
    gt, pred = _grid_predictions(np.random.default_rng(seed), 30)
    result = evaluate_ap(gt, pred)
    assert 0.0 < result.ap50 < 1.0
    assert result.ap50 == pytest.approx(ap_reference(gt, pred), abs=1e-9)
    per_threshold = [ap_reference(gt, pred, iou_threshold=t) for t in np.linspace(0.5, 0.95, 10)]
    assert result.ap50_95 == pytest.approx(np.mean(per_threshold), abs=1e-9)


def test_evaluate_ap_matches_pycocotools():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, pred = _noisy_predictions(np.random.default_rng(7), 25, 1)
    images = [{"id": i + 1, "width": 200, "height": 200} for i in range(len(gt))]
    anns, dets = [], []
    for i, (g, p) in enumerate(zip(gt, pred, strict=True)):
        for box in g.xyxy.tolist():
            w, h = box[2] - box[0], box[3] - box[1]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        for box, s in zip(p.xyxy.tolist(), p.score.tolist(), strict=True):
            dets.append(
                {
                    "image_id": i + 1,
                    "category_id": 1,
                    "score": s,
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                }
            )
    coco_gt = COCO()
    coco_gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "deposit"}]}
    coco_gt.createIndex()
    evaluator = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    result = evaluate_ap(gt, pred)
    assert result.ap50_95 == pytest.approx(evaluator.stats[0], abs=1e-4)
    assert result.ap50 == pytest.approx(evaluator.stats[1], abs=1e-4)


def test_ap_keeps_only_top_100_per_image():
    # 100 far-away FPs scored above the one TP push it out of maxDets=100: AP 0.
    gt = [make_detections([BOX])]
    fps = [[200 + i, 200, 205 + i, 205] for i in range(100)]
    pred = [scored([*fps, BOX], [0.9] * 100 + [0.1])]
    assert evaluate_ap(gt, pred).ap50 == 0.0
    assert ap_reference(gt, pred) == 0.0


# ---------------------------------------------------------------- F1
F1_CASES = [
    # (name, reference, labels, expected (tp, fp, fn))
    ("identical", [[BOX, FAR]], [[BOX, FAR]], (2, 0, 0)),
    ("one extra label", [[BOX]], [[BOX, FAR]], (1, 1, 0)),
    ("one missed", [[BOX, FAR]], [[BOX]], (1, 0, 1)),
    # Two unit boxes offset by half: IoU 1/3 < 0.5, no match.
    ("offset by half", [[[0, 0, 10, 10]]], [[[5, 0, 15, 10]]], (0, 1, 1)),
    ("duplicate label counts once", [[BOX]], [[BOX, BOX]], (1, 1, 0)),
    ("both empty", [[]], [[]], (0, 0, 0)),
    ("over two images", [[BOX], [FAR]], [[BOX], []], (1, 0, 1)),
]


@pytest.mark.parametrize(("name", "reference", "labels", "counts"), F1_CASES, ids=[c[0] for c in F1_CASES])
def test_label_f1_counts(name, reference, labels, counts):
    result = label_f1([make_detections(r) for r in reference], [make_detections(lab) for lab in labels])
    tp, fp, fn = counts
    assert (result.tp, result.fp, result.fn) == counts
    if tp + fp + fn:
        assert result.f1 == pytest.approx(2 * tp / (2 * tp + fp + fn))
    else:
        assert (result.precision, result.recall, result.f1) == (1.0, 1.0, 1.0)


def test_label_f1_rates_hand_case():
    # 3 reference, 4 labels, 2 matches: P = 2/4, R = 2/3, F1 = 4/7.
    reference = [make_detections([BOX, FAR, [100, 100, 120, 120]])]
    labels = [make_detections([BOX, FAR, [300, 300, 310, 310], [400, 400, 410, 410]])]
    result = label_f1(reference, labels)
    assert (result.precision, result.recall, result.f1) == pytest.approx((0.5, 2 / 3, 4 / 7))


def test_matching_maximises_the_number_of_pairs():
    # ref 1 = label A exactly (IoU 1); ref 1 ~ label B and ref 2 ~ label A at IoU 1/3; ref 2 vs B: 0.
    # Best-IoU-first (or the largest IoU sum, 1 > 2/3) keeps one pair; the most pairs is two.
    ref = make_detections([[0, 0, 10, 10], [5, 0, 15, 10]])
    lab = make_detections([[0, 0, 10, 10], [-5, 0, 5, 10]])
    assert count_matches(ref, lab, iou=0.3) == 2
    assert count_matches(ref, lab, iou=0.5) == 1
    assert count_matches(ref, lab, iou=1.0) == 1


def test_matching_respects_classes():
    ref = make_detections([BOX], classes=[0])
    assert count_matches(ref, make_detections([BOX], classes=[1])) == 0
    assert count_matches(ref, make_detections([BOX], classes=[0])) == 1


def test_label_f1_one_side_empty():
    only_labels = label_f1([Detections.empty()], [make_detections([BOX])])
    assert (only_labels.precision, only_labels.recall, only_labels.f1) == (0.0, 0.0, 0.0)
    only_reference = label_f1([make_detections([BOX])], [Detections.empty()])
    assert (only_reference.precision, only_reference.recall, only_reference.f1) == (0.0, 0.0, 0.0)
    assert label_f1([], []).f1 == 1.0


def test_per_image_f1():
    reference = [
        make_detections([BOX]),
        Detections.empty(),
        make_detections([BOX, FAR]),
        make_detections([BOX]),
    ]
    labels = [make_detections([BOX]), Detections.empty(), make_detections([BOX]), Detections.empty()]
    np.testing.assert_allclose(per_image_f1(reference, labels), [1.0, 1.0, 2 / 3, 0.0])
    assert per_image_f1([], []).shape == (0,)


@pytest.mark.parametrize(
    ("reference", "labels", "iou", "error", "match"),
    [
        ([make_detections([BOX])], [], 0.5, ValueError, "labels: expected one Detections per reference"),
        ([make_detections([BOX])], [make_detections([BOX])], 0.0, ValueError, r"iou: .* got 0\.0"),
        ([make_detections([BOX])], [make_detections([BOX])], 1.5, ValueError, r"iou: .* got 1\.5"),
    ],
)
def test_f1_rejects_bad_input(reference, labels, iou, error, match):
    with pytest.raises(error, match=match):
        label_f1(reference, labels, iou=iou)
    with pytest.raises(error, match=match):
        per_image_f1(reference, labels, iou=iou)


# ---------------------------------------------------------------- python -m metrics.f1 on COCO files


def _coco_file(path, images, *, categories=("deposit",)):
    """Write a COCO file: ``images`` maps file_name -> [(x, y, w, h, category name)]."""
    cat_id = {name: i + 1 for i, name in enumerate(categories)}
    coco = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for n, i in cat_id.items()]}
    for image_id, (file_name, boxes) in enumerate(images.items(), start=1):
        coco["images"].append({"id": image_id, "file_name": file_name, "width": 100, "height": 100})
        for x, y, w, h, name in boxes:
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": cat_id[name],
                    "bbox": [x, y, w, h],
                }
            )
    path.write_text(json.dumps(coco))
    return path


def test_f1_cli_matches_by_file_name_and_category_name(tmp_path, capsys):
    truth = _coco_file(
        tmp_path / "truth.json",
        {
            "images/train/a.png": [(0, 0, 10, 10, "cell"), (50, 50, 10, 10, "deposit")],
            "images/train/b.png": [],
        },
        categories=("deposit", "cell"),
    )
    # Other folders and suffixes, categories in another order and case: the same images and classes.
    labels = _coco_file(
        tmp_path / "labels.json",
        {
            "b.jpg": [(0, 0, 10, 10, "Deposit")],
            "x/a.png": [(0, 0, 10, 10, "Cell"), (50, 50, 10, 10, "Deposit")],
        },
        categories=("Cell", "Deposit"),
    )
    wrong_class = _coco_file(tmp_path / "swapped.json", {"a.png": [(0, 0, 10, 10, "deposit")], "b.png": []})
    assert main(["--truth", str(truth), str(labels), str(wrong_class)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "truth: 2 boxes on 2 images; compared on 2 images (IoU >= 0.5)"
    # labels: 2 of 3 boxes right (b's box is a false positive); swapped: its box has the wrong class.
    assert out[2].split() == ["labels.json", "3", "0.667", "1.000", "0.800"]
    assert out[3].split() == ["swapped.json", "1", "0.000", "0.000", "0.000"]


def test_f1_cli_leaves_out_expert_images_of_a_manifest(tmp_path, capsys):
    truth = _coco_file(tmp_path / "truth.json", {"a.png": [(0, 0, 10, 10, "deposit")], "b.png": []})
    labels = _coco_file(tmp_path / "export.json", {"a.png": [(0, 0, 10, 10, "deposit")], "b.png": []})
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"images": [{"image": "a.png", "source": "expert"}, {"image": "b.png"}]}))
    assert main(["--truth", str(truth), "--manifest", str(manifest), str(labels)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        "truth: 1 boxes on 2 images; compared on 1 images, 1 images with an expert annotation left out "
        "(IoU >= 0.5)"
    )
    assert out[2].split() == ["export.json", "0", "1.000", "1.000", "1.000"]  # b: nothing, rightly


@pytest.mark.parametrize(
    ("labels", "categories", "error"),
    [
        ({"c.png": []}, ("deposit",), "images ['c'] are not in the truth"),
        ({"x/a.png": [], "y/a.png": []}, ("deposit",), "two images are named 'a'"),
        ({"a.png": [(0, 0, 5, 5, "cell")]}, ("cell",), "categories ['cell'] are not among the truth's"),
    ],
)
def test_f1_cli_rejects_mismatched_files(tmp_path, capsys, labels, categories, error):
    truth = _coco_file(tmp_path / "truth.json", {"a.png": [(0, 0, 10, 10, "deposit")]})
    path = _coco_file(tmp_path / "labels.json", labels, categories=categories)
    assert main(["--truth", str(truth), str(path)]) == 2
    assert error in capsys.readouterr().err


def test_f1_cli_rejects_files_that_are_not_coco(tmp_path, capsys):
    truth = _coco_file(tmp_path / "truth.json", {"a.png": []})
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": []}')
    assert main(["--truth", str(truth), str(bad)]) == 2
    assert "bad.json: not a readable COCO detection file" in capsys.readouterr().err
    empty = _coco_file(tmp_path / "empty.json", {})
    assert main(["--truth", str(truth), str(empty)]) == 2
    assert "no image is in the truth and in every labels file" in capsys.readouterr().err


def _raw_coco(path, categories, annotations, *, image=None):
    """Write a COCO file of one 100 x 100 image ``a.png`` (id 1), as a lab's tool may: any category ids."""
    image = image if image is not None else {"id": 1, "file_name": "a.png", "width": 100, "height": 100}
    coco = {
        "images": [image],
        "categories": [{"id": cid, "name": name} for cid, name in categories],
        "annotations": [
            {"id": i + 1, "image_id": 1, **ann} if isinstance(ann, dict) else ann
            for i, ann in enumerate(annotations)
        ],
    }
    path.write_text(json.dumps(coco))
    return path


def test_coco_labels_read_any_category_ids_by_listed_position_and_name(tmp_path, capsys):
    """Category id 0 and gaps (real COCO skips ids): classes follow the listed order; another file's
    categories are matched to the truth's by name, whatever their ids."""
    from metrics.f1 import read_coco_labels

    truth = _raw_coco(
        tmp_path / "truth.json",
        [(0, "cell"), (5, "deposit")],
        [
            {"category_id": 5, "bbox": [0, 0, 10, 10]},
            {"category_id": 0, "bbox": [50, 50, 10, 10]},
        ],
    )
    boxes, names = read_coco_labels(truth)
    assert names == ["cell", "deposit"]
    assert boxes["a"].class_id.tolist() == [1, 0]
    assert boxes["a"].xyxy.tolist() == [[0, 0, 10, 10], [50, 50, 60, 60]]

    labels = _raw_coco(
        tmp_path / "labels.json",
        [(9, "Deposit"), (3, "cell")],  # other ids, order and case
        [
            {"category_id": 9, "bbox": [0, 0, 10, 10]},  # right
            {"category_id": 9, "bbox": [50, 50, 10, 10]},  # the cell, called a deposit
        ],
    )
    matched, same = read_coco_labels(labels, names=names)
    assert same == names and matched["a"].class_id.tolist() == [1, 1]
    assert main(["--truth", str(truth), str(labels)]) == 0
    assert capsys.readouterr().out.splitlines()[2].split() == ["labels.json", "2", "0.500", "0.500", "0.500"]


ANN = {"category_id": 1, "bbox": [0, 0, 10, 10]}


@pytest.mark.parametrize(
    ("annotations", "image", "error"),
    [
        (
            [{"category_id": 1, "bbox": [0, 0, 10]}],
            None,
            "annotations[0] (id 1): bbox: expected [x, y, width",
        ),
        ([{"category_id": 2, "bbox": [0, 0, 10, 10]}], None, "annotations[0] (id 1): category_id 2 is not"),
        ([{"category_id": "1", "bbox": [0, 0, 10, 10]}], None, "annotations[0] (id 1): category_id '1' is"),
        ([ANN, {**ANN, "bbox": [0, 0, 0, 10]}], None, "annotations[1] (id 2): empty box"),
        ([{**ANN, "image_id": 7}], None, "annotations[0] (id 1): image_id 7 is not among the images"),
        ([{**ANN, "iscrowd": 1}], None, "annotations[0] (id 1): iscrowd 1: a COCO crowd region"),
        (["not an object"], None, "annotations[0]: expected an object, got str"),
        ([{**ANN, "bbox": [200, 0, 10, 10]}], None, "annotations[0] (id 1): box [200.0, 0.0, 210.0, 10.0]"),
        ([ANN], {"id": 1, "file_name": "a.png", "height": 100}, "images[0] (id 1): expected a positive "),
    ],
)
def test_malformed_coco_entries_are_refused_naming_the_file_and_entry(
    tmp_path, capsys, annotations, image, error
):
    from formats.coco import CocoError
    from metrics.f1 import read_coco_labels

    path = _raw_coco(tmp_path / "labels.json", [(1, "deposit")], annotations, image=image)
    with pytest.raises(CocoError) as caught:
        read_coco_labels(path)
    assert str(caught.value).startswith(f"{path}: {error}"), caught.value
    truth = _raw_coco(tmp_path / "truth.json", [(1, "deposit")], [ANN])
    assert main(["--truth", str(truth), str(path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {caught.value}"
