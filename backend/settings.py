"""Backend configuration: one frozen dataclass read from the environment once, in the entry point.

Every value is validated in :meth:`Settings.from_env`; a bad value raises :class:`SettingsError` whose message
names the variable, what was expected and how to fix it. Every field of the LSM's ``LSMConfig`` is settable as
``LSM_<FIELD>`` (e.g. ``LSM_MATCH_IOU=0.4``, ``LSM_AGGREGATION=noisy_or``, ``LSM_CLASS_AWARE=true``): the
variables are derived from the dataclass, so a new field needs no edit here. Secrets (the API key, the
basic-auth password) are kept out of ``repr`` so they never reach a log line or a traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import logging
import math
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from backend.roles import CrowdPolicy, annotation_email, check_roles, parse_emails
from formats.images import DEFAULT_PERCENTILES, ImageNormalization, Normalize
from model.detector import DEFAULT_FAMILY, MAX_DET, PREDICT_CONF, family_names, get_family
from model.tiling import MIN_TILE, Merge, TileConfig
from selection.lsm import LSMConfig

__all__ = [
    "LSM_PREFIX",
    "VARIABLES",
    "ExpertMode",
    "ExpertPolicy",
    "Settings",
    "SettingsError",
    "lsm_as_dict",
    "lsm_from_env",
    "lsm_variables",
    "startup_problem",
    "tiling_from_env",
]

logger = logging.getLogger(__name__)

_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


class SettingsError(ValueError):
    """A configuration value is missing or invalid; the message says which and how to fix it."""


class ExpertMode(enum.Enum):
    """Which Label Studio annotations count as expert labels."""

    ALL = "all"
    """Every submitted annotation (the Label Studio project is the experts' workspace)."""
    EMAILS = "emails"
    """Only annotations completed by the listed users."""
    GROUND_TRUTH = "ground_truth"
    """Only annotations marked ground truth. Label Studio does not send a webhook when an annotation is
    saved as ground truth, so training then starts from the "Start training" button (START_TRAINING) or
    from the next ordinary annotation event."""


@dataclass(frozen=True)
class ExpertPolicy:
    """Parsed ``EXPERT_MODE``: ``all`` | ``emails:a@x.org,b@y.org`` | ``ground_truth``.

    ``crowd_emails`` (from ``CROWD_USERS=emails:...``) are never experts, even on a ground-truth annotation.
    """

    mode: ExpertMode = ExpertMode.ALL
    emails: frozenset[str] = frozenset()
    crowd_emails: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str) -> ExpertPolicy:
        """Parse the ``EXPERT_MODE`` text (case-insensitive; emails compared lower-case)."""
        raw = text.strip()
        head, _, tail = raw.partition(":")
        head = head.strip().lower()
        if head == ExpertMode.ALL.value and not tail:
            return cls(ExpertMode.ALL)
        if head == ExpertMode.GROUND_TRUTH.value and not tail:
            return cls(ExpertMode.GROUND_TRUTH)
        if head == ExpertMode.EMAILS.value:
            try:
                return cls(ExpertMode.EMAILS, parse_emails("EXPERT_MODE", tail))
            except ValueError as exc:
                raise SettingsError(str(exc)) from None
        raise SettingsError(
            f"EXPERT_MODE: expected 'all', 'ground_truth' or 'emails:a@x.org,b@y.org', got {raw!r}"
        )

    def is_expert(self, annotation: Mapping[str, object], *, user_email: str | None = None) -> bool:
        """Whether one Label Studio annotation counts as an expert annotation.

        Args:
            annotation: the annotation JSON (``was_cancelled``, ``ground_truth``, ``completed_by`` ...).
            user_email: the author's e-mail when ``completed_by`` is only a user id.
        """
        if annotation.get("was_cancelled"):
            return False
        email = (user_email or annotation_email(annotation) or "").strip().lower() or None
        if email is not None and email in self.crowd_emails:
            return False
        if self.mode is ExpertMode.ALL:
            return True
        if self.mode is ExpertMode.GROUND_TRUTH:
            return bool(annotation.get("ground_truth"))
        return email is not None and email in self.emails

    def describe(self) -> str:
        """The policy as ``EXPERT_MODE`` text."""
        if self.mode is ExpertMode.EMAILS:
            return "emails:" + ",".join(sorted(self.emails))
        return self.mode.value


def _raw(environ: Mapping[str, str], name: str) -> str | None:
    """``environ[name]`` or None. Every read goes through here, so a name missing from ``VARIABLES`` fails."""
    if name not in VARIABLES:
        raise LookupError(f"{name} is read by backend.settings but not declared in VARIABLES")
    return environ.get(name)


def _get(environ: Mapping[str, str], name: str, default: str) -> str:
    value = _raw(environ, name)
    return default if value is None or value.strip() == "" else value.strip()


def _int(environ: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    text = _get(environ, name, str(default))
    try:
        value = int(text)
    except ValueError:
        raise SettingsError(f"{name}: expected an integer >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise SettingsError(f"{name}: expected an integer >= {minimum}, got {value}")
    return value


def _bounded_int(environ: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    value = _int(environ, name, default, minimum=low)
    if value > high:
        raise SettingsError(f"{name}: expected an integer in [{low}, {high}], got {value}")
    return value


def _redis_url(text: str) -> str | None:
    """``redis://host[:port][/db]`` (or ``rediss://``, ``unix://path``), checked as redis-py would read it, so
    that a bad value stops the start with its name instead of failing at the first connection."""
    if not text:
        return None
    expected = f"REDIS_URL: expected redis://host:port/db (or rediss://, unix://), got {text!r}"
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(expected)
    parsed = urlparse(text)
    try:
        parsed.port  # noqa: B018 - raises on a port that is not a number in 0-65535
    except ValueError as exc:
        raise SettingsError(f"{expected} ({exc})") from None
    if parsed.scheme == "unix":
        if not parsed.path:
            raise SettingsError(f"{expected}: no socket path")
    elif not parsed.hostname:
        raise SettingsError(f"{expected}: no host")
    elif parsed.path.strip("/") and not parsed.path.strip("/").isdigit():
        raise SettingsError(f"{expected}: the database is a number, got {parsed.path.strip('/')!r}")
    return text


def _tasks_file(text: str) -> Path | None:
    if not text:
        return None
    path = Path(text).expanduser()
    if not path.is_file():
        raise SettingsError(f"TASKS_FILE: no such file {path}")
    return path


def _float(environ: Mapping[str, str], name: str, default: float, *, low: float, high: float) -> float:
    text = _get(environ, name, str(default))
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(f"{name}: expected a number in [{low}, {high}], got {text!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}: expected a number in [{low}, {high}], got {value}")
    return value


def _image_normalization(environ: Mapping[str, str]) -> ImageNormalization:
    """``IMAGE_NORMALIZE`` (auto | percentile | none) and ``IMAGE_PERCENTILES`` (``low,high``)."""
    choices = ", ".join(m.value for m in Normalize)
    mode = _get(environ, "IMAGE_NORMALIZE", Normalize.AUTO.value).lower()
    if mode not in {m.value for m in Normalize}:
        raise SettingsError(f"IMAGE_NORMALIZE: expected one of {choices}, got {mode!r}")
    text = _get(environ, "IMAGE_PERCENTILES", ",".join(str(p) for p in DEFAULT_PERCENTILES))
    parts = [p.strip() for p in text.split(",")]
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise SettingsError(
            f"IMAGE_PERCENTILES: expected two numbers 'low,high' (e.g. 0.1,99.9), got {text!r}"
        ) from None
    try:
        return ImageNormalization(Normalize(mode), (low, high))
    except ValueError as exc:
        raise SettingsError(f"IMAGE_PERCENTILES: {str(exc).removeprefix('percentiles: ')}") from None


def _device(text: str) -> str:
    t = text.strip().lower()
    if t in ("auto", "cpu", "cuda") or (t.startswith("cuda:") and t[5:].isdigit()):
        return t
    if t == "mps" or t.startswith("mps:"):
        # Refused here rather than on the first /predict: model.device.resolve_device has no MPS path.
        raise SettingsError(
            f"DEVICE: {text!r} (Apple GPU) is not supported by this backend; use auto, cpu, cuda or cuda:N"
        )
    raise SettingsError(f"DEVICE: expected auto, cpu, cuda or cuda:N, got {text!r}")


def _roles(environ: Mapping[str, str]) -> tuple[ExpertPolicy, CrowdPolicy]:
    """``EXPERT_MODE`` and ``CROWD_*`` parsed and checked together (see ``backend.roles``)."""
    expert = ExpertPolicy.parse(_get(environ, "EXPERT_MODE", "all"))
    try:
        crowd = CrowdPolicy.parse(
            _get(environ, "CROWD_SOURCE", ""),
            _get(environ, "CROWD_USERS", ""),
            merge_iou=_float(environ, "CROWD_MERGE_IOU", 0.5, low=0.01, high=1.0),
            min_votes=_int(environ, "CROWD_MIN_VOTES", 1, minimum=1),
        )
        check_roles(expert, crowd)
    except SettingsError:
        raise
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return dataclasses.replace(expert, crowd_emails=crowd.emails), crowd


LSM_PREFIX = "LSM_"
"""``LSMConfig.<field>`` is read from the variable ``LSM_<FIELD>``."""

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def lsm_variables() -> dict[str, str]:
    """``LSMConfig`` field name -> environment variable (``match_iou`` -> ``LSM_MATCH_IOU``)."""
    return {f.name: LSM_PREFIX + f.name.upper() for f in dataclasses.fields(LSMConfig)}


#: Every environment variable the backend's settings read, ``LSM_*`` included. Reads go through ``_raw``,
#: which refuses a name not listed here, so the set cannot fall behind the code. ``settings_with_overrides``
#: refuses ``--set`` names outside it, and the demo drops these from the environment it hands its backend.
VARIABLES: frozenset[str] = frozenset(
    {
        "BASIC_AUTH_PASS",
        "BASIC_AUTH_USER",
        "BOOTSTRAP",
        "CROWD_MERGE_IOU",
        "CROWD_MIN_VOTES",
        "CROWD_SOURCE",
        "CROWD_USERS",
        "DETECTOR_FAMILY",
        "DEVICE",
        "EXPERT_MODE",
        "IMAGE_CACHE_MB",
        "IMAGE_NORMALIZE",
        "IMAGE_PERCENTILES",
        "LABEL_STUDIO_API_KEY",
        "LABEL_STUDIO_URL",
        "LOCAL_FILES_DOCUMENT_ROOT",
        "LOG_LEVEL",
        "MAX_DET",
        "MODEL_DIR",
        "MODEL_WEIGHTS",
        "PREDICT_BATCH",
        "PREDICT_CONF",
        "REDIS_URL",
        "SCORE_THRESHOLD",
        "TASKS_FILE",
        "TILE_MERGE",
        "TILE_OVERLAP",
        "TILE_SIZE",
        "TRAIN_BATCH",
        "TRAIN_EPOCHS",
        "TRAIN_EPOCH_IMAGES",
        "TRAIN_IMGSZ",
        "TRAIN_INIT",
        "TRAIN_MIN_ANNOTATIONS",
        "TRAIN_NICE",
        "TRAIN_THREADS",
        "WORK_DIR",
    }
    | set(lsm_variables().values())
)


def _parse_field(name: str, kind: Any, text: str) -> Any:
    """One ``LSM_*`` value parsed as the field's annotated type (float, int, bool or a str enum)."""
    if kind is bool:
        low = text.lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise SettingsError(f"{name}: expected true or false, got {text!r}")
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        choices = [str(m.value) for m in kind]
        for member in kind:
            if str(member.value) == text.lower():
                return member
        raise SettingsError(f"{name}: expected one of {', '.join(choices)}, got {text!r}")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise SettingsError(f"{name}: expected an integer, got {text!r}") from None
    if kind is float:
        try:
            value = float(text)
        except ValueError:
            raise SettingsError(f"{name}: expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise SettingsError(f"{name}: expected a finite number, got {text!r}")
        return value
    raise SettingsError(f"{name}: cannot be set from the environment (a {kind!r} field)")


def lsm_from_env(environ: Mapping[str, str]) -> LSMConfig:
    """The LSM configuration: ``LSMConfig()`` with every ``LSM_<FIELD>`` that is set.

    Raises:
        SettingsError: naming the variable(s): an unparsable value, or one ``LSMConfig`` rejects (e.g.
            ``LSM_MATCH_IOU`` above ``LSM_HIGH_IOU``).
    """
    variables = lsm_variables()
    hints = typing.get_type_hints(LSMConfig)
    values = {
        name: _parse_field(var, hints[name], _get(environ, var, ""))
        for name, var in variables.items()
        if _get(environ, var, "")
    }
    try:
        return LSMConfig(**values)
    except ValueError as exc:
        # LSMConfig names its fields before the colon ("match_iou: ..." or "a, b, c: ..."): name variables.
        head, sep, rest = str(exc).partition(": ")
        fields = [f.strip() for f in head.split(",")]
        if sep and all(f in variables for f in fields):
            raise SettingsError(f"{', '.join(variables[f] for f in fields)}: {rest}") from None
        raise SettingsError(f"{LSM_PREFIX}*: {exc}") from None


_TILE_VARIABLES = {"size": "TILE_SIZE", "overlap": "TILE_OVERLAP", "merge": "TILE_MERGE"}


def tiling_from_env(environ: Mapping[str, str]) -> TileConfig | None:
    """Tiled prediction and training (``TILE_SIZE``, ``TILE_OVERLAP``, ``TILE_MERGE``), or ``None`` when off.

    ``TILE_SIZE`` 0 (the default) turns tiling off; otherwise images larger than ``TILE_SIZE`` pixels are cut
    into tiles overlapping by at least ``TILE_OVERLAP`` pixels (default 64, at most half a tile) and boxes are
    merged across tiles by ``TILE_MERGE`` (``nms`` or ``wbf``); see ``model.tiling``.

    Raises:
        SettingsError: naming the variable.
    """
    size = _int(environ, "TILE_SIZE", 0, minimum=0)
    if size == 0:
        return None
    if size < MIN_TILE:
        raise SettingsError(f"TILE_SIZE: expected 0 (off) or a tile side >= {MIN_TILE} pixels, got {size}")
    overlap = _int(environ, "TILE_OVERLAP", min(64, size // 2), minimum=0)
    merge_text = _get(environ, "TILE_MERGE", Merge.NMS.value)
    try:
        merge = Merge(merge_text.lower())
    except ValueError:
        choices = ", ".join(m.value for m in Merge)
        raise SettingsError(f"TILE_MERGE: expected one of {choices}, got {merge_text!r}") from None
    try:
        return TileConfig(size=size, overlap=overlap, merge=merge)
    except ValueError as exc:
        name, _, rest = str(exc).partition(": ")
        raise SettingsError(f"{_TILE_VARIABLES.get(name, 'TILE_*')}: {rest or exc}") from None


def lsm_as_dict(config: LSMConfig) -> dict[str, Any]:
    """``LSMConfig`` as JSON values (enums as their value), e.g. for a model version's meta."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[f.name] = value.value if isinstance(value, enum.Enum) else value
    return out


@dataclass(frozen=True)
class Settings:
    """Everything the backend reads from its environment (see docs/CONTRACTS.md, "Backend").

    Attributes:
        model_dir: the versioned model registry folder (``MODEL_DIR``, required).
        model_weights: initial weights published as the first version when the registry is empty.
        label_studio_url: base URL of Label Studio, without a trailing slash; ``None`` disables write-back
            and training data collection.
        label_studio_api_key: legacy token or personal access token (kept out of ``repr``).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        score_threshold: minimum model confidence for a model box (missed object, box-in-box part) to be
            shown as a proposal. Display only: it changes neither the discrepancy nor the grades, which use
            every prediction above ``predict_conf`` and the LSM's own ``score_floor``.
        local_files_document_root: read ``/data/local-files/?d=...`` straight from this folder.
        expert: which annotations are expert labels.
        crowd: where crowd labels come from and who the crowd users are (``CROWD_*``, see ``backend.roles``).
        train_min_annotations: new expert-annotated tasks needed before an annotation event retrains.
        detector_family: the detector family new versions are trained with (``DETECTOR_FAMILY``); a version
            is always loaded with the family recorded in its meta.
        train_epochs, train_imgsz (0 = the family chooses from the images), train_batch: training options.
        train_init: what a first training starts from (``""``: the family's default, e.g. yolov8n.yaml).
        train_epoch_images: repeat the training images so that an epoch holds about this many
            (``TRAIN_EPOCH_IMAGES``, ``model.dataset.epoch_repeats``; 0: each image once per epoch). The
            benchmark's best equal-cost recipe fine-tunes on the expert images with as many steps per epoch as
            the crowd model's training had: set it to the number of images the first model trained on.
        basic_auth_user, basic_auth_pass: when both set, every endpoint requires HTTP basic auth.
        log_level: logging level name.
        work_dir: scratch folder for training datasets (default ``model_dir/work``).
        predict_batch: images per forward pass in ``/predict``.
        image_cache_mb: bound of the disk cache of images fetched from cloud storages through Label Studio
            (``IMAGE_CACHE_MB``, under ``<scratch_dir>/image-cache``; 0 disables it).
        predict_conf: the prediction confidence floor (``PREDICT_CONF``): detections below it never reach
            the scorer.
        max_det: the most boxes the detector returns per image, per tile under tiling (``MAX_DET``, default
            ultralytics' 300); the tile merge does not cut an image back to it.
        lsm: the LSM thresholds (``LSM_<FIELD>``), used for every scoring and recorded in version meta.
        tiling: tiled prediction and training of images larger than ``TILE_SIZE`` (``None``: off).
        train_threads: torch CPU threads of the training process (0: all cores but one, at least 1), so
            that inference keeps a core during training.
        train_nice: niceness added to the training process (0-19; 19 also uses Linux's idle scheduling
            class): the kernel then gives ``/predict`` the CPU first.
        redis_url: ``redis://host:port/db``: training and re-scoring jobs go to an RQ queue there, served by
            ``python -m backend.worker`` (``None``: they run in this process, one at a time).
        tasks_file: train from this JSON file instead of Label Studio (see ``backend.tasksfile``).
        bootstrap: ``auto`` (``BOOTSTRAP``, the default): with an empty registry and no ``MODEL_WEIGHTS``,
            the first project that calls the backend gets a first model trained on its crowd labels
            (``backend.bootstrap``); ``off``: it waits for weights or expert annotations.
        image_normalization: how decoded images become 8-bit (``IMAGE_NORMALIZE``, ``IMAGE_PERCENTILES``);
            new versions are trained with it and record it in their meta, and a version predicts with the
            one in its meta (this one for versions that have none).
    """

    model_dir: Path
    model_weights: Path | None = None
    label_studio_url: str | None = None
    label_studio_api_key: str | None = field(default=None, repr=False)
    device: str = "auto"
    score_threshold: float = 0.25
    local_files_document_root: Path | None = None
    expert: ExpertPolicy = ExpertPolicy()
    crowd: CrowdPolicy = field(default_factory=CrowdPolicy)
    train_min_annotations: int = 5
    train_epochs: int = 20
    train_imgsz: int = 0
    train_batch: int = 8
    train_init: str = ""
    train_epoch_images: int = 0
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = field(default=None, repr=False)
    log_level: str = "INFO"
    work_dir: Path | None = None
    predict_batch: int = 16
    image_cache_mb: int = 2048
    detector_family: str = DEFAULT_FAMILY
    predict_conf: float = PREDICT_CONF
    max_det: int = MAX_DET
    lsm: LSMConfig = field(default_factory=LSMConfig)
    tiling: TileConfig | None = None
    train_threads: int = 0
    train_nice: int = 10
    redis_url: str | None = field(default=None, repr=False)
    tasks_file: Path | None = None
    bootstrap: str = "auto"
    image_normalization: ImageNormalization = field(default_factory=ImageNormalization)

    @property
    def scratch_dir(self) -> Path:
        """Where training datasets and job files go."""
        return self.work_dir if self.work_dir is not None else self.model_dir / "work"

    @property
    def image_cache_dir(self) -> Path:
        """Where images fetched from cloud storages are cached (shared by every process of the backend)."""
        return self.scratch_dir / "image-cache"

    @property
    def label_studio_enabled(self) -> bool:
        """Whether the backend may call Label Studio (URL and API key both configured)."""
        return bool(self.label_studio_url and self.label_studio_api_key)

    @property
    def train_thread_count(self) -> int:
        """``train_threads``, or all cores but one (at least 1) when it is 0."""
        return self.train_threads or max(1, (os.cpu_count() or 1) - 1)

    @property
    def basic_auth_enabled(self) -> bool:
        return self.basic_auth_user is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read and validate the settings.

        Raises:
            SettingsError: naming the variable and the expected form.
        """
        model_dir_text = _get(environ, "MODEL_DIR", "")
        if not model_dir_text:
            raise SettingsError("MODEL_DIR: required (the folder of the versioned model registry), not set")
        model_dir = Path(model_dir_text).expanduser()
        if model_dir.exists() and not model_dir.is_dir():
            raise SettingsError(f"MODEL_DIR: expected a folder, got a file {model_dir}")

        weights_text = _get(environ, "MODEL_WEIGHTS", "")
        weights = Path(weights_text).expanduser() if weights_text else None
        if weights is not None and not weights.is_file():
            raise SettingsError(f"MODEL_WEIGHTS: no such file {weights}")

        url = _get(environ, "LABEL_STUDIO_URL", "") or None
        if url is not None:
            if not url.startswith(("http://", "https://")):
                raise SettingsError(f"LABEL_STUDIO_URL: expected http(s)://host:port, got {url!r}")
            url = url.rstrip("/")
        key = _get(environ, "LABEL_STUDIO_API_KEY", "") or None

        root_text = _get(environ, "LOCAL_FILES_DOCUMENT_ROOT", "")
        root = Path(root_text).expanduser() if root_text else None
        if root is not None and not root.is_dir():
            raise SettingsError(f"LOCAL_FILES_DOCUMENT_ROOT: no such folder {root}")

        user = _get(environ, "BASIC_AUTH_USER", "") or None
        password = _raw(environ, "BASIC_AUTH_PASS") or None
        if (user is None) != (password is None):
            raise SettingsError("BASIC_AUTH_USER and BASIC_AUTH_PASS: set both or neither")

        level = _get(environ, "LOG_LEVEL", "INFO").upper()
        if level not in _LOG_LEVELS:
            raise SettingsError(f"LOG_LEVEL: expected one of {', '.join(_LOG_LEVELS)}, got {level!r}")

        work_text = _get(environ, "WORK_DIR", "")
        family_name = _get(environ, "DETECTOR_FAMILY", DEFAULT_FAMILY).lower()
        if family_name not in family_names():
            raise SettingsError(
                f"DETECTOR_FAMILY: expected one of {', '.join(family_names())}, got {family_name!r}"
            )
        family = get_family(family_name)
        init = _get(environ, "TRAIN_INIT", "") or family.default_init
        try:
            family.check_init(init)
        except ValueError as exc:
            raise SettingsError(f"TRAIN_INIT: {str(exc).removeprefix('init: ')}") from None

        lsm = lsm_from_env(environ)
        predict_conf = _float(environ, "PREDICT_CONF", PREDICT_CONF, low=0.0, high=1.0)
        if predict_conf > lsm.score_floor:
            raise SettingsError(
                f"PREDICT_CONF: expected at most LSM_SCORE_FLOOR={lsm.score_floor} (the scorer never sees "
                f"predictions below PREDICT_CONF), got {predict_conf}"
            )

        bootstrap = _get(environ, "BOOTSTRAP", "auto").lower()
        if bootstrap not in ("auto", "off"):
            raise SettingsError(f"BOOTSTRAP: expected auto or off, got {bootstrap!r}")
        expert, crowd = _roles(environ)
        return cls(
            model_dir=model_dir,
            model_weights=weights,
            label_studio_url=url,
            label_studio_api_key=key,
            device=_device(_get(environ, "DEVICE", "auto")),
            score_threshold=_float(environ, "SCORE_THRESHOLD", 0.25, low=0.0, high=1.0),
            local_files_document_root=root,
            expert=expert,
            crowd=crowd,
            train_min_annotations=_int(environ, "TRAIN_MIN_ANNOTATIONS", 5, minimum=1),
            train_epochs=_int(environ, "TRAIN_EPOCHS", 20, minimum=1),
            train_epoch_images=_int(environ, "TRAIN_EPOCH_IMAGES", 0, minimum=0),
            train_imgsz=_int(environ, "TRAIN_IMGSZ", 0, minimum=0),
            train_batch=_int(environ, "TRAIN_BATCH", 8, minimum=1),
            train_init=init,
            basic_auth_user=user,
            basic_auth_pass=password,
            log_level=level,
            work_dir=Path(work_text).expanduser() if work_text else None,
            predict_batch=_int(environ, "PREDICT_BATCH", 16, minimum=1),
            image_cache_mb=_int(environ, "IMAGE_CACHE_MB", 2048, minimum=0),
            detector_family=family_name,
            predict_conf=predict_conf,
            max_det=_int(environ, "MAX_DET", MAX_DET, minimum=1),
            lsm=lsm,
            tiling=tiling_from_env(environ),
            train_threads=_int(environ, "TRAIN_THREADS", 0, minimum=0),
            train_nice=_bounded_int(environ, "TRAIN_NICE", 10, low=0, high=19),
            redis_url=_redis_url(_get(environ, "REDIS_URL", "")),
            tasks_file=_tasks_file(_get(environ, "TASKS_FILE", "")),
            bootstrap=bootstrap,
            image_normalization=_image_normalization(environ),
        )

    def log_summary(self, logger: logging.Logger) -> None:
        """Log the configuration without secrets."""
        logger.info(
            "settings: model_dir=%s device=%s family=%s label_studio=%s api_key=%s expert=%s crowd=%s "
            "train_min=%d epochs=%d basic_auth=%s local_files_root=%s predict_conf=%s max_det=%d lsm=%s "
            "images=%s tiling=%s",
            self.model_dir,
            self.device,
            self.detector_family,
            self.label_studio_url or "-",
            "set" if self.label_studio_api_key else "unset",
            self.expert.describe(),
            self.crowd.describe(),
            self.train_min_annotations,
            self.train_epochs,
            "on" if self.basic_auth_enabled else "off",
            self.local_files_document_root or "-",
            self.predict_conf,
            self.max_det,
            lsm_as_dict(self.lsm),
            self.image_normalization.as_dict(),
            self.tiling.as_dict() if self.tiling is not None else "off",
        )


def settings_with_overrides(
    environ: Mapping[str, str],
    flags: Mapping[str, Any],
    *,
    assignments: Sequence[str] = (),
    without: Sequence[str] = ("MODEL_WEIGHTS",),
) -> Settings:
    """The backend's settings for a command-line tool: ``environ``, then ``VAR=VALUE`` ``assignments`` (a
    ``--set`` option), then ``flags`` (variable name -> value; None = not given) over it, the ``without``
    variables removed (tools that never publish initial weights must not fail on a missing file).

    Raises:
        SettingsError: a malformed assignment or one naming no backend setting (``VARIABLES``; the closest
            name is suggested), or as ``Settings.from_env`` (naming the variable).
    """
    unknown = sorted(set(flags) - VARIABLES)
    if unknown:
        raise LookupError(f"flags name no backend setting: {', '.join(unknown)}")
    env = dict(environ)
    for item in assignments:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise SettingsError(f"--set: expected VAR=VALUE, got {item!r}")
        if name not in VARIABLES:
            close = difflib.get_close_matches(name.upper(), sorted(VARIABLES), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise SettingsError(f"--set: {name} is not a backend setting{hint} (docs/CONTRACTS.md, Backend)")
        env[name] = value
    env.update({var: str(value) for var, value in flags.items() if value is not None})
    for var in without:
        env.pop(var, None)
    return Settings.from_env(env)


def startup_problem(settings: Settings) -> str | None:
    """What would stop this process later although the variables parsed, checked once at start (backend and
    worker; None when nothing): a ``DEVICE`` the machine cannot give (``cuda`` without a visible GPU, an index
    past the visible ones), or a ``MODEL_DIR`` / ``WORK_DIR`` that cannot be created or written."""
    from model.device import resolve_device

    try:
        resolved = resolve_device(settings.device)
    except ValueError as exc:
        return f"DEVICE: {exc}"
    if settings.device == "auto" and resolved == "cpu":
        logger.warning("DEVICE=auto: no CUDA device visible, running on the CPU")
    for name, path in (("MODEL_DIR", settings.model_dir), ("WORK_DIR", settings.scratch_dir)):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"{name}: {path} cannot be created ({exc.strerror or exc})"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{name}: {path} is not writable"
    return None
