"""The FastAPI app: readmission risk of raw encounters from the champion model.

Endpoints: ``GET /health`` (process up), ``GET /ready`` (a model is loaded, else 503 and why),
``GET /model-info``, ``POST /predict`` (one record or a list), ``POST /reload`` (bearer token),
``GET /metrics`` (Prometheus), ``GET /docs`` (OpenAPI). :func:`create_app` builds it;
``serving/app.py`` is what uvicorn runs.

``/predict`` reads and validates the body itself (content type first, then the size limit,
then JSON, then the records against the raw schema) rather than through FastAPI's parameter
machinery: that keeps one clear error format and costs less per request. Small batches are
scored on the event loop (sub-millisecond), large ones in the thread pool so that probes are not
held up.
"""

from __future__ import annotations

import hmac
import logging
import os
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import BaseModel, Field
from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from healthpredict import __version__
from healthpredict.serving import metrics
from healthpredict.serving.model_store import ModelHolder, ModelLoadError, ReloadBusyError
from healthpredict.serving.records import RequestError, parse_records, request_body_schema
from healthpredict.serving.settings import ServingSettings

log = logging.getLogger("healthpredict.serving")
CLIENT_CLOSED_REQUEST = 499  # as nginx logs it: the client left before the request was read
_ERROR_KIND = {
    401: "unauthorized",
    403: "forbidden",
    409: "busy",
    413: "too_large",
    415: "media_type",
    422: "validation",
}


# --------------------------------------------------------------------------- documented shapes


class Prediction(BaseModel):
    """Score of one record."""

    readmission_probability: float = Field(description="Probability of readmission within 30 days.")
    label: int = Field(description="1 when the probability reaches the model's threshold, else 0.")
    model_version: str = Field(description="Registry version of the model that scored it.")
    encounter_id: int | None = Field(
        None, description="Echo of the record's encounter_id, if given."
    )


class PredictResponse(BaseModel):
    """Scores in the order of the records sent (a single record gives a list of one)."""

    model_name: str
    model_version: str
    threshold: float
    predictions: list[Prediction]


class Problem(BaseModel):
    """One offending field: which record, which field, the value given and what was expected."""

    record: int | None = Field(description="Index in the list sent; null for a single record.")
    field: str | None = Field(description="Field name as in the raw schema; null for the body.")
    value: Any = Field(description="The value given (null when missing).")
    expected: str
    message: str
    type: str


class ErrorResponse(BaseModel):
    """A refused request; ``errors`` lists every problem of a 422."""

    detail: str
    errors: list[Problem] = Field(default_factory=list)


class Ready(BaseModel):
    """Readiness: a model is loaded (200) or not, and why (503)."""

    ready: bool
    model_version: str | None = None
    source: str
    reason: str | None = None
    attempts: int | None = None
    next_attempt_in_s: float | None = None


class Inference(BaseModel):
    """How the model is scored: ``fast``, ``fast-encoder`` or ``pipeline``, and why not faster."""

    path: str
    reason: str
    estimator: str


class ModelInfo(BaseModel):
    """The model in service and what it was trained for."""

    name: str
    version: str
    alias: str | None
    aliases: list[str]
    run_id: str
    model_uri: str
    trained_at: str
    test_metrics: dict[str, float | None]
    threshold: float
    target: str
    data_source: str
    params: dict[str, Any]
    feature_schema_hash: str = Field(description="Raw schema hash the model was trained on.")
    serving_schema_hash: str = Field(description="Raw schema hash this API validates with.")
    schema_matches: bool
    source: str = Field(description="MODEL_URI or MODEL_DIR it was loaded from.")
    loaded_at: str
    load_seconds: float
    inference: Inference


class ReloadResult(BaseModel):
    """Outcome of a reload."""

    status: str = Field(description="reloaded or unchanged")
    version: str
    previous_version: str | None


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    # "strings": a non-finite float becomes "Infinity", never the invalid JSON token Infinity.
    return Response(
        to_json(body, inf_nan_mode="strings"),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _check_json_type(content_type: str | None) -> None:
    """Refuse (415) a body that is not declared as UTF-8 JSON: it would be guessed at otherwise."""
    media, _, params = (content_type or "").partition(";")
    media = media.strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        given = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
        raise RequestError(
            415, f"{given}: send the records as JSON with Content-Type: application/json"
        )
    for param in params.split(";"):
        name, _, value = param.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            raise RequestError(415, f"charset {charset!r}: JSON bodies must be UTF-8")


def _check_query(request: Request, endpoint: str, allowed: tuple[str, ...] = ()) -> None:
    """Refuse (422) query parameters the endpoint does not take: a typo must not be ignored."""
    unknown = [(k, v) for k, v in request.query_params.multi_items() if k not in allowed]
    if unknown:
        takes = (
            f"{endpoint} takes only {', '.join(allowed)}" if allowed else f"{endpoint} takes none"
        )
        raise RequestError(
            422,
            f"{len(unknown)} problem(s) in the request",
            [
                {
                    "record": None,
                    "field": f"query.{name}",
                    "value": value,
                    "expected": f"no such query parameter: {takes}",
                    "message": "unknown query parameter",
                    "type": "extra_forbidden",
                }
                for name, value in unknown
            ],
        )


def _error(
    endpoint: str,
    status: int,
    detail: str,
    kind: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    metrics.ERRORS.labels(endpoint, kind or _ERROR_KIND.get(status, "other")).inc()
    return _json(status, {"detail": detail}, headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes before reading it when possible."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(
            413,
            f"the body is {int(declared):,} bytes; the limit is {limit:,} (HP_SERVE_MAX_BODY_BYTES)",
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(
                413, f"the body exceeds the limit of {limit:,} bytes (HP_SERVE_MAX_BODY_BYTES)"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _configure_logging() -> None:
    logger = logging.getLogger("healthpredict")
    if not logger.handlers:  # uvicorn configures only its own loggers
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(os.environ.get("HP_SERVE_LOG_LEVEL", "INFO").upper())
        logger.propagate = False


def create_app(settings: ServingSettings | None = None) -> FastAPI:
    """Build the API; the model starts loading in the background when the app starts.

    Args:
        settings: Serving settings (default: from the environment).
    """
    _configure_logging()
    settings = settings or ServingSettings()

    def on_change(old: Any, new: Any) -> None:
        metrics.set_model(old, new)
        metrics.MODEL_LOADS.labels("ok").inc()

    holder = ModelHolder(settings, on_change=on_change)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        holder.start()
        yield
        holder.stop()

    app = FastAPI(
        title="HealthPredict readmission API",
        version=__version__,
        description=(
            "30-day readmission risk of diabetic inpatients (UCI Diabetes 130-US hospitals "
            "schema) from the champion model in the MLflow registry."
        ),
        lifespan=lifespan,
    )
    app.state.holder = holder
    app.state.settings = settings
    app.add_middleware(metrics.MetricsMiddleware)
    predicted: dict[tuple[str, str], Any] = {}

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        problems = [
            {
                "record": None,
                "field": ".".join(str(p) for p in e["loc"]),
                "value": e.get("input"),
                "expected": e["msg"],
                "message": e["msg"],
                "type": e["type"],
            }
            for e in exc.errors()
        ]
        metrics.ERRORS.labels(metrics.endpoint_of(request.url.path), "validation").inc()
        return _json(
            422, {"detail": f"{len(problems)} problem(s) in the request", "errors": problems}
        )

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        metrics.ERRORS.labels(metrics.endpoint_of(request.url.path), "internal").inc()
        return _json(500, {"detail": f"internal error: {type(exc).__name__}"})

    @app.get(
        "/health",
        summary="Liveness: the process is up",
        responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}},
    )
    async def health() -> Response:
        return _json(200, {"status": "ok"})

    @app.get(
        "/ready",
        summary="Readiness: 200 once a model is loaded, else 503 with the reason",
        response_model=Ready,
        responses={503: {"model": Ready, "description": "No model loaded yet"}},
    )
    async def ready() -> Response:
        state = holder.status()
        return _json(200 if state["ready"] else 503, state)

    @app.get(
        "/model-info",
        summary="The model in service: version, alias, run, metrics, threshold, schema hash",
        response_model=ModelInfo,
        responses={503: {"model": ErrorResponse, "description": "No model loaded yet"}},
    )
    async def model_info() -> Response:
        model = holder.current
        if model is None:
            return _error(
                "/model-info", 503, f"no model loaded: {holder.status()['reason']}", "not_ready"
            )
        return _json(200, model.describe())

    body_schema, _ = request_body_schema(settings.max_records)

    @app.post(
        "/predict",
        summary="Readmission probability and label of one record or a list of records",
        response_model=PredictResponse,
        responses={
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
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": body_schema}},
            }
        },
    )
    async def predict(request: Request) -> Response:
        try:
            _check_query(request, "/predict")
            _check_json_type(request.headers.get("content-type"))
            body = await _read_body(request, settings.max_body_bytes)
            records, _ = parse_records(body, settings.max_records)
        except RequestError as exc:
            metrics.ERRORS.labels("/predict", _ERROR_KIND.get(exc.status, "other")).inc()
            return _json(exc.status, exc.body())
        except ClientDisconnect:  # gone before the whole body came: nobody to answer, no error
            metrics.ERRORS.labels("/predict", "client_disconnect").inc()
            log.info("client disconnected before sending the whole body of /predict")
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        model = holder.current  # one read: the whole request uses this model even during a swap
        if model is None:
            return _error(
                "/predict", 503, f"no model loaded: {holder.status()['reason']}", "not_ready"
            )
        if len(records) >= settings.threadpool_rows:
            proba = await run_in_threadpool(model.predictor.predict_proba, records)
        else:
            proba = model.predictor.predict_proba(records)
        threshold, version, name = model.threshold, model.version, model.info.get("name", "")
        out = [
            {
                "readmission_probability": p,
                "label": int(p >= threshold),
                "model_version": version,
                "encounter_id": r.get("encounter_id"),
            }
            for p, r in zip(proba.tolist(), records, strict=True)
        ]
        counter = predicted.get((name, version))
        if counter is None:
            counter = predicted[(name, version)] = metrics.PREDICTIONS.labels(name, version)
        counter.inc(len(out))
        metrics.BATCH_SIZE.observe(len(out))
        return _json(
            200,
            {
                "model_name": name,
                "model_version": version,
                "threshold": threshold,
                "predictions": out,
            },
        )

    @app.post(
        "/reload",
        summary="Load the current champion (or MODEL_DIR) again and swap it in without downtime",
        response_model=ReloadResult,
        responses={
            401: {"model": ErrorResponse, "description": "No bearer token"},
            403: {"model": ErrorResponse, "description": "Wrong token, or reloads disabled"},
            409: {"model": ErrorResponse, "description": "Another load is running"},
            422: {"model": ErrorResponse, "description": "Invalid query parameter"},
            503: {
                "model": ErrorResponse,
                "description": "Loading failed; the old model keeps serving",
            },
        },
    )
    async def reload(request: Request, force: bool = False) -> Response:
        """Needs ``Authorization: Bearer <RELOAD_TOKEN>``; ``force`` reloads an unchanged version."""
        try:
            _check_query(request, "/reload", ("force",))
        except RequestError as exc:
            metrics.ERRORS.labels("/reload", "validation").inc()
            return _json(exc.status, exc.body())
        token = settings.token()
        if token is None:
            return _error(
                "/reload", 403, "reloads are disabled: set RELOAD_TOKEN (or RELOAD_TOKEN_FILE)"
            )
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return _error(
                "/reload", 401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            return _error("/reload", 403, "wrong reload token")
        try:
            result = await run_in_threadpool(holder.reload, force)
        except ReloadBusyError as exc:
            return _error("/reload", 409, str(exc))
        except ModelLoadError as exc:
            metrics.MODEL_LOADS.labels("failed").inc()
            serving = holder.current.version if holder.current else None
            log.error("reload failed (still serving version %s): %s", serving, exc.reason)
            return _error(
                "/reload",
                503,
                f"reload failed, still serving version {serving}: {exc.reason}",
                "reload_failed",
            )
        return _json(200, result)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            _, defs = request_body_schema(settings.max_records)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
