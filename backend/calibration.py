"""Grades fitted on a project's expert annotations (the command: ``python -m backend.calibrate``).

The LSM grades noise with constant thresholds. Every task of a project that has both crowd labels and an
expert annotation is a set of labelled examples (``selection.calibration``): each finding of a model
version on that task is a true error of its type or not, by the expert's boxes. This module gathers those
examples for one version, fits the calibration and stores it beside the version (``calibration.json`` in
its registry folder, written atomically); :class:`backend.service.ModelService` then regrades every
``/predict`` of that version with it (types without a fitted rule keep the LSM's grades).

A model's findings on its own training images are too good to learn from, and a new version trains on every
expert task there is. So each expert task is scored by the newest version (up to the one calibrated) that did
not train on it (``meta["trained_on"]``, the task ids the training job used; none for ``MODEL_WEIGHTS``),
about the version that was serving when the expert annotated it — the condition the serving version's
findings on not-yet-annotated tasks are in. Calibration runs after each training (after publishing, before
re-scoring), on ``POST /calibrate?project=N`` and from this command.

Example:
    >>> from backend.calibration import type_table
    >>> type_table({}, {})[0]["noise_type"]
    'background'
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backend.crowd import CrowdLabels
from backend.labelconfig import LabelSchema
from backend.roles import expert_annotation
from backend.service import CALIBRATION_FILE
from formats.labelstudio import regions_to_detections
from selection.calibration import (
    CALIBRATED_TYPES,
    Calibration,
    CalibrationConfig,
    LabelledFindings,
    confirmed_share,
    fit_calibration,
    label_findings,
    regrade,
)
from selection.detections import Detections
from selection.lsm import Action, ImageScore, score_image

if TYPE_CHECKING:
    from backend.service import ModelService
    from backend.settings import ExpertPolicy
    from model.registry import ModelVersion

logger = logging.getLogger(__name__)

__all__ = [
    "CALIBRATION_FILE",
    "ProjectCalibration",
    "TaskView",
    "calibrate_project",
    "calibration_path",
    "example_versions",
    "expert_boxes",
    "save_calibration",
    "skipped_summary",
    "task_views",
    "trained_on",
    "type_table",
]


def calibration_path(version: ModelVersion) -> Path:
    """Where ``version``'s calibration is stored (beside its weights)."""
    return version.weights.parent / CALIBRATION_FILE


def trained_on(version: ModelVersion) -> set[int]:
    """Task ids the version trained on (``meta["trained_on"]``; empty for weights from elsewhere)."""
    return {int(t) for t in version.meta.get("trained_on") or []}


def save_calibration(version: ModelVersion, result: ProjectCalibration) -> Path:
    """Write ``result`` to the version's folder atomically (temp file + rename); the path."""
    path = calibration_path(version)
    fd, tmp = tempfile.mkstemp(prefix=".calibration-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(result.to_dict(), handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def expert_boxes(
    annotation: Mapping[str, Any], schema: LabelSchema, *, width: int, height: int
) -> Detections:
    """The expert annotation's boxes in pixels, class ids = label indices of the config (as crowd labels)."""
    regions = [r for r in annotation.get("result") or [] if r.get("from_name") == schema.from_name]
    return regions_to_detections(
        regions, label_to_id=schema.label_ids, width=width, height=height, from_name=schema.from_name
    )


@dataclass(frozen=True)
class TaskView:
    """One task as a version sees it: crowd labels, the version's predictions (label ids), the LSM score.

    Attributes:
        task_id: Label Studio's task id.
        crowd: the task's crowd labels (fused, with votes when known).
        pred: the version's predictions mapped to the config's label ids.
        score: ``score_image(crowd, pred)`` under the backend's LSM settings (not regraded).
        expert: the expert's boxes (label ids), or None when the task has no expert annotation.
    """

    task_id: int
    crowd: CrowdLabels
    pred: Detections
    score: ImageScore
    expert: Detections | None


def task_views(
    service: ModelService,
    tasks: Sequence[Mapping[str, Any]],
    schema: LabelSchema,
    *,
    version: str | None = None,
    policy: ExpertPolicy | None = None,
    skipped: dict[int, str] | None = None,
) -> Iterator[TaskView]:
    """Score ``tasks`` with ``version`` (default: the serving one), ``PREDICT_BATCH`` images at a time.

    Tasks that cannot be read (no image, image missing, malformed crowd labels or expert regions) are skipped
    with a warning; ``skipped``, when given, receives each one's task id -> why.
    """
    from backend.protocol import task_image_url

    policy = policy or service.settings.expert
    detector, _ = service.current(version)
    label_map = schema.label_map(list(detector.names))
    chunk = max(1, service.settings.predict_batch)
    for start in range(0, len(tasks), chunk):
        loaded = []
        for task in tasks[start : start + chunk]:
            tid = int(task.get("id") or 0)
            try:
                image = service.loader.load(task_image_url(task, schema), task=str(tid))
                crowd = service.crowd_reader.read(task, width=image.width, height=image.height, schema=schema)
                ann = expert_annotation(task, policy)
                expert = (
                    None if ann is None else expert_boxes(ann, schema, width=image.width, height=image.height)
                )
            except Exception as exc:  # one unreadable task must not stop the others
                logger.warning("task %s skipped: %s", tid, exc)
                if skipped is not None:
                    skipped[tid] = str(exc).removeprefix(f"task {tid}: ")
                continue
            loaded.append((tid, image.pixels, crowd, expert))
        if not loaded:
            continue
        preds = detector.predict(
            [px for _, px, _, _ in loaded], conf=service.settings.predict_conf, batch=len(loaded)
        )
        for (tid, _, crowd, expert), raw in zip(loaded, preds, strict=True):
            pred = label_map.to_labels(raw)
            score = score_image(crowd.detections, pred, config=service.settings.lsm)
            yield TaskView(tid, crowd, pred, score, expert)


def _flagged(score: ImageScore) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the calibrated findings (as ``label_findings`` orders them) and whether each is acted on."""
    f = score.instances
    rows = np.flatnonzero(np.isin(f.noise_type.astype(str), CALIBRATED_TYPES) & (f.parent < 0))
    return rows, f.action.astype(str)[rows] != Action.KEEP.value


def _pr(flag: np.ndarray, target: np.ndarray) -> tuple[float | None, float | None]:
    n_flag, n_true = int(flag.sum()), int(target.sum())
    hits = int((flag & target).sum())
    return (hits / n_flag if n_flag else None, hits / n_true if n_true else None)


def type_table(
    rules: Mapping[str, Mapping[str, Any]],
    stats: Mapping[str, Mapping[str, np.ndarray]],
    *,
    weight_prior: float = CalibrationConfig.weight_prior,
) -> list[dict[str, Any]]:
    """Per calibrated noise type: examples, true errors, fitted (why not), precision/recall of the
    findings acted on (auto-fix or review) before (LSM grades) and after calibration, and the type's share of
    true errors (``Calibration.type_weight``: the weight of its least severe findings in the task's
    discrepancy; a finding weighs the share among the type's examples at least as severe).

    Args:
        rules: ``Calibration.to_dict()["rules"]`` (missing types: not fitted, no examples).
        stats: per type ``target``, ``before``, ``after`` bool arrays over its examples.
        weight_prior: the calibration's ``weight_prior``.
    """
    out = []
    for t in CALIBRATED_TYPES:
        rule = rules.get(t) or {}
        s = stats.get(t) or {}
        target = np.asarray(s.get("target", np.zeros(0, bool)), bool)
        p0, r0 = _pr(np.asarray(s.get("before", np.zeros(0, bool)), bool), target)
        p1, r1 = _pr(np.asarray(s.get("after", np.zeros(0, bool)), bool), target)
        out.append(
            {
                "noise_type": t,
                "examples": int(target.size),
                "errors": int(target.sum()),
                "fitted": bool(rule.get("fitted", False)),
                "reason": str(rule.get("reason", "no examples")),
                "precision_before": p0,
                "recall_before": r0,
                "precision": p1,
                "recall": r1,
                "weight": confirmed_share(int(target.sum()), int(target.size), weight_prior),
            }
        )
    return out


@dataclass(frozen=True)
class ProjectCalibration:
    """The calibration of one version on one project, with its report.

    Attributes:
        version: the model version calibrated.
        project: the Label Studio project (None for a tasks file).
        calibration: the fitted rules (None when there were no usable tasks).
        n_tasks: tasks the crowd labelled (boxes or none) with an expert annotation, used as examples.
        n_excluded: expert tasks left out because every version up to this one trained on them.
        types: ``type_table`` rows (precision/recall of the examples, in-sample after calibration).
        message: a sentence for a person (what was fitted, or why nothing was).
        sources: version -> tasks whose findings it gave (the newest version not trained on each task).
        skipped: expert tasks left out because they could not be read (image missing or unreachable,
            malformed crowd labels or expert regions): task id -> why.
    """

    version: str
    project: int | None
    calibration: Calibration | None
    n_tasks: int
    n_excluded: int
    types: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    sources: dict[str, int] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the stored ``calibration.json`` and the ``/calibrate`` answer)."""
        return {
            "version": self.version,
            "project": self.project,
            "n_tasks": self.n_tasks,
            "n_excluded": self.n_excluded,
            "sources": self.sources,
            "skipped": {str(tid): why for tid, why in self.skipped.items()},
            "fitted_types": [] if self.calibration is None else self.calibration.fitted_types,
            "types": self.types,
            "message": self.message,
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
        }


def example_versions(
    versions: Sequence[ModelVersion], target: ModelVersion, task_ids: Sequence[int]
) -> dict[int, str]:
    """Per task, the newest version up to ``target`` that did not train on it (tasks with none are absent).

    A version is usually trained on every expert task there is, so its own findings on them are too good to
    learn from; the findings of the version before it on the tasks the experts added since are what the
    serving model's findings on unseen tasks look like.
    """
    candidates = sorted(
        (v for v in versions if (v.number, v.version) <= (target.number, target.version)),
        key=lambda v: (v.number, v.version),
        reverse=True,
    )
    excluded = {v.version: trained_on(v) for v in candidates}
    out = {}
    for tid in task_ids:
        for v in candidates:
            if tid not in excluded[v.version]:
                out[tid] = v.version
                break
    return out


def calibrate_project(
    service: ModelService,
    tasks: Sequence[Mapping[str, Any]],
    schema: LabelSchema,
    *,
    version: str | None = None,
    project: int | None = None,
    save: bool = True,
) -> ProjectCalibration:
    """Fit ``version``'s calibration (default: the serving one) on the project's expert tasks and store it.

    Examples come from tasks the crowd labelled and an expert annotated (``settings.expert``); a task the
    crowd labelled without drawing a box counts (its findings are the model's boxes: missed objects, or
    not), one nobody of the crowd labelled does not (``CrowdLabels.labelled``). Each is scored
    by the newest version up to ``version`` that did not train on it (:func:`example_versions`). With none,
    nothing is fitted; the message says why. A stored calibration is then removed (the LSM's grades apply
    again) when the tasks say there is nothing to learn from (every expert task trained on by every version,
    or none labelled by the crowd), and kept when bad input may be why: expert tasks that could not be read
    (an unreachable image: ``skipped``), or no expert task at all (an empty or wrong project).

    Raises:
        NoModelError: nothing published.
        KeyError: ``version`` is not a published version.
    """
    if version is not None:
        service.registry.get(version)  # an unknown name is an error here, not "the latest"
    _, served = service.current(version)
    mv = service.registry.get(served)
    policy = service.settings.expert
    expert_tasks = [t for t in tasks if expert_annotation(t, policy) is not None]
    by_id = {int(t.get("id") or 0): t for t in expert_tasks}
    scorer = example_versions(service.registry.versions(), mv, list(by_id))
    n_excluded = len(by_id) - len(scorer)
    parts: list[LabelledFindings] = []
    views: list[TaskView] = []
    used: dict[str, int] = {}
    skipped: dict[int, str] = {}
    for source in sorted(set(scorer.values())):
        chosen = [by_id[tid] for tid, v in scorer.items() if v == source]
        for view in task_views(service, chosen, schema, version=source, skipped=skipped):
            if not view.crowd.labelled or view.expert is None:
                continue  # the crowd never labelled this task: nothing of theirs to grade
            views.append(view)
            used[source] = used.get(source, 0) + 1
            parts.append(
                label_findings(
                    view.crowd.detections,
                    view.pred,
                    view.score,
                    view.expert,
                    agreement=view.crowd.agreement,
                    class_aware=service.settings.lsm.class_aware,
                )
            )
    skipped = dict(sorted(skipped.items()))
    if not views:
        why = _nothing_fitted(mv, served, len(expert_tasks), n_excluded, skipped, policy)
        result = ProjectCalibration(
            served, project, None, 0, n_excluded, type_table({}, {}), why, skipped=skipped
        )
        (logger.warning if skipped else logger.info)("calibration of %s: %s", served, why)
        return result
    examples = LabelledFindings.concat(parts)
    calibration = fit_calibration(examples)
    stats: dict[str, dict[str, list[np.ndarray]]] = {}
    for view, part in zip(views, parts, strict=True):
        crowd, pred = view.crowd.detections, view.pred
        rows, before = _flagged(view.score)
        after_score = regrade(crowd, pred, view.score, calibration, agreement=view.crowd.agreement)
        _, after = _flagged(after_score)
        named = view.score.instances.noise_type.astype(str)[rows]
        for t in CALIBRATED_TYPES:
            sel = named == t
            entry = stats.setdefault(t, {"target": [], "before": [], "after": []})
            entry["target"].append(part.target[sel])
            entry["before"].append(before[sel])
            entry["after"].append(after[sel])
    merged = {t: {k: np.concatenate(v) for k, v in s.items()} for t, s in stats.items()}
    table = type_table(calibration.to_dict()["rules"], merged, weight_prior=calibration.config.weight_prior)
    fitted = calibration.fitted_types
    sources = ", ".join(f"{n} by {v}" for v, n in sorted(used.items()))
    unread = f", {len(skipped)} left out: could not be read ({skipped_summary(skipped)})" if skipped else ""
    message = (
        f"{served}: {len(views)} expert tasks ({sources}; {n_excluded} left out: trained on{unread}), "
        f"{len(examples)} findings; fitted {', '.join(fitted) if fitted else 'no type'}"
    )
    result = ProjectCalibration(
        served,
        project,
        calibration,
        len(views),
        n_excluded,
        table,
        message,
        dict(sorted(used.items())),
        skipped=skipped,
    )
    if save:
        save_calibration(mv, result)
    logger.info("calibration %s", message)
    return result


def skipped_summary(skipped: Mapping[Any, str], *, limit: int = 3) -> str:
    """``"task 3: <why>; task 7: <why>"``, the first ``limit`` of them, then how many more (the log names
    every one)."""
    named = [f"task {tid}: {why}" for tid, why in list(skipped.items())[:limit]]
    more = len(skipped) - len(named)
    return "; ".join(named) + (f"; and {more} more (see the log)" if more > 0 else "")


def _nothing_fitted(
    mv: ModelVersion,
    served: str,
    n_expert: int,
    n_excluded: int,
    skipped: Mapping[int, str],
    policy: ExpertPolicy,
) -> str:
    """Why no task gave examples (a sentence); removes the stored calibration or keeps it (see
    ``calibrate_project``).

    The stored calibration is removed only when the tasks themselves leave nothing to learn from; when some
    could not be read (they may be readable again soon) or there is no expert task at all (an empty or wrong
    project), it stays, so that bad input never discards a calibration fitted on good input.
    """
    path = calibration_path(mv)
    if skipped or n_expert == 0:
        stored = (
            f"the calibration of {served} stored before is kept"
            if path.is_file()
            else "the LSM's grades apply"
        )
        if n_expert == 0:
            cause = f"no expert-annotated task in the project (EXPERT_MODE={policy.describe()})"
        else:
            cause = (
                f"{len(skipped)} of the {n_expert} expert tasks could not be read "
                f"({skipped_summary(skipped)}), {n_excluded} trained on by every version, and no other "
                "has both crowd labels and an expert annotation"
            )
        return f"nothing refitted: {cause}; {stored}"
    path.unlink(missing_ok=True)
    why = (
        f"no task has both crowd labels (or an empty crowd annotation) and an expert annotation that "
        f"{served} or an earlier version "
        f"did not train on ({n_expert} expert tasks, {n_excluded} of them trained on by every "
        "version); the LSM's grades apply"
    )
    return why
