"""MLflow set-up in one place: tracking URI from the settings, experiments with known artifacts.

``import mlflow`` costs seconds, so it happens inside the functions, never at import time.
"""

from __future__ import annotations

from pathlib import Path

from healthpredict import storage
from healthpredict.config import get_settings

_SQLITE_PREFIX = "sqlite:///"


def _absolute_sqlite(uri: str) -> str:
    """Make a relative sqlite path absolute so that a kernel with another cwd finds the same db."""
    path = Path(uri[len(_SQLITE_PREFIX) :])
    if str(path) == ":memory:":
        return uri
    path = path.expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"{_SQLITE_PREFIX}{path}"


def setup_mlflow(tracking_uri: str | None = None) -> str:
    """Point MLflow (tracking and registry) at the configured store.

    Args:
        tracking_uri: Override; default ``settings.mlflow_tracking_uri``
            (``sqlite:///var/mlflow.db``). The folder of a sqlite file is created.

    Returns:
        The tracking URI in use (a relative sqlite path made absolute).
    """
    import mlflow

    uri = tracking_uri or get_settings().mlflow_tracking_uri
    if uri.startswith(_SQLITE_PREFIX):
        uri = _absolute_sqlite(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def artifact_location(name: str) -> str | None:
    """Where the artifacts of experiment ``name`` go: ``<storage>/mlartifacts/<name>``.

    A local storage becomes an absolute ``file://`` URI, an S3 storage stays ``s3://``. With a
    remote tracking server and a local storage the server decides (None): a path on this machine
    would mean nothing to the server's other clients.
    """
    root = get_settings().storage
    if storage.is_s3(root):
        return storage.join(root, "mlartifacts", name)
    tracking = get_settings().mlflow_tracking_uri
    if tracking.startswith(("http://", "https://", "databricks")):
        return None
    return (Path(root).expanduser().resolve() / "mlartifacts" / name).as_uri()


def experiment_id(name: str) -> str:
    """Id of experiment ``name``, created (or restored from deletion) when needed.

    Call :func:`setup_mlflow` first. Safe when several processes create it at once.

    Args:
        name: Experiment name, e.g. ``HealthPredict_Training``.

    Returns:
        The experiment id.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(name))
    except MlflowException:
        # Another process created it between our lookup and our create.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def use_experiment(name: str) -> str:
    """Make ``name`` the active experiment (created as in :func:`experiment_id`); return its id."""
    import mlflow

    exp_id = experiment_id(name)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id
