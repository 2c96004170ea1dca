"""Fixtures of the drift tests: one prepared synthetic data set and one registered model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

N_SYNTHETIC = 10_000
BATCH_ROWS = 500


@pytest.fixture(scope="module")
def drift_env(tmp_path_factory):
    """Isolated settings, prepared synthetic splits and a logistic-regression champion.

    Module-scoped (training and registering once per module), so it sets the environment itself
    instead of using the function-scoped ``hp_env``.
    """
    import mlflow

    from healthpredict import registry, tracking
    from healthpredict.config import get_settings
    from healthpredict.data.split import SplitParams, load_split, prepare
    from healthpredict.features import make_target
    from healthpredict.training import choose_threshold, make_pipeline

    tmp = tmp_path_factory.mktemp("drift")
    patch = pytest.MonkeyPatch()
    patch.setenv("HP_STORAGE", str(tmp / "var"))
    patch.setenv("HP_MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)
    patch.setenv("HP_RENDERED_DIR", str(tmp / "rendered"))
    patch.setenv("HP_UCI_SOURCE", "synthetic")
    get_settings.cache_clear()
    try:
        # Half the encounters form the initial period: ~3,400 / 730 / 730 rows per split.
        prepare("synthetic", params=SplitParams(initial_fraction=0.5), n_synthetic=N_SYNTHETIC)
        train, validation, test = (load_split(s) for s in ("initial_train", "validation", "test"))
        pipeline = make_pipeline("logreg", {"C": 1.0}, seed=0).fit(train, make_target(train))
        threshold = choose_threshold(
            make_target(validation), pipeline.predict_proba(validation)[:, 1]
        )
        tracking.setup_mlflow()
        tracking.use_experiment("HealthPredict_Training")
        with mlflow.start_run():
            info = registry.log_model(
                pipeline,
                threshold=threshold,
                target="<30",
                test_metrics={"roc_auc": 0.65},
                input_example=train,
                data_source="synthetic",
                params={"family": "logreg", "C": 1.0},
            )
        data_dir = Path(get_settings().processed_data)
        yield SimpleNamespace(
            tmp=tmp,
            data_dir=data_dir,
            info=info,
            pipeline=pipeline,
            # Rows of the reference period the model never saw: a batch without drift.
            clean_batch=test.iloc[:BATCH_ROWS].reset_index(drop=True),
            validation_uri=str(data_dir / "validation.csv"),
        )
    finally:
        patch.undo()
        get_settings.cache_clear()
