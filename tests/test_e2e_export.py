"""End to end: ``python -m backend.bootstrap`` and ``python -m backend.export`` against a real Label Studio.

A small COCO dataset (five 96 x 96 disc images, noisy crowd boxes, expert boxes on two images) is imported
with ``python -m backend.ingest`` (the expert boxes become ground-truth annotations); the bootstrap trains a
first (one-epoch) model on its crowd labels through the API; the project is exported in the three formats and
read back through ``formats/``: the expert images carry the expert boxes, the others exactly what the
correction plan of the serving model gives, the three formats agree, and the Label Studio export imports back
into Label Studio.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from backend_helpers import disc_image
from e2e_fixtures import REPO, LabelStudioOnly, label_studio_only
from PIL import Image

from backend.export import decide
from backend.images import ImageLoader
from backend.ingest.__main__ import main as ingest_main
from backend.labelconfig import parse_label_config
from backend.lsproject import create_project, find_project, import_tasks
from formats.coco import CocoImage, from_coco, to_coco
from formats.labelstudio import crowd_labels_to_detections, regions_to_detections
from formats.yolo import read_yolo_labels
from model.detector import load_detector
from model.registry import ModelRegistry
from selection.detections import Detections
from selection.lsm import LSMConfig

__all__ = ["label_studio_only"]  # the fixture, re-exported for pytest

pytestmark = pytest.mark.e2e

SIZE = 96
DISCS = {  # image -> discs (cx, cy, r)
    "d0": [(30, 30, 12), (70, 60, 10)],
    "d1": [(48, 48, 14)],
    "d2": [(25, 70, 11), (70, 25, 11)],
    "d3": [(50, 30, 12)],
    "d4": [],
}
EXPERT_IMAGES = ("d1", "d3")


def _boxes(discs: list[tuple[float, float, float]], shift: float = 0.0) -> list[list[float]]:
    return [[cx - r + shift, cy - r, cx + r + shift, cy + r] for cx, cy, r in discs]


def _dets(boxes: list[list[float]]) -> Detections:
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.zeros(len(boxes), np.int64))


def _write_dataset(root: Path) -> Path:
    lab = root / "lab"
    (lab / "images").mkdir(parents=True)
    crowd, expert = [], []
    for i, (key, discs) in enumerate(DISCS.items()):
        Image.fromarray(disc_image(SIZE, discs, seed=i)).save(lab / "images" / f"{key}.png")
        noisy = _boxes(discs, shift=4.0 if key == "d0" else 0.0)
        if key == "d2":
            noisy = [*noisy[:1], [80, 80, 92, 92]]  # one missed, one on the background
        crowd.append(CocoImage(i + 1, f"{key}.png", SIZE, SIZE, _dets(noisy)))
        if key in EXPERT_IMAGES:
            expert.append(CocoImage(i + 1, f"{key}.png", SIZE, SIZE, _dets(_boxes(discs))))
    (lab / "crowd.json").write_text(json.dumps(to_coco(crowd, categories=["deposit"])))
    (lab / "expert.json").write_text(json.dumps(to_coco(expert, categories=["deposit"])))
    return lab


def _env(ls: Any, root: Path, models: Path) -> dict[str, str]:
    return {
        "LABEL_STUDIO_URL": ls.ls.url,
        "LABEL_STUDIO_API_KEY": ls.ls.token,
        "MODEL_DIR": str(models),
        "LOCAL_FILES_DOCUMENT_ROOT": str(root),
        "DEVICE": "cpu",
        "EXPERT_MODE": "ground_truth",
        "YOLO_CONFIG_DIR": str(REPO / ".work" / "yolo-config"),
        "MPLCONFIGDIR": str(REPO / ".work" / "mpl"),
    }


def _export_cli(project: int, fmt: str, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    args = ["--project", str(project), "--format", fmt, "--out", str(out), "--no-progress"]
    return subprocess.run(
        [sys.executable, "-m", "backend.export", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _by_image(files: dict[str, Detections]) -> dict[str, Detections]:
    return {Path(name).stem: dets for name, dets in files.items()}


def test_export_round_trip(
    label_studio_only: LabelStudioOnly, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    ls, client, root = label_studio_only, label_studio_only.client, label_studio_only.document_root
    lab = _write_dataset(root)
    models = tmp_path / "models"
    env = _env(ls, root, models)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    title = "export e2e"
    images, crowd, expert = (str(lab / "images"), str(lab / "crowd.json"), str(lab / "expert.json"))
    code = ingest_main(
        ["--title", title, "--images", images, "--crowd", crowd, "--crowd-format", "coco", "--expert", expert]
    )
    assert code == 0
    project = find_project(client, title)
    assert project is not None

    # No model yet: a clear error naming the way out.
    out = _export_cli(project, "coco", tmp_path / "none", env)
    assert out.returncode == 1 and "python -m backend.bootstrap" in out.stderr, out.stderr
    assert not (tmp_path / "none").exists()
    # The first model from the project's crowd labels, read through the Label Studio API (one tiny epoch).
    from backend.bootstrap.__main__ import main as bootstrap_main

    monkeypatch.setenv("TRAIN_IMGSZ", str(SIZE))
    assert bootstrap_main(["--project", str(project), "--epochs", "1", "--no-progress"]) == 0
    mv = ModelRegistry(models).latest()
    assert mv is not None and mv.meta["source"] == "crowd bootstrap" and mv.meta["project"] == project
    assert mv.meta["n_train"] == len(DISCS) and mv.meta["names"] == ["deposit"]

    result = _export_cli(project, "coco", tmp_path / "coco", env)
    assert result.returncode == 0, result.stderr
    assert f"project {project}: 5 images exported as coco" in result.stdout
    assert "(2 expert, " in result.stdout and f"model {mv.version}" in result.stdout

    from backend.export import main as export_main

    for fmt in ("yolo", "ls"):
        assert export_main(["--project", str(project), "--format", fmt, "--out", str(tmp_path / fmt)]) == 0
    assert export_main(["--project", "9999", "--format", "ls", "--out", str(tmp_path / "x")]) == 1
    assert not (tmp_path / "x").exists()

    # The final detector on the cleaned labels (one tiny epoch), from the serving version, own registry.
    monkeypatch.setenv("TRAIN_EPOCHS", "1")
    args = ["--project", str(project), "--format", "yolo", "--out", str(tmp_path / "final"), "--no-progress"]
    assert export_main([*args, "--train-final"]) == 0
    final = json.loads((tmp_path / "final" / "manifest.json").read_text())["final_model"]
    assert final["init"] == str(mv.weights) and final["n_train"] == len(DISCS) and final["epochs"] == 1
    assert final["n_val"] == len(EXPERT_IMAGES) and not final["val_held_out"]
    trained = ModelRegistry(tmp_path / "final" / "model").get(final["version"])
    assert trained.weights.is_file() and trained.meta["project"] == project
    latest = ModelRegistry(models).latest()
    assert latest is not None and latest.version == mv.version  # the serving registry is untouched

    # Read back through formats/.
    coco = from_coco(json.loads((tmp_path / "coco" / "annotations.json").read_text()))
    from_coco_files = _by_image({im.file_name: im.detections for im in coco.values()})
    assert all((tmp_path / "coco" / "images" / im.file_name).is_file() for im in coco.values())
    from_yolo = _by_image(
        {
            p.name: read_yolo_labels(p, SIZE, SIZE)
            for p in sorted((tmp_path / "yolo" / "labels").rglob("*.txt"))
        }
    )
    ls_tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    from_ls = {
        str(t["data"]["image_id"]): regions_to_detections(
            t["annotations"][0]["result"], label_to_id={"deposit": 0}
        )
        for t in ls_tasks
    }

    # What the export must hold: the expert's boxes, else the plan of the serving model on the crowd boxes.
    manifest = json.loads((tmp_path / "coco" / "manifest.json").read_text())
    assert manifest["model"]["version"] == mv.version and manifest["expert_mode"] == "ground_truth"
    sources = {Path(r["image"]).stem: r["source"] for r in manifest["images"]}
    assert {k for k, v in sources.items() if v == "expert"} == set(EXPERT_IMAGES)
    detector = load_detector(mv, device="cpu")
    schema = parse_label_config(client.projects.get(id=project).label_config)
    loader = ImageLoader(document_root=root)
    expected: dict[str, Detections] = {}
    for t in ls_tasks:
        key = str(t["data"]["image_id"])
        if key in EXPERT_IMAGES:
            expected[key] = _dets(_boxes(DISCS[key]))
            continue
        image = loader.load(t["data"]["image"])
        crowd = crowd_labels_to_detections(
            t["data"]["crowd_labels"], width=SIZE, height=SIZE, label_to_id=schema.label_ids
        )
        (pred,) = detector.predict([image.pixels], conf=0.01)
        expected[key] = decide(
            crowd, schema.label_map(detector.names).to_labels(pred), None, config=LSMConfig()
        ).labels
    for read in (from_coco_files, from_yolo, from_ls):
        assert sorted(read) == sorted(DISCS)
        for key, dets in expected.items():
            np.testing.assert_allclose(read[key].xyxy, dets.xyxy, atol=0.02, err_msg=key)
    review = json.loads((tmp_path / "coco" / "review.json").read_text())
    assert len(review) == manifest["counts"]["review_instances"]
    assert all(r["grade"] == "uncertain" and Path(r["image"]).stem not in EXPERT_IMAGES for r in review)

    # The Label Studio export is importable as it is.
    back = create_project(client, "export e2e, imported back", client.projects.get(id=project).label_config)
    assert len(import_tasks(client, back, ls_tasks)) == len(DISCS)
    annotated = [t for t in client.tasks.list(project=back, fields="all") if t.annotations]
    assert len(annotated) == len(DISCS)
