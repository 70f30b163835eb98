"""Label Studio ML-backend JSON: request models and pure builders of the response (no I/O, no model).

The proposed cleaned labels are ``selection.correction.plan_corrections`` (the plan ``correct_labels``
applies), rendered as regions; this module decides only how each planned edit looks. How they are shown to
an annotator (one prediction per task, one region per box):

* ``clean`` crowd box the model confirms -> the crowd box, meta ``"clean · clean · keep"``.
* ``localization`` with an auto-fix -> the model's (fixed) box, meta ``"localization · minor · auto_fix"``.
* ``box_in_box`` with an auto-fix -> one region per confident part inside the enclosing crowd box that no
  crowd box covers yet (ids ``model<k>-bib-part1``, ``-part2``...), and the enclosing crowd box marked for
  deletion like a background box (below).
* ``missed`` with an auto-fix -> the model's box, added.
* ``background`` with an auto-fix -> the crowd box is **shown, marked for deletion**: its id starts with
  ``drop-``, its meta text reads ``"background · major · drop — delete this box"`` and its score is the
  model's (low) confidence that anything is there, so it sorts last in the region list. When the labelling
  config has a label named ``background``, ``drop``, ``delete`` or ``noise`` (any case), the box
  carries that label instead, which is unambiguous; training ignores labels that are not model classes.
* any instance graded ``uncertain`` (action ``review``) -> the crowd box unchanged (or, for an uncertain
  missed box, the model's box), meta ``"<type> · uncertain · review"``: the expert decides. The candidate
  parts of an uncertain box-in-box are not shown (they would duplicate the box under review).
* model boxes (missed, box-in-box parts) below ``SCORE_THRESHOLD`` are not shown; crowd boxes always are.

Every region carries ``score`` (model confidence in [0, 1]) and ``meta: {"text": ["<type> · <grade> ·
<action>"]}`` (followed by `` · 2/3 annotators`` on a crowd box of a task that several crowd annotators
labelled, see ``backend.crowd``); the prediction's ``score`` is the task's ``priority`` (the LSM's discrepancy
until the version is calibrated, then ``selection.calibration.image_priority`` by ``DEFAULT_PRIORITY``, the
order the benchmark's LSM loop buys in) so the Data Manager's "Prediction score" column sorts the tasks an
expert should re-annotate first on top.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from backend.labelconfig import DROP_LABEL_NAMES, LabelSchema
from formats.labelstudio import rectangle_regions
from selection.correction import Edit, plan_corrections
from selection.detections import Detections
from selection.lsm import ImageScore

__all__ = [
    "DROP_LABEL_NAMES",
    "PredictRequest",
    "RegionProposal",
    "SetupRequest",
    "TaskFields",
    "WebhookRequest",
    "build_prediction",
    "build_regions",
    "noise_types_text",
    "proposals_from_score",
    "task_image_url",
]


class PredictRequest(BaseModel):
    """``POST /predict`` body sent by Label Studio 1.23."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    tasks: list[dict[str, Any]] = Field(min_length=1)
    model_version: str | None = None
    project: str | int | None = None
    label_config: str | None = None
    params: dict[str, Any] | None = None


class SetupRequest(BaseModel):
    """``POST /setup`` body (``schema`` is the labelling config)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    project: str | int | None = None
    label_schema: str | None = Field(default=None, alias="schema")
    hostname: str | None = None
    extra_params: Any = None


class WebhookRequest(BaseModel):
    """``POST /webhook`` body; ``START_TRAINING`` carries no ``annotation``."""

    model_config = ConfigDict(extra="allow")

    action: str = Field(min_length=1)
    project: dict[str, Any] | int | str | None = None
    annotation: dict[str, Any] | None = None
    task: dict[str, Any] | None = None

    @property
    def project_id(self) -> int | None:
        """The project's numeric id (``project.id``, an int, or the ``"<id>.<ts>"`` form)."""
        raw: Any = self.project.get("id") if isinstance(self.project, dict) else self.project
        if raw is None:
            return None
        try:
            return int(str(raw).split(".")[0])
        except ValueError:
            return None


@dataclass(frozen=True)
class RegionProposal:
    """One box of the proposed cleaned labels of a task, with why it is there.

    Attributes:
        xyxy: float (4,) box in pixels.
        class_id: label index into the labelling config's labels.
        score: model confidence in [0, 1].
        noise_type: ``clean`` | ``background`` | ``missed`` | ``localization`` | ``box_in_box``.
        grade: ``clean`` | ``minor`` | ``major`` | ``uncertain``.
        action: ``keep`` | ``auto_fix`` | ``review``.
        source: ``crowd`` or ``model`` (where the box comes from).
        index: index of the instance in its source.
        drop: the box is proposed for deletion (a background crowd box).
        part: 1-based part number of a split box-in-box box, 0 otherwise.
        votes: crowd annotators who drew this crowd box (0: unknown or a model box).
        annotators: crowd annotators of the task (0: unknown).
    """

    xyxy: tuple[float, float, float, float]
    class_id: int
    score: float
    noise_type: str
    grade: str
    action: str
    source: str
    index: int
    drop: bool = False
    part: int = 0
    votes: int = 0
    annotators: int = 0

    @property
    def region_id(self) -> str:
        """Readable, unique within a task: ``crowd3-localization``, ``drop-crowd2``, ``crowd1-bib-part2``."""
        if self.drop:
            return f"drop-{self.source}{self.index}"
        kind = "bib" if self.noise_type == "box_in_box" else self.noise_type
        suffix = f"-part{self.part}" if self.part else ""
        return f"{self.source}{self.index}-{kind}{suffix}"

    @property
    def meta_text(self) -> str:
        action = "drop — delete this box" if self.drop else self.action
        text = f"{self.noise_type} · {self.grade} · {action}"
        if self.votes and self.annotators > 1:
            text += f" · {self.votes}/{self.annotators} annotators"
        return text


@dataclass(frozen=True)
class TaskFields:
    """The task data fields the backend writes back to Label Studio.

    ``discrepancy`` says how noisy the task's crowd labels look (the LSM's discrepancy, weighted by noise type
    and severity once the version is calibrated); ``priority`` is the order experts should re-annotate in
    (the discrepancy until the version is calibrated, then ``image_priority``, which counts the likely missed
    objects again: only a re-annotation fixes them).
    """

    discrepancy: float
    priority: float
    noise_grade: str
    noise_types: str
    model_version: str

    def as_data(self) -> dict[str, Any]:
        return {
            "discrepancy": round(float(self.discrepancy), 4),
            "priority": round(float(self.priority), 4),
            "noise_grade": self.noise_grade,
            "noise_types": self.noise_types,
            "model_version": self.model_version,
        }


def noise_types_text(noise_types: Sequence[str]) -> str:
    """Counts of the non-clean noise types, e.g. ``["missed", "background", "missed"]`` ->
    ``"background:1 missed:2"``.

    Types are listed alphabetically; ``"clean"`` when there is no noisy instance.
    """
    counts = Counter(t for t in noise_types if t != "clean")
    if not counts:
        return "clean"
    return " ".join(f"{t}:{counts[t]}" for t in sorted(counts))


def proposals_from_score(
    crowd: Detections,
    pred: Detections,
    score: ImageScore,
    *,
    score_threshold: float = 0.0,
    votes: np.ndarray | None = None,
    annotators: int = 0,
) -> list[RegionProposal]:
    """The LSM's findings of one image -> the proposed cleaned labels, as shown in Label Studio.

    Renders ``plan_corrections(crowd, pred, score)`` (no consensus): every crowd box (moved ones where the
    plan moves them, dropped and split ones marked ``drop``), then the predictions the plan adds or sends
    for review, numbering the parts of each split box.

    Args:
        crowd: the M crowd boxes (pixels; class ids are label indices).
        pred: the model's predictions given to the LSM (pixels, scored; class ids already label indices).
        score: ``selection.lsm.score_image(crowd, pred)``.
        score_threshold: model boxes below this confidence are not proposed.
        votes: optional int (M,) crowd annotators agreeing on each crowd box (``backend.crowd``), shown in
            the crowd regions' meta text with ``annotators`` when there are several.
        annotators: crowd annotators of the image.

    Returns:
        Crowd-sourced proposals in crowd order, then model-sourced ones (see the module docstring).

    Raises:
        ValueError: if ``score`` was not computed from ``crowd`` and ``pred``.
    """
    if votes is not None and np.shape(votes) != (len(crowd),):
        raise ValueError(f"votes: expected shape ({len(crowd)},), got {np.shape(votes)}")
    plan = plan_corrections(crowd, pred, score)
    inst = plan.findings
    out: list[RegionProposal] = []
    part_counter: Counter[int] = Counter()
    for i in range(len(plan)):
        edit = str(plan.edit[i])
        if edit == Edit.NONE.value:
            continue
        from_crowd = int(inst.source[i]) == 0
        idx = int(inst.index[i])
        noise_type = str(inst.noise_type[i])
        if from_crowd:
            # Background: the finding's confidence is that *nothing* is there; show the model's support.
            confidence = float(inst.confidence[i])
            shown = 1.0 - confidence if noise_type == "background" else confidence
        else:
            shown = float(pred.score[idx]) if pred.score is not None else 1.0
            if shown < score_threshold:
                continue
        part = 0
        if int(inst.parent[i]) >= 0:
            part_counter[int(inst.parent[i])] += 1
            part = part_counter[int(inst.parent[i])]
        out.append(
            RegionProposal(
                xyxy=tuple(float(v) for v in plan.xyxy[i]),  # type: ignore[arg-type]
                class_id=int(plan.class_id[i]),
                score=shown,
                noise_type=noise_type,
                grade=str(inst.grade[i]),
                action=str(inst.action[i]),
                source="crowd" if from_crowd else "model",
                index=idx,
                drop=edit in (Edit.DROP.value, Edit.SPLIT.value),
                part=part,
                votes=int(votes[idx]) if votes is not None and from_crowd else 0,
                annotators=annotators if votes is not None and from_crowd else 0,
            )
        )
    return out


def _drop_label_index(schema: LabelSchema) -> int | None:
    for i, name in enumerate(schema.labels):
        if name.lower() in DROP_LABEL_NAMES:
            return i
    return None


def build_regions(
    proposals: Sequence[RegionProposal], *, schema: LabelSchema, width: int, height: int
) -> list[dict[str, Any]]:
    """Proposals of one task -> Label Studio ``rectanglelabels`` regions.

    Args:
        proposals: the task's proposed cleaned labels (see the module docstring for how each kind shows).
        schema: the labelling config's control/object names and labels.
        width, height: the image size in pixels.

    Raises:
        ValueError: when a proposal's ``class_id`` is not a label index of ``schema``.
    """
    if not proposals:
        return []
    drop_label = _drop_label_index(schema)
    names = []
    for p in proposals:
        label_index = drop_label if (p.drop and drop_label is not None) else p.class_id
        if not 0 <= label_index < len(schema.labels):
            raise ValueError(f"class_id: {p.class_id} is not a label index of {list(schema.labels)}")
        names.append(schema.labels[label_index])
    return rectangle_regions(
        np.array([p.xyxy for p in proposals], np.float64).reshape(-1, 4),
        names,
        width=width,
        height=height,
        from_name=schema.from_name,
        to_name=schema.to_name,
        ids=[p.region_id for p in proposals],
        scores=[p.score for p in proposals],
        meta_texts=[p.meta_text for p in proposals],
    )


def build_prediction(regions: list[dict[str, Any]], *, score: float, model_version: str) -> dict[str, Any]:
    """One entry of ``/predict``'s ``results``: ``{"result", "score", "model_version"}``."""
    return {"result": regions, "score": round(float(score), 4), "model_version": model_version}


def task_image_url(task: Mapping[str, Any], schema: LabelSchema) -> str:
    """The image reference of a task (``task.data[<image key>]``).

    Raises:
        ValueError: naming the task when the field is missing or not a string.
    """
    data = task.get("data")
    if not isinstance(data, Mapping):
        raise ValueError(f"task {task.get('id', '?')}: no 'data' object")
    url = data.get(schema.image_key)
    if not isinstance(url, str) or not url:
        raise ValueError(
            f"task {task.get('id', '?')}: data.{schema.image_key} is missing or not a URL string"
        )
    return url
