"""The HTTP layer: FastAPI app factory for the Label Studio ML backend (parse, delegate, answer).

Errors are JSON ``{"detail": "..."}``: 400 for a bad labelling config, 422 for a body that is not the
expected JSON (the message names the field, never echoes the input: it may hold passwords), 503 while no model
version is published (Label Studio logs it and stores no prediction, so the tasks are predicted again once a
model exists), 401 without valid basic auth when it is configured. A bad *task* (its image, its crowd labels)
never fails the request: it gets its own error entry (see ``backend.service.ScoredTask``) and the rest of the
batch is scored.
Basic auth guards every endpoint, /health included: Label Studio sends the credentials on all calls.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from backend.bootstrap import project_id
from backend.bootstrap.auto import AutoBootstrap
from backend.images import ImageLoader
from backend.labelconfig import LabelConfigError, parse_label_config
from backend.lsclient import LabelStudioAuth, TaskWriteBack, make_sdk_client
from backend.metrics import CONTENT_TYPE, Metrics
from backend.protocol import PredictRequest, SetupRequest, WebhookRequest
from backend.service import ModelService, NoModelError
from backend.settings import Settings
from backend.training import TaskSource, TrainingManager

logger = logging.getLogger(__name__)

__all__ = ["create_app"]

UNTRAINED = "untrained"
"""``model_version`` reported by /setup before any version is published."""


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        kind = err.get("type", "")
        if kind == "json_invalid":
            parts.append("body: not valid JSON")
        else:
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def create_app(
    settings: Settings,
    *,
    service: ModelService | None = None,
    trainer: TrainingManager | None = None,
    source: TaskSource | None = None,
) -> FastAPI:
    """Build the app.

    Args:
        settings: validated settings.
        service: the model holder (default: built from ``settings``).
        trainer: the training manager (default: built from ``settings``; ``source`` feeds it).
        source: training data source (default: Label Studio through the SDK, built on first training).
    """
    auth = (
        LabelStudioAuth(str(settings.label_studio_url), str(settings.label_studio_api_key))
        if settings.label_studio_enabled
        else None
    )
    if service is None:
        loader = ImageLoader.from_settings(settings, auth=auth)
        service = ModelService(settings, loader=loader)
        service.publish_initial()
    if source is None and settings.tasks_file is not None:
        from backend.tasksfile import TasksFileSource

        source = TasksFileSource(settings.tasks_file, settings.scratch_dir / "scores.jsonl")
    if trainer is None and settings.redis_url is not None:
        from backend.jobs import RedisTrainer  # jobs run on `python -m backend.worker` processes

        trainer = RedisTrainer(settings, service)
    if trainer is None:
        trainer = TrainingManager(settings, service, source=source)
        if settings.label_studio_enabled or source is not None:
            trainer.resume_bulk_scoring()  # a run this backend was doing when it stopped continues
    writeback: TaskWriteBack | None = None
    if settings.label_studio_enabled:
        url, key = str(settings.label_studio_url), str(settings.label_studio_api_key)
        writeback = TaskWriteBack(lambda: make_sdk_client(url, key))

    metrics = Metrics(
        serving_version=lambda: service.loaded_version,
        training=lambda: trainer.training_counts(),
        queue_depth=lambda: _queue_depth(trainer),
        writeback=lambda: (writeback.written, writeback.failed) if writeback is not None else (0, 0),
    )

    app = FastAPI(title="Active label cleaning: Label Studio ML backend", version="1.0")
    app.state.settings = settings
    app.state.service = service
    app.state.trainer = trainer
    app.state.writeback = writeback
    app.state.metrics = metrics
    auto_bootstrap = AutoBootstrap(settings, service, trainer)
    # Calibration and the report read the project in this process (a queue trainer runs jobs elsewhere).
    calibrator = (
        trainer if isinstance(trainer, TrainingManager) else TrainingManager(settings, service, source=source)
    )
    app.state.calibrator = calibrator

    @app.middleware("http")
    async def timing(request: Request, call_next: Any) -> Any:
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", None) or "other"
        metrics.observe_request(path, request.method, response.status_code, time.perf_counter() - start)
        return response

    @app.middleware("http")
    async def basic_auth(request: Request, call_next: Any) -> Any:
        if settings.basic_auth_enabled and not _authorized(request.headers.get("authorization"), settings):
            return JSONResponse(
                {"detail": "authentication required"},
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="ml-backend"'},
            )
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    @app.get("/")
    @app.get("/health")
    def health() -> dict[str, Any]:
        active = service.latest_version()
        return {
            "status": "UP",
            "model_class": "ActiveLabelCleaning",
            "model_version": service.loaded_version or active,
            "latest_version": active,
            "serving_version": active,
            "loaded_version": service.loaded_version,
            "training": trainer.status(),
            "bulk_scoring": _bulk_status(trainer),
        }

    @app.post("/setup")
    def setup(body: SetupRequest) -> Any:
        if body.label_schema:
            try:
                parse_label_config(body.label_schema)
            except LabelConfigError as exc:
                return JSONResponse({"detail": str(exc)}, status_code=400)
            trainer.last_schema_xml = body.label_schema
        auto_bootstrap.maybe_start(project_id(body.project))
        return {"model_version": service.latest_version() or UNTRAINED}

    @app.get("/versions")
    def versions() -> dict[str, Any]:
        active = service.latest_version()
        return {"versions": service.versions(), "latest": active, "active": active}

    @app.post("/versions/{version}/activate")
    def activate(version: str) -> Any:
        """Serve an already published version from now on (rollback), in every process of the registry."""
        previous = service.latest_version()
        try:
            service.switch(version)  # load it first: a version that cannot load is never made the active one
        except KeyError as exc:
            return JSONResponse({"detail": str(exc.args[0])}, status_code=404)
        except Exception as exc:
            logger.exception("loading version %s failed", version)
            return JSONResponse({"detail": f"version {version} could not be loaded: {exc}"}, status_code=500)
        service.registry.activate(version)
        logger.info("version %s activated (was %s)", version, previous)
        return {"model_version": version, "previous": previous}

    @app.post("/predict")
    def predict(body: PredictRequest) -> Any:
        try:
            schema = parse_label_config(body.label_config or trainer.last_schema_xml)
            # Label Studio 1.23 sends no model_version here; other callers may pin a published version.
            scored = service.score_tasks(body.tasks, schema, version=body.model_version)
        except NoModelError as exc:
            pid = project_id(body.project)
            if auto_bootstrap.maybe_start(pid) or auto_bootstrap.running_for(pid):
                exc = NoModelError(f"{exc}; a first model is being trained on the crowd labels (see /health)")
            return JSONResponse({"detail": str(exc)}, status_code=503)
        except LabelConfigError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)
        metrics.observe_tasks([item.error_cause for item in scored])
        if writeback is not None:
            for item in scored:
                if item.task_id is not None:
                    writeback.submit(item.task_id, item.writeback())
        return {"results": [item.prediction for item in scored]}

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/webhook")
    def webhook(body: WebhookRequest) -> dict[str, Any]:
        try:
            status = trainer.on_event(
                body.action, project=body.project_id, annotation=body.annotation, task=body.task
            )
        except Exception as exc:  # a webhook must never crash the server: report and carry on
            logger.exception("webhook %s failed", body.action)
            return {"status": "error", "action": body.action, "detail": str(exc)[:500]}
        return {"status": status, "action": body.action}

    @app.post("/train")
    def train(request: Request) -> dict[str, Any]:
        project = request.query_params.get("project")
        pid = int(project) if project and project.isdigit() else None
        return {"status": trainer.request(pid), "action": "START_TRAINING"}

    @app.post("/rescore")
    def rescore(request: Request) -> dict[str, Any]:
        """Bulk scoring: every non-expert task of ``?project=N`` with the serving version (background)."""
        project = request.query_params.get("project")
        pid = int(project) if project and project.isdigit() else None
        try:
            return {"status": trainer.request_rescore(pid), "action": "RESCORE"}
        except Exception as exc:  # e.g. Redis unreachable: report, never crash
            logger.exception("re-scoring request failed")
            return {"status": "error", "action": "RESCORE", "detail": str(exc)[:500]}

    @app.post("/calibrate")
    def calibrate(request: Request) -> Any:
        """Fit the grades of the serving version (or ``&version=V``) on ``?project=N``'s expert tasks."""
        pid = _project(request)
        try:
            return calibrator.calibrate(pid, version=request.query_params.get("version")).to_dict()
        except NoModelError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=503)
        except KeyError as exc:
            return JSONResponse({"detail": str(exc.args[0])}, status_code=404)
        except ValueError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.get("/report")
    def report(request: Request) -> Any:
        """The project report: JSON, or a self-contained HTML page with ``&format=html``."""
        from backend.report import build_report, render_html

        pid = _project(request)
        fmt = request.query_params.get("format", "json")
        if fmt not in ("json", "html"):
            return JSONResponse({"detail": f"format: json or html, not {fmt!r}"}, status_code=400)
        try:
            source = calibrator.source()
            schema = parse_label_config(source.label_config(pid))
            body = build_report(service, source.tasks(pid), schema, project=pid)
        except NoModelError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=503)
        except (ValueError, LabelConfigError) as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)
        return HTMLResponse(render_html(body)) if fmt == "html" else body

    return app


def _bulk_status(trainer: Any) -> dict[str, Any]:
    """Bulk-scoring progress by project; a failure to read it is reported, never raised (see /health)."""
    try:
        return dict(trainer.bulk_status())
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def _project(request: Request) -> int | None:
    project = request.query_params.get("project")
    return int(project) if project and project.isdigit() else None


def _queue_depth(trainer: Any) -> dict[str, int]:
    """Jobs waiting or running: the trainer's own count, or 0/1 from the in-process trainer's status."""
    depth = getattr(trainer, "queue_depth", None)
    if callable(depth):
        return dict(depth())
    status = trainer.status()
    return {"training": int(status.get("state") == "running") + int(bool(status.get("pending")))}


def _authorized(header: str | None, settings: Settings) -> bool:
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    user, sep, password = decoded.partition(":")
    ok_user = hmac.compare_digest(user.encode(), str(settings.basic_auth_user).encode())
    ok_pass = hmac.compare_digest(password.encode(), str(settings.basic_auth_pass).encode())
    return bool(sep) and ok_user and ok_pass
