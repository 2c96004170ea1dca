"""Training and monitoring DAGs end to end with ``dag.test()`` on tiny synthetic data.

One module-wide story, in file order: the training DAG prepares data, searches in two mapped
tasks sharing one Optuna study, and registers the study's best trial as the champion;
the future stream is rewritten into two batches (no drift, then ``older_patients`` drift); the
monitoring DAG runs on the first batch (monitored without labels: nothing to retrain on), fails
on a schema-broken batch without moving the cursor, runs on the second batch (the first one's
labels arrive, the growth trigger set low asks for a retraining on them), and ends on the
exhausted stream. The conf it sent then drives the training DAG's retraining branch, and
``healthpredict loop`` on the same stream and model makes the same decisions.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("airflow", reason="the airflow extra is not installed")

from dagtools import dag_run, load_dags, task_states, xcom  # noqa: E402

from healthpredict.core import (
    layout,
    storage,  # noqa: E402
)
from healthpredict.core.settings import get_settings  # noqa: E402
from healthpredict.core.stages import LoopParams
from healthpredict.modeling.models import split_trial_params
from healthpredict.monitoring import state as loop_state
from healthpredict.pipelines import local_loop, training
from healthpredict.runs.record import resolve_record

pytestmark = pytest.mark.slow

TRAINING = "health_predict_training_hpo"
MONITORING = "health_predict_monitoring_retraining"
BATCH = 250
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.fixture(scope="module")
def dags(airflow_db, dag_env):
    """``dags(dag_id, **conf)``: one ``dag.test()`` run of a freshly parsed DAG.

    Fresh, because ``dag.test()`` runs tasks in this process and a run's conf stays in the task
    objects' params; parsed with this module's settings (the Param defaults point into it).
    """

    def run(dag_id: str, **conf):
        return load_dags()[dag_id].test(run_conf=conf)

    return run


@pytest.fixture(scope="module")
def trained(dags, dag_env):
    """One training DAG run: prepares 4,000 synthetic encounters, searches in two tasks (2
    trials, 2-fold CV), then the notebook registers the best trial."""
    return dags(
        TRAINING,
        prepare_data=True,
        data_source="synthetic",
        n_synthetic=4000,
        initial_fraction=0.5,
        n_trials=2,
        cv_folds=2,
        families=["logreg"],
        search_tasks=2,
    )


@pytest.fixture(scope="module")
def stream(trained, dag_env):
    """future_data rewritten as two batches: unchanged rows, then rows tilted to older patients.

    Also a schema-broken copy (``A1Cresult`` dropped) for the failure test.
    """
    from healthpredict.data.split import load_split
    from tests.support import drift_scenarios

    future = load_split("future_data")
    drifted = drift_scenarios.apply("older_patients", future.iloc[500:750], strength=1.0)
    frame = pd.concat([future.iloc[250:500], drifted], ignore_index=True)
    storage.write_csv(storage.join(layout.processed_data(), "future_data.csv"), frame)
    faulty = drift_scenarios.apply("drop_column", frame)
    faulty_uri = storage.write_csv(str(dag_env / "faulty_stream.csv"), faulty)
    return {"frame": frame, "faulty_uri": faulty_uri}


# Any labelled rows the champion never learned from ask for a retraining: the story needs one.
MONITOR_PARAMS = {"growth_trigger": 0.01}


def monitor(dags, **conf):
    # Nothing runs the triggered training DAG under dag.test(): waiting would hang.
    return dags(
        MONITORING,
        batch_size=BATCH,
        wait_for_retraining=False,
        monitor_params=MONITOR_PARAMS,
        **conf,
    )


def run_dirs(notebook: str) -> list[Path]:
    return sorted(Path(get_settings().rendered_dir).glob(f"*-{notebook}-*"))


def run_json(run_dir: str | Path) -> dict:
    return resolve_record(storage.read_json(Path(run_dir) / "run.json"))


def sha256(path: Path) -> str:
    return storage.sha256(str(path))


def test_training_dag_prepares_trains_and_registers(trained):
    from healthpredict.mlops import registry

    assert trained.state == "success"
    assert task_states(trained) == {
        "choose_run_type": "success",
        "prepare_data": "success",
        "plan_search": "success",
        "search_worker": "success",
        "prepare_notebooks": "success",
        "run_eda": "success",
        "run_train_hpo": "success",
        "check_registration": "success",
        "prepare_retraining": "skipped",
        "run_retrain": "skipped",
        "record_retraining_result": "skipped",
    }
    checked = xcom(TRAINING, trained.run_id, "check_registration")
    assert checked["model_version"] == "1" and checked["promoted"] is True
    assert registry.get_model_info(registry.champion_uri()).version == "1"
    for notebook in ("01_eda", "02_train_hpo"):
        (folder,) = run_dirs(notebook)
        prov = run_json(folder)
        assert prov["status"] == "succeeded" and prov["data_source"] == "synthetic"
        assert prov["notebook_path"] == str(NOTEBOOKS / f"{notebook}.py")
        assert prov["notebook_sha256"] == sha256(NOTEBOOKS / f"{notebook}.py")
        assert prov["executor"]["dag_id"] == TRAINING
        assert (folder / f"{notebook}.html").stat().st_size > 10_000
        executed = storage.read_json(folder / f"{notebook}.ipynb")
        assert executed["metadata"]["papermill"]["input_path"] == f"notebooks/{notebook}.py"
        derived = storage.read_json(folder / f"{notebook}.input.ipynb")
        assert derived["metadata"]["kernelspec"]["name"] == "healthpredict"
    parameters = run_json(run_dirs("02_train_hpo")[0])["parameters"]
    assert parameters["n_trials"] == 2 and parameters["cv_folds"] == 2
    # The two mapped tasks each ran one trial of the run's study; the notebook refit its best.
    from healthpredict.modeling.studies import load_study

    study_name = training.search_study_name(trained.run_id)
    assert parameters["study_name"] == study_name
    jobs = xcom(TRAINING, trained.run_id, "plan_search")
    assert [(j["worker"], j["n_trials"]) for j in jobs] == [(0, 1), (1, 1)]
    study = load_study(study_name)
    assert sorted(t.user_attrs["worker"] for t in study.trials) == [0, 1]
    scraps = run_json(run_dirs("02_train_hpo")[0])["scraps"]
    assert scraps["best_params"] == split_trial_params(study.best_trial.params)[1]


def test_no_drift_batch_logs_and_advances_once(dags, stream):
    run = monitor(dags)
    states = task_states(run)
    assert run.state == "success", states
    assert states["log_no_retraining"] == "success"
    assert states["advance_state"] == "success"
    assert {states[t] for t in ("trigger_retraining_dag", "end_pipeline")} == {"skipped"}
    state = loop_state.LoopState.load()
    assert state.next_batch_start_index == BATCH and len(state.history) == 1
    entry = state.history[0]
    assert (entry["start"], entry["end"], entry["drift_status"]) == (0, BATCH, "NO_DRIFT")
    assert Path(entry["batch_uri"]).name == "batch_0000000.csv"
    assert entry["model_uri"] == "models:/HealthPredict/1"
    assert "readmitted" not in storage.read_csv(entry["batch_uri"]).columns
    assert entry["retrain"] is None and entry["labels"]["labelled"] == []
    assert [p["start"] for p in state.pending_labels] == [0]
    prov = run_json(entry["monitor_run_dir"])
    assert prov["status"] == "succeeded" and prov["scraps"]["drift_status"] == "NO_DRIFT"
    assert prov["given_parameters"]["labelled_data_path"] is None
    assert prov["notebook_sha256"] == sha256(NOTEBOOKS / "03_drift_monitor.py")
    assert prov["parameters"]["mlflow_model_uri"] == "models:/HealthPredict/1"
    assert entry["batch_uri"] in prov["inputs"]["new_data_path"]
    assert Path(entry["monitor_run_dir"]).parent == Path(get_settings().rendered_dir)
    assert any(Path(entry["monitor_run_dir"], "reports").glob("*.html"))


def test_failing_notebook_fails_the_task_and_keeps_the_state(dags, stream):
    before = loop_state.LoopState.load()
    run = monitor(dags, s3_full_future_data_path=stream["faulty_uri"])
    states = task_states(run)
    assert run.state == "failed", states
    assert states["run_drift_monitoring"] == "failed"
    assert states["decide_on_retraining"] == "upstream_failed"
    assert states["advance_state"] == "upstream_failed"
    assert loop_state.LoopState.load() == before  # the same batch is processed again next time
    failed = run_json(run_dirs("03_drift_monitor")[-1])
    assert failed["status"] == "failed" and "A1Cresult" in failed["error"]["evalue"]


def test_drifted_batch_triggers_retraining(dags, stream):
    run = monitor(dags)
    states = task_states(run)
    assert run.state == "success", states
    assert states["trigger_retraining_dag"] == "success"
    assert states["log_no_retraining"] == "skipped"
    # Not awaited, so whether it promoted is unknown: nothing is deployed.
    assert states["trigger_deployment_after_retraining"] == "skipped"
    assert states["advance_state"] == "success"
    state = loop_state.LoopState.load()
    assert state.next_batch_start_index == 2 * BATCH and len(state.history) == 2
    entry = state.history[1]
    assert entry["start"] == BATCH and entry["end"] == 2 * BATCH
    assert entry["drift_status"] == "DRIFT_DETECTED"  # reported; the decision is the monitor's
    assert "data_growth" in entry["retrain_triggers"]
    trigger_run_id = f"retrain__{run.run_id}"
    assert entry["retrain"] == {"triggered_run_id": trigger_run_id, "awaited": False}
    # The batch the failed run had overwritten was cut again from the good stream.
    batch = storage.read_csv(entry["batch_uri"])
    assert "A1Cresult" in batch.columns and len(batch) == BATCH
    # The first batch's labels arrived with this one: measured by the monitor, learned from.
    labelled = [layout.labelled_csv("labelled_0000000.csv")]
    assert entry["labels"]["labelled"] == labelled and state.new_labelled == labelled
    given = run_json(entry["monitor_run_dir"])["given_parameters"]
    assert given["labelled_data_path"] == labelled and given["new_labelled_rows"] == BATCH
    _, conf = dag_run(TRAINING, trigger_run_id)
    assert conf == {
        "is_retraining_run": True,
        "retraining_data_path": labelled,
        "gate_data_path": labelled,
        "mlflow_model_name": "HealthPredict",
        "promote": True,  # not awaited: the retraining moves the alias itself
    }


def test_exhausted_stream_ends_the_pipeline(dags, stream):
    before = loop_state.LoopState.load()
    run = monitor(dags)
    states = task_states(run)
    assert run.state == "success", states
    assert states["end_pipeline"] == "success"
    assert states["get_production_model_uri"] == "skipped"
    assert states["advance_state"] == "skipped"
    assert loop_state.LoopState.load() == before


def test_loop_makes_the_same_decisions_as_the_dag(dag_env, stream):
    history = loop_state.LoopState.load().history
    outcomes = local_loop.run_loop(
        LoopParams(
            batch_size=BATCH, model_uri=history[0]["model_uri"]
        ),  # the version the DAG pinned
        local_loop.LoopOptions(
            root=str(dag_env / "loop"),
            monitor_params=MONITOR_PARAMS,
            retrain_params={"n_trials": 1},
        ),
    )
    assert [
        (o.window.start, o.window.end, o.drift_status, o.triggers, o.labels["labelled_rows"])
        for o in outcomes
    ] == [
        (
            h["start"],
            h["end"],
            h["drift_status"],
            h["retrain_triggers"],
            h["labels"]["labelled_rows"],
        )
        for h in history
    ]


def test_the_triggered_conf_runs_the_retraining_branch(dags, stream):
    from healthpredict.monitoring import state as loop_state

    monitoring_run = loop_state.LoopState.load().history[1]["retrain"]["triggered_run_id"]
    _, conf = dag_run(TRAINING, monitoring_run)
    run = dags(TRAINING, **conf, retrain_n_trials=2)
    states = task_states(run)
    assert run.state == "success", states
    assert states["record_retraining_result"] == "success"
    assert states["prepare_data"] == "skipped" and states["run_train_hpo"] == "skipped"
    assert states["plan_search"] == states["search_worker"] == "skipped"
    assert states["prepare_notebooks"] == "skipped"  # none_failed_min_one_success: all skipped
    outcome = storage.read_json(training.retrain_result_uri(run.run_id))
    assert outcome["decision"] in ("PROMOTED", "REJECTED")
    assert outcome["promoted"] is (outcome["decision"] == "PROMOTED")
    assert outcome["retraining_data_path"] == conf["retraining_data_path"]
    assert xcom(TRAINING, run.run_id, "record_retraining_result", "decision") == outcome["decision"]
    assert xcom(TRAINING, run.run_id, "record_retraining_result", "promoted") is outcome["promoted"]
    assert run_json(outcome["run_dir"])["status"] == "succeeded"
