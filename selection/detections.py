"""The one detections type shared by expert labels, crowd labels and model predictions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Axis-aligned boxes of one image.

    Attributes:
        xyxy: float32 (N, 4) boxes in pixels, ``x1 <= x2`` and ``y1 <= y2``.
        class_id: int64 (N,) class indices.
        score: float32 (N,) confidences in [0, 1], or ``None`` for labels.
    """

    xyxy: np.ndarray
    class_id: np.ndarray
    score: np.ndarray | None = None

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float32)
        if xyxy.size == 0:
            xyxy = xyxy.reshape(0, 4)
        if xyxy.ndim != 2 or xyxy.shape[1] != 4:
            raise ValueError(f"xyxy: expected shape (N, 4), got {xyxy.shape}")
        n = xyxy.shape[0]
        if not np.all(np.isfinite(xyxy)):
            raise ValueError("xyxy: expected finite coordinates, got NaN or inf")
        bad = np.flatnonzero((xyxy[:, 0] > xyxy[:, 2]) | (xyxy[:, 1] > xyxy[:, 3]))
        if bad.size:
            raise ValueError(
                f"xyxy: expected x1 <= x2 and y1 <= y2, got box {int(bad[0])} = {xyxy[bad[0]].tolist()}"
            )
        class_id = np.asarray(self.class_id)
        if class_id.size == 0:
            class_id = class_id.reshape(0)
        if class_id.shape != (n,):
            raise ValueError(f"class_id: expected shape ({n},), got {class_id.shape}")
        if class_id.dtype.kind == "f":
            if not np.all(np.isfinite(class_id)) or np.any(class_id != np.round(class_id)):
                raise ValueError("class_id: expected integers, got non-integral floats")
        elif class_id.dtype.kind not in "iu":
            raise TypeError(f"class_id: expected an integer array, got dtype {class_id.dtype}")
        class_id = class_id.astype(np.int64)
        if np.any(class_id < 0):
            raise ValueError("class_id: expected non-negative class indices")
        score = self.score
        if score is not None:
            score = np.asarray(score, dtype=np.float32)
            if score.size == 0:
                score = score.reshape(0)
            if score.shape != (n,):
                raise ValueError(f"score: expected shape ({n},), got {score.shape}")
            if not np.all(np.isfinite(score)):
                raise ValueError("score: expected finite values, got NaN or inf")
            if np.any((score < 0) | (score > 1)):
                raise ValueError("score: expected values in [0, 1]")
        # Frozen: write the normalised arrays through object.__setattr__ and lock them.
        for name, value in (("xyxy", xyxy), ("class_id", class_id), ("score", score)):
            if value is not None:
                value = value.copy()
                value.setflags(write=False)
            object.__setattr__(self, name, value)

    @classmethod
    def empty(cls, *, with_score: bool = False) -> Detections:
        """No boxes; with an empty score array when ``with_score``."""
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            class_id=np.zeros((0,), np.int64),
            score=np.zeros((0,), np.float32) if with_score else None,
        )

    @classmethod
    def concat(cls, parts: Sequence[Detections]) -> Detections:
        """Join several detections of one image; scores kept only if all parts have them."""
        if not parts:
            return cls.empty()
        with_score = all(p.score is not None for p in parts)
        return cls(
            xyxy=np.concatenate([p.xyxy for p in parts]),
            class_id=np.concatenate([p.class_id for p in parts]),
            score=np.concatenate([p.score for p in parts]) if with_score else None,  # type: ignore[misc]
        )

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    def subset(self, index: np.ndarray | Sequence[int] | slice) -> Detections:
        """Boxes selected by an integer index, boolean mask or slice."""
        return Detections(
            xyxy=self.xyxy[index],
            class_id=self.class_id[index],
            score=None if self.score is None else self.score[index],
        )

    @property
    def area(self) -> np.ndarray:
        """float32 (N,) box areas in square pixels."""
        return (self.xyxy[:, 2] - self.xyxy[:, 0]) * (self.xyxy[:, 3] - self.xyxy[:, 1])

    def clip(self, width: float, height: float) -> Detections:
        """Boxes clipped to an image of ``width`` x ``height`` pixels."""
        lim = np.array([width, height, width, height], np.float32)
        return Detections(np.clip(self.xyxy, 0, lim), self.class_id, self.score)
