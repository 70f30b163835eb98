"""The training job, run in its own process: ``python -m backend.train_job JOB.json``.

The server writes ``JOB.json`` (dataset items, class names, detector family, options) and waits; this process
trains through the family's ``train`` (``model.detector``), publishes the weights to the registry with the
family, the training options, the LSM settings and the image normalisation in the version meta, and writes
``result.json`` next to the job file (``{"version": ...}`` or ``{"error": ...}``). A separate process keeps
the server responsive (training holds the GIL and the CPU) and lets a crash or out-of-memory kill only the
job.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from backend.settings import Settings

logger = logging.getLogger(__name__)

PROGRESS_NAME = "progress.json"
"""Written next to the job file after each epoch: ``{"epoch": k, "epochs": n}`` (read for ``/health``)."""


@dataclass(frozen=True)
class TrainItem:
    """One training image of a job: the file and its boxes (float32 (N, 4) pixels, int64 (N,) class ids)."""

    path: Path
    xyxy: np.ndarray
    class_id: np.ndarray
    width: int
    height: int

    def as_json(self) -> dict[str, Any]:
        """The item as the job file holds it (read back by :func:`run_job`)."""
        return {
            "path": str(self.path),
            "xyxy": self.xyxy.tolist(),
            "class_id": self.class_id.tolist(),
            "width": self.width,
            "height": self.height,
        }


def job_settings(settings: Settings) -> dict[str, Any]:
    """The job fields every training takes from the backend's settings (expert trainings and the bootstrap):
    registry, ``TRAIN_*`` options, device, family, LSM thresholds (for the meta), logging, threads, niceness.
    """
    from backend.settings import lsm_as_dict

    return {
        "model_dir": str(settings.model_dir),
        "epochs": settings.train_epochs,
        "epoch_images": settings.train_epoch_images,
        "imgsz": settings.train_imgsz or None,
        "batch": settings.train_batch,
        "device": settings.device,
        "family": settings.detector_family,
        "lsm": lsm_as_dict(settings.lsm),
        # Every training image (a local file, or one saved at its own depth by the item builders) is
        # normalised with it by the dataset writer; the job records it in the version's meta.
        "image_normalization": settings.image_normalization.as_dict(),
        # Large images train as tiles (TILE_SIZE), at the scale tiled prediction sees them.
        "tiling": settings.tiling.as_dict() if settings.tiling is not None else None,
        "log_level": settings.log_level,
        "threads": settings.train_thread_count,
        "nice": settings.train_nice,
    }


def run_job(job: dict[str, Any]) -> str:
    """Train and publish; returns the published version name."""
    from formats.images import ImageNormalization
    from model.dataset import LabeledImage, epoch_repeats
    from model.detector import DEFAULT_FAMILY, get_family
    from model.registry import ModelRegistry
    from model.tiling import TileConfig, tile_dataset
    from selection.detections import Detections

    def items(key: str) -> list[LabeledImage]:
        out = []
        for it in job[key]:
            boxes = np.asarray(it["xyxy"], np.float32).reshape(-1, 4)
            labels = Detections(xyxy=boxes, class_id=np.asarray(it["class_id"], np.int64).reshape(-1))
            out.append(LabeledImage(Path(it["path"]), labels, int(it["width"]), int(it["height"])))
        return out

    family = get_family(str(job.get("family") or DEFAULT_FAMILY))
    imgsz = job.get("imgsz")
    normalization = ImageNormalization.from_dict(job.get("image_normalization") or {})
    start = time.monotonic()
    progress_path = Path(job["work_dir"]) / PROGRESS_NAME

    def on_epoch(epoch: int, total: int) -> None:
        progress_path.write_text(json.dumps({"epoch": epoch, "epochs": total}))

    train, val = items("train"), items("val")
    tiling = TileConfig(**job["tiling"]) if job.get("tiling") else None
    if tiling is not None:  # large images train as tiles, at the scale tiled prediction sees them
        tiles = Path(job["work_dir"]) / "tiles"
        train = tile_dataset(train, tiles / "train", config=tiling, normalization=normalization)
        val = tile_dataset(val, tiles / "val", config=tiling, normalization=normalization)
    # TRAIN_EPOCH_IMAGES: a few expert images get as many gradient steps per epoch as a full training (tiles
    # count as images when tiling).
    repeats = epoch_repeats(len(train), int(job.get("epoch_images") or 0))
    train = [item for item in train for _ in range(repeats)]
    result = family.train(
        train=train,
        val=val,
        names=list(job["names"]),
        out_dir=Path(job["work_dir"]),
        init=job.get("init") or None,
        epochs=int(job["epochs"]),
        batch=int(job["batch"]),
        imgsz=int(imgsz) if imgsz else None,
        seed=int(job.get("seed", 0)),
        device=job.get("device", "auto"),
        threads=int(job["threads"]) if job.get("threads") else None,
        on_epoch=on_epoch,
        image_normalization=normalization,
    )
    meta = {
        "source": str(job.get("source") or "expert annotations"),
        "family": family.name,
        "n_train": len(job["train"]),
        "epoch_repeats": repeats,
        "n_val": len(job["val"]),
        "epochs": int(job["epochs"]),
        "init": str(result.options.get("init", job.get("init") or family.default_init)),
        "seconds": round(time.monotonic() - start, 1),
        "metrics": {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, int | float)},
        "names": list(job["names"]),
        "train_options": {**result.options, "tiling": tiling.as_dict() if tiling is not None else None},
        "lsm": job.get("lsm") or {},
        "image_normalization": normalization.as_dict(),
        "trained_on": [int(t) for t in job.get("task_ids") or []],
    }
    if job.get("skipped"):  # expert tasks the training left out: task id -> why
        meta["skipped"] = {str(t): str(why) for t, why in job["skipped"].items()}
    if job.get("project") is not None:
        meta["project"] = job["project"]
    if job.get("job_id"):  # lets the server recognise its version when this process dies after publishing
        meta["job_id"] = str(job["job_id"])
    version = ModelRegistry(Path(job["model_dir"])).publish(result.weights, meta)
    return version.version


def lower_priority(nice: int) -> None:
    """Make this process yield the CPU to the serving process (see ``Settings.train_nice``).

    ``nice`` 1-18 adds that niceness; 19 also moves the process to Linux's ``SCHED_IDLE`` class (it runs
    only when no normal process wants the core), where the platform has it.
    """
    if nice <= 0:
        return
    os.nice(nice)
    if nice >= 19 and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as exc:  # e.g. a container that forbids it: niceness alone still applies
            logger.warning("SCHED_IDLE refused (%s); training at nice %d", exc, nice)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m backend.train_job JOB.json", file=sys.stderr)
        return 2
    job_path = Path(argv[0])
    job = json.loads(job_path.read_text())
    logging.basicConfig(
        level=job.get("log_level", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    result_path = job_path.with_name("result.json")
    lower_priority(int(job.get("nice") or 0))
    try:
        version = run_job(job)
    except Exception as exc:
        logger.exception("training failed")
        result_path.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    result_path.write_text(json.dumps({"version": version}))
    logger.info("published %s", version)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
