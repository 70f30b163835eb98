"""One simulated image's record and the dataset layout's names: what the writers need, without the generator.

``synth.dataset`` builds and loads datasets; ``synth.writers`` and ``synth.contact_sheet`` only read them,
through ``DatasetView``, so neither imports ``synth.dataset`` (no import cycle).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from selection.detections import Detections

MANIFEST = "manifest.json"
FORMAT = "synth-edd/1"
NAMES: tuple[str, ...] = ("deposit",)
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """One simulated image and all of its labels.

    Attributes:
        id: file stem, unique over the dataset (``"000012"``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        path: the PNG: relative to the dataset folder in memory (``images/train/000012.png``), absolute
            after :meth:`SynthDataset.write` or :meth:`SynthDataset.load`.
        width, height: image size in pixels.
        seed: the image's own seed (layout, noise and pixels derive from it).
        expert: true deposit boxes (class 0), pixels.
        crowd: the crowd annotator's boxes (class 0), pixels.
        crowd_noise: str (M,) true noise type per crowd box (``synth.noise.NOISE_NAMES``).
        crowd_annotator: int64 (M,) annotator id per crowd box.
        crowd_match: int64 (M,) expert index each crowd box came from (-1 background, first member for Bib).
        missed: int64 (K,) expert indices with no crowd box.
        expert_cluster: int64 (N,) cluster id per deposit, -1 for a lone deposit.
        expert_visibility: float64 (N,) in [0, 1], how easy each deposit is to see.
        distractors: boxes of deposit-like shapes that are not deposits (class 0), pixels.
        distractor_kind: ``"red_cell"`` or ``"chromatin"`` per distractor.
        pixels: uint8 (height, width) image when held in memory, else ``None``.
    """

    id: str
    split: str
    path: Path
    width: int
    height: int
    seed: int
    expert: Detections
    crowd: Detections
    crowd_noise: np.ndarray
    crowd_annotator: np.ndarray
    crowd_match: np.ndarray
    missed: np.ndarray
    expert_cluster: np.ndarray
    expert_visibility: np.ndarray
    distractors: Detections
    distractor_kind: tuple[str, ...]
    pixels: np.ndarray | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        """``"<split>/<id>"``, the ``image_id`` of Label Studio tasks."""
        return f"{self.split}/{self.id}"

    def to_json(self) -> dict[str, Any]:
        """The manifest entry (paths relative to the dataset folder)."""
        rel = self.path if not self.path.is_absolute() else Path("images", self.split, f"{self.id}.png")
        return {
            "id": self.id,
            "split": self.split,
            "file": rel.as_posix(),
            "width": self.width,
            "height": self.height,
            "seed": self.seed,
            "expert": _boxes_json(self.expert),
            "expert_cluster": self.expert_cluster.tolist(),
            "expert_visibility": [round(float(v), 4) for v in self.expert_visibility],
            "crowd": _boxes_json(self.crowd),
            "crowd_noise": self.crowd_noise.tolist(),
            "crowd_annotator": self.crowd_annotator.tolist(),
            "crowd_match": self.crowd_match.tolist(),
            "missed": self.missed.tolist(),
            "distractors": _boxes_json(self.distractors),
            "distractor_kind": list(self.distractor_kind),
        }

    @classmethod
    def from_json(cls, entry: dict[str, Any], root: Path) -> ImageRecord:
        """Inverse of :meth:`to_json`; ``path`` becomes ``root / file``."""
        return cls(
            id=str(entry["id"]),
            split=str(entry["split"]),
            path=root / entry["file"],
            width=int(entry["width"]),
            height=int(entry["height"]),
            seed=int(entry["seed"]),
            expert=_boxes_from_json(entry["expert"]),
            crowd=_boxes_from_json(entry["crowd"]),
            crowd_noise=np.array(entry["crowd_noise"], dtype="<U12"),
            crowd_annotator=np.array(entry["crowd_annotator"], np.int64),
            crowd_match=np.array(entry["crowd_match"], np.int64),
            missed=np.array(entry["missed"], np.int64),
            expert_cluster=np.array(entry["expert_cluster"], np.int64),
            expert_visibility=np.array(entry["expert_visibility"], np.float64),
            distractors=_boxes_from_json(entry["distractors"]),
            distractor_kind=tuple(entry["distractor_kind"]),
        )


def _boxes_json(dets: Detections) -> list[list[float]]:
    return [[round(float(v), 3) for v in box] for box in dets.xyxy]


def _boxes_from_json(boxes: list[list[float]]) -> Detections:
    xyxy = np.array(boxes, np.float32).reshape(-1, 4)
    return Detections(xyxy=xyxy, class_id=np.zeros(len(xyxy), np.int64))


class DatasetView(Protocol):
    """What the writers and the contact sheet read of a ``synth.dataset.SynthDataset``."""

    @property
    def images(self) -> Sequence[ImageRecord]:
        """All images in split order."""
        ...

    def split(self, name: str) -> list[ImageRecord]:
        """The images of one split."""
        ...

    def manifest(self) -> dict[str, Any]:
        """The JSON-ready manifest."""
        ...

    def pixels(self, record: ImageRecord) -> np.ndarray:
        """uint8 (H, W) pixels of ``record``."""
        ...
