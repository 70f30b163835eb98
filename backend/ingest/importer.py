"""Carry out an :class:`~backend.ingest.plan.ImportPlan` in Label Studio through the SDK.

Order of work, so that bad input never leaves a half-made project: the plan is fully checked before this
runs; the project's labelling config is checked against the dataset's labels before anything is written; a
project created here is deleted again if its Local Files storage is refused or does not serve the images
(a storage added here to an existing project likewise). Tasks are imported in batches
(one transaction each) keyed by ``data.image_id`` (and the image URL): a re-run skips tasks already in the
project, so an interrupted import is completed by running the same command again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from backend.ingest.plan import (
    ImportPlan,
    PlannedImage,
    build_task,
    expert_result,
    label_mapping,
    remap_classes,
)
from backend.ingest.sources import IngestError
from backend.labelconfig import LabelConfigError, parse_label_config
from backend.lsproject import (
    ProjectTask,
    add_local_storage,
    api_error_message,
    create_project,
    find_local_storage,
    find_project,
    import_tasks,
    iter_project_tasks,
    label_config_for,
)
from formats.labelstudio import CROWD_FIELD

logger = logging.getLogger(__name__)

__all__ = ["ImportReport", "LabelStudioError", "run_import"]


class LabelStudioError(RuntimeError):
    """Label Studio refused a request or could not be reached; the message says which and why."""


@dataclass(frozen=True)
class ImportReport:
    """What an import did (or, in a dry run, would do).

    Attributes:
        project: the project id (None in a dry run that would create the project).
        title: the project's title.
        created: whether the project is (or would be) created by this run.
        storage: the Local Files storage id (None in a dry run).
        new_tasks: tasks created (would be created).
        existing_tasks: images already in the project as a task: skipped.
        changed_tasks: of those, how many hold other crowd labels than the input (left as they are).
        new_annotations: expert annotations created with the new tasks.
        added_annotations: expert annotations added to tasks already in the project (they had none).
        kept_annotations: existing tasks with expert labels in the input that already have a ground-truth
            annotation: left as they are.
        dry_run: nothing was written.
    """

    project: int | None
    title: str
    created: bool
    storage: int | None
    new_tasks: int
    existing_tasks: int
    changed_tasks: int
    new_annotations: int
    added_annotations: int
    kept_annotations: int
    dry_run: bool


def _call(what: str, fn: Callable[[], Any]) -> Any:
    """Run one SDK call; any failure becomes a :class:`LabelStudioError` saying what was being done."""
    try:
        return fn()
    except (IngestError, LabelStudioError):
        raise
    except Exception as exc:  # the SDK raises ApiError, httpx errors, pydantic errors...
        raise LabelStudioError(f"{what}: {api_error_message(exc)}") from exc


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="task", disable=not enabled or total == 0)


def _find_project(
    client: Any, *, project: int | None, title: str | None
) -> tuple[int | None, str, str | None]:
    """(id, title, labelling config) of the target project; id and config are None when it is to be made."""
    if project is not None:
        if client is None:
            raise ValueError("client: required to look up project ids")
        try:
            info = client.projects.get(id=project)
        except Exception as exc:  # ApiError, connection errors
            if getattr(exc, "status_code", None) == 404:
                raise IngestError(f"--project {project}: no such project in Label Studio") from None
            raise LabelStudioError(f"project {project}: {api_error_message(exc)}") from exc
        return project, str(info.title or f"project {project}"), str(info.label_config or "")
    assert title is not None
    if len(title) < 3:
        raise IngestError(f"--title {title!r}: Label Studio needs at least 3 characters")
    if client is None:
        return None, title, None
    found = _call("list projects", lambda: find_project(client, title))
    if found is None:
        return None, title, None
    info = _call(f"project {found}", lambda: client.projects.get(id=found))
    return found, title, str(info.label_config or "")


def _storage(
    client: Any,
    project: int,
    plan: ImportPlan,
    *,
    created: bool,
    sample: str | None,
    image_check: Callable[[str], str | None] | None,
) -> int:
    """Add (or reuse) the Local Files storage and check that ``sample`` is served.

    On failure, what this run made goes again (the project if ``created``, else a storage added just now)
    and :class:`IngestError` says what to fix.
    """
    had_storage = not created and (
        _call(f"project {project}: storages", lambda: find_local_storage(client, project, plan.images_root))
        is not None
    )
    storage: int | None = None
    problem = None
    try:
        storage = _call(
            f"project {project}: Local Files storage on {plan.images_root}",
            lambda: add_local_storage(client, project, plan.images_root),
        )
        if image_check is not None and sample is not None:
            status = _call(f"fetch {sample}", lambda: image_check(sample))
            if status is not None:
                problem = (
                    f"Label Studio does not serve {sample} ({status}): is --document-root "
                    f"{plan.document_root} the LOCAL_FILES_DOCUMENT_ROOT Label Studio runs with?"
                )
    except LabelStudioError as exc:
        problem = (
            f"{exc} (is Label Studio started with LOCAL_FILES_SERVING_ENABLED=true and "
            f"LOCAL_FILES_DOCUMENT_ROOT={plan.document_root}?)"
        )
    if problem is None:
        assert storage is not None
        return storage
    if created:
        _call(f"delete project {project} again", lambda: client.projects.delete(id=project))
    elif not had_storage and storage is not None:
        made = storage
        _call(f"delete storage {made} again", lambda: client.import_storage.local.delete(id=made))
    raise IngestError(problem)


def run_import(
    client: Any,
    plan: ImportPlan,
    *,
    project: int | None = None,
    title: str | None = None,
    batch_size: int = 100,
    dry_run: bool = False,
    progress: bool = True,
    image_check: Callable[[str], str | None] | None = None,
) -> ImportReport:
    """Create (or fill) a Label Studio project from ``plan``.

    Args:
        client: a ``label_studio_sdk.LabelStudio`` client; None only for a dry run without Label Studio
            (every image then counts as new).
        plan: the checked input (:func:`~backend.ingest.plan.plan_import`).
        project: fill this existing project ...
        title: ... or the project with this title, created (with a config listing ``plan.labels``) when
            there is none.
        batch_size: tasks per import request.
        dry_run: read Label Studio but write nothing.
        progress: show progress bars (tqdm, on stderr).
        image_check: fetches an image URL from Label Studio, returns None when it is served, else what went
            wrong; run on the first new task once the storage exists (a wrong document root otherwise gives
            a project of broken images).

    Raises:
        IngestError: the project's labelling config lacks some of the dataset's labels, or the project or
            storage is refused for a reason the user must fix (message says how).
        LabelStudioError: Label Studio refused a request or could not be reached.
    """
    if (project is None) == (title is None):
        raise ValueError("project, title: expected exactly one of them")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if client is None and not dry_run:
        raise ValueError("client: required unless dry_run")

    # 1. The project and its labelling config (read only).
    project, name, label_config = _find_project(client, project=project, title=title)
    created = project is None
    if label_config is None:
        label_config = label_config_for(plan.labels)
    where = f"project {project} ({name!r})" if project is not None else f"new project {name!r}"
    try:
        schema = parse_label_config(label_config)
    except LabelConfigError as exc:
        raise IngestError(f"{where}: {exc}") from None
    mapping = label_mapping(plan.labels, schema, project=where)

    # 2. What is new: tasks keyed by image_id and by image URL.
    existing: list[ProjectTask] = []
    if project is not None and client is not None:
        pid = project
        existing = _call(f"{where}: list tasks", lambda: list(iter_project_tasks(client, pid)))
    by_key = {str(t.data.get("image_id")): t for t in existing if t.data.get("image_id") is not None}
    by_url = {str(t.data.get(schema.image_key)): t for t in existing if t.data.get(schema.image_key)}
    new: list[dict[str, Any]] = []
    to_annotate: list[tuple[ProjectTask, PlannedImage]] = []
    changed = kept = 0
    for item in plan.items:
        task = build_task(item, schema=schema, mapping=mapping, document_root=plan.document_root)
        old = by_key.get(item.image.key) or by_url.get(task["data"][schema.image_key])
        if old is None:
            new.append(task)
            continue
        changed += old.data.get(CROWD_FIELD) != task["data"][CROWD_FIELD]
        if item.expert is not None:
            if old.has_ground_truth:
                kept += 1
            else:
                to_annotate.append((old, item))
    new_annotations = sum("annotations" in t for t in new)
    if dry_run:
        return ImportReport(
            project=project,
            title=name,
            created=created,
            storage=None,
            new_tasks=len(new),
            existing_tasks=len(plan.items) - len(new),
            changed_tasks=changed,
            new_annotations=new_annotations,
            added_annotations=len(to_annotate),
            kept_annotations=kept,
            dry_run=True,
        )

    # 3. Project and storage; what was created here goes again if the images cannot be served.
    if created:
        project = _call(f"create {where}", lambda: create_project(client, name, label_config))
        logger.info("created project %d %r", project, name)
    assert project is not None
    pid = project
    sample = str(new[0]["data"][schema.image_key]) if new else None
    storage = _storage(client, pid, plan, created=created, sample=sample, image_check=image_check)

    # 4. Tasks, in batches (each one transaction in Label Studio).
    done = 0
    with _progress(len(new), "importing tasks", progress) as bar:
        for start in range(0, len(new), batch_size):
            batch: Sequence[dict[str, Any]] = new[start : start + batch_size]
            try:
                _call(f"project {pid}: import tasks", partial(import_tasks, client, pid, batch))
            except LabelStudioError as exc:
                raise LabelStudioError(
                    f"{exc}; {done} of {len(new)} new tasks were imported before it: run the same command "
                    "again to import the rest"
                ) from exc
            done += len(batch)
            bar.update(len(batch))

    # 5. Expert labels for tasks that were already there without a ground-truth annotation.
    with _progress(len(to_annotate), "expert annotations", progress) as bar:
        for old, item in to_annotate:
            assert item.expert is not None
            result = expert_result(remap_classes(item.expert, mapping), item.image, schema)
            create = partial(
                client.annotations.create, id=old.id, result=result, ground_truth=True, last_action="imported"
            )
            _call(f"task {old.id}: expert annotation", create)
            bar.update(1)
    return ImportReport(
        project=pid,
        title=name,
        created=created,
        storage=storage,
        new_tasks=len(new),
        existing_tasks=len(plan.items) - len(new),
        changed_tasks=changed,
        new_annotations=new_annotations,
        added_annotations=len(to_annotate),
        kept_annotations=kept,
        dry_run=False,
    )
