"""Shared test factories and environment: nothing writes outside the repo's .work folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".work"
for _var, _sub in (("YOLO_CONFIG_DIR", "yolo-config"), ("MPLCONFIGDIR", "mpl")):
    os.environ.setdefault(_var, str(WORK / _sub))
    Path(os.environ[_var]).mkdir(parents=True, exist_ok=True)

from selection.detections import Detections  # noqa: E402


def pytest_sessionstart(session: pytest.Session) -> None:
    """Tests talk to their servers on 127.0.0.1 directly, whatever HTTP proxy the shell exports."""
    from demo.labelstudio import bypass_proxies_for_localhost

    bypass_proxies_for_localhost()


TEST_DEVICE = os.environ.get("TEST_DEVICE", "cpu")
"""Where the model and backend tests that train and predict run: the CPU, or ``TEST_DEVICE=cuda`` on a machine
with a GPU (the same tests then exercise the CUDA paths: bf16 training, prediction, the served backend)."""


def make_detections(boxes, classes=None, scores=None) -> Detections:
    """Detections from a list of [x1, y1, x2, y2] pixel boxes; class 0 unless given."""
    xyxy = np.asarray(boxes, np.float32).reshape(-1, 4)
    cls = np.zeros(len(xyxy), np.int64) if classes is None else np.asarray(classes, np.int64)
    return Detections(xyxy=xyxy, class_id=cls, score=None if scores is None else np.asarray(scores))


def random_boxes(n: int, rng: np.random.Generator, *, size: float = 200.0) -> np.ndarray:
    """float32 (n, 4) valid xyxy boxes inside a ``size`` x ``size`` image."""
    xy = rng.uniform(0, size * 0.8, (n, 2))
    wh = rng.uniform(1, size * 0.2, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
