"""Shared pieces of the backend tests: a tiny cached YOLO checkpoint, images and Label Studio tasks."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from conftest import TEST_DEVICE
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".work" / "test-cache" / "backend-tiny-v1"
LABEL_CONFIG = (
    '<View><Image name="image" value="$image" zoom="true"/>'
    '<RectangleLabels name="label" toName="image"><Label value="deposit" background="#e6194b"/>'
    "</RectangleLabels></View>"
)


def disc_image(size: int, discs: list[tuple[float, float, float]], seed: int = 0) -> np.ndarray:
    """uint8 (size, size) light noisy background with dark discs ``(cx, cy, r)`` in pixels."""
    rng = np.random.default_rng(seed)
    image = rng.normal(170, 12, (size, size))
    yy, xx = np.mgrid[:size, :size]
    for cx, cy, r in discs:
        image[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = 60
    return np.clip(image, 0, 255).astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(pixels: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode()


def random_scene(rng: np.random.Generator, size: int = 96) -> list[tuple[float, float, float]]:
    discs = []
    for _ in range(int(rng.integers(1, 4))):
        r = float(rng.uniform(8, 13))
        cx, cy = rng.uniform(r, size - r, 2)
        discs.append((float(cx), float(cy), r))
    return discs


def tiny_weights() -> Path:
    """A 1-class ``deposit`` yolov8n trained 1 epoch at 96 px on 8 disc images; cached across runs."""
    weights = CACHE / "weights.pt"
    if weights.is_file():
        return weights
    from model.dataset import LabeledImage, write_yolo_dataset
    from model.train import train_detector
    from selection.detections import Detections

    work = CACHE.with_name(CACHE.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    (work / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    items = []
    for i in range(8):
        discs = random_scene(rng)
        path = work / "img" / f"{i}.png"
        Image.fromarray(disc_image(96, discs, seed=i)).save(path)
        boxes = [[cx - r, cy - r, cx + r, cy + r] for cx, cy, r in discs]
        det = Detections(np.array(boxes, np.float32), np.zeros(len(boxes), np.int64))
        items.append(LabeledImage(path, det, 96, 96))
    data_yaml = write_yolo_dataset(work / "ds", train=items, val=items[:2], names=["deposit"])
    result = train_detector(
        data_yaml=data_yaml,
        init="yolov8n.yaml",
        out_dir=work / "runs",
        epochs=1,
        imgsz=96,
        batch=8,
        device=TEST_DEVICE,
    )
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / "weights.pt.part"
    shutil.copyfile(result.weights, tmp)
    tmp.rename(weights)
    shutil.rmtree(work, ignore_errors=True)
    return weights


def make_task(task_id: int | None, image: str, crowd: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"image": image}
    if crowd is not None:
        data["crowd_labels"] = crowd
    task: dict[str, Any] = {"data": data}
    if task_id is not None:
        task["id"] = task_id
    return task


def dumps(obj: Any) -> str:
    return json.dumps(obj)
