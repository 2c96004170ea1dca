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

from healthpredict.serving import auth, metrics
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

ANONYMOUS = "anonymous"  # the client label of predictions with HP_SERVE_AUTH=off
BEARER_SECURITY = [{"bearer": []}]  # the OpenAPI security requirement (scheme in api.py)
_UNAUTHORIZED = {
    auth.MISSING: "missing bearer token: send Authorization: Bearer <token>",
    auth.MALFORMED: "malformed Authorization header: expected 'Bearer <token>'",
    auth.UNKNOWN: "unknown bearer token",
}
_PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorResponse,
        "description": "No bearer token, a malformed Authorization header or an unknown token",
    },
    403: {"model": ErrorResponse, "description": "The client lacks the 'predict' scope"},
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
    403: {
        "model": ErrorResponse,
        "description": "Wrong token, a client without the 'reload' scope, or reloads disabled",
    },
    409: {"model": ErrorResponse, "description": "Another load is running"},
    422: {"model": ErrorResponse, "description": "Invalid query parameter"},
    503: {"model": ErrorResponse, "description": "Loading failed; the old model keeps serving"},
}


@dataclass
class AppState:
    """What the handlers share: settings, model holder, API clients and cached counters.

    ``tokens`` is None when authentication is off (``HP_SERVE_AUTH=off``).
    """

    settings: ServingSettings
    holder: ModelHolder
    tokens: auth.TokenStore | None = None
    # (model name, version) -> its labelled prediction counter: labels() costs a lock and a hash.
    predicted: dict[tuple[str, str], Any] = field(default_factory=dict)
    # client id -> its (records, requests) counters, for the same reason.
    by_client: dict[str, tuple[Any, Any]] = field(default_factory=dict)


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


def add_metrics_route(app: FastAPI, state: AppState) -> None:
    """``/metrics`` in the Prometheus text format."""
    tokens = state.tokens

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        if tokens is not None:  # a scrape also reveals a broken token file on an idle API
            tokens.refresh()
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


def _refuse_client(
    endpoint: str, tokens: auth.TokenStore, header: str | None, scope: str
) -> tuple[auth.Client | None, Response | None]:
    """``(client, None)`` for a known client with ``scope``, else ``(None, the 401 or 403)``."""
    client, reason = tokens.authenticate(header)
    if client is None:
        metrics.AUTH_FAILURES.labels(reason).inc()
        detail = _UNAUTHORIZED[reason or auth.UNKNOWN]
        return None, error_response(endpoint, 401, detail, headers={"WWW-Authenticate": "Bearer"})
    if scope not in client.scopes:
        metrics.AUTH_FAILURES.labels(auth.SCOPE).inc()
        return None, error_response(
            endpoint,
            403,
            f"client {client.client_id!r} lacks the {scope!r} scope",
            headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
        )
    return client, None


def _client_counters(state: AppState, client_id: str) -> tuple[Any, Any]:
    counters = state.by_client.get(client_id)
    if counters is None:
        counters = state.by_client[client_id] = (
            metrics.CLIENT_PREDICTIONS.labels(client_id),
            metrics.CLIENT_REQUESTS.labels(client_id),
        )
    return counters


def add_predict_route(app: FastAPI, state: AppState) -> None:
    """``POST /predict``: the client first (401/403 before the body is read), then scoring.

    Small batches are scored on the event loop, large ones in the thread pool.
    """
    holder, settings, predicted, tokens = (
        state.holder,
        state.settings,
        state.predicted,
        state.tokens,
    )
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
            },
            **({"security": BEARER_SECURITY} if tokens is not None else {}),
        },
    )
    async def predict(request: Request) -> Response:
        if tokens is None:
            client_id = ANONYMOUS
        else:
            client, refused = _refuse_client(
                "/predict", tokens, request.headers.get("authorization"), auth.SCOPE_PREDICT
            )
            if client is None:
                return refused  # type: ignore[return-value]
            client_id = client.client_id
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
        records_counter, requests_counter = _client_counters(state, client_id)
        records_counter.inc(len(out))
        requests_counter.inc()
        metrics.BATCH_SIZE.observe(len(out))
        body = {
            "model_name": name,
            "model_version": version,
            "threshold": model.threshold,
            "predictions": out,
        }
        return json_response(200, body)


def _refuse_token(
    request: Request, token: str | None, tokens: auth.TokenStore | None
) -> Response | None:
    """The refusal of a reload whose bearer token is missing or wrong; None when it is right.

    Right is ``RELOAD_TOKEN`` or the token of an API client with the ``reload`` scope.
    """
    header = request.headers.get("authorization")
    given, _ = auth.bearer_token(header)
    reload_clients = tokens is not None and any(
        auth.SCOPE_RELOAD in c.scopes for c in tokens.clients.values()
    )
    if token is None and not reload_clients:
        return error_response(
            "/reload", 403, "reloads are disabled: set RELOAD_TOKEN (or RELOAD_TOKEN_FILE)"
        )
    if given is None:
        return error_response(
            "/reload", 401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    if token is not None and hmac.compare_digest(given.encode(), token.encode()):
        return None
    client = tokens.authenticate(header)[0] if tokens is not None else None
    if client is None:
        return error_response("/reload", 403, "wrong reload token")
    if auth.SCOPE_RELOAD not in client.scopes:
        return error_response(
            "/reload", 403, f"client {client.client_id!r} lacks the {auth.SCOPE_RELOAD!r} scope"
        )
    return None


def add_reload_route(app: FastAPI, state: AppState) -> None:
    """``POST /reload``: bearer token, then an atomic swap (the old model stays on failure)."""
    holder, settings, tokens = state.holder, state.settings, state.tokens

    @app.post(
        "/reload",
        summary="Load the current champion (or MODEL_DIR) again and swap it in without downtime",
        response_model=ReloadResult,
        responses=_RELOAD_RESPONSES,
        openapi_extra={"security": BEARER_SECURITY},
    )
    async def reload(request: Request, force: bool = False) -> Response:
        """Needs the reload token (or a client's with the ``reload`` scope); ``force`` reloads."""
        try:
            check_query(request, "/reload", ("force",))
        except RequestError as exc:
            metrics.ERRORS.labels("/reload", "validation").inc()
            return json_response(exc.status, exc.body())
        refused = _refuse_token(request, settings.token(), tokens)
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
