"""Airflow's own machinery for the DAG tests: a private AIRFLOW_HOME, a sqlite metadata DB.

Airflow reads its configuration when it is first imported, so the environment is set here, at
import time of this conftest (before any test module imports airflow). Settings of
``healthpredict`` (storage, MLflow, rendered runs) are isolated per module by :func:`dag_env`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO / "dags"
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="hp-airflow-home-")
atexit.register(shutil.rmtree, _AIRFLOW_HOME, ignore_errors=True)
os.environ.update(
    {
        "AIRFLOW_HOME": _AIRFLOW_HOME,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME}/airflow.db",
    }
)


@pytest.fixture(scope="session")
def airflow_db():
    """The metadata DB (sqlite in the private AIRFLOW_HOME), created once per session."""
    pytest.importorskip("airflow", reason="the airflow extra is not installed")
    from airflow.utils.db import initdb

    initdb()
    return Path(_AIRFLOW_HOME)


@pytest.fixture(scope="module")
def dag_env(tmp_path_factory):
    """Settings of one test module in a fresh folder: storage, MLflow sqlite, rendered runs.

    Module-scoped (DAG runs build on each other), so it patches the environment itself; the
    whole environment is restored afterwards, including what task runs exported into it.
    """
    from healthpredict.core.settings import get_settings

    tmp = tmp_path_factory.mktemp("dag_env")
    saved = dict(os.environ)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.update(
        {
            "HP_STORAGE": str(tmp / "var"),
            "HP_MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
            "HP_RENDERED_DIR": str(tmp / "rendered"),
            "HP_UCI_SOURCE": "synthetic",
        }
    )
    get_settings.cache_clear()
    try:
        yield tmp
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()
