"""The project report a manager opens: ``GET /report?project=N`` (JSON) and ``&format=html``.

Contents (:func:`build_report`):

* ``tasks_by_grade``: non-expert tasks by their last written-back ``noise_grade`` (``unscored`` when none);
* ``expert_tasks``: expert-annotated tasks (``done``) of all tasks (``total``);
* ``errors_remaining``: estimated label errors left in the non-expert tasks: the serving version scores them,
  and each finding counts with its calibrated error probability where its type has a fitted rule, else with
  its LSM severity (``basis`` says which types used which);
* ``versions``: each model version's AP50 / AP50-95 (``metrics.ap.evaluate_ap``, expert boxes as truth) on
  the expert-annotated tasks it did not train on (``null`` with a reason when there are none);
* ``calibration``: the serving version's stored per-type table (``backend.calibration``), or null.

The HTML page (:func:`render_html`) is self-contained: the plots are PNGs (matplotlib, Agg) embedded as data
URIs. Building the report predicts every task with the serving version and every expert task with each
version: seconds for a small project, minutes for thousands of tasks on a CPU.

Example:
    >>> html = render_html({"project": 1, "tasks_by_grade": {"clean": 3}, "expert_tasks": {"done": 1,
    ...     "total": 4}, "errors_remaining": None, "versions": [], "calibration": None})
    >>> html.startswith("<!doctype html>") and "data:image/png;base64," in html
    True
"""

from __future__ import annotations

import base64
import html as html_lib
import io
import json
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from backend.calibration import calibration_path, task_views, trained_on
from backend.labelconfig import LabelSchema
from backend.roles import expert_annotation
from selection.calibration import error_probability, fitted_label

if TYPE_CHECKING:
    from backend.service import ModelService

__all__ = ["GRADES", "build_report", "errors_remaining", "render_html", "version_quality"]

GRADES: tuple[str, ...] = ("clean", "minor", "major", "uncertain", "unscored")


def _expert_ids(tasks: Sequence[Mapping[str, Any]], service: ModelService) -> set[int]:
    return {int(t.get("id") or 0) for t in tasks if expert_annotation(t, service.settings.expert) is not None}


def errors_remaining(
    service: ModelService, tasks: Sequence[Mapping[str, Any]], schema: LabelSchema
) -> dict[str, Any]:
    """Expected label errors in ``tasks`` (non-expert ones) under the serving version.

    Returns:
        ``{"expected", "tasks", "version", "basis": {type: "calibrated"|"severity"}}``.
    """
    _, version = service.current()
    calibration = service.calibration(version)
    fitted = set(calibration.fitted_types) if calibration is not None else set()
    total, n = 0.0, 0
    basis: dict[str, str] = {}
    for view in task_views(service, tasks, schema, version=version):
        n += 1
        f = view.score.instances
        primary = (f.parent < 0) & (f.noise_type.astype(str) != "clean")
        expected = f.severity.astype(np.float64).copy()
        if calibration is not None and fitted:
            prob = error_probability(
                view.crowd.detections, view.pred, view.score, calibration, agreement=view.crowd.agreement
            )
            expected = np.where(np.isnan(prob), expected, prob)
        total += float(expected[primary].sum())
        for t in np.unique(f.noise_type.astype(str)[primary]):
            basis[str(t)] = "calibrated" if t in fitted else "severity"
    return {"expected": round(total, 2), "tasks": n, "version": version, "basis": dict(sorted(basis.items()))}


def version_quality(
    service: ModelService, tasks: Sequence[Mapping[str, Any]], schema: LabelSchema
) -> list[dict[str, Any]]:
    """Per published version: AP on the expert-annotated ``tasks`` it did not train on."""
    from metrics.ap import evaluate_ap

    out = []
    for mv in service.registry.versions():
        excluded = trained_on(mv)
        held = [t for t in tasks if int(t.get("id") or 0) not in excluded]
        row: dict[str, Any] = {
            "version": mv.version,
            "trained_on": len(excluded),
            "tasks": 0,
            "ap50": None,
            "ap50_95": None,
            "calibrated": calibration_path(mv).is_file(),
        }
        if not held:
            row["reason"] = "every expert task was in its training set"
            out.append(row)
            continue
        gt, pred = [], []
        for view in task_views(service, held, schema, version=mv.version):
            if view.expert is not None:
                gt.append(view.expert)
                pred.append(view.pred)
        row["tasks"] = len(gt)
        result = evaluate_ap(gt, pred, num_classes=max(1, len(schema.labels))) if gt else None
        if result is None or not np.isfinite(result.ap50):
            row["reason"] = "no expert boxes on its held-out tasks"
        else:
            row["ap50"], row["ap50_95"] = round(float(result.ap50), 4), round(float(result.ap50_95), 4)
        out.append(row)
    return out


def build_report(
    service: ModelService,
    tasks: Sequence[Mapping[str, Any]],
    schema: LabelSchema,
    *,
    project: int | None = None,
) -> dict[str, Any]:
    """The project report (see the module docstring); JSON-ready."""
    start = time.monotonic()
    expert = _expert_ids(tasks, service)
    others = [t for t in tasks if int(t.get("id") or 0) not in expert]
    by_grade = dict.fromkeys(GRADES, 0)
    for task in others:
        grade = str((task.get("data") or {}).get("noise_grade") or "unscored")
        by_grade[grade if grade in by_grade else "unscored"] += 1
    expert_tasks = [t for t in tasks if int(t.get("id") or 0) in expert]
    serving = service.latest_version()
    calibration = None
    if serving is not None:
        path = calibration_path(service.registry.get(serving))
        if path.is_file():
            stored = json.loads(path.read_text(encoding="utf-8"))
            calibration = {k: stored.get(k) for k in ("version", "n_tasks", "n_excluded", "types", "message")}
    return {
        "project": project,
        "serving_version": serving,
        "tasks": len(tasks),
        "tasks_by_grade": by_grade,
        "expert_tasks": {"done": len(expert), "total": len(tasks)},
        "errors_remaining": errors_remaining(service, others, schema) if serving is not None else None,
        "versions": version_quality(service, expert_tasks, schema) if serving is not None else [],
        "calibration": calibration,
        "seconds": round(time.monotonic() - start, 1),
    }


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plots(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    grades = report.get("tasks_by_grade") or {}
    fig, ax = plt.subplots(figsize=(5, 3))
    names = list(grades)
    colors = {"clean": "#4c9a2a", "minor": "#e0b000", "major": "#c0392b", "uncertain": "#7f8c8d"}
    ax.bar(names, [grades[n] for n in names], color=[colors.get(n, "#bbbbbb") for n in names])
    ax.set_ylabel("tasks")
    ax.set_title("Non-expert tasks by noise grade")
    plots.append(("Tasks by grade", _png(fig)))
    versions = [v for v in report.get("versions") or [] if v.get("ap50") is not None]
    if versions:
        fig, ax = plt.subplots(figsize=(5, 3))
        labels = [v["version"].split("-")[0] for v in versions]
        ax.plot(labels, [v["ap50"] for v in versions], marker="o", label="AP50")
        ax.plot(labels, [v["ap50_95"] for v in versions], marker="s", label="AP50-95")
        ax.set_ylim(0, 1)
        ax.set_title("Model versions on expert tasks they did not train on")
        ax.legend()
        plots.append(("Model quality", _png(fig)))
    cal = report.get("calibration") or {}
    rows = [r for r in cal.get("types") or [] if r.get("examples")]
    if rows:
        fig, ax = plt.subplots(figsize=(5, 3))
        x = np.arange(len(rows))
        ax.bar(x - 0.27, [r["precision_before"] or 0 for r in rows], 0.27, label="precision (LSM)")
        ax.bar(x, [r["precision"] or 0 for r in rows], 0.27, label="precision (calibrated)")
        ax.bar(x + 0.27, [r["recall"] or 0 for r in rows], 0.27, label="recall (calibrated)")
        ax.set_xticks(x, [r["noise_type"] for r in rows])
        ax.set_ylim(0, 1.3)
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1])
        ax.set_title("Findings acted on, per noise type")
        ax.legend(loc="upper left", ncol=3, fontsize="small")
        plots.append(("Calibration", _png(fig)))
    return plots


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}"
    return html_lib.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html_lib.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(report: Mapping[str, Any]) -> str:
    """A self-contained HTML page of ``report`` (plots embedded as PNG data URIs)."""
    expert = report.get("expert_tasks") or {}
    errors = report.get("errors_remaining")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Project {_fmt(report.get('project'))}: label cleaning report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;"
        "margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
        "th{background:#f3f3f3}img{margin:.5em 1em .5em 0}.k{font-size:1.4em;font-weight:bold}</style>",
        "</head><body>",
        f"<h1>Project {_fmt(report.get('project'))}: label cleaning report</h1>",
        f"<p>Serving version: <b>{_fmt(report.get('serving_version'))}</b></p>",
        f"<p>Expert tasks done: <span class='k'>{_fmt(expert.get('done'))}</span> of "
        f"{_fmt(expert.get('total'))}</p>",
    ]
    if errors:
        basis = ", ".join(f"{t}: {b}" for t, b in (errors.get("basis") or {}).items()) or "no findings"
        parts.append(
            f"<p>Estimated label errors remaining: <span class='k'>{_fmt(errors.get('expected'))}</span> in "
            f"{_fmt(errors.get('tasks'))} non-expert tasks (per type from: {html_lib.escape(basis)})</p>"
        )
    parts += [f"<img alt='{html_lib.escape(t)}' src='{uri}'>" for t, uri in _plots(report)]
    grades = report.get("tasks_by_grade") or {}
    parts.append("<h2>Tasks by grade</h2>" + _table(list(grades), [list(grades.values())]))
    versions = report.get("versions") or []
    parts.append(
        "<h2>Model versions</h2>"
        + _table(
            ["version", "trained on", "held-out expert tasks", "AP50", "AP50-95", "calibrated", "note"],
            [
                [
                    v["version"],
                    v["trained_on"],
                    v["tasks"],
                    v["ap50"],
                    v["ap50_95"],
                    "yes" if v.get("calibrated") else "no",
                    v.get("reason", ""),
                ]
                for v in versions
            ],
        )
    )
    cal = report.get("calibration")
    if cal:
        parts.append(f"<h2>Calibration</h2><p>{_fmt(cal.get('message'))}</p>")
        parts.append(
            _table(
                [
                    "noise type",
                    "examples",
                    "errors",
                    "precision",
                    "recall",
                    "LSM precision",
                    "LSM recall",
                    "weight in the discrepancy",
                    "fitted",
                ],
                [
                    [
                        r["noise_type"],
                        r["examples"],
                        r["errors"],
                        r["precision"],
                        r["recall"],
                        r["precision_before"],
                        r["recall_before"],
                        r.get("weight"),
                        fitted_label(r["fitted"], r["reason"]),
                    ]
                    for r in cal.get("types") or []
                ],
            )
        )
    else:
        parts.append("<h2>Calibration</h2><p>None yet: the serving version's grades are the LSM's.</p>")
    parts.append(f"<p><small>Built in {_fmt(report.get('seconds'))} s.</small></p></body></html>")
    return "".join(parts)
