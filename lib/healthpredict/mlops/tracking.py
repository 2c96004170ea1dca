"""MLflow set-up in one place: tracking URI from the settings, experiments with known artifacts.

``import mlflow`` costs seconds, so it happens inside the functions, never at import time.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from healthpredict.core import mlflow_env, storage
from healthpredict.core.settings import get_settings

log = logging.getLogger(__name__)
# A tracking server that is down fails a call in ~15 s (retries after 0, 2, 4 and 8 s) instead of
# MLflow's default of ~4 minutes (7 retries, doubling waits up to 2 minutes); the pipeline's runs
# are safe to repeat. Set the variables to override.
MLFLOW_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}
# Runs started under the monitoring loop's lease carry its holder, so that the next runner can
# close the runs of a holder that died (they would stay RUNNING forever).
LOOP_HOLDER_ENV = "HP_LOOP_HOLDER"
LOOP_HOLDER_TAG = "healthpredict.loop_holder"


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking store cannot be reached; the message names it."""


_configured_uri: str | None = None  # what setup_mlflow set in this process


def setup_mlflow(tracking_uri: str | None = None) -> str:
    """Point MLflow (tracking and registry) at the configured store.

    Also bounds MLflow's HTTP retries (:data:`MLFLOW_RETRY_DEFAULTS`, unless set in the
    environment) and points MLflow's S3 client at ``HP_S3_ENDPOINT_URL`` when that is set.

    Args:
        tracking_uri: Override; default ``settings.mlflow_tracking_uri``
            (``sqlite:///var/mlflow.db``). The folder of a sqlite file is created.

    Returns:
        The tracking URI in use (a relative sqlite path made absolute).
    """
    uri = mlflow_env.point_mlflow(MLFLOW_RETRY_DEFAULTS, tracking_uri)
    global _configured_uri
    _configured_uri = uri
    return uri


def ensure_mlflow() -> str:
    """The store :func:`setup_mlflow` pointed MLflow at, set up now if it has not been.

    Without it, a process whose first MLflow call is a registry lookup would use MLflow's own
    default (``./mlflow.db``), not the configured store.
    """
    return _configured_uri or setup_mlflow()


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
    # mlflow costs ~3.4 s to import (measured): only when MLflow is talked to
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
    # mlflow costs ~3.4 s to import (measured): only when MLflow is talked to
    import mlflow

    exp_id = experiment_id(name)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def check_reachable(tracking_uri: str | None = None) -> None:
    """Fail fast, naming the store, when the MLflow tracking store cannot be reached.

    Raises:
        TrackingUnavailableError: The server does not answer (after MLflow's bounded retries)
            or the database cannot be opened.
    """
    # mlflow costs ~3.4 s to import (measured): only when MLflow is talked to
    from mlflow import MlflowClient

    uri = setup_mlflow(tracking_uri)
    try:
        MlflowClient().search_experiments(max_results=1)
    except Exception as exc:
        raise TrackingUnavailableError(
            f"the MLflow tracking store {uri} cannot be reached ({type(exc).__name__}: {exc}); "
            "start it, or point HP_MLFLOW_TRACKING_URI at the right one. Nothing was done."
        ) from exc


def run_tags() -> dict[str, str]:
    """Tags for a run started under the monitoring loop's lease (empty outside the loop)."""
    holder = os.environ.get(LOOP_HOLDER_ENV)
    return {LOOP_HOLDER_TAG: holder} if holder else {}


def close_stale_runs(holder: str) -> list[str]:
    """End as KILLED the runs still RUNNING that a dead loop runner ``holder`` started.

    Their nested runs (search trials of a retraining) are ended too. Call only once the lease
    of ``holder`` was taken over: its process is gone, so its runs will never finish.

    Returns:
        The ids of the runs ended.
    """
    # mlflow costs ~3.4 s to import (measured): only when MLflow is talked to
    from mlflow import MlflowClient

    setup_mlflow()
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return []
    safe = holder.replace("'", "")
    stale = client.search_runs(
        ids, filter_string=f"tags.`{LOOP_HOLDER_TAG}` = '{safe}' and attributes.status = 'RUNNING'"
    )
    closed = [r.info.run_id for r in stale]
    for parent in list(closed):
        children = client.search_runs(
            ids,
            filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and attributes.status = 'RUNNING'",
        )
        closed.extend(r.info.run_id for r in children)
    for run_id in closed:
        client.set_tag(run_id, "healthpredict.killed", f"its loop runner {holder} died")
        client.set_terminated(run_id, status="KILLED")
    if closed:
        log.warning("ended %d run(s) of the dead loop runner %s as KILLED", len(closed), holder)
    return closed
