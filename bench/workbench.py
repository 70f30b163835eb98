"""Train, predict and evaluate detectors on one simulated dataset, for the benchmark's arms.

Only the detector interface is used (``model.detector``); the family is ``TrainSpec.family`` (default YOLO).
With ``TrainSpec.tile`` set, frames larger than a tile are trained on as tiles (``model.tiling.tile_dataset``)
and predicted tile by tile (``model.tiling.TiledDetector``), whatever the family.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from metrics.ap import APResult, evaluate_ap
from model.dataset import LabeledImage
from model.detector import DEFAULT_FAMILY, PREDICT_CONF, Detector, get_family
from model.tiling import TileConfig, TiledDetector, tile_dataset
from selection.detections import Detections

log = logging.getLogger(__name__)

AP_CONF = 0.001
"""Confidence floor of the predictions AP is computed on: COCO-style AP needs the low-score tail."""


@dataclass(frozen=True)
class TrainSpec:
    """How the benchmark trains its detectors.

    Attributes:
        epochs: epochs of a final detector, trained from scratch.
        cleaning_epochs: epochs of the first cleaning model (from scratch, on the seed set).
        warm_epochs: epochs of each later cleaning model, warm-started from the previous round's.
        imgsz: training and inference image size in pixels.
        batch: training batch size.
        device: "auto", "cpu" or "cuda[:N]".
        family: the detector family (``model.detector``).
        init: model definition to train from scratch (``None``: the family's default).
        cleaning_init: where the first cleaning model starts: ``"noisy"`` fine-tunes the detector trained
            on the crowd labels (cheap labels as pre-training; there are no downloadable weights here),
            ``"scratch"`` trains from ``init`` on the expert seed set alone.
        tile: tile side in pixels for frames larger than it (0: no tiling); then ``imgsz`` should equal it.
        tile_overlap: minimum overlap of neighbouring tiles in pixels.
    """

    epochs: int = 30
    cleaning_epochs: int = 30
    warm_epochs: int = 10
    imgsz: int = 160
    batch: int = 8
    device: str = "auto"
    family: str = DEFAULT_FAMILY
    init: str | None = None
    cleaning_init: str = "noisy"
    tile: int = 0
    tile_overlap: int = 64

    @property
    def tiling(self) -> TileConfig | None:
        """The tiling of training and prediction, or ``None`` when ``tile`` is 0."""
        return TileConfig(size=self.tile, overlap=self.tile_overlap) if self.tile else None


# Per preset: how the detectors are trained (CPU-sized for tiny and quick).
TRAIN_SPECS: dict[str, TrainSpec] = {
    "tiny": TrainSpec(epochs=2, cleaning_epochs=2, warm_epochs=1, imgsz=128, batch=8),
    "small": TrainSpec(epochs=20, cleaning_epochs=20, warm_epochs=7, imgsz=160, batch=8),
    "quick": TrainSpec(epochs=30, cleaning_epochs=30, warm_epochs=10, imgsz=160, batch=8),
    "paper": TrainSpec(epochs=60, cleaning_epochs=60, warm_epochs=20, imgsz=320, batch=16),
    "large": TrainSpec(epochs=30, cleaning_epochs=30, warm_epochs=10, imgsz=320, batch=16, tile=320),
}


@dataclass(frozen=True)
class TrainedModel:
    """A trained detector and its test-set quality."""

    name: str
    weights: Path
    seconds: float
    ap50: float
    ap50_95: float
    # Torch CPU threads it trained with; on the CPU the thread count changes the detector (the same seed and
    # thread count give the same one). None: trained before this was recorded.
    threads: int | None = None


# Why a cached training whose key matches is trained again, per record field that no longer matches.
_STALE_REASON = {
    "init_sha256": "the weights it started from have changed since",
    "evaluated_on": "the test split it was scored on has changed since",
}


def _file_sha256(init: str | Path | None) -> str | None:
    """The sha256 of the file a training starts from; None where ``init`` names no file (from scratch, or a
    model definition the family resolves itself)."""
    if init is None or not Path(init).is_file():
        return None
    digest = hashlib.sha256()
    with Path(init).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Workbench:
    """One dataset, one seed: trains named models (cached on disk) and evaluates them on the test split.

    Args:
        records: every image record of the dataset (``synth.ImageRecord``-like: id, split, path, width,
            height, expert, crowd).
        work_dir: where training sets, runs and the cache index live.
        spec: training settings.
        seed: the training seed.
        names: class names, index = class id (the simulator's one class by default).
        threads: torch CPU threads each training may use (``None``: every core), or a function asked at the
            start of each training (``bench.simulate --jobs`` shares the cores among the seeds still running).
            Not part of a training's identity: a cached training is reused whatever its thread count was.
    """

    def __init__(
        self,
        records: Sequence,
        work_dir: Path,
        spec: TrainSpec,
        *,
        seed: int,
        names: Sequence[str] = ("deposit",),
        threads: int | Callable[[], int] | None = None,
    ) -> None:
        self.names = [str(n) for n in names]
        self.threads = threads
        self.records = {r.id: r for r in records}
        self.train_ids = [r.id for r in records if r.split == "train"]
        self.val_ids = [r.id for r in records if r.split == "val"]
        self.test_ids = [r.id for r in records if r.split == "test"]
        self.work_dir = Path(work_dir)
        self.spec = spec
        self.seed = seed
        self._detectors: dict[Path, Detector] = {}
        self._evaluated_on: str | None = None

    def _labeled(
        self, ids: Sequence[str], labels: Mapping[str, Detections], repeats: Mapping[str, int] | None = None
    ) -> list[LabeledImage]:
        return [
            LabeledImage(
                path=Path(self.records[i].path),
                labels=labels[i],
                width=self.records[i].width,
                height=self.records[i].height,
            )
            for i in ids
            for _ in range(1 if repeats is None else repeats.get(i, 1))
        ]

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
        """Train on ``labels`` (image id -> boxes; those ids are the training set) and evaluate on test.

        The validation split always carries expert labels. It picks nothing: the last epoch's weights are
        used, whatever ``val_every_epoch`` (which only records a learning curve in the run's results.csv).
        ``repeats`` (image id -> k >= 1) puts an image k times in each epoch (oversampling).

        A finished training is reused when nothing that shaped it changed, under this name or any other
        (e.g. every strategy's first cleaning model trains on the same seed set). Its cache key names a
        warm start by path, so each record also holds the sha256 of the file it started from and a
        fingerprint of the test split it was scored on (``evaluated_on``): a reuse whose start file has since
        been rewritten (an upstream model retrained into the same folder, e.g. by another ``--noise`` mix
        under the same ``--out``) or whose test split changed is trained again, and the log says why.
        Records written before these two fields existed carry neither and are reused on their key alone.
        """
        ids = sorted(labels)
        digest = hashlib.sha256()
        for i in ids:
            digest.update(i.encode())
            digest.update(np.ascontiguousarray(labels[i].xyxy).tobytes())
            digest.update(np.ascontiguousarray(labels[i].class_id).tobytes())
            if repeats is not None and repeats.get(i, 1) != 1:
                digest.update(f"x{int(repeats[i])}".encode())
        key = json.dumps(
            [asdict(self.spec), epochs, str(init), self.seed, digest.hexdigest(), val_every_epoch, self.names]
        )
        done = self.work_dir / name / "result.json"
        index = self.work_dir / "trainings.json"
        known = json.loads(index.read_text()) if index.exists() else {}
        # Not in the key, which must stay what earlier runs wrote: checked against the record instead.
        provenance = {"init_sha256": _file_sha256(init or self.spec.init), "evaluated_on": self.evaluated_on}
        for candidate in (done, self.work_dir / known.get(key, name) / "result.json"):
            if candidate.exists():
                cached = json.loads(candidate.read_text())
                if cached.pop("key", None) != key:
                    continue
                stale = [
                    field
                    for field, now in provenance.items()
                    if field in cached and cached.pop(field) != now  # absent: a record from before
                ]
                if stale:
                    log.info(
                        "%s: not reusing %s, trained on the same labels but %s; training again",
                        name,
                        candidate.parent,
                        " and ".join(_STALE_REASON[field] for field in stale),
                    )
                    continue
                return TrainedModel(**{**cached, "name": name, "weights": Path(cached["weights"])})
        expert = {i: self.records[i].expert for i in self.val_ids}
        train_set = self._labeled(ids, labels, repeats)
        val_set = self._labeled(self.val_ids, expert)
        tiling = self.spec.tiling
        if tiling is not None:
            train_set = tile_dataset(train_set, self.work_dir / name / "tiles" / "train", config=tiling)
            val_set = tile_dataset(val_set, self.work_dir / name / "tiles" / "val", config=tiling)
        threads = self.threads() if callable(self.threads) else self.threads
        result = get_family(self.spec.family).train(
            train=train_set,
            val=val_set,
            names=self.names,
            out_dir=self.work_dir / name,
            init=init or self.spec.init,
            epochs=epochs or self.spec.epochs,
            imgsz=self.spec.imgsz,
            batch=self.spec.batch,
            seed=self.seed,
            device=self.spec.device,
            validate=val_every_epoch,
            keep="last",
            threads=threads,
        )
        weights = result.weights
        ap = self.test_ap(weights)
        trained = TrainedModel(
            name=name,
            weights=weights,
            seconds=result.seconds,
            ap50=ap.ap50,
            ap50_95=ap.ap50_95,
            threads=threads if threads is not None else os.cpu_count(),
        )
        record = {**asdict(trained), "weights": str(trained.weights), "key": key, **provenance}
        done.write_text(json.dumps(record))
        index.write_text(json.dumps({**known, key: name}))
        log.info("%s: AP50 %.3f in %.0f s", name, trained.ap50, trained.seconds)
        return trained

    @property
    def evaluated_on(self) -> str:
        """A fingerprint of what ``test_ap`` scores against: the test split's image ids, their expert
        boxes and classes, and the class names (sha256 hex digest; computed once)."""
        if self._evaluated_on is None:
            digest = hashlib.sha256(json.dumps(self.names).encode())
            for i in self.test_ids:
                expert = self.records[i].expert
                digest.update(i.encode())
                digest.update(np.ascontiguousarray(expert.xyxy, np.float32).tobytes())
                digest.update(np.ascontiguousarray(expert.class_id, np.int64).tobytes())
                digest.update(b"|")
            self._evaluated_on = digest.hexdigest()
        return self._evaluated_on

    def detector(self, weights: Path) -> Detector:
        if weights not in self._detectors:
            detector = get_family(self.spec.family).load(weights, device=self.spec.device)
            tiling = self.spec.tiling
            self._detectors[weights] = detector if tiling is None else TiledDetector(detector, tiling)
        return self._detectors[weights]

    def predict(
        self, weights: Path, ids: Sequence[str], *, conf: float = PREDICT_CONF
    ) -> dict[str, Detections]:
        """Predictions of one model on the images ``ids`` (at the size it was trained at)."""
        if not ids:
            return {}
        det = self.detector(weights)
        preds = det.predict([Path(self.records[i].path) for i in ids], conf=conf, batch=32)
        return dict(zip(ids, preds, strict=True))

    def test_ap(self, weights: Path) -> APResult:
        """AP of a model on the test split, against its expert boxes, over every class of ``names``."""
        preds = self.predict(weights, self.test_ids, conf=AP_CONF)
        return evaluate_ap(
            [self.records[i].expert for i in self.test_ids],
            [preds[i] for i in self.test_ids],
            num_classes=len(self.names),
        )
