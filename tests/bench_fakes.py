"""A fake ``Workbench`` for loop-level benchmark tests: no YOLO, runs in milliseconds.

The fake "detector" is a fingerprint of everything that shaped its training (the label sets, the repeats and
the model it started from). Its predictions on an image are that image's crowd boxes, shifted, rescored and
thinned by amounts drawn from the fingerprint, plus one box of its own. So whatever reaches a training
changes every later prediction, selection and grade: a leak of an unbought image's expert boxes into a
training cannot go unnoticed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bench.workbench import TrainedModel, Workbench
from metrics.ap import APResult
from selection.detections import Detections


class FakeWorkbench(Workbench):
    """``Workbench`` with fingerprint models; ``calls`` logs every training's name and inputs."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[dict] = []

    def train(
        self,
        name: str,
        labels: Mapping[str, Detections],
        *,
        epochs: int | None = None,
        init: str | Path | None = None,
        val_every_epoch: bool = False,
        repeats: Mapping[str, int] | None = None,
    ) -> TrainedModel:
        digest = hashlib.sha256(str(init).encode())
        for i in sorted(labels):
            digest.update(i.encode())
            digest.update(np.ascontiguousarray(labels[i].xyxy).tobytes())
            digest.update(str((repeats or {}).get(i, 1)).encode())
        digest.update(str(epochs).encode())
        fp = digest.hexdigest()[:16]
        self.calls.append(
            {
                "name": name,
                "labels": dict(labels),
                "init": init,
                "repeats": repeats,
                "epochs": epochs,
                "weights": Path("fake") / fp,
            }
        )
        quality = int(fp[:4], 16) / 0xFFFF
        return TrainedModel(name, Path("fake") / fp, seconds=0.0, ap50=quality, ap50_95=quality / 2)

    def predict(self, weights: Path, ids: Sequence[str], *, conf: float = 0.01) -> dict[str, Detections]:
        out = {}
        for i in ids:
            rng = np.random.default_rng([int(weights.name, 16) % 2**32, int(i) if i.isdigit() else len(i)])
            crowd = self.records[i].crowd
            xyxy = crowd.xyxy + rng.normal(0, 2.5, (len(crowd), 1)).astype(np.float32)
            keep = rng.random(len(crowd)) > 0.2
            extra = rng.uniform(5, 80, 2)
            boxes = np.concatenate([xyxy[keep], [[extra[0], extra[1], extra[0] + 20, extra[1] + 20]]])
            score = rng.uniform(0.15, 0.99, len(boxes))
            w, h = self.records[i].width, self.records[i].height
            dets = Detections(np.clip(boxes, 0, [w, h, w, h]), np.zeros(len(boxes), np.int64), score)
            out[i] = dets
        return out

    def test_ap(self, weights: Path) -> APResult:
        q = int(weights.name[:4], 16) / 0xFFFF
        return APResult(ap50=q, ap50_95=q / 2, n_images=len(self.test_ids), n_gt=0, n_pred=0)
