"""Simulator settings: frozen dataclasses and the named presets (``tiny``, ``small``, ``quick``, ``paper``,
``large``).

Sizes that depend on the image (deposit radius, band thickness) are fractions of the image side, so one
preset scales to another image size unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

LOCALIZATION_IOU_TOLERANCE = 0.03
"""A localization box is accepted with an IoU up to this far outside ``NoiseConfig.localization_iou``."""


@dataclass(frozen=True)
class NoiseConfig:
    """Crowd-noise rates and their structure.

    Every rate is the dataset-level expectation; each simulated annotator scales the missed, localization
    and background rates by its ``skill`` factor (mean 1 over annotators, so the dataset rate stays the
    configured one). ``bib_rate`` is the same for everyone.

    High rates are not reached exactly (:mod:`synth.noise` has the formulas). A deposit's miss probability
    is capped at 0.98 and its localization probability at 1; once a cap binds for the most error-prone
    annotator (skill up to ``1 + skill_spread``, 1 with a single annotator) the measured rate can fall
    short, and :func:`synth.generate` warns (:func:`synth.noise.capped_rates`; for missed deposits when
    ``missed_rate * (1 + skill_spread) * (1 + missed_visibility_skew) > 0.98``, i.e. above 0.363 with the
    other fields at their defaults; for localization above 0.556). The background share overshoots
    instead, more the higher it is. Measured on the ``quick`` preset, seeds 0-2, all splits, the other
    fields at their defaults: ``missed_rate`` 0.9 gives 0.775, ``localization_rate`` 0.7 gives 0.678,
    ``background_rate`` 0.18 / 0.5 / 0.8 give 0.178 (within noise) / 0.544 / 0.894. The warning changes no
    data.

    ``n_annotators`` changes the images, not only their crowd labels: the dataset seed's generator draws
    the annotators' skills before the images' seeds, so another ``n_annotators`` gives other images (layout,
    pixels, expert boxes), and runs that differ in it are not on the same images. Every other field changes
    the crowd labels only.

    Attributes:
        n_annotators: number of simulated crowd annotators; each image is labelled by one of them. Changes
            the images too (see above).
        skill_spread: annotator error multipliers are drawn uniform in ``[1 - s, 1 + s]`` and then rescaled
            to mean 1.
        missed_rate: share of deposits (outside box-in-box clusters) with no crowd box.
        missed_visibility_skew: in [0, 1); how much more often small/faint deposits are missed. A deposit of
            visibility ``v`` in [0, 1] is missed with ``min(missed_rate * skill * (1 + skew * (1 - 2 v)),
            0.98)``.
        localization_rate: share of the boxed, non-Bib deposits whose box is badly placed or sized.
        localization_iou: (low, high) target range of the IoU of a localization box with its true box. A
            candidate box is accepted within :data:`LOCALIZATION_IOU_TOLERANCE` (0.03) of the range; after
            30 rejected candidates the last one is kept unchecked, so a few boxes may lie further out (none
            of 2,082 did on the ``quick`` preset, seeds 0-2, ``localization_rate=0.7``). ``high + 0.03``
            must stay below ``clean_min_iou``, so that localization boxes are looser than clean ones.
        localization_modes: relative weights of (loose, tight, shifted) localization errors.
        background_rate: share of all crowd boxes that lie on no deposit (overshot at high rates, see above).
        background_on_distractor: share of background boxes drawn on a distractor (the rest on texture).
        bib_rate: share of deposit clusters (2+ adjacent deposits) boxed by one enclosing box.
        bib_keep_inner: probability that a Bib annotator also keeps the inner boxes (``bib_inner``).
        bib_margin: (low, high) extra margin of a Bib box on each side, as a fraction of the union's side;
            finite, ``0 <= low <= high``. No upper bound: the box is clipped to the image, so a large margin
            only makes it reach the image's edges.
        clean_jitter: standard deviation of a clean box's corner jitter, as a fraction of the box side;
            finite, >= 0 (0 puts clean boxes on the true boxes).
        clean_min_iou: a clean box keeps at least this IoU with its true box.
    """

    n_annotators: int = 6
    skill_spread: float = 0.5
    missed_rate: float = 0.25
    missed_visibility_skew: float = 0.8
    localization_rate: float = 0.20
    localization_iou: tuple[float, float] = (0.2, 0.7)
    localization_modes: tuple[float, float, float] = (0.45, 0.25, 0.30)
    background_rate: float = 0.18
    background_on_distractor: float = 0.8
    bib_rate: float = 0.5
    bib_keep_inner: float = 0.3
    bib_margin: tuple[float, float] = (0.03, 0.15)
    clean_jitter: float = 0.03
    clean_min_iou: float = 0.85

    def __post_init__(self) -> None:
        if (
            isinstance(self.n_annotators, bool)
            or not isinstance(self.n_annotators, numbers.Integral)
            or self.n_annotators < 1
        ):
            raise ValueError(f"n_annotators: expected an integer >= 1, got {self.n_annotators!r}")
        if not 0 <= self.skill_spread < 1:
            raise ValueError(f"skill_spread: expected in [0, 1), got {self.skill_spread}")
        for name in ("missed_rate", "localization_rate", "background_on_distractor", "bib_rate"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name}: expected in [0, 1], got {value}")
        if not 0 <= self.background_rate < 1:
            raise ValueError(f"background_rate: expected in [0, 1), got {self.background_rate}")
        if not 0 <= self.bib_keep_inner <= 1:
            raise ValueError(f"bib_keep_inner: expected in [0, 1], got {self.bib_keep_inner}")
        if not 0 <= self.missed_visibility_skew < 1:
            raise ValueError(f"missed_visibility_skew: expected in [0, 1), got {self.missed_visibility_skew}")
        for name in ("localization_iou", "bib_margin"):
            if len(getattr(self, name)) != 2:
                raise ValueError(f"{name}: expected (low, high), got {getattr(self, name)}")
        if not 0 < self.clean_min_iou < 1:
            raise ValueError(f"clean_min_iou: expected in (0, 1), got {self.clean_min_iou}")
        lo, hi = self.localization_iou
        if not 0 < lo < hi < 1:
            raise ValueError(f"localization_iou: expected 0 < low < high < 1, got {self.localization_iou}")
        if not hi + LOCALIZATION_IOU_TOLERANCE < self.clean_min_iou:
            raise ValueError(
                f"localization_iou: expected high + {LOCALIZATION_IOU_TOLERANCE} (the accepted slack) < "
                f"clean_min_iou={self.clean_min_iou}, so that localization boxes stay looser than clean "
                f"ones; got {self.localization_iou}"
            )
        modes = self.localization_modes
        if len(modes) != 3 or not all(math.isfinite(w) and w >= 0 for w in modes):
            raise ValueError(f"localization_modes: expected 3 finite non-negative weights, got {modes}")
        if sum(modes) <= 0:
            raise ValueError("localization_modes: expected a positive sum of weights")
        low, high = self.bib_margin
        if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
            raise ValueError(f"bib_margin: expected finite 0 <= low <= high, got {self.bib_margin}")
        if not (math.isfinite(self.clean_jitter) and self.clean_jitter >= 0):
            raise ValueError(f"clean_jitter: expected a finite value >= 0, got {self.clean_jitter}")


@dataclass(frozen=True)
class SceneConfig:
    """What is drawn in an image; lengths are fractions of the image side.

    Attributes:
        deposit_groups: (low, high) number of deposit groups per image (a group is one deposit or a cluster).
        empty_image_prob: probability that an image has no deposit at all.
        cluster_prob: probability that a group is a cluster of 2-4 adjacent deposits.
        cluster_size: (low, high) deposits per cluster, inclusive.
        in_band_prob: probability that a group sits in or along the basement-membrane band.
        deposit_radius: (low, high) mean blob radius.
        deposit_contrast: (low, high) darkening of the blob core, 1 = black.
        band_thickness: (low, high) thickness of the basement-membrane band.
        red_cells: (low, high) red blood cells per image (smooth, uniform dark discs), inclusive.
        nucleus_prob: probability of a nucleus with chromatin clumps at an image edge.
        chromatin_clumps: (low, high) dark chromatin clumps per nucleus, inclusive.
    """

    deposit_groups: tuple[int, int] = (1, 5)
    empty_image_prob: float = 0.08
    cluster_prob: float = 0.35
    cluster_size: tuple[int, int] = (2, 4)
    in_band_prob: float = 0.8
    deposit_radius: tuple[float, float] = (0.022, 0.06)
    deposit_contrast: tuple[float, float] = (0.45, 0.85)
    band_thickness: tuple[float, float] = (0.1, 0.16)
    red_cells: tuple[int, int] = (0, 2)
    nucleus_prob: float = 0.45
    chromatin_clumps: tuple[int, int] = (2, 4)

    def __post_init__(self) -> None:
        for name in ("deposit_groups", "cluster_size", "red_cells", "chromatin_clumps"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name}: expected 0 <= low <= high, got {(lo, hi)}")
        if self.cluster_size[0] < 2:
            raise ValueError(f"cluster_size: expected a low of at least 2, got {self.cluster_size}")
        for name in ("deposit_radius", "deposit_contrast", "band_thickness"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name}: expected 0 < low <= high <= 1, got {(lo, hi)}")
        for name in ("empty_image_prob", "cluster_prob", "in_band_prob", "nucleus_prob"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name}: expected in [0, 1], got {value}")


@dataclass(frozen=True)
class SimConfig:
    """One simulated dataset: split sizes, image size, scene and crowd-noise settings.

    Attributes:
        name: preset name, recorded in the manifest.
        image_size: side of the square images in pixels.
        n_train, n_val, n_test: images per split.
        scene: what is drawn.
        noise: how the crowd labels are corrupted.
    """

    name: str = "custom"
    image_size: int = 160
    n_train: int = 240
    n_val: int = 40
    n_test: int = 80
    scene: SceneConfig = field(default_factory=SceneConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"image_size: expected >= 32 pixels, got {self.image_size}")
        for name in ("n_train", "n_val", "n_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")

    @property
    def splits(self) -> dict[str, int]:
        """Split name -> number of images, in generation order."""
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimConfig:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        scene = SceneConfig(**{k: _tuple(v) for k, v in data.pop("scene", {}).items()})
        noise = NoiseConfig(**{k: _tuple(v) for k, v in data.pop("noise", {}).items()})
        return cls(scene=scene, noise=noise, **data)


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


PRESETS: dict[str, SimConfig] = {
    "tiny": SimConfig(name="tiny", image_size=128, n_train=16, n_val=4, n_test=4),
    "small": SimConfig(name="small", image_size=160, n_train=120, n_val=20, n_test=60),
    "quick": SimConfig(name="quick", image_size=160, n_train=240, n_val=40, n_test=80),
    "paper": SimConfig(name="paper", image_size=320, n_train=1200, n_val=200, n_test=300),
    # TEM-sized frames: 2048 px with deposits of 15-60 px (radius 0.4-1.1 % of the side) along a thin
    # membrane; more groups per frame. Made for tiling (bench.tiling); about 2 s per frame to render.
    "large": SimConfig(
        name="large",
        image_size=2048,
        n_train=12,
        n_val=4,
        n_test=12,
        scene=SceneConfig(
            deposit_groups=(6, 14),
            deposit_radius=(0.004, 0.011),
            band_thickness=(0.03, 0.05),
            red_cells=(0, 3),
        ),
    ),
}


def get_preset(name: str) -> SimConfig:
    """The preset called ``name``; raises ``ValueError`` listing the known ones."""
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]
