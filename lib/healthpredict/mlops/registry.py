"""The MLflow model registry of HealthPredict: log, look up, load and promote model versions.

Versions carry everything a consumer needs as version tags (decision threshold, target, raw
schema hash, test metrics, data source, training time, hyperparameters), so the drift monitor
and the API never have to dig into runs. Roles are aliases, never stages:

- ``champion``: the model in service (the first model ever trained becomes champion);
- ``challenger``: the latest trained version that is not (yet) champion;
- ``previous``: the champion before the last promotion (for rollback).
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import pandas as pd

from healthpredict.core import constants
from healthpredict.core.constants import CHALLENGER, CHAMPION, PREVIOUS
from healthpredict.core.settings import get_settings
from healthpredict.data.schema import COLUMNS, FEATURE_COLUMNS, schema_hash
from healthpredict.mlops import tracking
from healthpredict.modeling.runtime import model_meta
from healthpredict.modeling.runtime.model_meta import ModelInfo

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

METRIC_TAG_PREFIX = model_meta.METRIC_TAG_PREFIX


def champion_uri(name: str | None = None) -> str:
    """URI of the champion of ``name`` (default: ``settings.model_name``)."""
    return constants.champion_uri(name or get_settings().model_name)


def _client():
    # mlflow costs ~3.4 s to import (measured): only when MLflow is talked to
    from mlflow import MlflowClient

    tracking.ensure_mlflow()
    return MlflowClient()


def alias_version(name: str, alias: str) -> str | None:
    """Version that ``alias`` points at, or None when the model or the alias does not exist."""
    # mlflow costs ~3.4 s to import (measured): only when MLflow is talked to
    from mlflow.exceptions import MlflowException

    try:
        return str(_client().get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if model_meta.is_missing_error(exc):
            return None
        raise


def _example_rows(frame: pd.DataFrame, n: int = 5) -> pd.DataFrame:
    """First ``n`` rows plus, per column, one row where it is present and one where it is missing.

    Signature inference needs a non-missing value to type a mostly-missing column (``weight``)
    and a missing one to mark a nullable column optional.
    """
    picked = list(frame.index[:n])
    for col in frame.columns:
        for mask in (frame[col].notna(), frame[col].isna()):
            if mask.any() and not mask.loc[picked].any():
                picked.append(mask.idxmax())
    return frame.loc[picked]


def _input_example(frame: pd.DataFrame) -> pd.DataFrame:

    cols = [c for c in FEATURE_COLUMNS if c in frame.columns]
    return _example_rows(frame[cols]).reset_index(drop=True)


def _nullable_as_schema(signature):
    """Mark inputs optional exactly where the raw schema allows missing values.

    Inference only sees the example rows, which may hold no missing ``diag_1`` although real
    encounters sometimes do.
    """
    # mlflow costs ~3.4 s to import (measured): only when MLflow is talked to
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    cols = [
        ColSpec(c.type, c.name, required=not (c.name in COLUMNS and COLUMNS[c.name].nullable))
        for c in signature.inputs.inputs
    ]
    return ModelSignature(inputs=Schema(cols), outputs=signature.outputs, params=signature.params)


def _requirements() -> list[str]:
    """Pinned runtime requirements of a logged pipeline.

    The pickled pipeline also refers to ``healthpredict.modeling.features`` by name, so whoever loads it
    needs the ``healthpredict`` package installed (the serving image and the notebooks do).
    """
    out = []
    for dist in ("mlflow", "scikit-learn", "pandas", "numpy", "scipy", "cloudpickle"):
        try:
            out.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            out.append(dist)
    return out


def log_model(
    pipeline: Pipeline,
    *,
    threshold: float,
    target: str,
    test_metrics: dict[str, float],
    input_example: pd.DataFrame,
    data_source: str,
    params: dict[str, Any],
    train_rows: int | None = None,
    calibration: str = "",
    name: str | None = None,
) -> ModelInfo:
    """Log a fitted pipeline in the active MLflow run and register it as a new version.

    The version gets the ``challenger`` alias; when the model has no ``champion`` yet, it is
    promoted at once (the first model ever trained becomes champion).

    Args:
        pipeline: Fitted sklearn pipeline taking raw encounter fields.
        threshold: Decision threshold on the positive-class probability.
        target: Label definition (``<30`` or ``any``).
        test_metrics: Metrics on the held-out test split (stored as ``metric.<k>`` tags).
        input_example: Raw encounter rows (a few are kept as the example; the target and any
            non-schema column are dropped).
        data_source: ``real`` or ``synthetic`` (the manifest's ``data_source``).
        params: Model family and hyperparameters (stored as JSON in the ``params`` tag).
        train_rows: Rows the model was fitted on (the gate's more-data rule reads it; None:
            not recorded).
        calibration: The calibration map inside the pipeline (``none``, ``sigmoid``,
            ``isotonic``).
        name: Registered model name (default ``settings.model_name``).

    Returns:
        The registered version.

    Raises:
        RuntimeError: No MLflow run is active.
    """
    # mlflow costs ~3.4 s to import (measured): only when MLflow is talked to
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("registry.log_model needs an active MLflow run (mlflow.start_run())")
    name = name or get_settings().model_name
    example = _input_example(input_example)
    with warnings.catch_warnings():
        # The hint about integer columns and missing values does not apply: the raw schema's
        # integer columns are never nullable.
        warnings.filterwarnings("ignore", message=".*[Ii]nteger column", category=UserWarning)
        signature = _nullable_as_schema(infer_signature(example, pipeline.predict_proba(example)))
    logged = mlflow.sklearn.log_model(
        pipeline,
        name="model",
        # cloudpickle: skops refuses tree models unless every tree type is whitelisted.
        serialization_format="cloudpickle",
        signature=signature,
        input_example=example,
        # pyfunc consumers (serving, monitoring) want risk probabilities, not hard labels.
        pyfunc_predict_fn="predict_proba",
        # Inferring requirements starts a subprocess that re-imports the model (~5 s).
        pip_requirements=_requirements(),
        registered_model_name=name,
    )
    version = str(logged.registered_model_version)
    client = _client()
    tags = {
        "threshold": repr(float(threshold)),
        "target": target,
        "schema_hash": schema_hash(),
        "data_source": data_source,
        "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "params": json.dumps(params, sort_keys=True, default=str),
        **({"train_rows": str(int(train_rows))} if train_rows is not None else {}),
        **({"calibration": calibration} if calibration else {}),
        **{f"{METRIC_TAG_PREFIX}{k}": repr(float(v)) for k, v in test_metrics.items()},
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, CHALLENGER, version)
    if alias_version(name, CHAMPION) is None:
        promote(name, version)
    return get_model_info(f"models:/{name}/{version}")


def set_version_tag(name: str, version: str, key: str, value: str) -> None:
    """Tag one registered version (e.g. ``model_card`` once its card is logged)."""
    _client().set_model_version_tag(name, version, key, value)


def get_model_info(model_uri: str) -> ModelInfo:
    """:func:`~healthpredict.modeling.runtime.model_meta.read_model_info` on the configured registry."""
    model_meta.parse_model_uri(model_uri)  # a malformed URI fails before MLflow is set up
    return model_meta.read_model_info(_client(), model_uri)


def load_pipeline(model_uri: str) -> tuple[Pipeline, ModelInfo]:
    """Load a registered version as the sklearn pipeline it was logged as.

    The version is resolved once, so the pipeline and the info always match even when the
    alias moves meanwhile. ``pipeline.steps[0][1]`` is the preprocessor.

    Args:
        model_uri: ``models:/Name@alias`` or ``models:/Name/3``.

    Returns:
        The fitted pipeline and its :class:`ModelInfo`.

    Raises:
        ModelNotFoundError: The model, alias or version does not exist.
    """
    # mlflow costs ~3.4 s to import (measured): only when MLflow is talked to
    import mlflow.sklearn

    info = get_model_info(model_uri)
    return mlflow.sklearn.load_model(info.model_uri), info


def promote(name: str, version: str | int) -> None:
    """Make ``version`` the champion of ``name``.

    The old champion gets ``previous``; ``challenger`` is removed if it pointed at ``version``.
    Promoting the current champion again changes nothing but the challenger alias.

    Raises:
        ModelNotFoundError: The version does not exist.
    """
    version = str(version)
    get_model_info(f"models:/{name}/{version}")  # fail clearly before touching any alias
    client = _client()
    old = alias_version(name, CHAMPION)
    if old is not None and old != version:
        # previous first: if the next call failed, serving would still see the old champion.
        client.set_registered_model_alias(name, PREVIOUS, old)
    if old != version:
        client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(
            name, version, "promoted_at", dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        )
    if alias_version(name, CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
