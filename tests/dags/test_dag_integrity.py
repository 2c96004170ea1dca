"""The three DAGs parse with Airflow's DagBag and have the promised tasks, edges and params."""

from __future__ import annotations

import pytest

pytest.importorskip("airflow", reason="the airflow extra is not installed")

from dagtools import DAG_IDS, load_dags  # noqa: E402

MONITORING_EDGES = {
    ("get_iteration_state", "simulate_data_batch"),
    ("simulate_data_batch", "check_for_more_data"),
    ("check_for_more_data", "get_production_model_uri"),
    ("check_for_more_data", "end_pipeline"),
    ("get_production_model_uri", "run_drift_monitoring"),
    ("run_drift_monitoring", "decide_on_retraining"),
    ("decide_on_retraining", "trigger_retraining_dag"),
    ("decide_on_retraining", "log_no_retraining"),
    ("trigger_retraining_dag", "trigger_deployment_after_retraining"),
    # The cursor moves last, after either branch.
    ("log_no_retraining", "advance_state"),
    ("trigger_retraining_dag", "advance_state"),
    ("advance_state", "trigger_deployment_after_retraining"),
}
TRAINING_EDGES = {
    ("choose_run_type", "prepare_data"),
    # The search fan-out: one mapped search_worker per job of plan_search (none: skipped).
    ("prepare_data", "plan_search"),
    ("plan_search", "search_worker"),
    ("plan_search", "prepare_notebooks"),
    ("search_worker", "prepare_notebooks"),
    ("prepare_notebooks", "run_eda"),
    ("run_eda", "run_train_hpo"),
    ("run_train_hpo", "check_registration"),
    ("choose_run_type", "prepare_retraining"),
    ("prepare_retraining", "run_retrain"),
    ("run_retrain", "record_retraining_result"),
}
DEPLOYMENT_EDGES = {
    ("get_champion_version", "build_image"),
    ("build_image", "push_image"),
    ("push_image", "deploy_to_minikube"),
    ("deploy_to_minikube", "wait_for_rollout"),
    ("wait_for_rollout", "verify_model_info"),
}


def edges(dag) -> set[tuple[str, str]]:
    return {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}


@pytest.fixture(scope="module")
def dags():
    return load_dags()


def test_dagbag_has_the_three_dags_without_errors(dags):
    assert set(DAG_IDS) <= set(dags)
    for dag_id in DAG_IDS:
        dag = dags[dag_id]
        assert dag.render_template_as_native_obj is True, dag_id  # typed params in templates
        assert dag.schedule is None and dag.max_active_runs == 1 and not dag.catchup


@pytest.mark.parametrize(
    ("dag_id", "expected"),
    [
        ("health_predict_monitoring_retraining", MONITORING_EDGES),
        ("health_predict_training_hpo", TRAINING_EDGES),
        ("health_predict_api_deployment", DEPLOYMENT_EDGES),
    ],
)
def test_tasks_and_edges(dags, dag_id, expected):
    dag = dags[dag_id]
    assert edges(dag) == expected
    assert {t.task_id for t in dag.tasks} == {n for e in expected for n in e}


def test_monitoring_dag_wiring(dags):
    dag = dags["health_predict_monitoring_retraining"]
    tasks = {t.task_id: t for t in dag.tasks}
    values = {key: dag.params[key] for key in dag.params}
    assert values == {
        "s3_full_future_data_path": values["s3_full_future_data_path"],
        "s3_reference_data_path": values["s3_reference_data_path"],
        "batch_size": 2000,
        "mlflow_model_name": "HealthPredict",
        "mlflow_experiment_name": "HealthPredict_Monitoring",
        "wait_for_retraining": True,  # a promotion must not go unseen
        "retrain_window": None,  # cumulative: all labelled batches
        "label_delay_batches": 1,
        "label_timeout_batches": 3,
        "label_source": "replay",
        "monitor_params": {},
    }
    assert dag.params.get_param("label_source").schema["enum"] == ["replay", "external"]
    assert dag.params["s3_full_future_data_path"].endswith("processed_data/future_data.csv")
    assert dag.params["s3_reference_data_path"].endswith("processed_data/initial_train.csv")
    assert type(tasks["run_drift_monitoring"]).__name__ == "PapermillOperator"
    assert type(tasks["end_pipeline"]).__name__ == "EmptyOperator"
    retrain = tasks["trigger_retraining_dag"]
    assert type(retrain).__name__ == "TriggerDagRunOperator"
    assert retrain.trigger_dag_id == "health_predict_training_hpo"
    assert retrain.conf["is_retraining_run"] is True
    assert "['retraining_data']" in retrain.conf["retraining_data_path"]
    assert "['gate_data']" in retrain.conf["gate_data_path"]
    assert retrain.wait_for_completion == "{{ params.wait_for_retraining }}"
    deploy = tasks["trigger_deployment_after_retraining"]
    assert deploy.trigger_dag_id == "health_predict_api_deployment"
    assert tasks["advance_state"].trigger_rule == "none_failed_min_one_success"


def test_training_and_deployment_params(dags):
    training = dags["health_predict_training_hpo"].params
    assert training["prepare_data"] is False and training["is_retraining_run"] is False
    assert training["retraining_data_path"] is None
    deployment = dags["health_predict_api_deployment"].params
    assert deployment["dry_run"] is False and deployment["k8s_dir"] == "k8s/"
    assert training["search_tasks"] == 0 and training["study_storage"] is None
    tasks = {t.task_id: t for t in dags["health_predict_training_hpo"].tasks}
    assert type(tasks["search_worker"]).__name__.endswith("MappedOperator")
    # Runs without search tasks (mapped task skipped), stays skipped when retraining was chosen.
    assert tasks["prepare_notebooks"].trigger_rule == "none_failed_min_one_success"
    kinds = {t.task_id: type(t).__name__ for t in dags["health_predict_training_hpo"].tasks}
    assert {k for k, v in kinds.items() if v == "PapermillOperator"} == {
        "run_eda",
        "run_train_hpo",
        "run_retrain",
    }
