"""Fixtures of the tests against a real Airflow: PostgreSQL, a champion, Airflow's services.

``postgres`` (tests/conftest.py) is one private cluster per session. ``airflow_world`` prepares a module's Health Predict world (storage, MLflow
sqlite with a registered champion, a warm drift cache) in a fresh folder and points this
process's settings at it; ``airflow`` starts Airflow's scheduler, DAG processor and API server
with the same settings in their environment (the tasks read them), a metadata database of its
own on the cluster, and stops every process it started at the end of the module.
``empty_world`` and ``airflow_empty`` are the same without data or champion: the DAGs make them.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO / "dags"
N_SYNTHETIC = 4000  # half of it the initial period: ~1,400 training rows, 2,000 future rows
BATCH_ROWS = 250
# What the DAG files and their tasks import: imported once by the scheduler and the DAG
# processor, not again (seconds of CPU each) by every task process they fork.
PRELOAD = (
    "airflow.providers.papermill.operators.papermill",
    "airflow.providers.standard.operators.trigger_dagrun",
    "healthpredict.pipelines.deployment",
    "healthpredict.pipelines.monitoring",
    "healthpredict.pipelines.training",
    "mlflow",
)


@pytest.fixture(scope="module")
def airflow_world(tmp_path_factory, synthetic_champion, settings_isolation):
    """Settings in a fresh folder, synthetic splits, a logistic-regression champion, and the
    drift monitor's calibration for ``BATCH_ROWS`` already cached (as the fault tests do).

    Module-scoped: the settings stay patched in this process for the module (the tests read
    the loop state and take the lease with them) and are restored afterwards.
    """
    from healthpredict.core import layout
    from healthpredict.core.settings import get_settings
    from healthpredict.monitoring.reference import default_model_reference, prepare_reference

    # A short path: the folder is also the tasks' storage, named in every run record.
    base = tmp_path_factory.mktemp("airflow-world")
    patch = pytest.MonkeyPatch()
    settings_isolation(patch, base)
    patch.delenv("HP_LOOP_HOLDER", raising=False)
    try:
        made = synthetic_champion(N_SYNTHETIC)
        reference = str(Path(layout.processed_data()) / "initial_train.csv")
        prepare_reference(
            reference, default_model_reference(reference), made.pipeline, made.info, BATCH_ROWS
        )
        yield SimpleNamespace(
            base=base,
            storage=base / "var",
            state_file=base / "var" / "monitoring" / "state.json",
            info=made.info,
            batch_rows=BATCH_ROWS,
        )
    finally:
        patch.undo()
        get_settings.cache_clear()


def _serve(postgres):
    """Airflow 3 (LocalExecutor, metadata DB on ``postgres``) running the project's ``dags/``.

    The tasks run in processes Airflow starts: they get this process's settings (patched by
    the module's world fixture) through the environment, as the API server and DAG processor do.
    """
    pytest.importorskip("airflow", reason="the airflow extra is not installed")
    from tests.support.airflow_server import AirflowServer

    db_url = postgres.create_database(f"airflow_{uuid.uuid4().hex[:8]}")
    server = AirflowServer.start(db_url, DAGS_FOLDER, preload=PRELOAD)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def airflow(postgres, airflow_world):
    """Airflow serving ``airflow_world`` (see :func:`_serve`)."""
    yield from _serve(postgres)


@pytest.fixture(scope="module")
def empty_world(tmp_path_factory, settings_isolation):
    """Settings in a fresh folder and nothing else: no data, no model, no drift cache.

    For a module whose DAG runs prepare the data and train the first champion themselves.
    Module-scoped and patched in this process (the tests read the storage and MLflow store
    the tasks write), restored afterwards.
    """
    from healthpredict.core.settings import get_settings

    base = tmp_path_factory.mktemp("airflow-empty")
    patch = pytest.MonkeyPatch()
    settings_isolation(patch, base)
    patch.delenv("HP_LOOP_HOLDER", raising=False)
    try:
        yield SimpleNamespace(
            base=base,
            storage=base / "var",
            rendered=base / "rendered",
            mlflow_uri=f"sqlite:///{base / 'mlflow.db'}",
            state_file=base / "var" / "monitoring" / "state.json",
        )
    finally:
        patch.undo()
        get_settings.cache_clear()


@pytest.fixture(scope="module")
def airflow_empty(postgres, empty_world):
    """Airflow serving ``empty_world`` (see :func:`_serve`)."""
    yield from _serve(postgres)
