"""Label Studio project helpers through the SDK: find or create a project, Local Files storage, task import.

Used by ``python -m backend.ingest`` and (re-exported by ``demo.labelstudio``) by the demo and the e2e tests.
Every function takes a ``label_studio_sdk.LabelStudio`` client (see :func:`backend.lsclient.make_sdk_client`).

Label Studio 1.23 facts these rely on:

* a Local Files storage path must exist on the Label Studio host and lie strictly *under*
  ``LOCAL_FILES_DOCUMENT_ROOT`` (equal is refused), and ``LOCAL_FILES_SERVING_ENABLED`` must be true; the
  storage authorises serving ``/data/local-files/?d=<path relative to the root>`` for files under it;
* task import does not check region labels against the labelling config, so the caller must;
* annotations embedded in an import are saved with ``ground_truth`` true unless it says otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "ProjectTask",
    "add_local_storage",
    "api_error_message",
    "create_project",
    "find_local_storage",
    "find_project",
    "import_tasks",
    "iter_project_tasks",
    "label_config_for",
]


def api_error_message(exc: Exception) -> str:
    """A one-line description of an SDK error: HTTP status and Label Studio's validation messages.

    The SDK's ``ApiError`` carries ``status_code`` and the JSON ``body``; Label Studio puts the useful text
    in ``body["validation_errors"]`` or ``body["detail"]``. Other exceptions give their type and text.
    """
    status = getattr(exc, "status_code", None)
    body = getattr(exc, "body", None)
    if status is None:
        return f"{type(exc).__name__}: {exc}"
    text = ""
    if isinstance(body, Mapping):
        errors = body.get("validation_errors")
        if isinstance(errors, Mapping):
            parts = []
            for field, messages in errors.items():
                joined = "; ".join(str(m) for m in messages) if isinstance(messages, list) else str(messages)
                parts.append(joined if field == "non_field_errors" else f"{field}: {joined}")
            text = " | ".join(parts)
        text = text or str(body.get("detail") or "")
    elif body:
        text = str(body)[:500]
    return f"HTTP {status}" + (f": {text}" if text else "")


def find_project(client: Any, title: str) -> int | None:
    """Id of the first project named ``title``, or None."""
    for project in client.projects.list():
        if project.title == title:
            return int(project.id)
    return None


def create_project(client: Any, title: str, label_config: str, *, description: str = "") -> int:
    """Create a project; returns its id. ``title`` needs 3+ characters (Label Studio's rule)."""
    if len(title) < 3:
        raise ValueError(f"title: Label Studio needs at least 3 characters, got {title!r}")
    project = client.projects.create(title=title, label_config=label_config, description=description)
    return int(project.id)


def find_local_storage(client: Any, project: int, path: Path) -> int | None:
    """Id of the project's Local Files storage on ``path`` or on a folder above it, or None."""
    path = Path(path)
    for storage in client.import_storage.local.list(project=project):
        existing = Path(storage.path or "")
        if storage.path and (existing == path or existing in path.parents):
            return int(storage.id)
    return None


def add_local_storage(client: Any, project: int, path: Path, *, title: str = "images") -> int:
    """Attach a Local Files import storage (no sync: tasks are imported with their URLs already).

    ``path`` must be a folder strictly under ``LOCAL_FILES_DOCUMENT_ROOT``; the storage only authorises
    serving ``/data/local-files/?d=...`` URLs under it, which works with ``use_blob_urls=False``. A storage
    of the project on ``path`` or on a folder above it is reused (returns its id).
    """
    found = find_local_storage(client, project, path)
    if found is not None:
        return found
    storage = client.import_storage.local.create(
        project=project, path=str(path), use_blob_urls=False, recursive_scan=True, title=title
    )
    return int(storage.id)


def import_tasks(client: Any, project: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
    """Import tasks (``{"data": ..., "predictions": [...], "annotations": [...]}``); returns the new task ids.

    One request is one database transaction in Label Studio: either every task of it is created or none.
    """
    if not tasks:
        raise ValueError("tasks: expected at least one task")
    resp = client.projects.import_tasks(project, request=list(tasks), return_task_ids=True)
    return [int(i) for i in (resp.task_ids or [])]


@dataclass(frozen=True)
class ProjectTask:
    """What the importer needs to know of a task already in a project.

    Attributes:
        id: the task id.
        data: the task's data dict.
        has_ground_truth: whether one of its annotations is marked ground truth.
    """

    id: int
    data: Mapping[str, Any]
    has_ground_truth: bool


def iter_project_tasks(client: Any, project: int, *, page_size: int = 500) -> Iterator[ProjectTask]:
    """Every task of a project with its data and whether it holds a ground-truth annotation."""
    for task in client.tasks.list(project=project, fields="all", page_size=page_size):
        annotations = getattr(task, "annotations", None) or []
        has_gt = any(
            bool(a.get("ground_truth") if isinstance(a, Mapping) else getattr(a, "ground_truth", False))
            for a in annotations
        )
        yield ProjectTask(id=int(task.id), data=dict(task.data or {}), has_ground_truth=has_gt)


def _xml_attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def label_config_for(labels: Sequence[str], *, from_name: str = "label", to_name: str = "image") -> str:
    """A labelling config with one ``<RectangleLabels>`` over ``<Image value="$image">`` listing ``labels``.

    Colours follow Label Studio's converter palette (label ``i`` gets colour ``i``), as its own importers do.

    Example:
        >>> print(label_config_for(["cat"]).splitlines()[3].strip())
        <Label value="cat" background="rgba(218, 1, 238, 1)"/>
    """
    from label_studio_sdk.converter.imports.colors import COLORS

    if not labels:
        raise ValueError("labels: expected at least one label name")
    lines = [
        "<View>",
        f'  <Image name="{_xml_attr(to_name)}" value="$image" zoom="true"/>',
        f'  <RectangleLabels name="{_xml_attr(from_name)}" toName="{_xml_attr(to_name)}">',
    ]
    for i, name in enumerate(labels):
        r, g, b = COLORS[i % len(COLORS)][:3]
        lines.append(f'    <Label value="{_xml_attr(name)}" background="rgba({r}, {g}, {b}, 1)"/>')
    lines += ["  </RectangleLabels>", "</View>", ""]
    return "\n".join(lines)
