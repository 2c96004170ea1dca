"""The DAG Params that feed a notebook stage or the loop are the stage models' fields."""

from __future__ import annotations

import pytest

pytest.importorskip("airflow", reason="the airflow extra is not installed")

from dagtools import load_dags  # noqa: E402

from healthpredict.core.constants import MIN_BATCH_ROWS  # noqa: E402
from healthpredict.core.stages import (  # noqa: E402
    LoopParams,
    MonitorParams,
    RetrainParams,
    TrainParams,
)

# DAG param -> (model, field) for every DAG param that feeds a stage under any name.
FED = {
    "health_predict_training_hpo": {
        "n_trials": (TrainParams, "n_trials"),
        "families": (TrainParams, "families"),
        "cv_folds": (TrainParams, "cv_folds"),
        "study_storage": (TrainParams, "study_storage"),
        "mlflow_experiment_name": (TrainParams, "mlflow_experiment_name"),
        "retraining_data_path": (RetrainParams, "retraining_data_path"),
        "gate_data_path": (RetrainParams, "gate_data_path"),
        "retrain_n_trials": (RetrainParams, "n_trials"),
        "retrain_experiment_name": (RetrainParams, "mlflow_experiment_name"),
    },
    "health_predict_monitoring_retraining": {
        "batch_size": (LoopParams, "batch_size"),
        "retrain_window": (LoopParams, "retrain_window"),
        "label_delay_batches": (LoopParams, "label_delay_batches"),
        "label_timeout_batches": (LoopParams, "label_timeout_batches"),
        "label_source": (LoopParams, "label_source"),
        "mlflow_experiment_name": (MonitorParams, "mlflow_experiment_name"),
    },
}


@pytest.fixture(scope="module")
def dags():
    return load_dags()


@pytest.mark.parametrize("dag_id", FED)
def test_dag_params_are_the_models_fields(dags, dag_id):
    params = dags[dag_id].params
    for name, (model, field_name) in FED[dag_id].items():
        field = model.model_fields[field_name]
        param = params.get_param(name)
        assert param.value == field.get_default(call_default_factory=True), name
        assert param.description == field.description, name


def test_batch_size_minimum_is_the_monitors(dags):
    batch_size = dags["health_predict_monitoring_retraining"].params.get_param("batch_size")
    assert batch_size.schema["minimum"] == MIN_BATCH_ROWS
