"""What a registered model version was trained for, read from its registry tags.

One :class:`ModelInfo` type for the registry (which writes the tags) and the API (which reports
them at ``/model-info``). Reading needs an ``MlflowClient`` pointed at the registry; importing
this module does not import MLflow.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from healthpredict.core.constants import CHAMPION

METRIC_TAG_PREFIX = "metric."
_URI_RE = re.compile(r"^(?:models:/)?(?P<name>[^@/]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


class ModelNotFoundError(LookupError):
    """The registered model, version or alias does not exist; the message names which."""


@dataclass
class ModelInfo:
    """One registered model version and what it was trained for.

    Attributes:
        name: Registered model name.
        version: Version number, as a string.
        run_id: MLflow run that logged the model.
        model_uri: ``models:/<name>/<version>`` (stable, unlike an alias URI).
        aliases: Aliases currently on this version.
        threshold: Decision threshold on the positive-class probability.
        target: Label definition, ``<30`` or ``any``.
        trained_at: ISO timestamp (UTC) of the logging.
        test_metrics: Metrics on the held-out test split.
        schema_hash: Raw schema hash the model was trained against.
        data_source: ``real`` or ``synthetic`` (the manifest's ``data_source``).
        params: Model family and hyperparameters.
        train_rows: Rows it was fitted on (None: not recorded, older versions).
        calibration: Map from scores to risks inside the model (``none``, ``sigmoid``,
            ``isotonic``; empty: older versions, uncalibrated).
        model_card: Artifact URI of the version's model card (HTML; empty: none recorded).
    """

    name: str
    version: str
    run_id: str
    model_uri: str
    aliases: list[str] = field(default_factory=list)
    threshold: float = 0.5
    target: str = "<30"
    trained_at: str = ""
    test_metrics: dict[str, float] = field(default_factory=dict)
    schema_hash: str = ""
    data_source: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    train_rows: int | None = None
    calibration: str = ""
    model_card: str = ""


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """Name, alias and version of ``models:/Name@alias`` or ``models:/Name/3`` (one is None).

    Raises:
        ValueError: The URI is not a registry URI.
    """
    match = _URI_RE.match(uri.strip())
    if match is None:
        raise ValueError(
            f"{uri!r} is not a registry model URI; use models:/<name>@<alias> or "
            "models:/<name>/<version>"
        )
    return match["name"], match["alias"], match["version"]


def is_missing_error(exc: Exception) -> bool:
    """Whether an ``MlflowException`` says the model, version or alias does not exist."""
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")


def _float(text: str | None, default: float = math.nan) -> float:
    try:
        return float(text) if text is not None else default
    except ValueError:
        return default


def read_model_info(client: Any, model_uri: str) -> ModelInfo:
    """Describe the version behind ``models:/Name@alias`` or ``models:/Name/3``.

    Args:
        client: An ``MlflowClient`` pointed at the registry.
        model_uri: Registry URI (the ``models:/`` prefix is optional).

    Returns:
        The version's :class:`ModelInfo`.

    Raises:
        ModelNotFoundError: The model, alias or version does not exist.
        ValueError: The URI is not a registry URI.
    """
    # mlflow costs seconds to import: only when a registry is read (a MODEL_DIR API never does).
    import mlflow
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_uri(model_uri)
    try:
        if alias is not None:
            mv = client.get_model_version_by_alias(name, alias)
        else:
            mv = client.get_model_version(name, version)
    except MlflowException as exc:
        if not is_missing_error(exc):
            raise
        what = f"alias {alias!r}" if alias is not None else f"version {version}"
        raise ModelNotFoundError(
            f"registered model {name!r} has no {what} in {mlflow.get_tracking_uri()}"
            + (" (train a model first: healthpredict train)" if alias == CHAMPION else "")
        ) from None
    tags = dict(mv.tags or {})
    return ModelInfo(
        name=name,
        version=str(mv.version),
        run_id=mv.run_id,
        model_uri=f"models:/{name}/{mv.version}",
        aliases=sorted(mv.aliases or []),
        threshold=_float(tags.get("threshold"), 0.5),
        target=tags.get("target", ""),
        trained_at=tags.get("trained_at", ""),
        test_metrics={
            k[len(METRIC_TAG_PREFIX) :]: _float(v)
            for k, v in sorted(tags.items())
            if k.startswith(METRIC_TAG_PREFIX)
        },
        schema_hash=tags.get("schema_hash", ""),
        data_source=tags.get("data_source", ""),
        params=json.loads(tags["params"]) if tags.get("params") else {},
        train_rows=int(tags["train_rows"]) if tags.get("train_rows", "").isdigit() else None,
        calibration=tags.get("calibration", ""),
        model_card=tags.get("model_card", ""),
    )
