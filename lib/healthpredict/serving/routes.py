"""The API's endpoints, registered on an app by one function per concern.

Each ``add_*`` function takes the app and its :class:`AppState` and binds what its handlers need
as locals, so a request pays no lookups beyond the closure's.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from healthpredict.serving import metrics
from healthpredict.serving.http_io import (
    CLIENT_CLOSED_REQUEST,
    ERROR_KIND,
    check_json_type,
    check_query,
    error_response,
    json_response,
    read_body,
)
from healthpredict.serving.load_errors import ModelLoadError
from healthpredict.serving.model_store import LoadedModel, ModelHolder, ReloadBusyError
from healthpredict.serving.records import RequestError, parse_records, request_body_schema
from healthpredict.serving.schemas import (
    ErrorResponse,
    ModelInfoResponse,
    PredictResponse,
    Ready,
    ReloadResult,
)
from healthpredict.serving.settings import ServingSettings

log = logging.getLogger("healthpredict.serving")

_PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "Body or record count over the limit"},
    415: {
        "model": ErrorResponse,
        "description": "The body is not declared as JSON (Content-Type: application/json)",
    },
    422: {
        "model": ErrorResponse,
        "description": "Every offending field, its value and what was expected",
    },
    503: {"model": ErrorResponse, "description": "No model loaded yet"},
}
_RELOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No bearer token"},
    403: {"model": ErrorResponse, "description": "Wrong token, or reloads disabled"},
    409: {"model": ErrorResponse, "description": "Another load is running"},
    422: {"model": ErrorResponse, "description": "Invalid query parameter"},
    503: {"model": ErrorResponse, "description": "Loading failed; the old model keeps serving"},
}


@dataclass
class AppState:
    """What the handlers share: the settings, the model holder and the per-version counters."""

    settings: ServingSettings
    holder: ModelHolder
    # (model name, version) -> its labelled prediction counter: labels() costs a lock and a hash.
    predicted: dict[tuple[str, str], Any] = field(default_factory=dict)


def _not_ready(endpoint: str, holder: ModelHolder) -> Response:
    return error_response(
        endpoint, 503, f"no model loaded: {holder.status()['reason']}", "not_ready"
    )


def add_probe_routes(app: FastAPI, state: AppState) -> None:
    """``/health``, ``/ready`` and ``/model-info``."""
    holder = state.holder

    @app.get(
        "/health",
        summary="Liveness: the process is up",
        responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}},
    )
    async def health() -> Response:
        return json_response(200, {"status": "ok"})

    @app.get(
        "/ready",
        summary="Readiness: 200 once a model is loaded, else 503 with the reason",
        response_model=Ready,
        responses={503: {"model": Ready, "description": "No model loaded yet"}},
    )
    async def ready() -> Response:
        status = holder.status()
        return json_response(200 if status["ready"] else 503, status)

    @app.get(
        "/model-info",
        summary="The model in service: version, alias, run, metrics, threshold, schema hash",
        response_model=ModelInfoResponse,
        responses={503: {"model": ErrorResponse, "description": "No model loaded yet"}},
    )
    async def model_info() -> Response:
        model = holder.current
        if model is None:
            return _not_ready("/model-info", holder)
        return json_response(200, model.describe())


def add_metrics_route(app: FastAPI) -> None:
    """``/metrics`` in the Prometheus text format."""

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)


async def _read_records(request: Request, settings: ServingSettings) -> list[dict[str, Any]]:
    """The validated records of a ``/predict`` request (checks in the documented order).

    Raises:
        RequestError: The request is refused (415, 413 or 422).
        ClientDisconnect: The client left before sending the whole body.
    """
    check_query(request, "/predict")
    check_json_type(request.headers.get("content-type"))
    body = await read_body(request, settings.max_body_bytes)
    records, _ = parse_records(body, settings.max_records)
    return records


def _predictions(model: LoadedModel, records: list[dict[str, Any]], proba: Any) -> list[dict]:
    threshold, version = model.threshold, model.version
    return [
        {
            "readmission_probability": p,
            "label": int(p >= threshold),
            "model_version": version,
            "encounter_id": r.get("encounter_id"),
        }
        for p, r in zip(proba.tolist(), records, strict=True)
    ]


def add_predict_route(app: FastAPI, state: AppState) -> None:
    """``POST /predict``: small batches on the event loop, large ones in the thread pool."""
    holder, settings, predicted = state.holder, state.settings, state.predicted
    body_schema, _ = request_body_schema(settings.max_records)

    @app.post(
        "/predict",
        summary="Readmission probability and label of one record or a list of records",
        response_model=PredictResponse,
        responses=_PREDICT_RESPONSES,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": body_schema}},
            }
        },
    )
    async def predict(request: Request) -> Response:
        try:
            records = await _read_records(request, settings)
        except RequestError as exc:
            metrics.ERRORS.labels("/predict", ERROR_KIND.get(exc.status, "other")).inc()
            return json_response(exc.status, exc.body())
        except ClientDisconnect:  # gone before the whole body came: nobody to answer, no error
            metrics.ERRORS.labels("/predict", "client_disconnect").inc()
            log.info("client disconnected before sending the whole body of /predict")
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        model = holder.current  # one read: the whole request uses this model even during a swap
        if model is None:
            return _not_ready("/predict", holder)
        if len(records) >= settings.threadpool_rows:
            proba = await run_in_threadpool(model.predictor.predict_proba, records)
        else:
            proba = model.predictor.predict_proba(records)
        out = _predictions(model, records, proba)
        name, version = model.info.get("name", ""), model.version
        counter = predicted.get((name, version))
        if counter is None:
            counter = predicted[(name, version)] = metrics.PREDICTIONS.labels(name, version)
        counter.inc(len(out))
        metrics.BATCH_SIZE.observe(len(out))
        body = {
            "model_name": name,
            "model_version": version,
            "threshold": model.threshold,
            "predictions": out,
        }
        return json_response(200, body)


def _refuse_token(request: Request, token: str | None) -> Response | None:
    """The refusal of a reload whose bearer token is missing or wrong; None when it is right."""
    if token is None:
        return error_response(
            "/reload", 403, "reloads are disabled: set RELOAD_TOKEN (or RELOAD_TOKEN_FILE)"
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return error_response(
            "/reload", 401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return error_response("/reload", 403, "wrong reload token")
    return None


def add_reload_route(app: FastAPI, state: AppState) -> None:
    """``POST /reload``: bearer token, then an atomic swap (the old model stays on failure)."""
    holder, settings = state.holder, state.settings

    @app.post(
        "/reload",
        summary="Load the current champion (or MODEL_DIR) again and swap it in without downtime",
        response_model=ReloadResult,
        responses=_RELOAD_RESPONSES,
    )
    async def reload(request: Request, force: bool = False) -> Response:
        """Needs ``Authorization: Bearer <RELOAD_TOKEN>``; ``force`` reloads an unchanged version."""
        try:
            check_query(request, "/reload", ("force",))
        except RequestError as exc:
            metrics.ERRORS.labels("/reload", "validation").inc()
            return json_response(exc.status, exc.body())
        refused = _refuse_token(request, settings.token())
        if refused is not None:
            return refused
        try:
            result = await run_in_threadpool(holder.reload, force)
        except ReloadBusyError as exc:
            return error_response("/reload", 409, str(exc))
        except ModelLoadError as exc:
            metrics.MODEL_LOADS.labels("failed").inc()
            serving = holder.current.version if holder.current else None
            log.error("reload failed (still serving version %s): %s", serving, exc.reason)
            return error_response(
                "/reload",
                503,
                f"reload failed, still serving version {serving}: {exc.reason}",
                "reload_failed",
            )
        return json_response(200, result)
