"""The simulated dataset in memory (:class:`SynthDataset`), its generation and its manifest on disk.

``manifest.json`` is the source of truth: every per-box field lives there; the YOLO, COCO and Label Studio
files are views of it (see :mod:`synth.writers`).

Randomness: ``np.random.default_rng(seed)`` draws the annotators' skills and one seed per image; each image
then uses three independent generators, ``default_rng([image_seed, k])`` for its layout (k=0), crowd noise
(k=1) and pixels (k=2), so labels never depend on whether or how images are rendered.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selection.detections import Detections
from synth import writers
from synth.config import SimConfig, get_preset
from synth.contact_sheet import render_contact_sheet
from synth.noise import NoiseRates, annotator_skills, capped_rates, corrupt, measure_rates
from synth.records import FORMAT, MANIFEST, NAMES, SPLITS, ImageRecord
from synth.render import Scene, make_scene, render_scene

__all__ = ["MANIFEST", "NAMES", "SPLITS", "ImageRecord", "SynthDataset", "generate", "with_overrides"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class SynthDataset:
    """A generated dataset: its config, seed, annotators and images (train, then val, then test).

    Attributes:
        config: the settings it was made with.
        seed: the seed it was made with.
        annotator_skill: float64 (A,) error multiplier per annotator id (mean 1).
        images: all images in split order.
        root: the folder it was written to or loaded from, else ``None``.
    """

    config: SimConfig
    seed: int
    annotator_skill: np.ndarray
    images: list[ImageRecord]
    root: Path | None = None

    def split(self, name: str) -> list[ImageRecord]:
        """The images of one split."""
        if name not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {name!r}")
        return [im for im in self.images if im.split == name]

    def noise_rates(self, splits: Sequence[str] = SPLITS) -> NoiseRates:
        """Measured crowd-noise rates over the given splits."""
        return measure_rates(
            (im.expert_cluster, im.crowd_noise, im.crowd_match, im.missed)
            for im in self.images
            if im.split in splits
        )

    def manifest(self) -> dict[str, Any]:
        """The JSON-ready manifest."""
        return {
            "format": FORMAT,
            "preset": self.config.name,
            "seed": self.seed,
            "names": list(NAMES),
            "config": self.config.to_dict(),
            "annotator_skill": [round(float(s), 6) for s in self.annotator_skill],
            "images": [im.to_json() for im in self.images],
        }

    def pixels(self, record: ImageRecord) -> np.ndarray:
        """uint8 (H, W) pixels of ``record``: held, read from disk, or rendered again from its seed."""
        if record.pixels is not None:
            return record.pixels
        if record.path.is_absolute() and record.path.exists():
            from PIL import Image

            with Image.open(record.path) as img:
                return np.asarray(img.convert("L"))
        return render_scene(_scene(self.config, record.seed), np.random.default_rng([record.seed, 2]))

    def write(
        self,
        out_dir: str | Path,
        *,
        document_root: str | Path | None = None,
        label_studio_splits: Sequence[str] = ("train",),
        contact_sheet: bool = True,
    ) -> SynthDataset:
        """Write the whole on-disk layout (see docs/CONTRACTS.md) and return the dataset loaded from it.

        Args:
            out_dir: the dataset folder (created; existing files are overwritten).
            document_root: Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT``; default the parent of ``out_dir``.
            label_studio_splits: splits that get a Label Studio task.
            contact_sheet: also draw ``contact_sheet.png``.
        """
        root = Path(out_dir)
        writers.write_dataset(
            self,
            root,
            document_root=None if document_root is None else Path(document_root),
            label_studio_splits=label_studio_splits,
        )
        loaded = SynthDataset.load(root)
        if contact_sheet:
            render_contact_sheet(loaded, root / "contact_sheet.png")
        logger.info("wrote %d images to %s", len(self.images), root)
        return loaded

    @classmethod
    def load(cls, root: str | Path) -> SynthDataset:
        """Read ``root/manifest.json``; image paths become absolute under ``root``."""
        root = Path(root).resolve()
        path = root / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"root: no {MANIFEST} in {root} (make one with python -m synth)")
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: expected format {FORMAT!r}, got {data.get('format')!r}")
        return cls(
            config=SimConfig.from_dict(data["config"]),
            seed=int(data["seed"]),
            annotator_skill=np.array(data["annotator_skill"], np.float64),
            images=[ImageRecord.from_json(e, root) for e in data["images"]],
            root=root,
        )


def _scene(config: SimConfig, image_seed: int) -> Scene:
    return make_scene(config.image_size, config.scene, np.random.default_rng([image_seed, 0]))


def generate(preset: str | SimConfig, seed: int, *, render: bool = True) -> SynthDataset:
    """Simulate a dataset in memory.

    Args:
        preset: a preset name (``tiny``, ``small``, ``quick``, ``paper``) or a :class:`SimConfig`.
        seed: the only source of randomness; the same seed gives the same dataset.
        render: draw the pixels now (else they are drawn when written, or by :meth:`SynthDataset.pixels`).

    Returns:
        The dataset; image paths are relative to the folder it will be written to.

    Warns:
        UserWarning: a missed or localization rate too high to be reached (``synth.noise.capped_rates``).
    """
    config = get_preset(preset) if isinstance(preset, str) else preset
    if not isinstance(config, SimConfig):
        raise TypeError(f"preset: expected a preset name or SimConfig, got {type(preset).__name__}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    for message in capped_rates(config.noise):  # a warning only: the data are what they always were
        warnings.warn(message, UserWarning, stacklevel=2)
    master = np.random.default_rng(int(seed))
    skills = annotator_skills(config.noise, master)
    total = sum(config.splits.values())
    image_seeds = master.integers(0, 2**62, total)
    # Balanced: every annotator labels the same number of images (+-1), so the mean skill over images is 1.
    annotators = master.permutation(np.arange(total) % config.noise.n_annotators)
    size = config.image_size
    scenes = [_scene(config, int(s)) for s in image_seeds]
    distractor_share = float(np.mean([len(s.distractors) > 0 for s in scenes])) if scenes else 1.0
    images: list[ImageRecord] = []
    index = 0
    for split, count in config.splits.items():
        for _ in range(count):
            image_seed = int(image_seeds[index])
            scene = scenes[index]
            noise_rng = np.random.default_rng([image_seed, 1])
            annotator = int(annotators[index])
            expert_xyxy = scene.deposit_boxes()
            crowd = corrupt(
                expert_xyxy,
                scene.cluster,
                scene.visibility,
                scene.distractor_boxes(),
                size=size,
                annotator=annotator,
                skill=float(skills[annotator]),
                cfg=config.noise,
                rng=noise_rng,
                distractor_share=distractor_share,
            )
            pixels = render_scene(scene, np.random.default_rng([image_seed, 2])) if render else None
            image_id = f"{index:06d}"
            images.append(
                ImageRecord(
                    id=image_id,
                    split=split,
                    path=Path("images", split, f"{image_id}.png"),
                    width=size,
                    height=size,
                    seed=image_seed,
                    expert=Detections(expert_xyxy, np.zeros(len(expert_xyxy), np.int64)),
                    crowd=Detections(crowd.xyxy, np.zeros(len(crowd.xyxy), np.int64)),
                    crowd_noise=crowd.noise,
                    crowd_annotator=np.full(len(crowd.xyxy), annotator, np.int64),
                    crowd_match=crowd.match,
                    missed=crowd.missed,
                    expert_cluster=scene.cluster,
                    expert_visibility=np.round(scene.visibility, 4),
                    distractors=Detections(
                        scene.distractor_boxes(), np.zeros(len(scene.distractors), np.int64)
                    ),
                    distractor_kind=scene.distractor_kind,
                    pixels=pixels,
                )
            )
            index += 1
    logger.info("generated %d images (preset %s, seed %d)", total, config.name, seed)
    return SynthDataset(config=config, seed=int(seed), annotator_skill=skills, images=images)


def with_overrides(config: SimConfig, **changes: Any) -> SimConfig:
    """``config`` with some top-level fields replaced (``None`` values are ignored)."""
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})
