"""Training, then monitoring with an awaited retraining, under a real Airflow scheduler.

One story on an empty world, every run triggered and read through the REST API of a real
Airflow 3 (scheduler, DAG processor, API server, LocalExecutor, metadata DB on PostgreSQL):

1. ``health_predict_training_hpo`` prepares 4,000 synthetic encounters and trains the first
   champion (2 trials, logistic regression): the champion the monitoring runs use is the DAG's.
2. The future stream is written as two batches of 400 and passed as
   ``s3_full_future_data_path`` (a local path): batch 0 with its features unchanged but its
   labels redrawn from the inverted risk relation (``concept_drift``, 1.0: invisible until its
   labels arrive), batch 1 tilted to older patients (``older_patients``, 1.0: data drift).
3. ``health_predict_monitoring_retraining`` runs on each batch with ``wait_for_retraining``
   (its default) and ``label_delay_batches`` 1. Batch 0 has no labels yet: ``NO_DRIFT`` ->
   ``log_no_retraining``. With batch 1 the labels of batch 0 arrive: the realised ROC AUC has
   dropped, so ``DRIFT_DETECTED`` -> ``trigger_retraining_dag``, which starts the training
   DAG's retraining branch (``promote: false``) and waits for it; its gate promotes (the
   challenger learned the new relation), ``advance_state`` records the promotion and moves the
   alias (write-ahead), and ``trigger_deployment_after_retraining`` triggers the deployment.
   Data drift alone is reported, not acted on (``healthpredict.monitoring.policy``): the
   retraining is asked for by the realised drop.

Data drift here counts from 10% of the monitored columns (``drift_share_threshold``): on batch
0, one column of 33 crosses its calibrated threshold (a false alarm the per-column calibration
allows); batch 1 has 4 drifted columns and drifted predictions. The deployment DAG is paused
(there is no cluster to roll out to): the run a promotion triggers stays queued, which shows it
was triggered.

Measured here (2 cores shared with other work): 3.5 minutes at a load average ~2 (training
55 s, batch 0 38 s, batch 1 with the awaited retraining 67 s, of which up to 30 s is the
trigger's poke interval; Airflow's start ~30 s, stop ~8 s); 4.5 minutes at a load average ~4.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

from tests.support.dag_paths import MONITOR_COMMON, NO_RETRAINING_PATH

pytestmark = pytest.mark.slow

TRAINING = "health_predict_training_hpo"
MONITORING = "health_predict_monitoring_retraining"
DEPLOYMENT = "health_predict_api_deployment"
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
BATCH = 400
TRAINING_CONF = {
    "prepare_data": True,
    "data_source": "synthetic",
    "n_synthetic": 4000,
    "initial_fraction": 0.5,
    "n_trials": 2,
    "cv_folds": 2,
    "families": ["logreg"],
}
# Data drift from 10% of the columns (see the module doc).
MONITOR_PARAMS = {"drift_share_threshold": 0.1}
NO_DRIFT_RUN, DRIFT_RUN = "monitor_batch_0_no_drift", "monitor_batch_1_drift"
RETRAIN_RUN = f"retrain__{DRIFT_RUN}"

# search_tasks 0 (the default): the mapped search task has no job and is skipped, the notebook
# searches by itself (tests/dags runs the fan-out).
TRAIN_PATH = {
    "choose_run_type": "success",
    "prepare_data": "success",
    "plan_search": "success",
    "search_worker": "skipped",
    "prepare_notebooks": "success",
    "run_eda": "success",
    "run_train_hpo": "success",
    "check_registration": "success",
    "prepare_retraining": "skipped",
    "run_retrain": "skipped",
    "record_retraining_result": "skipped",
}
RETRAIN_PATH = {
    "choose_run_type": "success",
    "prepare_data": "skipped",
    "plan_search": "skipped",
    "search_worker": "skipped",
    "prepare_notebooks": "skipped",
    "run_eda": "skipped",
    "run_train_hpo": "skipped",
    "check_registration": "skipped",
    "prepare_retraining": "success",
    "run_retrain": "success",
    "record_retraining_result": "success",
}


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


def _states(airflow, dag_id: str, run_id: str) -> dict[str, str]:
    return {t: ti["state"] for t, ti in airflow.task_instances(dag_id, run_id).items()}


def _run(airflow, dag_id: str, run_id: str, conf: dict, timeout: float) -> dict:
    """Trigger one run, wait for it; returns the run, its task states and its wall time."""
    started = time.monotonic()
    airflow.trigger(dag_id, run_id, conf)
    (run,) = airflow.wait_for_runs(dag_id, [run_id], timeout=timeout).values()
    return {
        "run": run,
        "states": _states(airflow, dag_id, run_id),
        "seconds": round(time.monotonic() - started, 1),
    }


@pytest.fixture(scope="module")
def story(airflow_empty, empty_world):
    """The training run, the stream, and both monitoring runs (with the awaited retraining)."""
    import pandas as pd

    from healthpredict.core import storage
    from healthpredict.data.split import load_split
    from tests.support import drift_scenarios

    airflow = airflow_empty
    airflow.wait_for_dags(TRAINING, MONITORING, DEPLOYMENT)
    airflow.set_paused(DEPLOYMENT, True)
    trained = _run(airflow, TRAINING, "train_first_champion", TRAINING_CONF, timeout=600)
    assert trained["run"]["state"] == "success", (trained["states"], airflow.process_logs())

    # Batch 0: features unchanged (no data drift), labels redrawn from the inverted risk
    # relation (concept drift, seen only once its labels arrive); batch 1: tilted to older
    # patients (data drift). Batch 0's labels, due with batch 1, show the champion's drop and
    # are the gate's holdout pool: 400 rows hold enough positives for the gate to compare.
    future = load_split("future_data")
    start = 250  # past the rows closest to the initial period, as tests/dags does
    frame = pd.concat(
        [
            drift_scenarios.apply(
                "concept_drift", future.iloc[start : start + BATCH], strength=1.0
            ),
            drift_scenarios.apply(
                "older_patients", future.iloc[start + BATCH : start + 2 * BATCH], strength=1.0
            ),
        ],
        ignore_index=True,
    )
    stream_uri = storage.write_csv(str(empty_world.base / "stream.csv"), frame)
    conf = {
        "s3_full_future_data_path": stream_uri,
        "batch_size": BATCH,
        "label_delay_batches": 1,
        "wait_for_retraining": True,
        "monitor_params": MONITOR_PARAMS,
    }
    no_drift = _run(airflow, MONITORING, NO_DRIFT_RUN, conf, timeout=600)
    drift = _run(airflow, MONITORING, DRIFT_RUN, conf, timeout=900)
    # The wall time of each phase (shown with -rA or -s): the test's budget is ~10 minutes.
    print(
        {
            name: run["seconds"]
            for name, run in (
                ("training", trained),
                ("no drift", no_drift),
                ("drift + retraining", drift),
            )
        }
    )
    return {"trained": trained, "no_drift": no_drift, "drift": drift, "stream": frame}


def _decision(airflow, run_id: str) -> dict:
    return airflow.xcom(MONITORING, run_id, "decide_on_retraining", key="decision")


def test_the_training_dag_prepares_the_data_and_registers_the_first_champion(airflow_empty, story):

    trained = story["trained"]
    assert trained["states"] == TRAIN_PATH
    checked = airflow_empty.xcom(TRAINING, "train_first_champion", "check_registration")
    assert checked["model_version"] == "1" and checked["promoted"] is True


def test_the_no_drift_batch_is_logged_without_retraining(airflow_empty, empty_world, story):
    from healthpredict.monitoring.state import LoopState

    no_drift = story["no_drift"]
    assert no_drift["run"]["state"] == "success", no_drift["states"]
    assert no_drift["states"] == NO_RETRAINING_PATH
    decision = _decision(airflow_empty, NO_DRIFT_RUN)
    assert (decision["drift_status"], decision["retrain"]) == ("NO_DRIFT", False)
    assert decision["retraining_data"] == []  # no labels yet
    entry = LoopState.load().history[0]
    assert (entry["start"], entry["end"], entry["dag_run_id"]) == (0, BATCH, NO_DRIFT_RUN)
    assert entry["drift_status"] == "NO_DRIFT" and entry["retrain"] is None
    assert entry["model_uri"] == "models:/HealthPredict/1"  # the training DAG's champion


def test_the_drift_batch_triggers_an_awaited_retraining(airflow_empty, empty_world, story):
    from healthpredict.core import layout, storage
    from healthpredict.mlops import registry
    from healthpredict.monitoring.state import LoopState
    from healthpredict.pipelines import training

    drift = story["drift"]
    assert drift["run"]["state"] == "success", drift["states"]
    decision = _decision(airflow_empty, DRIFT_RUN)
    assert (decision["drift_status"], decision["retrain"]) == ("DRIFT_DETECTED", True)
    # The labels of batch 0 arrived: the champion's realised ROC AUC dropped.
    assert "realised_performance" in decision["triggers"], decision["reasons"]
    labelled = [layout.labelled_csv("labelled_0000000.csv")]
    assert decision["retraining_data"] == labelled and decision["gate_data"] == labelled

    # The training DAG's retraining branch ran, awaited, and left its gate's outcome.
    retrain_states = _states(airflow_empty, TRAINING, RETRAIN_RUN)
    assert retrain_states == RETRAIN_PATH
    retrain_run = airflow_empty.dag_run(TRAINING, RETRAIN_RUN)
    assert retrain_run["state"] == "success"
    assert retrain_run["conf"]["promote"] is False  # awaited: the monitoring DAG promotes
    assert retrain_run["conf"]["retraining_data_path"] == labelled
    # Awaited: the retraining ended before the monitoring run that triggered it.
    assert _time(retrain_run["end_date"]) <= _time(drift["run"]["end_date"])
    outcome = storage.read_json(training.retrain_result_uri(RETRAIN_RUN))
    assert (outcome["decision"], outcome["promoted"]) == ("PROMOTED", True), outcome["reason"]
    assert outcome["alias_moved"] is False  # promote: false, the monitoring DAG moves it
    assert airflow_empty.xcom(TRAINING, RETRAIN_RUN, "record_retraining_result", "promoted")
    assert drift["states"] == {
        **MONITOR_COMMON,
        "log_no_retraining": "skipped",
        "trigger_retraining_dag": "success",
        "trigger_deployment_after_retraining": "success",
    }

    # advance_state recorded the promotion, moved the alias and finished it.
    state = LoopState.load()
    entry = state.history[1]
    assert (entry["start"], entry["end"], entry["dag_run_id"]) == (BATCH, 2 * BATCH, DRIFT_RUN)
    assert state.next_batch_start_index == 2 * BATCH
    assert entry["retrain"]["triggered_run_id"] == RETRAIN_RUN
    assert (entry["retrain"]["decision"], entry["retrain"]["promoted"]) == ("PROMOTED", True)
    assert state.promotion is None  # nothing left half done
    assert state.new_labelled == []  # the new champion learned from batch 0's labels
    champion = registry.get_model_info(registry.champion_uri()).version
    assert champion == str(outcome["challenger_version"]) == "2"
    # The promotion triggered the (paused) deployment DAG.
    (deployment,) = airflow_empty.dag_runs(DEPLOYMENT).values()
    assert deployment["dag_run_id"] == f"deploy__{DRIFT_RUN}"
    assert deployment["conf"] == {"mlflow_model_name": "HealthPredict"}
    assert deployment["state"] == "queued"  # paused: nothing rolls out here


def test_only_the_drift_batch_started_a_training_run(airflow_empty, story):
    runs = airflow_empty.dag_runs(TRAINING)
    assert sorted(runs) == sorted(["train_first_champion", RETRAIN_RUN])
    assert runs["train_first_champion"]["run_type"] == "manual"  # through the REST API
    assert runs[RETRAIN_RUN]["run_type"] == "operator_triggered"  # by trigger_retraining_dag
    monitoring_runs = airflow_empty.dag_runs(MONITORING)
    assert sorted(monitoring_runs) == sorted([NO_DRIFT_RUN, DRIFT_RUN])


def test_every_notebook_task_left_a_succeeded_run_folder(empty_world, story):
    from healthpredict.core import storage

    # notebook -> (DAG, run, task) of each of its runs, in order
    expected = {
        "01_eda": [(TRAINING, "train_first_champion", "run_eda")],
        "02_train_hpo": [(TRAINING, "train_first_champion", "run_train_hpo")],
        "03_drift_monitor": [
            (MONITORING, NO_DRIFT_RUN, "run_drift_monitoring"),
            (MONITORING, DRIFT_RUN, "run_drift_monitoring"),
        ],
        "04_retrain": [(TRAINING, RETRAIN_RUN, "run_retrain")],
    }
    records = {}
    for notebook, executors in expected.items():
        runs = sorted(
            (
                (f, storage.read_json(str(f / "run.json")))
                for f in empty_world.rendered.glob(f"*-{notebook}-*")
            ),
            key=lambda run: run[1]["started_at"],
        )
        records[notebook] = [record for _, record in runs]
        found = [
            tuple(r["executor"][k] for k in ("dag_id", "run_id", "task_id"))
            for r in records[notebook]
        ]
        assert found == executors, [folder for folder, _ in runs]
        for folder, record in runs:
            assert record["status"] == "succeeded", (folder, record.get("error"))
            assert record["notebook_sha256"] == storage.sha256(str(NOTEBOOKS / f"{notebook}.py"))
            assert (folder / f"{notebook}.ipynb").stat().st_size > 0
            assert (folder / f"{notebook}.html").stat().st_size > 10_000
    # The scraps the DAG branched on, as the run folders keep them.
    assert [
        (r["scraps"]["drift_status"], r["scraps"]["retrain"]) for r in records["03_drift_monitor"]
    ] == [
        ("NO_DRIFT", False),
        ("DRIFT_DETECTED", True),
    ]
    (retrain,) = records["04_retrain"]
    assert (retrain["scraps"]["decision"], retrain["scraps"]["promoted"]) == ("PROMOTED", True)


def test_mlflow_holds_one_training_two_monitoring_and_one_retraining_run(empty_world, story):
    from mlflow.tracking import MlflowClient

    from healthpredict.core.constants import (
        MONITORING_EXPERIMENT,
        RETRAINING_EXPERIMENT,
        TRAINING_EXPERIMENT,
    )

    client = MlflowClient(tracking_uri=empty_world.mlflow_uri)

    def runs(experiment: str) -> list:
        found = client.get_experiment_by_name(experiment)
        assert found is not None, f"no MLflow experiment {experiment}"
        return client.search_runs(
            [found.experiment_id], filter_string="attributes.status = 'FINISHED'"
        )

    top_level = [r for r in runs(TRAINING_EXPERIMENT) if "mlflow.parentRunId" not in r.data.tags]
    assert [r.data.tags.get("stage") for r in top_level] == ["train"]
    monitoring = sorted(runs(MONITORING_EXPERIMENT), key=lambda r: r.info.start_time)
    assert [r.data.tags["drift_status"] for r in monitoring] == ["NO_DRIFT", "DRIFT_DETECTED"]
    assert [r.data.tags["retrain"] for r in monitoring] == ["false", "true"]
    retraining = [r for r in runs(RETRAINING_EXPERIMENT) if "mlflow.parentRunId" not in r.data.tags]
    assert [(r.data.tags.get("stage"), r.data.tags["promoted"]) for r in retraining] == [
        ("retrain", "true")
    ]
