"""The YOLO detector family (ultralytics): ``model.detector.get_family("yolo")``.

Everything YOLO-specific that callers used to know lives here: the dataset folder ultralytics reads, the
``.yaml``/``.pt`` forms of ``init``, and image sizes rounded up to a multiple of the network stride (32).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from formats.images import ImageNormalization
from model.dataset import LabeledImage, write_yolo_dataset
from model.detector import MAX_DET, EpochCallback, TrainResult
from model.predict import YoloDetector

__all__ = ["STRIDE", "YoloFamily", "yolo_imgsz"]

STRIDE = 32
"""YOLO's largest feature stride: input sizes must be multiples of it."""


def yolo_imgsz(images: Sequence[LabeledImage]) -> int:
    """The training size for ``images``: their longest side rounded up to a multiple of :data:`STRIDE`.

    >>> from selection.detections import Detections
    >>> yolo_imgsz([LabeledImage("a.png", Detections.empty(), 100, 60)])
    128
    """
    if not images:
        raise ValueError("images: expected at least one image to size the network from, got none")
    longest = max(max(item.width, item.height) for item in images)
    return max(STRIDE, math.ceil(longest / STRIDE) * STRIDE)


class YoloFamily:
    """ultralytics YOLO: ``init`` is a packaged model yaml (from scratch) or a ``.pt`` to warm-start from."""

    name = "yolo"
    default_init = "yolov8n.yaml"

    def check_init(self, init: str) -> None:
        """Raise ``ValueError`` unless ``init`` is a model yaml or an existing weights file."""
        text = str(init)
        if text.endswith((".yaml", ".yml")) or Path(text).expanduser().is_file():
            return
        raise ValueError(f"init: expected a model yaml (e.g. yolov8n.yaml) or a weights file, got {text!r}")

    def load(
        self, weights: Path | str, *, device: str = "auto", version: str = "", max_det: int = MAX_DET
    ) -> YoloDetector:
        """Load a ``.pt`` checkpoint (``max_det``: most boxes per image; see :meth:`YoloDetector.load`)."""
        return YoloDetector.load(weights, device, version=version, max_det=max_det)

    def train(
        self,
        *,
        train: Sequence[LabeledImage],
        val: Sequence[LabeledImage],
        names: Sequence[str],
        out_dir: Path,
        init: str | Path | None = None,
        epochs: int,
        batch: int,
        imgsz: int | None = None,
        seed: int = 0,
        device: str = "auto",
        validate: bool = True,
        keep: Literal["best", "last"] = "best",
        on_epoch: EpochCallback | None = None,
        threads: int | None = None,
        image_normalization: ImageNormalization | None = None,
    ) -> TrainResult:
        """Write the dataset to ``out_dir/dataset`` and train in ``out_dir/run`` (see ``DetectorFamily``).

        ``imgsz=None`` trains at :func:`yolo_imgsz` of the training and validation images.
        """
        from model.train import train_detector

        if keep not in ("best", "last"):
            raise ValueError(f"keep: expected 'best' or 'last', got {keep!r}")
        out_dir = Path(out_dir)
        size = imgsz if imgsz is not None else yolo_imgsz([*train, *val])
        start_from = init if init is not None else self.default_init
        data_yaml = write_yolo_dataset(
            out_dir / "dataset", train=train, val=val, names=names, normalization=image_normalization
        )
        result = train_detector(
            data_yaml=data_yaml,
            init=start_from,
            out_dir=out_dir / "run",
            epochs=epochs,
            imgsz=size,
            batch=batch,
            seed=seed,
            device=device,
            val=validate,
            on_epoch=on_epoch,
            threads=threads,
        )
        weights = result.weights.with_name("last.pt") if keep == "last" else result.weights
        return TrainResult(
            weights=weights,
            seconds=result.seconds,
            metrics=result.metrics,
            epochs=result.epochs,
            options={"imgsz": size, "init": str(start_from)},
        )
