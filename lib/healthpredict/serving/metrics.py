"""Prometheus metrics of the API and the ASGI middleware that records them.

With several worker processes set ``PROMETHEUS_MULTIPROC_DIR`` (an empty, writable folder) so
that ``/metrics`` adds up all workers; otherwise each process reports its own counts.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

ENDPOINTS = frozenset({"/health", "/ready", "/model-info", "/predict", "/reload", "/metrics"})
_METHODS = frozenset({"GET", "POST", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"})
_DOCS = frozenset({"/docs", "/openapi.json", "/redoc", "/docs/oauth2-redirect"})
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)

REQUESTS = Counter(
    "healthpredict_http_requests_total",
    "HTTP requests by endpoint, method and status.",
    ["endpoint", "method", "status"],
)
LATENCY = Histogram(
    "healthpredict_http_request_duration_seconds",
    "Time from request to the end of the response, by endpoint.",
    ["endpoint"],
    buckets=_LATENCY_BUCKETS,
)
PREDICTIONS = Counter(
    "healthpredict_predictions_total",
    "Records scored, by model version.",
    ["model_name", "model_version"],
)
BATCH_SIZE = Histogram(
    "healthpredict_predict_batch_records",
    "Records per /predict request.",
    buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 2000, 5000),
)
ERRORS = Counter(
    "healthpredict_request_errors_total",
    "Refused or failed requests by endpoint and kind (validation, too_large, media_type, "
    "not_ready, unauthorized, forbidden, busy, reload_failed, client_disconnect, internal).",
    ["endpoint", "kind"],
)
CLIENT_PREDICTIONS = Counter(
    "healthpredict_client_predictions_total",
    "Records scored, by API client id (the token file's; 'anonymous' with HP_SERVE_AUTH=off).",
    ["client"],
)
CLIENT_REQUESTS = Counter(
    "healthpredict_client_requests_total",
    "Answered /predict requests (200), by API client id.",
    ["client"],
)
AUTH_FAILURES = Counter(
    "healthpredict_auth_failures_total",
    "Refused /predict requests by reason: missing (no Authorization header), malformed (not "
    "'Bearer <token>'), unknown_token (401), scope (a known client without it, 403).",
    ["reason"],
)
TOKEN_FILE_LOADS = Counter(
    "healthpredict_token_file_loads_total",
    "Loads of the API clients' token file by outcome: ok, invalid or unreadable (then the last "
    "good clients stay in force).",
    ["outcome"],
)
API_CLIENTS = Gauge(
    "healthpredict_api_clients",
    "API clients in force (from the token file).",
    multiprocess_mode="liveall",
)
MODEL_INFO = Gauge(
    "healthpredict_model_info",
    "1 for the model version in service (labels: name, version, inference path).",
    ["model_name", "model_version", "inference_path"],
    multiprocess_mode="liveall",
)
MODEL_LOADED = Gauge(
    "healthpredict_model_loaded",
    "1 when a model is loaded and /ready is 200.",
    multiprocess_mode="liveall",
)
MODEL_LOADS = Counter(
    "healthpredict_model_loads_total", "Model loads (start-up and reloads) by outcome.", ["outcome"]
)


def endpoint_of(path: str) -> str:
    """Metric label of a request path; unknown paths share one label (bounded cardinality)."""
    if path in ENDPOINTS:
        return path
    return "docs" if path in _DOCS else "other"


def set_model(old: Any, new: Any) -> None:
    """Move the model-version gauge from the old model to the new one."""
    if old is not None:
        MODEL_INFO.labels(old.info.get("name", ""), old.version, old.predictor.path).set(0)
    MODEL_INFO.labels(new.info.get("name", ""), new.version, new.predictor.path).set(1)
    MODEL_LOADED.set(1)


def token_file_loaded(outcome: str, clients: int) -> None:
    """Count a (re)load of the token file and set the number of clients in force."""
    TOKEN_FILE_LOADS.labels(outcome).inc()
    API_CLIENTS.set(clients)


def render() -> tuple[bytes, str]:
    """Exposition text of all metrics (all workers in multiprocess mode) and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # only in multi-process mode (PROMETHEUS_MULTIPROC_DIR set)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware: request count and latency per endpoint (cheaper than BaseHTTP)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._children: dict[tuple[str, str, int], Any] = {}
        self._latency: dict[str, Any] = {}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """Time one HTTP request and count it with its final status."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            endpoint = endpoint_of(scope["path"])
            method = scope["method"] if scope["method"] in _METHODS else "other"
            key = (endpoint, method, status)
            counter = self._children.get(key)
            if counter is None:  # label lookup takes a lock; do it once per combination
                counter = self._children[key] = REQUESTS.labels(endpoint, method, str(status))
            counter.inc()
            hist = self._latency.get(endpoint)
            if hist is None:
                hist = self._latency[endpoint] = LATENCY.labels(endpoint)
            hist.observe(time.perf_counter() - start)
