"""The FastAPI app: readmission risk of raw encounters from the champion model.

Endpoints: ``GET /health`` (process up), ``GET /ready`` (a model is loaded, else 503 and why),
``GET /model-info``, ``POST /predict`` (one record or a list; a client's bearer token),
``POST /reload`` (the reload token), ``GET /metrics`` (Prometheus), ``GET /docs`` (OpenAPI).
Only ``/predict`` and ``/reload`` need a token: the others carry no patient data, and probes,
scrapers and the deployment's version check call them. :func:`create_app` builds it from
:mod:`healthpredict.serving.routes`; ``serving/app.py`` is what uvicorn runs.

``/predict`` reads and validates the body itself (content type first, then the size limit,
then JSON, then the records against the raw schema) rather than through FastAPI's parameter
machinery: that keeps one clear error format and costs less per request. Small batches are
scored on the event loop (sub-millisecond), large ones in the thread pool so that probes are not
held up.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi

from healthpredict import __version__
from healthpredict.serving import auth, metrics, routes
from healthpredict.serving.http_io import ContainErrors, validation_error
from healthpredict.serving.model_store import LoadedModel, ModelHolder
from healthpredict.serving.records import request_body_schema
from healthpredict.serving.settings import ServingSettings

_DESCRIPTION = (
    "30-day readmission risk of diabetic inpatients (UCI Diabetes 130-US hospitals "
    "schema) from the champion model in the MLflow registry."
)


def _configure_logging() -> None:
    logger = logging.getLogger("healthpredict")
    if not logger.handlers:  # uvicorn configures only its own loggers
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(os.environ.get("HP_SERVE_LOG_LEVEL", "INFO").upper())
        logger.propagate = False


log = logging.getLogger("healthpredict.serving")


def _on_model_change(old: LoadedModel | None, new: LoadedModel) -> None:
    metrics.set_model(old, new)
    metrics.MODEL_LOADS.labels("ok").inc()


def _openapi(app: FastAPI, max_records: int) -> Callable[[], dict[str, Any]]:
    """The app's OpenAPI document, with the record schemas and the bearer security scheme."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            _, defs = request_body_schema(max_records)
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {}).update(defs)
            components["securitySchemes"] = {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API client's token (healthpredict api-token new) on "
                    "/predict; RELOAD_TOKEN or a client with the 'reload' scope on /reload.",
                }
            }
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def api_clients(settings: ServingSettings) -> auth.TokenStore | None:
    """The API clients of the settings; None (and a warning) when authentication is off.

    Raises:
        auth.AuthConfigError: Authentication is on but no usable client is configured.
    """
    if not settings.auth:
        log.warning(
            "HP_SERVE_AUTH=off: POST /predict is served WITHOUT authentication to anyone who "
            "can reach this port (for a local demo only)"
        )
        return None
    return auth.TokenStore(
        settings.tokens_file,
        settings.tokens,
        check_s=settings.tokens_check_s,
        on_load=metrics.token_file_loaded,
    )


def create_app(settings: ServingSettings | None = None) -> FastAPI:
    """Build the API; the model starts loading in the background when the app starts.

    Args:
        settings: Serving settings (default: from the environment).

    Raises:
        auth.AuthConfigError: Authentication is on (the default) but no API client is
            configured (``HP_SERVE_TOKENS_FILE``, ``HP_SERVE_TOKENS``), or that file is
            unreadable or malformed: the API refuses to start rather than serve openly.
    """
    _configure_logging()
    settings = settings or ServingSettings()
    tokens = api_clients(settings)
    state = routes.AppState(settings, ModelHolder(settings, on_change=_on_model_change), tokens)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.holder.start()
        yield
        state.holder.stop()

    app = FastAPI(
        title="HealthPredict readmission API",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.holder = state.holder
    app.state.settings = settings
    app.add_middleware(ContainErrors)  # inside the metrics: a bug's 500 is counted
    app.add_middleware(metrics.MetricsMiddleware)
    app.add_exception_handler(RequestValidationError, validation_error)
    routes.add_probe_routes(app, state)
    routes.add_predict_route(app, state)
    routes.add_reload_route(app, state)
    routes.add_metrics_route(app, state)
    app.openapi = _openapi(app, settings.max_records)  # type: ignore[method-assign]
    return app
