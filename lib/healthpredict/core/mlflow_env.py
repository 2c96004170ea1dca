"""Where MLflow looks: the tracking/registry URI and the S3 endpoint, from the settings.

The part of the MLflow set-up that recording runs (:mod:`healthpredict.mlops.tracking`) and
serving a model (:mod:`healthpredict.serving.model_store`) share. Importing this module does not
import MLflow.
"""

from __future__ import annotations

import os
from pathlib import Path

from healthpredict.core.settings import get_settings

SQLITE_PREFIX = "sqlite:///"


def absolute_sqlite(uri: str) -> str:
    """Make a relative sqlite path absolute so that a kernel with another cwd finds the same db.

    The folder of the file is created; other URIs (and ``:memory:``) are returned as given.
    """
    if not uri.startswith(SQLITE_PREFIX):
        return uri
    path = Path(uri[len(SQLITE_PREFIX) :])
    if str(path) == ":memory:":
        return uri
    path = path.expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"{SQLITE_PREFIX}{path}"


def point_mlflow(env_defaults: dict[str, str], tracking_uri: str | None = None) -> str:
    """Point MLflow (tracking and registry) at the configured store.

    Args:
        env_defaults: MLflow environment variables to set unless already set (retry bounds...).
        tracking_uri: Override; default ``settings.mlflow_tracking_uri``.

    Returns:
        The tracking URI in use (a relative sqlite path made absolute).
    """
    # mlflow costs seconds to import: only when a store is actually used.
    import mlflow

    settings = get_settings()
    uri = absolute_sqlite(tracking_uri or settings.mlflow_tracking_uri)
    for name, value in env_defaults.items():
        os.environ.setdefault(name, value)
    if settings.s3_endpoint_url:
        # MLflow's own S3 client writes the artifacts under an s3:// storage: same endpoint.
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", settings.s3_endpoint_url)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri
