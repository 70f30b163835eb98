"""``python -m backend.ingest``: create or fill a Label Studio project from images and their crowd labels.

Example (Label Studio started with LOCAL_FILES_SERVING_ENABLED=true, LOCAL_FILES_DOCUMENT_ROOT=/data)::

    python -m backend.ingest --title "Deposits 2026" --images /data/lab/images \\
        --crowd /data/lab/crowd.json --crowd-format coco \\
        --expert /data/lab/expert.json --document-root /data

Every input is read and checked first; malformed input stops the run with ``error: <file>:<line>: ...``
(or the JSON path and id) and nothing is created. Re-running skips the images already in the project.
Exit status: 0 done, 2 bad input or options, 1 Label Studio refused or could not be reached.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from backend.ingest.importer import ImportReport, LabelStudioError, run_import
from backend.ingest.plan import ImportPlan, plan_import
from backend.ingest.sources import IngestError, InputFormat

FORMATS = [f.value for f in InputFormat]


def parse_args(argv: Sequence[str] | None, env: Mapping[str, str]) -> argparse.Namespace:
    """Parse the command line; defaults for the connection come from ``env``."""
    parser = argparse.ArgumentParser(
        prog="python -m backend.ingest",
        description="Create or fill a Label Studio project from a folder of images and their crowd labels "
        "(COCO JSON, YOLO txt or a Label Studio JSON export), optionally with expert labels imported as "
        "ground-truth annotations. Re-running skips images already in the project.",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--project", type=int, help="fill this existing project (id)")
    target.add_argument("--title", help="fill the project with this title, or create it")
    parser.add_argument("--images", required=True, help="folder of images (inside the document root)")
    parser.add_argument("--crowd", required=True, help="crowd labels: COCO file, YOLO folder or LS export")
    parser.add_argument("--crowd-format", choices=FORMATS, required=True)
    parser.add_argument("--expert", help="expert labels (imported as ground-truth annotations)")
    parser.add_argument("--expert-format", choices=FORMATS, help="default: --crowd-format")
    parser.add_argument(
        "--classes", help="YOLO class names (classes.txt or data.yaml); default: found next to the labels"
    )
    parser.add_argument(
        "--document-root",
        default=env.get("LOCAL_FILES_DOCUMENT_ROOT"),
        help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT (default: that variable)",
    )
    parser.add_argument("--url", default=env.get("LABEL_STUDIO_URL"), help="default: $LABEL_STUDIO_URL")
    parser.add_argument(
        "--api-key",
        default=env.get("LABEL_STUDIO_API_KEY"),
        help="legacy token or personal access token (default: $LABEL_STUDIO_API_KEY)",
    )
    parser.add_argument("--batch-size", type=int, default=100, help="tasks per import request (100)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the input and print what would be imported; reads Label Studio only when --url and "
        "--api-key are set, writes nothing",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if not args.document_root:
        parser.error("--document-root (or LOCAL_FILES_DOCUMENT_ROOT) is required: images are served from it")
    if args.expert_format and not args.expert:
        parser.error("--expert-format needs --expert")
    if args.batch_size < 1:
        parser.error(f"--batch-size: expected >= 1, got {args.batch_size}")
    if not args.dry_run and not (args.url and args.api_key):
        parser.error("--url and --api-key (or LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY) are required")
    return args


def _image_check(url: str, api_key: str) -> Callable[[str], str | None]:
    """Fetch an image URL from Label Studio with the API key: None when it is served, else the HTTP status."""
    from backend.lsclient import LabelStudioAuth

    auth = LabelStudioAuth(url, api_key)

    def check(image_url: str) -> str | None:
        resp = auth.get(f"{url.rstrip('/')}{image_url}", timeout=60)
        return None if resp.status_code == 200 else f"HTTP {resp.status_code}"

    return check


def _report_lines(report: ImportReport, plan: ImportPlan, url: str | None) -> list[str]:
    would = "would be " if report.dry_run else ""
    if report.project is None:
        head = f"project {report.title!r}: {would}created"
    else:
        head = (
            f"project {report.project} {report.title!r}: {would + 'created' if report.created else 'exists'}"
        )
    lines = [f"{head}; labels {', '.join(plan.labels)}; Local Files storage {plan.images_root}"]
    tasks = f"tasks: {report.new_tasks} {would}created"
    if report.new_annotations:
        tasks += f" ({report.new_annotations} with an expert annotation)"
    tasks += f", {report.existing_tasks} already in the project"
    if report.existing_tasks:
        tasks += " (skipped"
        if report.changed_tasks:
            tasks += (
                f"; {report.changed_tasks} of them hold other crowd labels than the input, left as they are"
            )
        tasks += ")"
    lines.append(tasks)
    if report.added_annotations or report.kept_annotations:
        lines.append(
            f"expert annotations on existing tasks: {report.added_annotations} {would}added, "
            f"{report.kept_annotations} already had one (kept)"
        )
    if url and report.project is not None and not report.dry_run:
        lines.append(f"open {url.rstrip('/')}/projects/{report.project}/data")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Run the importer; returns the exit status."""
    args = parse_args(argv, os.environ)
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    progress = not args.no_progress
    try:
        plan = plan_import(
            images=args.images,
            crowd=args.crowd,
            crowd_format=args.crowd_format,
            document_root=args.document_root,
            expert=args.expert,
            expert_format=args.expert_format,
            classes=args.classes,
            progress=progress,
        )
    except IngestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("nothing was imported", file=sys.stderr)
        return 2
    for line in plan.summary():
        print(line)
    client: Any = None
    image_check: Callable[[str], str | None] | None = None
    if args.url and args.api_key:
        from backend.lsclient import make_sdk_client

        client = make_sdk_client(args.url, args.api_key)
        image_check = _image_check(args.url, args.api_key)
    elif args.dry_run:
        print("dry run without --url/--api-key: Label Studio not asked, every image counted as new")
    try:
        report = run_import(
            client,
            plan,
            project=args.project,
            title=args.title,
            batch_size=args.batch_size,
            dry_run=args.dry_run,
            progress=progress,
            image_check=image_check,
        )
    except IngestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("nothing was imported", file=sys.stderr)
        return 2
    except LabelStudioError as exc:
        print(f"error: Label Studio at {args.url}: {exc}", file=sys.stderr)
        return 1
    for line in _report_lines(report, plan, args.url):
        print(line)
    if args.dry_run:
        print("dry run: nothing was written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
