"""Fixtures of the fault tests: one champion trained per session, a fresh copy of it per test.

The session trains a logistic-regression champion on small synthetic data once. Each test gets
its own storage folder, MLflow sqlite store (a copy of the session's, so the champion is there),
rendered folder and loop state: a test may break, kill or corrupt whatever it likes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from fault_helpers import BATCH_ROWS, N_SYNTHETIC


@pytest.fixture(scope="session")
def champion(tmp_path_factory, synthetic_champion, settings_isolation):
    """Prepared synthetic splits, a registered logistic-regression champion, a warm drift cache.

    Session-scoped, so it sets the environment itself and restores it before the tests run:
    they get their settings from ``env``, and later test modules must not inherit these.
    """
    from healthpredict.core import layout
    from healthpredict.core.settings import get_settings
    from healthpredict.monitoring.reference import default_model_reference, prepare_reference

    base = tmp_path_factory.mktemp("faults-champion")
    patch = pytest.MonkeyPatch()
    settings_isolation(patch, base)
    try:
        # Half the encounters form the initial period (~3,400 training rows); 5,000 future rows.
        made = synthetic_champion(N_SYNTHETIC)
        info = made.info
        reference = str(Path(layout.processed_data()) / "initial_train.csv")
        # The calibration of the loop's batch size, computed once and copied into every test.
        prepare_reference(
            reference, default_model_reference(reference), made.pipeline, info, BATCH_ROWS
        )
    finally:
        patch.undo()
        get_settings.cache_clear()
    return SimpleNamespace(base=base, storage=base / "var", db=base / "mlflow.db", info=info)


@pytest.fixture
def env(champion, tmp_path, monkeypatch):
    """Settings pointing at a fresh copy of the champion's world; ``env.cli_env`` for children."""
    from healthpredict.core.settings import get_settings
    from healthpredict.data.split import load_split

    var = tmp_path / "var"
    for folder in ("processed_data", "drift_cache"):
        shutil.copytree(champion.storage / folder, var / folder)
    shutil.copy(champion.db, tmp_path / "mlflow.db")
    values = {
        "HP_STORAGE": str(var),
        "HP_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "HP_RENDERED_DIR": str(tmp_path / "rendered"),
        "HP_UCI_SOURCE": "synthetic",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("HP_LOOP_HOLDER", raising=False)
    get_settings.cache_clear()
    data_dir = var / "processed_data"
    yield SimpleNamespace(
        tmp=tmp_path,
        storage=var,
        data_dir=data_dir,
        rendered=tmp_path / "rendered",
        monitoring=var / "monitoring",
        info=champion.info,
        future=load_split("future_data", str(data_dir)),
    )
    get_settings.cache_clear()
