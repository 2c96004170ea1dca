"""Monitoring and retraining: one batch of the future stream per run.

Each run cuts the next batch of the stream at the loop's cursor (`LoopState` in
`<storage>/monitoring/state.json`, shared with `healthpredict loop`) and writes it without its
labels; it attaches the labels that arrived (in the replay, the loop delivers the labels of the
batch `label_delay_batches` back, as the hospital would), monitors the batch with the
`03_drift_monitor` notebook against the pinned champion (realised ROC AUC on the batches just
labelled), and branches on the notebook's `retrain` scrap: it triggers
`health_predict_training_hpo` with all labelled batches so far (`is_retraining_run: true`; the
gate's holdout comes from those the champion never learned from). `advance_state` moves the
cursor, labels and all, so a failed or killed run processes the same batch again; when the
retraining was awaited (`wait_for_retraining`, on by default) and its gate promoted, it records
the promotion in the loop state, then moves the champion alias (write-ahead: a run that finds an
unfinished promotion finishes it first), and `health_predict_api_deployment` follows.
`end_pipeline` marks an exhausted stream.
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.papermill.operators.papermill import PapermillOperator
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Param, task

from healthpredict.core import layout
from healthpredict.core.constants import REFERENCE_SPLIT, STREAM_SPLIT
from healthpredict.core.settings import get_settings
from healthpredict.core.stages import LABEL_SOURCES, LoopParams, MonitorParams, dag_params
from healthpredict.pipelines import monitoring
from healthpredict.runs.papermill_task import papermill_args

DAG_ID = "health_predict_monitoring_retraining"
TRAINING_DAG_ID = "health_predict_training_hpo"
DEPLOYMENT_DAG_ID = "health_predict_api_deployment"
_settings = get_settings()
_LOOP_PARAMS = dag_params(LoopParams, list(monitoring.LOOP_DAG_PARAMS))
_LOOP_PARAMS["label_source"]["enum"] = list(LABEL_SOURCES)

with DAG(
    dag_id=DAG_ID,
    description="Monitor the next batch, attach arrived labels; retrain and redeploy when the "
    "monitor asks.",
    schedule=None,
    start_date=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,  # the batch cursor is shared: one batch at a time
    render_template_as_native_obj=True,  # params and XCom values arrive typed in templates
    doc_md=__doc__,
    tags=["healthpredict", "monitoring"],
    params={
        "s3_full_future_data_path": Param(
            layout.split_csv(STREAM_SPLIT),
            type="string",
            description="Raw CSV of the future stream (local path or s3:// URI).",
        ),
        "s3_reference_data_path": Param(
            layout.split_csv(REFERENCE_SPLIT),
            type="string",
            description="Drift reference until a promotion sets the loop's own reference.",
        ),
        **{name: Param(**spec) for name, spec in _LOOP_PARAMS.items()},
        "mlflow_model_name": Param(_settings.model_name, type="string"),
        **{
            name: Param(**spec)
            for name, spec in dag_params(MonitorParams, ["mlflow_experiment_name"]).items()
        },
        # On by default: only an awaited retraining's promotion is seen (and deployed, and
        # makes its batches no longer new); tests under dag.test() turn it off (nothing runs
        # the triggered DAG there, so waiting would hang).
        "wait_for_retraining": Param(
            True,
            type="boolean",
            description="Wait for the retraining run, then deploy if it promoted a champion.",
        ),
        "monitor_params": Param(
            {}, type="object", description="Extra 03_drift_monitor parameters (thresholds...)."
        ),
    },
) as dag:

    @task
    def get_iteration_state():
        """The loop's cursor and recent batches, read under its lease."""
        return monitoring.iteration_state()

    @task
    def simulate_data_batch(ti=None, params=None):
        """Write the batch at the cursor without labels; deliver (replay) and attach labels."""
        return monitoring.simulate_batch(
            params["s3_full_future_data_path"],
            ti.xcom_pull(task_ids="get_iteration_state"),
            monitoring.loop_params(params),
        )

    @task.branch
    def check_for_more_data(ti=None):
        """Monitor the batch, or end: the stream is exhausted."""
        batch = ti.xcom_pull(task_ids="simulate_data_batch")
        return "get_production_model_uri" if batch["has_data"] else "end_pipeline"

    @task
    def get_production_model_uri(ti=None, params=None, run_id=None):
        """Pin the champion's version and prepare the 03_drift_monitor run."""
        how = monitoring.MonitorRun(
            model_name=params["mlflow_model_name"],
            reference_uri=params["s3_reference_data_path"],
            experiment_name=params["mlflow_experiment_name"],
            run_id=run_id,
            dag_id=DAG_ID,
            task_id="run_drift_monitoring",
            monitor_params=params["monitor_params"],
        )
        return monitoring.prepare_monitoring(
            ti.xcom_pull(task_ids="simulate_data_batch"),
            ti.xcom_pull(task_ids="get_iteration_state"),
            how,
        )

    run_drift_monitoring = PapermillOperator(
        task_id="run_drift_monitoring",
        **papermill_args("get_production_model_uri", "monitor"),
    )

    @task.branch
    def decide_on_retraining(ti=None, params=None):
        """Branch on the notebook's retrain scrap, as `healthpredict loop` decides."""
        decision = monitoring.decide_from_run(
            ti.xcom_pull(task_ids="get_production_model_uri")["monitor"],
            ti.xcom_pull(task_ids="get_iteration_state"),
            ti.xcom_pull(task_ids="simulate_data_batch"),
            params["retrain_window"],
        )
        ti.xcom_push(key="decision", value=decision)
        return "trigger_retraining_dag" if decision["retrain"] else "log_no_retraining"

    trigger_retraining_dag = TriggerDagRunOperator(
        task_id="trigger_retraining_dag",
        trigger_dag_id=TRAINING_DAG_ID,
        trigger_run_id="retrain__{{ run_id }}",
        conf={
            "is_retraining_run": True,
            "retraining_data_path": "{{ ti.xcom_pull(task_ids='decide_on_retraining', "
            "key='decision')['retraining_data'] }}",
            "gate_data_path": "{{ ti.xcom_pull(task_ids='decide_on_retraining', "
            "key='decision')['gate_data'] }}",
            "mlflow_model_name": "{{ params.mlflow_model_name }}",
            # Awaited, the promotion is this DAG's: advance_state records it, then moves the
            # alias (write-ahead); not awaited, the retraining promotes by itself.
            "promote": "{{ not params.wait_for_retraining }}",
        },
        wait_for_completion="{{ params.wait_for_retraining }}",
        poke_interval=30,
        reset_dag_run=True,  # a retried task re-runs its retraining instead of failing
    )

    trigger_deployment_after_retraining = TriggerDagRunOperator(
        task_id="trigger_deployment_after_retraining",
        trigger_dag_id=DEPLOYMENT_DAG_ID,
        trigger_run_id="deploy__{{ run_id }}",
        conf={"mlflow_model_name": "{{ params.mlflow_model_name }}"},
        pre_execute=monitoring.promotion_gate("trigger_retraining_dag"),
        reset_dag_run=True,
    )

    @task
    def log_no_retraining(ti=None):
        """No retraining (none asked for, or no labelled rows to learn from); on to the next."""
        decision = ti.xcom_pull(task_ids="decide_on_retraining", key="decision")
        print(
            f"{decision['skipped'] or 'no retraining: no signal asked for one'}; data drift "
            f"{decision['drift_status']} (drifted share {decision['drifted_share']}); "
            f"evidence in {decision['monitor_run_dir']}"
        )
        return decision

    end_pipeline = EmptyOperator(task_id="end_pipeline")

    # Runs when either branch succeeded (a skipped deployment is fine) and nothing failed; it
    # is skipped with the whole branch when the stream is exhausted.
    @task(trigger_rule="none_failed_min_one_success")
    def advance_state(ti=None, params=None, run_id=None):
        """Move the loop's cursor past the batch: the last step of a successful run."""
        decision = ti.xcom_pull(task_ids="decide_on_retraining", key="decision")
        trigger_run_id = None
        outcome = None
        if decision["retrain"]:
            trigger_run_id = ti.xcom_pull(task_ids="trigger_retraining_dag", key="trigger_run_id")
            outcome = monitoring.retraining_outcome(trigger_run_id, params["wait_for_retraining"])
        return monitoring.advance_state(
            ti.xcom_pull(task_ids="simulate_data_batch"),
            decision,
            model_uri=ti.xcom_pull(task_ids="get_production_model_uri")["model_uri"],
            retrain_outcome=outcome,
            trigger_run_id=trigger_run_id,
            dag_run_id=run_id,
        )

    state = get_iteration_state()
    batch = simulate_data_batch()
    more = check_for_more_data()
    model = get_production_model_uri()
    decide = decide_on_retraining()
    no_retraining = log_no_retraining()
    advance = advance_state()

    state >> batch >> more >> [model, end_pipeline]
    model >> run_drift_monitoring >> decide >> [trigger_retraining_dag, no_retraining]
    trigger_retraining_dag >> trigger_deployment_after_retraining
    [no_retraining, trigger_retraining_dag] >> advance
    # Deployed once the promotion is recorded and the alias moved; skipped with the branch.
    [trigger_retraining_dag, advance] >> trigger_deployment_after_retraining
