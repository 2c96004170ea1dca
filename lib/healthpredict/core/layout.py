"""Every path under the storage root, built in one place.

The storage root is ``./var`` by default or ``s3://bucket/prefix`` (``HP_STORAGE``). Functions
take an optional ``root`` so tests and benchmarks can point at another storage.
"""

from __future__ import annotations

from healthpredict.core.settings import get_settings
from healthpredict.core.storage import join

MANIFEST = "manifest.json"
RUN_JSON = "run.json"


def storage_root(root: str | None = None) -> str:
    """The storage root: ``root`` when given, else the configured one."""
    return root or get_settings().storage


def processed_data(root: str | None = None) -> str:
    """Folder of the prepared splits and their manifest."""
    return join(storage_root(root), "processed_data")


def split_csv(name: str, data_dir: str | None = None) -> str:
    """CSV of one prepared split (``initial_train``, ``validation``, ``test``, ``future_data``)."""
    return join(data_dir or processed_data(), f"{name}.csv")


def manifest(data_dir: str | None = None) -> str:
    """The manifest of the prepared splits."""
    return join(data_dir or processed_data(), MANIFEST)


def monitoring_dir(root: str | None = None) -> str:
    """Folder of the monitoring loop's state, lease, batches and references."""
    return join(storage_root(root), "monitoring")


def loop_state(root: str | None = None) -> str:
    """The loop's cursor and history."""
    return join(monitoring_dir(root), "state.json")


def loop_lease(root: str | None = None) -> str:
    """The lease that lets one loop runner at a time advance the state."""
    return join(monitoring_dir(root), "lease.json")


def batch_csv(name: str, root: str | None = None) -> str:
    """A materialised batch of the stream."""
    return join(monitoring_dir(root), "batches", name)


def labels_dir(root: str | None = None) -> str:
    """The label store: CSV files of ``encounter_id, readmitted`` as labels arrive."""
    return join(monitoring_dir(root), "labels")


def label_csv(name: str, root: str | None = None) -> str:
    """One file of the label store (the replay names its deliveries by batch start)."""
    return join(labels_dir(root), name)


def labelled_csv(name: str, root: str | None = None) -> str:
    """A monitored batch joined with its arrived labels: what retraining learns from."""
    return join(monitoring_dir(root), "labelled", name)


def reference_csv(name: str, root: str | None = None) -> str:
    """A reference written by the loop (e.g. a retraining's holdout)."""
    return join(monitoring_dir(root), "reference", f"{name}.csv")


def retrain_record(name: str, root: str | None = None) -> str:
    """The record of one retraining triggered by the monitoring DAG."""
    return join(monitoring_dir(root), "retrains", f"{name}.json")


def drift_cache(root: str | None = None) -> str:
    """Cache of drift calibrations, one folder per reference, batch size and model."""
    return join(storage_root(root), "drift_cache")


def deployment_record(name: str, root: str | None = None) -> str:
    """The record of one deployment DAG run."""
    return join(storage_root(root), "deployments", f"{name}.json")


def artifacts_root(root: str | None = None) -> str:
    """MLflow artifact root under the storage (local runs without an MLflow server)."""
    return join(storage_root(root), "mlartifacts")


def optuna_dir(root: str | None = None) -> str:
    """Folder of the local Optuna journal storages."""
    return join(storage_root(root), "optuna")
