"""Batched YOLO inference, converted at the edge to ``selection.detections.Detections``.

:class:`YoloDetector` implements ``model.detector.Detector``; load it through the YOLO family
(``model.detector.get_family("yolo").load``) or ``model.detector.load_detector(version)``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from formats.images import ImageNormalization, normalize_image, read_image
from model.detector import MAX_DET, PREDICT_CONF, ImageInput
from model.device import configure_threads, import_ultralytics, resolve_device
from selection.detections import Detections

logger = logging.getLogger(__name__)


def _as_source(image: ImageInput, index: int) -> str | np.ndarray:
    """A path string, or an HxWx3 uint8 BGR array as ultralytics expects."""
    if isinstance(image, str | Path):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"images[{index}]: no image file at {path}")
        return str(path)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"images[{index}]: expected a uint8 array, got dtype {image.dtype}")
        if image.ndim == 2:
            return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
        if image.ndim == 3 and image.shape[2] == 3:
            return np.ascontiguousarray(image[:, :, ::-1])  # RGB in, BGR for ultralytics
        raise ValueError(f"images[{index}]: expected an HxW or HxWx3 array, got shape {image.shape}")
    raise TypeError(f"images[{index}]: expected a path or a numpy array, got {type(image).__name__}")


def _pixels(source: str | np.ndarray, index: int) -> np.ndarray:
    """BGR pixels of a source: a path is read as the dataset writer reads it by default (``formats.images``,
    ``ImageNormalization()``), not by ultralytics, which keeps the high byte of a 16-bit image."""
    if isinstance(source, np.ndarray):
        return source
    try:
        rgb = normalize_image(read_image(source), ImageNormalization())
    except ValueError as exc:
        raise ValueError(f"images[{index}]: {exc}") from None
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _check_max_det(max_det: int) -> int:
    if isinstance(max_det, bool) or not isinstance(max_det, int) or max_det < 1:
        raise ValueError(f"max_det: expected an integer >= 1, got {max_det!r}")
    return max_det


def _to_detections(result: Any) -> Detections:
    boxes = result.boxes
    if boxes is None or len(boxes) == 0:
        return Detections.empty(with_score=True)
    height, width = result.orig_shape[:2]
    xyxy = boxes.xyxy.detach().cpu().numpy().astype(np.float32)
    return Detections(
        xyxy=np.clip(xyxy, 0, np.array([width, height, width, height], np.float32)),
        class_id=boxes.cls.detach().cpu().numpy().astype(np.int64),
        score=np.clip(boxes.conf.detach().cpu().numpy().astype(np.float32), 0.0, 1.0),
    )


class YoloDetector:
    """A loaded YOLO model. Load once per process; ``predict`` is serialised by a lock.

    Attributes:
        weights: the checkpoint file.
        device: torch device string (``"cpu"`` or ``"cuda:N"``).
        names: class names, index = class id.
        version: model version label, set by the caller (e.g. from ``ModelRegistry``); ``""`` if unknown.
        max_det: the most boxes :meth:`predict` returns per image (ultralytics' ``max_det``), the best first.
    """

    def __init__(
        self,
        model: Any,
        *,
        weights: Path,
        device: str,
        threads: int | None,
        version: str,
        max_det: int = MAX_DET,
    ) -> None:
        self._model = model
        self._lock = threading.Lock()
        self._threads = threads
        self.weights = weights
        self.device = device
        self.version = version
        self.max_det = _check_max_det(max_det)
        raw = model.names
        self.names: list[str] = [str(raw[i]) for i in sorted(raw)] if isinstance(raw, dict) else list(raw)

    @classmethod
    def load(
        cls,
        weights: Path | str,
        device: str = "auto",
        *,
        threads: int | None = None,
        version: str = "",
        max_det: int = MAX_DET,
    ) -> YoloDetector:
        """Load a checkpoint.

        Args:
            weights: a ``.pt`` file written by ultralytics (e.g. ``TrainResult.weights``).
            device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
            threads: torch CPU threads for inference (default: all cores but one, at least one - as
                ultralytics itself does: threads spinning at barriers while a core serves another process,
                e.g. Label Studio on the same machine, made batched inference 14x slower on 2 cores).
            version: label stored as ``.version``.
            max_det: the most boxes returned per image (default :data:`~model.detector.MAX_DET`, ultralytics'
                own 300).

        Raises:
            FileNotFoundError: no file at ``weights`` (nothing is downloaded).
            ValueError: ``max_det`` is not an integer >= 1.
        """
        _check_max_det(max_det)
        if threads is None:
            threads = max(1, (os.cpu_count() or 1) - 1)
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights: no checkpoint file at {path}")
        torch_device = resolve_device(device)
        import_ultralytics()
        from ultralytics import YOLO

        model = YOLO(str(path.resolve()), task="detect")
        model.to(torch_device)

        def _threads(_predictor: Any) -> None:
            configure_threads(threads)  # ultralytics' select_device resets threads in predictor setup

        model.add_callback("on_predict_start", _threads)
        logger.info("loaded detector %s on %s", path, torch_device)
        return cls(
            model, weights=path, device=torch_device, threads=threads, version=version, max_det=max_det
        )

    def predict(
        self,
        images: Sequence[ImageInput],
        *,
        conf: float = PREDICT_CONF,
        iou: float = 0.6,
        imgsz: int | None = None,
        batch: int = 16,
        max_det: int | None = None,
    ) -> list[Detections]:
        """Detect boxes in images.

        Args:
            images: image paths (read with ``formats.images`` under the default ``ImageNormalization()``, one
                chunk of ``batch`` at a time), or uint8 arrays HxW (grayscale) or HxWx3 (RGB).
            conf: minimum confidence kept, in [0, 1]; low by default so that callers threshold themselves.
            iou: NMS IoU threshold in [0, 1].
            imgsz: inference size in pixels; ``None`` uses the size the model was trained at.
            batch: images per forward pass.
            max_det: the most boxes kept per image after NMS (``None``: :attr:`max_det`).

        Returns:
            One scored ``Detections`` per image, in pixels of that image (boxes clipped to it), scores float32
            in [0, 1].
        """
        if not 0.0 <= conf <= 1.0:
            raise ValueError(f"conf: expected a value in [0, 1], got {conf}")
        if not 0.0 <= iou <= 1.0:
            raise ValueError(f"iou: expected a value in [0, 1], got {iou}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch: expected a positive integer, got {batch!r}")
        if isinstance(images, str | Path | np.ndarray):
            raise TypeError("images: expected a sequence of images; wrap a single image in a list")
        sources = [_as_source(image, i) for i, image in enumerate(images)]
        cap = self.max_det if max_det is None else _check_max_det(max_det)
        options: dict[str, Any] = {
            "conf": conf,
            "iou": iou,
            "max_det": cap,
            "device": self.device,
            "verbose": False,
        }
        if imgsz is not None:
            options["imgsz"] = imgsz
        out: list[Detections] = []
        with self._lock:
            for start in range(0, len(sources), batch):
                chunk = [_pixels(s, start + k) for k, s in enumerate(sources[start : start + batch])]
                results = self._model.predict(chunk, stream=False, batch=len(chunk), **options)
                out.extend(_to_detections(r) for r in results)
        return out
