"""Helpers of the fault tests: child processes, run records, MLflow and registry look-ups."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

N_SYNTHETIC = 10_000
BATCH_ROWS = 500
MONITOR = "03_drift_monitor"
RETRAIN = "04_retrain"


def free_port() -> int:
    """A TCP port nobody listens on (right now) on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a ``healthpredict`` child process: this one's settings plus ``extra``."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def cli_command(*args: str) -> list[str]:
    """The ``healthpredict`` command line, run by this interpreter."""
    return [sys.executable, "-m", "healthpredict.cli", *args]


def run_cli(*args: str, cwd: Path, timeout: float = 300, **extra: str):
    """Run ``healthpredict ARGS`` to the end; returns the completed process (text output)."""
    return subprocess.run(
        cli_command(*args),
        cwd=cwd,
        env=cli_env(**extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_records(rendered: Path, notebook: str | None = None) -> list[dict]:
    """Every ``run.json`` under the rendered folder (optionally of one notebook), read back with
    this machine's paths (run.json names them portably: ``<rendered>/...``, ``<storage>/...``)."""
    from healthpredict.runs.record import resolve_record

    found = [
        resolve_record(json.loads(p.read_text()), rendered=str(rendered))
        for p in sorted(rendered.glob("*/run.json"))
    ]
    return [r for r in found if notebook is None or r["notebook"] == notebook]


def run_dirs(rendered: Path, notebook: str) -> list[Path]:
    """Run folders of ``notebook`` under the rendered folder, with or without a ``run.json``."""
    return sorted(p for p in rendered.glob(f"*-{notebook}-*") if p.is_dir())


def mlflow_runs(experiment: str = "HealthPredict_Monitoring") -> list:
    """Runs of an experiment in the configured MLflow store (all statuses)."""
    from mlflow import MlflowClient

    from healthpredict.mlops import tracking

    tracking.setup_mlflow()
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


def aliases(name: str = "HealthPredict") -> dict[str, str]:
    """Alias -> version of the registered model, and the number of versions under ``#``."""
    from mlflow import MlflowClient

    from healthpredict.mlops import tracking

    tracking.setup_mlflow()
    client = MlflowClient()
    model = client.get_registered_model(name)
    versions = client.search_model_versions(f"name = '{name}'")
    return {**{a: str(v) for a, v in (model.aliases or {}).items()}, "#": str(len(versions))}


def state_bytes(monitoring: Path) -> bytes | None:
    """The loop's ``state.json`` as bytes (None when the loop never saved one)."""
    path = monitoring / "state.json"
    return path.read_bytes() if path.exists() else None


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
