"""``python -m backend.bootstrap --project N [--init WEIGHTS]``: train the first model version on a project's
crowd labels and publish it into ``MODEL_DIR``'s registry (see the ``backend.bootstrap`` docstring).

Settings come from the backend's environment variables (``Settings.from_env``); flags override them.
Exit status: 0 published; 2 what the user must fix: bad options or settings, nothing to train on, a malformed
task, a task image that is malformed, missing (no such local file) or not an image (``BootstrapError``);
1 what may pass on a retry: Label Studio or an image host failing (an HTTP error, a network failure:
``BootstrapSourceError``), or the training job failing.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from backend.bootstrap import (
    WEAK_MAP50,
    BootstrapError,
    BootstrapSourceError,
    CrowdSource,
    new_job_dir,
    prepare_bootstrap,
    validation_map50,
)
from backend.images import ImageLoader
from backend.settings import Settings, SettingsError, settings_with_overrides

__all__ = ["main", "run_bootstrap"]


def run_bootstrap(
    settings: Settings,
    *,
    project: int,
    init: str | None = None,
    epochs: int | None = None,
    force: bool = False,
    progress: bool = True,
    source: CrowdSource | None = None,
) -> dict[str, Any]:
    """Train and publish the first version (what the CLI does); returns the published version's meta.

    Raises:
        BootstrapError: the registry already has a version (without ``force``), no such project, no crowd
            labels, a bad ``init``, a malformed task or task image.
        BootstrapSourceError: Label Studio failed (an HTTP error other than 404, a network failure), or a
            task's image could not be fetched.
        RuntimeError: the training job failed (its log named in the message).
    """
    from tqdm import tqdm

    from backend.lsclient import LabelStudioAuth
    from backend.lsproject import api_error_message
    from backend.training import LabelStudioSource, run_train_job
    from model.registry import ModelRegistry

    registry = ModelRegistry(settings.model_dir)
    latest = registry.latest()
    if latest is not None and not force:
        raise BootstrapError(
            f"MODEL_DIR {settings.model_dir} already holds {latest.version}: the bootstrap trains the first "
            "version (--force publishes a crowd-trained version over it)"
        )
    if source is None:
        if not settings.label_studio_enabled:
            raise BootstrapError(
                "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (or --url and --api-key) are needed"
            )
        source = LabelStudioSource(settings)
        try:
            source.label_config(project)
        except Exception as exc:
            if getattr(exc, "status_code", None) == 404:
                raise BootstrapError(
                    f"project {project}: not found in Label Studio at {settings.label_studio_url}"
                ) from None
            raise BootstrapSourceError(f"project {project}: {api_error_message(exc)}") from None
    auth = (
        LabelStudioAuth(str(settings.label_studio_url), str(settings.label_studio_api_key))
        if settings.label_studio_enabled
        else None
    )
    loader = ImageLoader.from_settings(settings, auth=auth)
    job_dir = new_job_dir(settings)
    prepared = prepare_bootstrap(
        settings, source, project, loader=loader, job_dir=job_dir, init=init, epochs=epochs, progress=progress
    )
    n_epochs = int(prepared.job["epochs"])
    bar = tqdm(total=n_epochs, desc="training", unit="epoch", disable=not progress)

    def on_progress(state: Mapping[str, Any]) -> None:
        epoch = int(state.get("epoch") or 0)
        if epoch > bar.n:
            bar.update(epoch - bar.n)

    try:
        version = run_train_job(job_dir, prepared.job, on_progress=on_progress)
        on_progress({"epoch": n_epochs})
    finally:
        bar.close()
    return registry.get(version).meta


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m backend.bootstrap",
        description="Train the first model version on a Label Studio project's crowd labels "
        "(data.crowd_labels) and publish it into MODEL_DIR's registry. Settings: the backend's environment "
        "variables (MODEL_DIR, LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY, LOCAL_FILES_DOCUMENT_ROOT, "
        "TRAIN_EPOCHS, TRAIN_IMGSZ, TRAIN_BATCH, TRAIN_INIT, DETECTOR_FAMILY, DEVICE); flags override.",
    )
    parser.add_argument("--project", type=int, required=True, help="Label Studio project id")
    parser.add_argument("--init", help="weights to start from (default: TRAIN_INIT, the family's default)")
    parser.add_argument("--epochs", type=int, help="TRAIN_EPOCHS")
    parser.add_argument("--imgsz", help="TRAIN_IMGSZ")
    parser.add_argument("--force", action="store_true", help="train even if MODEL_DIR already has a version")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--url", help="LABEL_STUDIO_URL")
    parser.add_argument("--api-key", help="LABEL_STUDIO_API_KEY")
    parser.add_argument("--model-dir", help="MODEL_DIR")
    parser.add_argument("--document-root", help="LOCAL_FILES_DOCUMENT_ROOT")
    parser.add_argument("--device", help="DEVICE")
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs: expected >= 1, got {args.epochs}")
    return args


_FLAG_VARS = {
    "url": "LABEL_STUDIO_URL",
    "api_key": "LABEL_STUDIO_API_KEY",
    "model_dir": "MODEL_DIR",
    "document_root": "LOCAL_FILES_DOCUMENT_ROOT",
    "device": "DEVICE",
    "imgsz": "TRAIN_IMGSZ",
    "epochs": "TRAIN_EPOCHS",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bootstrap; returns the exit status."""
    args = parse_args(argv)
    flags = {var: getattr(args, attr) for attr, var in _FLAG_VARS.items()}
    try:  # MODEL_WEIGHTS dropped: the bootstrap is what runs when there are none
        settings = settings_with_overrides(os.environ, flags)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("YOLO_CONFIG_DIR", str(settings.scratch_dir / "yolo-config"))
    try:
        meta = run_bootstrap(
            settings,
            project=args.project,
            init=args.init,
            force=args.force,
            progress=not args.no_progress,
        )
    except BootstrapSourceError as exc:  # Label Studio or an image host failed: exit 1, not a bad input
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BootstrapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    map50 = validation_map50(meta)
    print(
        f"published {meta['version']} to {settings.model_dir} ({meta['source']}: project {args.project}, "
        f"{meta['n_train']} train / {meta['n_val']} val images, {meta['epochs']} epochs from "
        f"{Path(str(meta['init'])).name}, {meta['seconds']:.0f} s)"
    )
    if map50 is not None:
        print(f"validation mAP50 against the crowd labels: {map50:.3f}")
        if map50 < WEAK_MAP50:
            print(
                f"warning: mAP50 below {WEAK_MAP50}: this model has barely learned, and its corrections "
                "would drop most crowd boxes; train longer (--epochs) or start from your own weights "
                "(--init), then run again with --force",
                file=sys.stderr,
            )
    print("next: start the backend (python -m backend) and score the project")
    return 0


if __name__ == "__main__":
    sys.exit(main())
