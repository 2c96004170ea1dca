"""Why a model could not be loaded, in one line a person can act on (it is shown by ``/ready``).

Network and database failures name the store that failed and the setting that points at it;
credentials in URLs are never shown.
"""

from __future__ import annotations

import os
import re

from healthpredict.core.settings import get_settings
from healthpredict.modeling.runtime.model_meta import ModelNotFoundError

_UNREACHABLE = re.compile(
    r"ConnectionError|Connection refused|Max retries exceeded|Timeout|timed out|"
    r"OperationalError|DatabaseError|unable to open database|Name or service not known|NoCredentials|EndpointConnection",
    re.IGNORECASE,
)
_CREDENTIALS = re.compile(r"(?<=://)[^/\s@'\"]+@")


class ModelLoadError(RuntimeError):
    """A model could not be loaded; ``reason`` is one line a person can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def redact(text: str) -> str:
    """A URL's credentials (``scheme://<user>:<password>@host``) as ``***``: /ready is public."""
    return _CREDENTIALS.sub("***@", text)


def _s3_endpoint() -> str:
    for name in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(name):
            return f"{os.environ[name]} ({name})"
    return "AWS S3 (no MLFLOW_S3_ENDPOINT_URL set)"


def _unreachable_store(chain: list[BaseException]) -> str:
    """Which store failed, with the setting that names it: the S3 artifact store or the registry."""
    if any(type(e).__module__.split(".")[0] in ("botocore", "boto3", "s3transfer") for e in chain):
        return f"artifact store {_s3_endpoint()}"
    return f"MLflow registry {get_settings().mlflow_tracking_uri} (MLFLOW_TRACKING_URI)"


def describe_error(exc: BaseException) -> str:
    """One line a person can act on, without credentials.

    Network and database failures read ``model store unreachable: <which store and its
    setting>: <root cause> [<outermost error>]``; a missing model ``model not found: ...``.
    """
    if isinstance(exc, ModelLoadError):
        return redact(exc.reason)
    if isinstance(exc, ModelNotFoundError):
        return redact(f"model not found: {exc}")
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    lines = [f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}" for e in chain]
    first = lines[0][:300]
    if _UNREACHABLE.search(" <- ".join(f"{type(e).__name__}: {e}" for e in chain)):
        root = lines[-1][:200]
        detail = root if len(chain) == 1 else f"{root} [{first}]"
        return redact(f"model store unreachable: {_unreachable_store(chain)}: {detail}")
    return redact(f"model load failed: {first}")
