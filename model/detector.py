"""The detector interface: what the backend and the benchmark may use of a model, whatever its family.

A *detector family* (YOLO today; e.g. torchvision Faster R-CNN or RT-DETR tomorrow) knows how to train a
checkpoint from labelled images and how to load one as a :class:`Detector`. Families are chosen by name;
the name is recorded in each model version's meta (``"family"``) so that :func:`load_detector` loads a
version with the family that wrote it (versions published before the family was recorded are YOLO's).

Nothing here imports torch or a model library: families are imported on first use.

Example, with a toy family registered for the example (real families live in their own module, e.g.
``model/yolo.py``, and are listed in ``_BUILTIN``)::

    >>> import numpy as np
    >>> from selection.detections import Detections
    >>> class Corner:  # "detects" one 10 x 10 box in the top-left corner of every image
    ...     names = ["deposit"]
    ...     version = "v0001-demo"
    ...     def predict(self, images, *, conf=PREDICT_CONF, batch=16):
    ...         box = Detections(np.array([[0, 0, 10, 10]], np.float32), np.zeros(1, np.int64),
    ...                          np.array([0.9], np.float32))
    ...         return [box if float(box.score[0]) >= conf else Detections.empty(with_score=True)
    ...                 for _ in images]
    >>> isinstance(Corner(), Detector)
    True
    >>> class CornerFamily:
    ...     name = "corner"
    ...     default_init = ""
    ...     def check_init(self, init): pass
    ...     def load(self, weights, *, device="auto", version=""): return Corner()
    ...     def train(self, **options): raise NotImplementedError("a toy family does not train")
    >>> register_family("corner", CornerFamily)
    >>> detector = get_family("corner").load("weights.pt")
    >>> [len(d) for d in detector.predict([np.zeros((32, 32), np.uint8)] * 2)]
    [1, 1]
    >>> "corner" in family_names() and "yolo" in family_names()
    True
    >>> get_family("rcnn")
    Traceback (most recent call last):
    ...
    ValueError: family: expected one of ['corner', 'yolo'], got 'rcnn'
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

from model.registry import LEGACY_FAMILY
from selection.detections import Detections

if TYPE_CHECKING:
    from formats.images import ImageNormalization
    from model.dataset import LabeledImage
    from model.registry import ModelVersion

__all__ = [
    "DEFAULT_FAMILY",
    "MAX_DET",
    "PREDICT_CONF",
    "Detector",
    "DetectorFamily",
    "EpochCallback",
    "ImageInput",
    "TrainResult",
    "family_names",
    "get_family",
    "load_detector",
    "register_family",
]

ImageInput = Path | str | np.ndarray
"""An image for :meth:`Detector.predict`: a file path, or uint8 pixels HxW (gray) or HxWx3 (RGB)."""

EpochCallback = Callable[[int, int], None]
"""Called as ``on_epoch(epoch, total)`` (1-based) after each training epoch."""

PREDICT_CONF = 0.01
"""The prediction confidence floor: detections below it are never returned to the scorer.

Low on purpose: the LSM thresholds predictions itself (``LSMConfig.score_floor``) and the backend hides
model boxes below ``SCORE_THRESHOLD``; the floor only keeps NMS output small. One place for backend,
training job and benchmark (the backend's ``PREDICT_CONF`` setting defaults to it)."""

MAX_DET = 300
"""The most boxes a detector returns per image (per tile under tiling, see ``model.tiling``): ultralytics' own
``max_det`` default, so that the backend's ``MAX_DET`` setting left unset changes nothing. Raise it for images
that hold more objects than that: NMS otherwise keeps only the best-scored ones, and a crowd box on an object
past the cap finds no prediction, as a box drawn on background does."""

DEFAULT_FAMILY = LEGACY_FAMILY
"""The family used when none is named (``DETECTOR_FAMILY`` unset, old versions without ``"family"``)."""


@dataclass(frozen=True)
class TrainResult:
    """Outcome of one training run, whatever the family.

    Attributes:
        weights: the checkpoint to publish or load.
        seconds: wall-clock training time in seconds.
        metrics: final validation metrics, floats (names are the family's, e.g. ``"metrics/mAP50(B)"``).
        epochs: epochs actually run (fewer than asked when early stopping fired).
        options: family-specific options the run actually used (e.g. YOLO's ``imgsz`` when it was chosen
            from the images), recorded in the version meta.
    """

    weights: Path
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    epochs: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Detector(Protocol):
    """A loaded model: boxes in, scored ``Detections`` out.

    Attributes:
        names: class names, index = class id of the returned detections.
        version: the model version it was loaded as (``""`` if unknown).
    """

    names: list[str]
    version: str

    def predict(
        self, images: Sequence[ImageInput], *, conf: float = PREDICT_CONF, batch: int = 16
    ) -> list[Detections]:
        """Detect boxes.

        Args:
            images: image paths, or uint8 arrays HxW (grayscale) or HxWx3 (RGB).
            conf: minimum confidence returned, in [0, 1].
            batch: images per forward pass.

        Returns:
            One scored ``Detections`` per image, in that image's pixels (boxes clipped to it), scores float32
            in [0, 1].
        """
        ...


class DetectorFamily(Protocol):
    """How one kind of detector is trained and loaded.

    Attributes:
        name: the registry name (recorded in each version's meta as ``"family"``).
        default_init: what training starts from when no ``init`` is given (e.g. ``"yolov8n.yaml"``).
    """

    name: str
    default_init: str

    def check_init(self, init: str) -> None:
        """Raise ``ValueError`` (naming ``init``) when training could not start from ``init``."""
        ...

    def load(
        self, weights: Path | str, *, device: str = "auto", version: str = "", max_det: int = MAX_DET
    ) -> Detector:
        """Load a checkpoint written by :meth:`train`; ``FileNotFoundError`` when missing.

        ``max_det`` caps the boxes the detector returns per image (``MAX_DET``). A family without such a cap
        may leave the parameter out: :func:`load_detector` then loads it under the default only.
        """
        ...

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
        """Train a checkpoint, offline (nothing downloaded), writing only under ``out_dir``.

        Args:
            train: training images with their boxes (class ids index ``names``).
            val: validation images (at least one).
            names: class names, index = class id.
            out_dir: the run folder.
            init: a checkpoint to warm-start from, or a family-specific model definition; ``None`` means
                :attr:`default_init`.
            epochs: epochs to train.
            batch: images per batch.
            imgsz: input size in pixels; ``None``: the family chooses from the images' sizes.
            seed: random seed.
            device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
            validate: validate every epoch (``False``: only after the last).
            keep: ``"best"`` (best validation fitness; the last when not validating every epoch) or
                ``"last"`` checkpoint.
            on_epoch: progress callback.
            threads: CPU threads the training may use (``None``: every core); the backend leaves cores to
                inference with it (``TRAIN_THREADS``).
            image_normalization: how image files become the 8-bit pixels the network trains on
                (``formats.images``; ``None``: ``ImageNormalization()``). Prediction must be given arrays
                normalised the same way.
        """
        ...


_BUILTIN: dict[str, str] = {"yolo": "model.yolo:YoloFamily"}
"""Families shipped with the project: name -> ``module:factory``, imported on first use."""

_FACTORIES: dict[str, Callable[[], DetectorFamily]] = {}
_CACHE: dict[str, DetectorFamily] = {}


def register_family(name: str, factory: Callable[[], DetectorFamily]) -> None:
    """Make a family available by ``name`` (replacing one of that name).

    Args:
        name: the name recorded in version meta and accepted by ``DETECTOR_FAMILY``.
        factory: builds the family object (called once, on first use).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name: expected a non-empty family name, got {name!r}")
    _FACTORIES[name] = factory
    _CACHE.pop(name, None)


def family_names() -> list[str]:
    """Every family name that :func:`get_family` accepts, sorted."""
    return sorted({*_BUILTIN, *_FACTORIES})


def get_family(name: str) -> DetectorFamily:
    """The family registered as ``name``.

    Raises:
        ValueError: no family of that name.
    """
    if name not in _CACHE:
        factory = _FACTORIES.get(name)
        if factory is None and name in _BUILTIN:
            module, _, attr = _BUILTIN[name].partition(":")
            factory = getattr(importlib.import_module(module), attr)
        if factory is None:
            raise ValueError(f"family: expected one of {family_names()}, got {name!r}")
        _CACHE[name] = factory()
    return _CACHE[name]


def load_detector(version: ModelVersion, *, device: str = "auto", max_det: int = MAX_DET) -> Detector:
    """Load a published model version with the family recorded in its meta.

    Args:
        version: from ``ModelRegistry.latest()``/``.get(name)``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        max_det: the most boxes returned per image (the backend's ``MAX_DET``; per tile when tiled).

    Raises:
        ValueError: the version names an unknown family, ``max_det`` is not an integer >= 1, or it is not the
            default and the family's ``load`` takes no ``max_det``.
        FileNotFoundError: its weights are gone.
    """
    if isinstance(max_det, bool) or not isinstance(max_det, int) or max_det < 1:
        raise ValueError(f"max_det: expected an integer >= 1, got {max_det!r}")
    family = get_family(version.family)
    if max_det == MAX_DET:
        # The default is every family's own: a family written before max_det existed loads as it always did.
        return family.load(version.weights, device=device, version=version.version)
    if not _takes_keyword(family.load, "max_det"):
        raise ValueError(
            f"max_det: the {family.name!r} detector family has no cap on its boxes (its load takes no "
            f"max_det); leave MAX_DET at {MAX_DET}, got {max_det}"
        )
    return family.load(version.weights, device=device, version=version.version, max_det=max_det)


def _takes_keyword(function: Callable[..., Any], name: str) -> bool:
    """Whether ``function`` accepts the keyword argument ``name`` (by name or through ``**kwargs``)."""
    import inspect

    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): let the call decide
        return True
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (p.name == name and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        for p in parameters
    )
