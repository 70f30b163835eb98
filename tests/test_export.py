"""``backend.export``: the per-image decision, the review file, the manifest and the three layouts read back
through ``formats/`` (a fake detector behind the detector interface; images as data URIs, no Label Studio)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_detections

from backend.export import (
    ExportError,
    ExportFormat,
    ExportInputError,
    ImageSource,
    build_manifest,
    clean_tasks,
    decide,
    image_name,
    run_export,
    write_export,
)
from backend.images import ImageLoader
from backend.labelconfig import parse_label_config
from backend.protocol import proposals_from_score
from backend.settings import ExpertPolicy, Settings
from formats.coco import from_coco
from formats.labelstudio import detections_to_crowd_labels, detections_to_regions, regions_to_detections
from formats.yolo import read_yolo_labels
from model.detector import Detector
from selection.detections import Detections
from selection.lsm import LSMConfig, score_image

CONFIG_XML = (
    '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
    '<Label value="deposit"/><Label value="background"/></RectangleLabels></View>'
)
SCHEMA = parse_label_config(CONFIG_XML)
EXPERT = "expert@lab.org"
POLICY = ExpertPolicy.parse(f"emails:{EXPERT}")


class WidthKeyedDetector:
    """A fake detector: the predictions of an image are looked up by its width (each test image differs)."""

    version = "v0001-fake"

    def __init__(self, by_width: dict[int, Detections]) -> None:
        self.names = ["deposit"]
        self.by_width = by_width
        self.calls: list[int] = []

    def predict(self, images: Any, *, conf: float = 0.01, batch: int = 16) -> list[Detections]:
        out = []
        for im in images:
            pred = self.by_width.get(int(np.asarray(im).shape[1]), Detections.empty(with_score=True))
            self.calls.append(int(np.asarray(im).shape[1]))
            assert pred.score is not None
            out.append(pred.subset(pred.score >= conf))
        return out


def _uri(width: int, height: int = 100) -> str:
    from backend_helpers import data_uri

    return data_uri(np.full((height, width), 128, np.uint8))


CLEAN = make_detections([[10, 10, 30, 30]])
CLEAN_PRED = make_detections([[10, 10, 30, 30]], scores=[0.9])
# A crowd box the model confirms, a crowd box on nothing (dropped), a prediction the crowd missed with a
# middling score (uncertain: left for review, not added).
NOISY = make_detections([[10, 10, 30, 30], [60, 60, 80, 80]])
NOISY_PRED = make_detections([[10, 10, 30, 30], [100, 20, 120, 40]], scores=[0.9, 0.4])
EXPERT_BOXES = make_detections([[5, 5, 25, 25], [40, 40, 60, 60]], classes=[0, 1])  # 2nd: "background"


def _task(tid: int, width: int, crowd: Detections, *, expert: Detections | None = None) -> dict[str, Any]:
    data = {
        "image": _uri(width),
        "image_id": f"img/{tid:03d}",
        "crowd_labels": detections_to_crowd_labels(crowd, width=width, height=100, labels=SCHEMA.labels),
    }
    annotations = [
        {
            "id": 100 + tid,
            "completed_by": 7,
            "completed_by_email": "crowd@lab.org",
            "result": detections_to_regions(
                crowd, width=width, height=100, labels=SCHEMA.labels, from_name="label", to_name="image"
            ),
        }
    ]
    if expert is not None:
        regions = detections_to_regions(
            expert, width=width, height=100, labels=SCHEMA.labels, from_name="label", to_name="image"
        )
        annotations.append(
            {"id": 200 + tid, "completed_by": 3, "completed_by_email": EXPERT, "result": regions}
        )
    return {"id": tid, "data": data, "annotations": annotations}


def _tasks() -> list[dict[str, Any]]:
    return [
        _task(1, 150, NOISY, expert=EXPERT_BOXES),
        _task(2, 160, NOISY),
        _task(3, 170, CLEAN),
    ]


def _detector() -> WidthKeyedDetector:
    return WidthKeyedDetector({150: NOISY_PRED, 160: NOISY_PRED, 170: CLEAN_PRED})


def _clean(tasks: list[dict[str, Any]], detector: Detector | None, **kw: Any) -> Any:
    return clean_tasks(
        tasks,
        schema=SCHEMA,
        detector=detector,
        loader=ImageLoader(),
        policy=POLICY,
        config=LSMConfig(),
        predict_conf=0.01,
        batch=2,
        **kw,
    )


# --- the per-image decision --------------------------------------------------------------------------------


def test_expert_annotation_wins_over_crowd_and_model():
    d = decide(NOISY, NOISY_PRED, EXPERT_BOXES, config=LSMConfig())
    assert d.source is ImageSource.EXPERT and d.plan is None and not d.counts
    np.testing.assert_array_equal(d.labels.xyxy, EXPERT_BOXES.xyxy)
    assert d.labels.score is None


def test_confident_fixes_are_applied_and_uncertain_ones_left():
    d = decide(NOISY, NOISY_PRED, None, config=LSMConfig())
    assert d.source is ImageSource.AUTO_CORRECTED
    np.testing.assert_array_equal(d.labels.xyxy, [[10, 10, 30, 30]])  # background box dropped, 0.4 not added
    assert d.counts["dropped"] == 1 and d.counts["added"] == 0 and d.counts["flagged"] == 1
    assert d.grade == "uncertain" and d.discrepancy is not None and d.discrepancy > 0


def test_crowd_labels_the_model_confirms_are_exported_unchanged():
    d = decide(CLEAN, CLEAN_PRED, None, config=LSMConfig())
    assert d.source is ImageSource.CROWD
    np.testing.assert_array_equal(d.labels.xyxy, CLEAN.xyxy)


def test_an_image_without_expert_needs_predictions():
    with pytest.raises(ValueError, match="pred: predictions are needed"):
        decide(CLEAN, None, None, config=LSMConfig())


def test_export_is_the_plan_annotators_see(rng):
    """Exported boxes == the proposals shown in Label Studio, minus deletions and unadded predictions."""
    from conftest import random_boxes

    for _ in range(30):
        crowd = make_detections(random_boxes(int(rng.integers(0, 6)), rng))
        pred_boxes = np.concatenate([crowd.xyxy + rng.normal(0, 3, crowd.xyxy.shape), random_boxes(2, rng)])
        pred_boxes = np.sort(pred_boxes.reshape(-1, 2, 2), axis=1).reshape(-1, 4)
        pred = make_detections(pred_boxes, scores=rng.uniform(0.05, 1.0, len(pred_boxes)))
        d = decide(crowd, pred, None, config=LSMConfig())
        shown = proposals_from_score(crowd, pred, score_image(crowd, pred))
        kept = [p.xyxy for p in shown if not p.drop and not (p.source == "model" and p.action == "review")]
        np.testing.assert_allclose(d.labels.xyxy, np.array(kept, np.float32).reshape(-1, 4), atol=1e-4)


# --- tasks -> cleaned images --------------------------------------------------------------------------------


def test_clean_tasks_decides_each_task_and_lists_review_items():
    detector = _detector()
    cleaned = _clean(_tasks(), detector)
    assert [str(c.decision.source) for c in cleaned] == ["expert", "auto-corrected", "crowd"]
    assert sorted(detector.calls) == [160, 170]  # the expert image is not predicted
    assert [c.name for c in cleaned] == ["img/001.png", "img/002.png", "img/003.png"]
    # The expert's "background" box is a deletion label: not exported.
    np.testing.assert_allclose(cleaned[0].labels.xyxy, [[5, 5, 25, 25]], atol=1e-3)
    assert cleaned[0].labels.class_id.tolist() == [0]
    (item,) = cleaned[1].review
    assert (item.task_id, item.image, item.noise_type, item.grade, item.origin) == (
        2,
        "img/002.png",
        "missed",
        "uncertain",
        "model",
    )
    assert item.xyxy == pytest.approx((100, 20, 120, 40)) and item.severity == pytest.approx(0.4)
    assert not cleaned[2].review


def test_clean_tasks_errors_name_the_task():
    bad = _task(9, 150, CLEAN)
    bad["data"]["crowd_labels"] = [{"x": 1, "y": 2, "label": "deposit"}]
    with pytest.raises(ExportInputError, match=r"task 9: crowd_labels\[0\]: needs numeric"):
        _clean([bad], _detector())  # the task's data: exit 2, as a malformed image reference
    with pytest.raises(ExportError, match="no model version"):
        _clean([_task(2, 160, NOISY)], None)
    missing = _task(4, 150, CLEAN)
    del missing["data"]["image"]
    with pytest.raises(ExportInputError, match=r"task 4: data\.image is missing"):
        _clean([missing], _detector())
    # Every task expert-annotated: no model needed.
    assert len(_clean([_task(1, 150, NOISY, expert=EXPERT_BOXES)], None)) == 1


def test_image_names_stay_unique_and_inside_the_export():
    tasks = [_task(1, 150, CLEAN), _task(2, 160, CLEAN)]
    tasks[1]["data"]["image_id"] = tasks[0]["data"]["image_id"]
    cleaned = _clean(tasks, _detector())
    assert [c.name for c in cleaned] == ["img/001.png", "img/task2_001.png"]
    assert image_name({"id": 5, "data": {"image_id": "../../etc/passwd"}}, "x.png") == "etc/passwd.png"


def test_images_that_differ_only_by_suffix_get_their_own_yolo_label_files(tmp_path):
    # site1/img001.png and site2/img001.jpg: one labels/img001.txt would hold one image's boxes for both.
    from PIL import Image

    root = tmp_path / "files"
    tasks = [_task(1, 150, CLEAN), _task(2, 160, NOISY, expert=EXPERT_BOXES), _task(3, 170, CLEAN)]
    files = ["site1/img001.png", "site2/img001.jpg", "site3/IMG001.png"]
    for task, rel, width in zip(tasks, files, (150, 160, 170), strict=True):
        (root / rel).parent.mkdir(parents=True)
        Image.fromarray(np.full((100, width), 128, np.uint8)).save(root / rel)
        task["data"]["image"] = f"/data/local-files/?d={rel}"
        del task["data"]["image_id"]
    out = tmp_path / "yolo"
    cleaned = clean_tasks(
        tasks,
        schema=SCHEMA,
        detector=_detector(),
        loader=ImageLoader(document_root=root),
        policy=POLICY,
        config=LSMConfig(),
        predict_conf=0.01,
        image_dir=out / "images",
    )
    # A case-only difference is one file on macOS and Windows: renamed too.
    assert [c.name for c in cleaned] == ["img001.png", "task2_img001.jpg", "task3_IMG001.png"]
    write_export(out, cleaned, fmt=ExportFormat.YOLO, categories=["deposit"], schema=SCHEMA, manifest={})
    from model.device import import_ultralytics

    import_ultralytics()
    from ultralytics.data.utils import img2label_paths

    # Each image's label file, found as ultralytics finds it, holds that image's boxes.
    images = [str(out / "images" / c.name) for c in cleaned]
    read = {
        c.task_id: read_yolo_labels(label, c.width, c.height)
        for c, label in zip(cleaned, img2label_paths(images), strict=True)
    }
    _assert_same(read, _expected(cleaned))
    assert len(set(img2label_paths(images))) == 3


def test_local_files_names_are_percent_decoded_once_as_label_studio_serves_them():
    from urllib.parse import quote

    def name(rel: str) -> str:
        return image_name({"id": 1, "data": {}}, f"/data/local-files/?d={quote(rel)}")

    assert name("imgs/scan%20a.png") == "scan_20a.png"  # the file is named scan%20a.png, not scan a.png
    assert name("imgs/scan a+b.jpg") == "scan_a_b.jpg"
    assert name("imgs/näme.png") == "n_me.png"
    assert image_name({"id": 1, "data": {}}, "/data/upload/1/scan%20a.gif") == "scan_a.png"  # a .gif trains


# --- files: manifest, review, round trips through formats/ --------------------------------------------------


def _settings(tmp_path: Path) -> Settings:
    return Settings(model_dir=tmp_path / "models", expert=POLICY)


def _write(tmp_path: Path, fmt: ExportFormat) -> tuple[Path, list[Any]]:
    cleaned = _clean(_tasks(), _detector(), image_dir=tmp_path / fmt.value / "images")
    manifest = build_manifest(
        cleaned,
        fmt=fmt,
        project=4,
        categories=["deposit"],
        model={"version": "v0001-fake", "family": "fake", "source": "test"},
        settings=_settings(tmp_path),
    )
    out = tmp_path / fmt.value
    write_export(out, cleaned, fmt=fmt, categories=["deposit"], schema=SCHEMA, manifest=manifest)
    return out, cleaned


def test_manifest_and_review_file(tmp_path):
    out, cleaned = _write(tmp_path, ExportFormat.COCO)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["version"] == "v0001-fake" and manifest["project"] == 4
    assert manifest["expert_mode"] == f"emails:{EXPERT}"
    assert manifest["lsm"]["match_iou"] == LSMConfig().match_iou and manifest["predict_conf"] == 0.01
    assert manifest["counts"]["by_source"] == {"expert": 1, "auto-corrected": 1, "crowd": 1}
    assert manifest["counts"]["boxes"] == 3 and manifest["counts"]["review_instances"] == 1
    assert manifest["counts"]["edits"]["dropped"] == 1 and manifest["counts"]["crowd_boxes"] == 3
    rows = [(r["task_id"], r["source"], r["boxes"]) for r in manifest["images"]]
    assert rows == [(1, "expert", 1), (2, "auto-corrected", 1), (3, "crowd", 1)]
    review = json.loads((out / "review.json").read_text())
    assert review == [item.as_json() for c in cleaned for item in c.review]
    with open(out / "review.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert (row["task_id"], row["noise_type"], float(row["x1"])) == ("2", "missed", 100.0)


def _expected(cleaned: list[Any]) -> dict[int, Detections]:
    return {c.task_id: c.labels for c in cleaned}


def _assert_same(read: dict[int, Detections], expected: dict[int, Detections]) -> None:
    assert sorted(read) == sorted(expected)
    for tid, dets in expected.items():
        np.testing.assert_allclose(read[tid].xyxy, dets.xyxy, atol=0.01, err_msg=f"task {tid}")
        np.testing.assert_array_equal(read[tid].class_id, dets.class_id)


def test_coco_round_trip(tmp_path):
    out, cleaned = _write(tmp_path, ExportFormat.COCO)
    images = from_coco(json.loads((out / "annotations.json").read_text()))
    _assert_same({i: im.detections for i, im in images.items()}, _expected(cleaned))
    for im in images.values():
        assert (out / "images" / im.file_name).is_file()


def test_yolo_round_trip(tmp_path):
    import yaml

    out, cleaned = _write(tmp_path, ExportFormat.YOLO)
    assert yaml.safe_load((out / "data.yaml").read_text())["names"] == {0: "deposit"}
    read = {
        c.task_id: read_yolo_labels((out / "labels" / c.name).with_suffix(".txt"), c.width, c.height)
        for c in cleaned
    }
    _assert_same(read, _expected(cleaned))
    assert all((out / "images" / c.name).is_file() for c in cleaned)
    # ultralytics finds the images from anywhere (train/val resolve against the file's folder).
    from model.device import import_ultralytics

    import_ultralytics()
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(out / "data.yaml"))
    assert Path(data["train"]) == (out / "images").resolve() and data["names"] == {0: "deposit"}


def test_label_studio_round_trip(tmp_path):
    out, cleaned = _write(tmp_path, ExportFormat.LS)
    tasks = json.loads((out / "tasks.json").read_text())
    read = {
        t["id"]: regions_to_detections(t["annotations"][0]["result"], label_to_id={"deposit": 0})
        for t in tasks
    }
    _assert_same(read, _expected(cleaned))
    assert [t["annotations"][0]["ground_truth"] for t in tasks] == [True, False, False]
    assert tasks[1]["data"]["image_id"] == "img/002"


# --- run_export: the errors a user meets --------------------------------------------------------------------


class FakeSource:
    def __init__(self, tasks: list[dict[str, Any]], *, missing: bool = False) -> None:
        self._tasks = tasks
        self._missing = missing

    def label_config(self, project: int | None) -> str:
        if self._missing:
            err = RuntimeError("not found")
            err.status_code = 404  # type: ignore[attr-defined]
            raise err
        return CONFIG_XML

    def tasks(self, project: int | None) -> list[dict[str, Any]]:
        return self._tasks


def test_run_export_errors(tmp_path):
    settings = _settings(tmp_path)
    kw: dict[str, Any] = {"project": 4, "fmt": ExportFormat.COCO, "progress": False}
    with pytest.raises(ExportError, match="project 4: not found in Label Studio"):
        run_export(settings, out=tmp_path / "a", source=FakeSource([], missing=True), **kw)
    with pytest.raises(ExportError, match="project 4: has no tasks"):
        run_export(settings, out=tmp_path / "a", source=FakeSource([]), **kw)
    with pytest.raises(ExportError, match=r"no model version in .*python -m backend.bootstrap --project 4"):
        run_export(settings, out=tmp_path / "a", source=FakeSource(_tasks()), **kw)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ExportError, match="is not an empty folder"):
        run_export(settings, out=tmp_path / "full", source=FakeSource(_tasks()), **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # nothing half-written


def test_run_export_of_an_all_expert_project_needs_no_model(tmp_path):
    settings = _settings(tmp_path)
    tasks = [_task(1, 150, NOISY, expert=EXPERT_BOXES)]
    manifest = run_export(
        settings,
        project=4,
        fmt=ExportFormat.YOLO,
        out=tmp_path / "out",
        source=FakeSource(tasks),
        progress=False,
    )
    assert manifest["model"] is None and manifest["counts"]["by_source"]["expert"] == 1
    assert (tmp_path / "out" / "labels" / "img" / "001.txt").is_file()


def test_crowd_from_annotations_as_the_backend_reads_it():
    """CROWD_SOURCE=annotations: the crowd boxes are the crowd users' annotations (fused), not the field."""
    from backend.crowd import CrowdReader
    from backend.roles import CrowdPolicy

    task = _task(2, 160, NOISY)
    task["data"]["crowd_labels"] = []  # ignored under CROWD_SOURCE=annotations
    reader = CrowdReader(CrowdPolicy.parse("annotations", "all_but_experts"), POLICY, users=None)
    (from_annotations,) = _clean([task], _detector(), crowd_reader=reader)
    (from_field,) = _clean([task], _detector())
    assert from_annotations.decision.counts["dropped"] == 1  # NOISY's background box, from the annotation
    np.testing.assert_allclose(from_annotations.labels.xyxy, [[10, 10, 30, 30]], atol=1e-3)
    assert str(from_field.decision.source) == "auto-corrected"  # no crowd box: the model's 0.9 box is added
    assert from_field.decision.counts["added"] == 1


def test_export_regrades_with_the_versions_calibration_as_predict_does():
    """A stored calibration that learnt "background findings are never errors" keeps the box the LSM drops."""
    from selection.calibration import FEATURES, CalibrationConfig, LabelledFindings, fit_calibration

    n = 20
    never = fit_calibration(
        LabelledFindings(
            np.full(n, "background"), np.zeros((n, len(FEATURES))), np.zeros(n, bool), np.full(n, "auto_fix")
        ),
        config=CalibrationConfig(min_rate_examples=5),  # a rate rule: "the LSM's background fixes were wrong"
    )
    task = _task(2, 160, NOISY)
    (plain,) = _clean([task], _detector())
    (calibrated,) = _clean([task], _detector(), calibration=never)
    assert plain.decision.counts["dropped"] == 1
    assert calibrated.decision.counts["dropped"] == 0
    np.testing.assert_allclose(calibrated.labels.xyxy, NOISY.xyxy, atol=1e-3)
    assert str(calibrated.decision.source) == "crowd"


def test_run_export_reads_the_stored_calibration(tmp_path, monkeypatch):
    import model.detector
    from backend.calibration import calibration_path
    from model.registry import ModelRegistry
    from selection.calibration import FEATURES, CalibrationConfig, LabelledFindings, fit_calibration

    settings = _settings(tmp_path)
    weights = tmp_path / "fake.pt"
    weights.write_bytes(b"not read: the detector is faked")
    mv = ModelRegistry(settings.model_dir).publish(weights, {"family": "yolo"})
    monkeypatch.setattr(model.detector, "load_detector", lambda version, **_: _detector())
    n = 20
    never = fit_calibration(
        LabelledFindings(
            np.full(n, "background"), np.zeros((n, len(FEATURES))), np.zeros(n, bool), np.full(n, "auto_fix")
        ),
        config=CalibrationConfig(min_rate_examples=5),  # a rate rule: "the LSM's background fixes were wrong"
    )
    kw: dict[str, Any] = {"project": 4, "fmt": ExportFormat.COCO, "progress": False}
    before = run_export(settings, out=tmp_path / "a", source=FakeSource(_tasks()), **kw)
    calibration_path(mv).write_text(json.dumps({"calibration": never.to_dict()}))
    after = run_export(settings, out=tmp_path / "b", source=FakeSource(_tasks()), **kw)
    assert before["model"]["calibrated_types"] is None and before["counts"]["edits"]["dropped"] == 1
    assert after["model"]["calibrated_types"] == ["background"] and after["counts"]["edits"]["dropped"] == 0
    calibration_path(mv).write_text("{not json")
    unreadable = run_export(settings, out=tmp_path / "c", source=FakeSource(_tasks()), **kw)
    assert unreadable["model"]["calibrated_types"] is None  # the LSM's grades, as /predict falls back


def test_train_final_needs_the_images(tmp_path):
    settings = _settings(tmp_path)
    for fmt, images in ((ExportFormat.LS, True), (ExportFormat.YOLO, False)):
        with pytest.raises(ExportError, match="--train-final trains on the exported images"):
            run_export(
                settings,
                project=4,
                fmt=fmt,
                out=tmp_path / "a",
                source=FakeSource(_tasks()),
                progress=False,
                images=images,
                final=True,
            )
    assert not (tmp_path / "a").exists()


def test_final_training_job_holds_out_a_tenth_of_the_expert_images(tmp_path):
    from backend.export import FINAL_SOURCE, final_training_job

    tasks = [_task(t, 100 + t, NOISY, expert=EXPERT_BOXES if t <= 20 else None) for t in range(1, 31)]
    detector = WidthKeyedDetector({100 + t: NOISY_PRED for t in range(1, 31)})
    cleaned = _clean(tasks, detector)
    job = final_training_job(
        _settings(tmp_path),
        cleaned,
        image_dir=tmp_path / "images",
        categories=["deposit"],
        init=None,
        job_dir=tmp_path / "job",
        model_dir=tmp_path / "model",
    )
    assert job["source"] == FINAL_SOURCE and job["names"] == ["deposit"] and job["val_held_out"]
    assert len(job["val"]) == 2 and len(job["train"]) == 28 and job["task_ids"] == list(range(1, 31))
    val_paths = {v["path"] for v in job["val"]}
    assert not val_paths & {t["path"] for t in job["train"]}
    # The held-out images are expert images; the auto-corrected ones train with the crowd's dropped box gone.
    expert_names = {str(tmp_path / "images" / c.name) for c in cleaned if c.task_id <= 20}
    assert val_paths <= expert_names
    corrected = [t for t in job["train"] if t["path"] == str(tmp_path / "images" / cleaned[25].name)]
    assert corrected
    np.testing.assert_allclose(corrected[0]["xyxy"], [[10, 10, 30, 30]], atol=1e-3)
    # Fewer than ten expert images: all of them validate, and train too.
    few = final_training_job(
        _settings(tmp_path),
        cleaned[15:],
        image_dir=tmp_path / "images",
        categories=["deposit"],
        init=None,
        job_dir=tmp_path / "job",
        model_dir=tmp_path / "model",
    )
    assert not few["val_held_out"] and len(few["val"]) == 5 and len(few["train"]) == 15


# --- the export predicts as /predict does -------------------------------------------------------------------


def _publish(settings: Settings, tmp_path: Path, meta: dict[str, Any] | None = None) -> Any:
    from model.registry import ModelRegistry

    weights = tmp_path / "fake.pt"
    weights.write_bytes(b"not read: the detector is faked")
    return ModelRegistry(settings.model_dir).publish(weights, {"family": "yolo", **(meta or {})})


def _fake_model(monkeypatch: pytest.MonkeyPatch, detector: Any) -> None:
    import model.detector

    monkeypatch.setattr(model.detector, "load_detector", lambda version, **_: detector)


def test_run_export_predicts_tile_by_tile_under_tile_size_as_predict_does(tmp_path, monkeypatch):
    from dataclasses import replace

    from model.tiling import TileConfig

    settings = replace(_settings(tmp_path), tiling=TileConfig(size=64, overlap=16))
    _publish(settings, tmp_path)
    detector = _detector()
    _fake_model(monkeypatch, detector)
    manifest = run_export(
        settings, project=4, fmt=ExportFormat.COCO, out=tmp_path / "out", source=FakeSource(_tasks())
    )
    # The 160 and 170 px wide images reach the model as tiles of at most 64 px, as /predict tiles them.
    assert detector.calls and max(detector.calls) <= 64
    assert manifest["model"]["tiling"] == 64


class PixelRecorder(WidthKeyedDetector):
    """The fake detector, recording the pixel range of each image it sees."""

    def __init__(self) -> None:
        super().__init__({})
        self.ranges: list[tuple[int, int]] = []

    def predict(self, images: Any, *, conf: float = 0.01, batch: int = 16) -> list[Detections]:
        self.ranges += [(int(np.min(im)), int(np.max(im))) for im in images]
        return super().predict(images, conf=conf, batch=batch)


def test_run_export_normalises_images_as_the_version_was_trained(tmp_path, monkeypatch):
    from backend_helpers import data_uri

    settings = _settings(tmp_path)  # IMAGE_NORMALIZE=auto: an 8-bit image would pass unchanged
    _publish(settings, tmp_path, {"image_normalization": {"mode": "percentile", "percentiles": [0, 100]}})
    detector = PixelRecorder()
    _fake_model(monkeypatch, detector)
    task = _task(2, 160, NOISY)
    task["data"]["image"] = data_uri(np.tile(np.linspace(100, 150, 160).astype(np.uint8), (100, 1)))
    manifest = run_export(
        settings, project=4, fmt=ExportFormat.LS, out=tmp_path / "out", source=FakeSource([task])
    )
    assert detector.ranges == [(0, 255)]  # stretched by the version's percentile normalisation
    assert manifest["model"]["image_normalization"]["mode"] == "percentile"


# --- tasks nobody labelled, labels the model cannot predict -------------------------------------------------


def _unlabelled_task(tid: int, width: int) -> dict[str, Any]:
    task = _task(tid, width, CLEAN)
    del task["data"]["crowd_labels"]  # under CROWD_SOURCE=field the crowd's annotation does not count
    return task


def test_tasks_nobody_labelled_are_left_out_and_listed(tmp_path, monkeypatch):
    from backend.crowd import CrowdReader
    from backend.export import unlabelled_tasks
    from backend.roles import CrowdPolicy

    tasks = [*_tasks(), _unlabelled_task(4, 180)]
    assert [c.task_id for c in _clean(tasks, _detector())] == [1, 2, 3]
    # Under CROWD_SOURCE=annotations, a task without a crowd annotation is the unlabelled one.
    reader = CrowdReader(CrowdPolicy.parse("annotations", "all_but_experts"), POLICY, users=None)
    no_crowd = _task(5, 190, CLEAN)
    no_crowd["annotations"] = []
    assert unlabelled_tasks([*tasks, no_crowd], policy=POLICY, crowd_reader=reader) == [5]
    assert [c.task_id for c in _clean([*tasks, no_crowd], _detector(), crowd_reader=reader)] == [1, 2, 3, 4]

    settings = _settings(tmp_path)
    _publish(settings, tmp_path)
    _fake_model(monkeypatch, _detector())
    out = tmp_path / "out"
    manifest = run_export(settings, project=4, fmt=ExportFormat.YOLO, out=out, source=FakeSource(tasks))
    assert manifest["unlabelled"] == [4] and manifest["counts"]["unlabelled"] == 1
    assert manifest["counts"]["images"] == 3 and [r["task_id"] for r in manifest["images"]] == [1, 2, 3]
    assert sorted(p.name for p in (out / "images" / "img").iterdir()) == ["001.png", "002.png", "003.png"]


def test_unlabelled_tasks_need_no_model_and_an_unlabelled_project_is_refused(tmp_path):
    settings = _settings(tmp_path)  # an empty registry
    tasks = [_task(1, 150, NOISY, expert=EXPERT_BOXES), _unlabelled_task(4, 180)]
    kw: dict[str, Any] = {"project": 4, "fmt": ExportFormat.COCO, "progress": False}
    manifest = run_export(settings, out=tmp_path / "a", source=FakeSource(tasks), **kw)
    assert manifest["model"] is None and manifest["unlabelled"] == [4]
    with pytest.raises(
        ExportError, match=r"project 4: none of its 1 tasks has crowd labels .*backend.ingest"
    ):
        run_export(settings, out=tmp_path / "b", source=FakeSource(tasks[1:]), **kw)
    assert not (tmp_path / "b").exists()


ROCK_XML = CONFIG_XML.replace('"deposit"/>', '"deposit"/><Label value="rock"/>')  # added after training
ROCK = parse_label_config(ROCK_XML)


def test_decide_keeps_crowd_boxes_of_labels_the_model_cannot_predict():
    crowd = make_detections([[10, 10, 30, 30], [60, 60, 80, 80]], classes=[0, 1])  # deposit, rock
    plain = decide(crowd, CLEAN_PRED, None, config=LSMConfig())
    assert plain.counts["dropped"] == 1 and len(plain.labels) == 1  # the rock box, graded background
    blind = decide(crowd, CLEAN_PRED, None, config=LSMConfig(), predictable=np.array([True, False, True]))
    assert str(blind.source) == "crowd" and blind.unscored == 1 and blind.counts["dropped"] == 0
    np.testing.assert_allclose(blind.labels.xyxy, crowd.xyxy)
    assert blind.labels.class_id.tolist() == [0, 1]


def test_crowd_boxes_of_a_label_added_after_training_are_exported_as_drawn(tmp_path, monkeypatch, caplog):
    crowd = make_detections([[10, 10, 30, 30], [60, 60, 80, 80]], classes=[0, 1])  # deposit, rock
    tasks = [
        {
            "id": tid,
            "data": {
                "image": _uri(width),
                "crowd_labels": detections_to_crowd_labels(
                    crowd, width=width, height=100, labels=ROCK.labels
                ),
            },
        }
        for tid, width in ((1, 170), (2, 175))
    ]
    detector = WidthKeyedDetector({170: CLEAN_PRED, 175: CLEAN_PRED})  # the model knows "deposit" only

    class RockSource(FakeSource):
        def label_config(self, project: int | None) -> str:
            return ROCK_XML

    settings = _settings(tmp_path)
    _publish(settings, tmp_path)
    _fake_model(monkeypatch, detector)
    out = tmp_path / "out"
    manifest = run_export(settings, project=4, fmt=ExportFormat.COCO, out=out, source=RockSource(tasks))
    images = from_coco(json.loads((out / "annotations.json").read_text()))
    for tid in (1, 2):
        np.testing.assert_allclose(images[tid].detections.xyxy, crowd.xyxy, atol=0.01)
        assert images[tid].detections.class_id.tolist() == [0, 1]  # categories deposit, rock
    assert manifest["counts"]["unscored_crowd_boxes"] == 2 and manifest["counts"]["edits"]["dropped"] == 0
    assert manifest["model"]["unpredicted_labels"] == ["rock"]
    assert [r["source"] for r in manifest["images"]] == ["crowd", "crowd"]
    warnings = [r.getMessage() for r in caplog.records if "cannot predict the label" in r.getMessage()]
    assert len(warnings) == 1 and "['rock']" in warnings[0]


# --- the command line: one error line, the documented exit status -------------------------------------------


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """The environment and Label Studio of ``python -m backend.export`` (the source faked); the tasks."""
    for var in ("MODEL_WEIGHTS", "EXPERT_MODE", "CROWD_SOURCE", "TILE_SIZE", "LOCAL_FILES_DOCUMENT_ROOT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "k" * 40)
    monkeypatch.setenv("EXPERT_MODE", f"emails:{EXPERT}")
    tasks = [*_tasks(), _unlabelled_task(4, 180)]
    monkeypatch.setattr("backend.training.LabelStudioSource", lambda settings: FakeSource(tasks))
    return tasks


def _main(*args: str) -> int:
    from backend.export import main

    return main(["--project", "4", "--format", "coco", "--no-progress", *args])


def _one_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_cli_summary_lists_the_tasks_left_out(tmp_path, monkeypatch, capsys, cli_env):
    _publish(_settings(tmp_path), tmp_path)
    _fake_model(monkeypatch, _detector())
    assert _main("--out", str(tmp_path / "out")) == 0
    printed = capsys.readouterr().out
    assert "3 images exported as coco" in printed
    assert "left out: 1 tasks nobody labelled (no crowd labels, no expert annotation): 4" in printed


def test_cli_refuses_bad_out_folders_before_loading_anything(tmp_path, monkeypatch, capsys, cli_env):
    monkeypatch.chdir(tmp_path)
    assert _main("--out", ".") == 2
    assert _one_error(capsys).startswith("error: --out: '.' names no new folder")
    (tmp_path / "file.txt").write_text("x")
    assert _main("--out", "file.txt/export") == 2
    assert (
        _one_error(capsys) == "error: --out: file.txt is not a folder: the export cannot be written under it"
    )
    assert _main("--out", "x", "--format", "ls", "--train-final") == 2
    assert "--train-final trains on the exported images" in _one_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]  # nothing written, no model dir read


def test_cli_refuses_an_unwritable_parent(tmp_path, monkeypatch, capsys, cli_env):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root writes anywhere: the permission is what os.access says for others
        real = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real(path, mode))
    assert _main("--out", str(locked / "new" / "export")) == 2
    assert (
        _one_error(capsys) == f"error: --out: {locked} is not writable: the export cannot be written under it"
    )
    assert not any(locked.iterdir())


def test_cli_label_studio_and_model_failures_exit_1_with_one_line(tmp_path, monkeypatch, capsys, cli_env):
    import errno

    import requests

    import backend.export

    class Unreachable(FakeSource):
        def tasks(self, project: int | None) -> list[dict[str, Any]]:
            raise requests.ConnectionError("connection refused")

    out = str(tmp_path / "out")
    with monkeypatch.context() as m:
        m.setattr("backend.training.LabelStudioSource", lambda settings: Unreachable(cli_env))
        assert _main("--out", out) == 1
    assert (
        _one_error(capsys)
        == "error: project 4: its tasks cannot be listed: ConnectionError: connection refused"
    )

    mv = _publish(_settings(tmp_path), tmp_path, {"family": "no-such-family"})
    assert _main("--out", out) == 1
    assert _one_error(capsys).startswith(
        f"error: model version {mv.version}: cannot be loaded (ValueError: family: expected one of"
    )

    def gone(version: Any, **_: Any) -> Any:
        raise FileNotFoundError(2, "No such file or directory", str(version.weights))

    monkeypatch.setattr("model.detector.load_detector", gone)
    assert _main("--out", out) == 1
    assert "cannot be loaded (FileNotFoundError: [Errno 2] No such file or directory" in _one_error(capsys)

    _fake_model(monkeypatch, _detector())

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(backend.export, "write_export", disk_full)
    assert _main("--out", out) == 1
    assert _one_error(capsys) == f"error: the export to {out} failed ([Errno 28] No space left on device)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.pt", "models"]  # nothing half-written


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("image", "status", "why"),
    [
        ("/data/local-files/?d=nope/a.png", 2, "no such file under LOCAL_FILES_DOCUMENT_ROOT"),
        ("data:image/png;base64,aGVsbG8=", 2, "not a readable image"),
        ("ftp://host/a.png", 2, "expected an http(s) URL"),
        ("http://127.0.0.1:{port}/a.png", 1, "cannot be fetched (ConnectionError)"),
    ],
)
def test_cli_image_load_failures_exit_2_for_the_users_input_1_for_a_failing_host(
    tmp_path, monkeypatch, capsys, cli_env, image, status, why
):
    """As the bootstrap: an image that is not there or not an image is the user's to fix (2); a host that
    does not answer may answer next time (1). Either way one line naming the task and the image, nothing
    written."""
    _publish(_settings(tmp_path), tmp_path)
    _fake_model(monkeypatch, _detector())
    url = image.format(port=_closed_port())
    cli_env[1]["data"]["image"] = url
    out = tmp_path / "out"
    assert _main("--out", str(out), "--document-root", str(tmp_path)) == status
    line = _one_error(capsys)
    assert line.startswith(f"error: task 2: image {url!r}: ") and why in line, line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["fake.pt", "models"]


@pytest.mark.parametrize(
    ("cause", "retry"),
    [
        ("unreachable", True),
        ("http_status", True),
        ("reference", False),
        ("missing", False),
        ("too_large", False),
        ("undecodable", False),
    ],
)
def test_image_failures_of_a_host_are_plain_export_errors_the_rest_input_errors(cause, retry):
    from backend.images import ImageLoadError

    class Failing(ImageLoader):
        def decode(self, url: str, *, task: str = "?") -> Any:
            raise ImageLoadError(f"task {task}: image 'http://host/a.png': failed", cause=cause)

    with pytest.raises(ExportError) as caught:
        clean_tasks(
            _tasks(),
            schema=SCHEMA,
            detector=_detector(),
            loader=Failing(),
            policy=POLICY,
            config=LSMConfig(),
            predict_conf=0.01,
        )
    assert isinstance(caught.value, ExportInputError) is not retry
    assert str(caught.value) == "task 1: image 'http://host/a.png': failed"


def test_fetched_images_are_written_byte_for_byte(tmp_path):
    """A JPEG upload or a 16-bit PNG is exported as its file, not re-encoded from the model's 8-bit pixels."""
    import base64
    import io

    from PIL import Image

    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 150, 3), np.uint8)).save(jpeg, "JPEG")
    deep = io.BytesIO()
    Image.fromarray(np.tile(np.arange(160, dtype=np.uint16) * 300, (100, 1))).save(deep, "PNG")
    tasks = [_task(1, 150, CLEAN), _task(2, 160, CLEAN), _task(3, 170, CLEAN)]  # task 3: a PNG, as before
    tasks[0]["data"]["image"] = "data:image/jpeg;base64," + base64.b64encode(jpeg.getvalue()).decode()
    tasks[1]["data"]["image"] = "data:image/png;base64," + base64.b64encode(deep.getvalue()).decode()
    cleaned = _clean(tasks, _detector(), image_dir=tmp_path)
    assert [c.name for c in cleaned] == ["img/001.jpg", "img/002.png", "img/003.png"]  # the data's own format
    assert (tmp_path / "img/001.jpg").read_bytes() == jpeg.getvalue()
    assert (tmp_path / "img/002.png").read_bytes() == deep.getvalue()  # 16-bit, as fetched


# --- the YOLO layout is trained on as it is: images ultralytics would misread are converted ----------------


def _encoded(pixels: np.ndarray, suffix: str) -> bytes:
    import cv2

    ok, buf = cv2.imencode(suffix, pixels)
    assert ok
    return buf.tobytes()


def _data_uri(data: bytes, mime: str) -> str:
    import base64

    return f"data:image/{mime};base64," + base64.b64encode(data).decode()


def test_yolo_export_writes_16_bit_images_as_the_8_bit_pixels_the_model_saw(tmp_path, monkeypatch):
    """A 16-bit PNG of 12-bit data (ultralytics would read its high byte: 0-15) and a float TIFF are written
    as the 8-bit PNG ``--train-final``'s dataset writer makes of them under the version's normalisation; an
    8-bit PNG stays byte for byte. COCO and ``--original-images`` keep every image as fetched."""
    from formats.images import ImageNormalization, Normalize, normalize_image
    from model.dataset import LabeledImage, write_yolo_dataset
    from model.device import import_ultralytics

    rng = np.random.default_rng(0)
    twelve = rng.integers(0, 4096, (100, 160), dtype=np.uint16)
    deep_png = _encoded(twelve, ".png")
    flat_png = _encoded(rng.integers(0, 256, (100, 170, 3), dtype=np.uint8), ".png")
    float_tiff = _encoded(rng.random((100, 150), dtype=np.float32), ".tiff")
    tasks = [_task(1, 150, NOISY, expert=EXPERT_BOXES), _task(2, 160, NOISY), _task(3, 170, CLEAN)]
    for task, data, mime in zip(tasks, (float_tiff, deep_png, flat_png), ("tiff", "png", "png"), strict=True):
        task["data"]["image"] = _data_uri(data, mime)
    settings = _settings(tmp_path)  # IMAGE_NORMALIZE=auto, IMAGE_PERCENTILES=0.1,99.9
    trained = ImageNormalization(Normalize.AUTO, (1.0, 99.0))  # the version's own: it wins
    _publish(settings, tmp_path, {"image_normalization": trained.as_dict()})
    _fake_model(monkeypatch, _detector())

    def export(fmt: ExportFormat, out: str, **kw: Any) -> dict[str, Any]:
        return run_export(
            settings, project=4, fmt=fmt, out=tmp_path / out, source=FakeSource(tasks), progress=False, **kw
        )

    manifest = export(ExportFormat.YOLO, "yolo")
    out = tmp_path / "yolo"
    assert manifest["image_conversion"] == {"normalization": trained.as_dict(), "converted": 2}
    assert [(r["image"], r["converted"]) for r in manifest["images"]] == [
        ("img/001.png", True),  # a .tif by its format: renamed
        ("img/002.png", True),
        ("img/003.png", False),
    ]
    assert sorted(p.name for p in (out / "images" / "img").iterdir()) == ["001.png", "002.png", "003.png"]
    assert (out / "labels" / "img" / "001.txt").is_file()
    assert (out / "images" / "img" / "003.png").read_bytes() == flat_png  # 8-bit: byte for byte

    # The 16-bit image: exactly the file model/dataset.py writes for training under that normalisation.
    exported = out / "images" / "img" / "002.png"
    source = tmp_path / "src" / "002.png"
    source.parent.mkdir()
    source.write_bytes(deep_png)
    item = LabeledImage(source, Detections.empty(), 160, 100)
    data_yaml = write_yolo_dataset(tmp_path / "ds", [item], [item], ["deposit"], normalization=trained)
    assert exported.read_bytes() == (data_yaml.parent / "images" / "train" / "000000_002.png").read_bytes()
    # ... and ultralytics reads from it the 8-bit pixels the model saw (not twelve's high byte).
    import_ultralytics()
    from ultralytics.utils.patches import imread

    read = imread(str(exported))
    assert read is not None and read.dtype == np.uint8
    np.testing.assert_array_equal(read[:, :, ::-1], normalize_image(twelve, trained))
    assert int(read.max()) == 255

    original = export(ExportFormat.YOLO, "original", original_images=True)
    assert original["image_conversion"] is None and not any(r["converted"] for r in original["images"])
    assert (tmp_path / "original" / "images" / "img" / "002.png").read_bytes() == deep_png
    assert (tmp_path / "original" / "images" / "img" / "001.tif").read_bytes() == float_tiff
    coco = export(ExportFormat.COCO, "coco")
    assert coco["image_conversion"] is None
    assert (tmp_path / "coco" / "images" / "img" / "002.png").read_bytes() == deep_png

    from backend.export import parse_args

    flags = ["--project", "4", "--format", "yolo", "--out", "x"]
    assert parse_args([*flags, "--original-images"]).original_images and not parse_args(flags).original_images


def test_final_training_on_converted_images_trains_with_their_normalisation(tmp_path):
    """The converted images hold normalised pixels: the final detector trains with (and records) the
    normalisation that made them, so that it sees the same pixels when it predicts on the originals."""
    from backend.export import final_training_job
    from formats.images import ImageNormalization, Normalize

    cleaned = _clean(_tasks(), _detector())
    kw: dict[str, Any] = {
        "image_dir": tmp_path / "images",
        "categories": ["deposit"],
        "init": None,
        "job_dir": tmp_path / "job",
        "model_dir": tmp_path / "model",
    }
    settings = _settings(tmp_path)
    trained = ImageNormalization(Normalize.AUTO, (1.0, 99.0))
    assert final_training_job(settings, cleaned, **kw)["image_normalization"] == (
        settings.image_normalization.as_dict()
    )
    assert final_training_job(settings, cleaned, normalization=trained, **kw)["image_normalization"] == (
        trained.as_dict()
    )


def test_cli_says_how_many_images_it_converted(tmp_path, monkeypatch, capsys, cli_env):
    cli_env[1]["data"]["image"] = _data_uri(_encoded(np.full((100, 160), 3000, np.uint16), ".png"), "png")
    _publish(_settings(tmp_path), tmp_path)
    _fake_model(monkeypatch, _detector())
    from backend.export import main

    base = ["--project", "4", "--format", "yolo", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "yolo")]) == 0
    assert (
        "images: 1 written as 8-bit PNG, normalised as the model sees them (auto, percentiles 0.1-99.9), "
        "so that ultralytics reads them right (manifest.json: converted; --original-images keeps them as "
        "fetched)"
    ) in capsys.readouterr().out
    assert main([*base, "--out", str(tmp_path / "original"), "--original-images"]) == 0
    assert "8-bit PNG" not in capsys.readouterr().out
