"""HTTP plumbing of the API: JSON answers, error answers, request checks and error handlers.

Every refusal has the same shape (``{"detail": ..., "errors": [...]}``) and is counted in the
error metrics by endpoint and kind.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic_core import to_json

from healthpredict.serving import metrics
from healthpredict.serving.records import RequestError

log = logging.getLogger("healthpredict.serving")
CLIENT_CLOSED_REQUEST = 499  # as nginx logs it: the client left before the request was read
ERROR_KIND = {
    401: "unauthorized",
    403: "forbidden",
    409: "busy",
    413: "too_large",
    415: "media_type",
    422: "validation",
}


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    """``body`` as JSON with ``status`` (pydantic-core's serialiser: fast, handles numpy floats)."""
    # "strings": a non-finite float becomes "Infinity", never the invalid JSON token Infinity.
    return Response(
        to_json(body, inf_nan_mode="strings"),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def check_json_type(content_type: str | None) -> None:
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


def check_query(request: Request, endpoint: str, allowed: tuple[str, ...] = ()) -> None:
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


def error_response(
    endpoint: str,
    status: int,
    detail: str,
    kind: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Count the refusal in the error metrics and answer ``{"detail": detail}``."""
    metrics.ERRORS.labels(endpoint, kind or ERROR_KIND.get(status, "other")).inc()
    return json_response(status, {"detail": detail}, headers)


async def read_body(request: Request, limit: int) -> bytes:
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


async def validation_error(request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's own validation errors (``/reload?force=x``) in the API's error format."""
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
    return json_response(
        422, {"detail": f"{len(problems)} problem(s) in the request", "errors": problems}
    )


class ContainErrors:
    """Pure ASGI middleware: a bug is answered 500 with its type; the log says where, not what.

    An exception's message can quote request values (a patient's record), so the log gets the
    type and the traceback's frames only, and the answer the type only (no internals leak).
    Nothing is re-raised: Starlette's outermost error middleware would hand the exception to
    uvicorn, which logs its message.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """Run the request; contain an exception that escapes it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_started(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_started)
        except Exception as exc:
            path = scope.get("path", "")
            frames = "".join(traceback.format_tb(exc.__traceback__)).rstrip()
            log.error(
                "unhandled error on %s: %s (its message is not logged: it may quote the "
                "request)\nTraceback (most recent call last):\n%s",
                path,
                type(exc).__name__,
                frames,
            )
            metrics.ERRORS.labels(metrics.endpoint_of(path), "internal").inc()
            if not started:
                answer = json_response(500, {"detail": f"internal error: {type(exc).__name__}"})
                await answer(scope, receive, send)
