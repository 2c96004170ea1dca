"""Training with hyperparameter search, or retraining through the promotion gate.

A normal run (re)uses the prepared splits (or prepares them, `prepare_data`), runs the
`01_eda` and `02_train_hpo` notebooks with PapermillOperator and checks that the trained model
was registered (and promoted, when it was the first). A run with `is_retraining_run: true` and
`retraining_data_path` (one or more batch URIs, as the monitoring DAG sends them) runs
`04_retrain` instead: initial_train plus the new data, a warm-started search, and the gate; its
decision and `promoted` go to XCom and to `<storage>/monitoring/retrains/<run_id>.json`; with
`promote: false` (the monitoring DAG, awaiting it) the gate decides but the caller moves the alias.

With `search_tasks` N >= 1 the search fans out before the notebook: `plan_search` creates one
Optuna study for the run (named after the run id, so retries reuse it) in `study_storage`
(None: a journal file under the storage folder, for tasks on one machine; a PostgreSQL URL for
workers on several), N mapped `search_worker` tasks each run their share of `n_trials` on it,
and `02_train_hpo` then refits, tests and registers the study's best trial. With 0 (default)
the mapped task has no job and is skipped; the notebook searches by itself.
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.papermill.operators.papermill import PapermillOperator
from airflow.sdk import DAG, Param, task

from healthpredict.core.settings import get_settings
from healthpredict.core.stages import RetrainParams, TrainParams, dag_params
from healthpredict.pipelines import training
from healthpredict.runs.papermill_task import papermill_args, prepare_notebook_run

DAG_ID = "health_predict_training_hpo"
_settings = get_settings()

with DAG(
    dag_id=DAG_ID,
    description="EDA + Optuna search + registration; or retraining with the promotion gate.",
    schedule=None,
    start_date=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,  # runs register versions and move aliases of one model
    render_template_as_native_obj=True,
    doc_md=__doc__,
    tags=["healthpredict", "training"],
    params={
        "prepare_data": Param(False, type="boolean", description="Prepare the splits first."),
        "data_source": Param(
            None,
            type=["null", "string"],
            description="For prepare_data: UCI zip/csv, s3:// URI, URL, auto or synthetic.",
        ),
        "n_synthetic": Param(30_000, type="integer", minimum=100),
        "initial_fraction": Param(0.2, type="number", exclusiveMinimum=0, exclusiveMaximum=1),
        **{
            name: Param(**spec)
            for name, spec in dag_params(
                TrainParams,
                ["n_trials", "families", "cv_folds", "study_storage", "mlflow_experiment_name"],
            ).items()
        },
        "search_tasks": Param(
            0,
            type="integer",
            minimum=0,
            description="search tasks sharing one Optuna study before the notebook refits and "
            "registers its best trial (0: the notebook searches by itself)",
        ),
        "is_retraining_run": Param(False, type="boolean"),
        # RetrainParams under the DAG's names: retraining_data_path is read with
        # is_retraining_run, and one run's conf may carry settings of both stages.
        **{
            name: Param(**spec)
            for name, spec in dag_params(
                RetrainParams,
                {
                    "retraining_data_path": "retraining_data_path",
                    "gate_data_path": "gate_data_path",
                    "n_trials": "retrain_n_trials",
                    "mlflow_experiment_name": "retrain_experiment_name",
                    "promote": "promote",
                },
            ).items()
        },
        # model_name of both stages, and of the deployment this DAG's retraining may trigger.
        "mlflow_model_name": Param(_settings.model_name, type="string"),
    },
) as dag:

    @task.branch
    def choose_run_type(params=None):
        """Retrain when the run says so (and names its data), else train from scratch."""
        if not params["is_retraining_run"]:
            return "prepare_data"
        if not training.as_uri_list(params["retraining_data_path"]):
            raise ValueError("is_retraining_run needs retraining_data_path (one or more URIs)")
        return "prepare_retraining"

    @task
    def prepare_data(params=None):
        """Prepare the splits if asked; in any case check that they exist."""
        return training.ensure_prepared_data(
            params["prepare_data"],
            source=params["data_source"],
            n_synthetic=params["n_synthetic"],
            initial_fraction=params["initial_fraction"],
        )

    @task
    def plan_search(prepared, params=None, run_id=None):
        """Create this run's study and give each search task its job (none: search_tasks 0)."""
        return training.plan_search({**params, "data_dir": prepared["data_dir"]}, run_id)

    @task
    def search_worker(job):
        """Run one share of the trials on the run's shared study."""
        return training.run_search_worker(job)

    # After the search tasks, or without them (search_tasks 0 skips the mapped task); skipped
    # with everything upstream when the branch chose retraining.
    @task(trigger_rule="none_failed_min_one_success")
    def prepare_notebooks(params=None, run_id=None):
        """Check the notebooks' parameters and derive their .ipynb in fresh run folders."""
        common = {"run_id": run_id, "dag_id": DAG_ID}
        searched = (
            {"study_name": training.search_study_name(run_id)} if params["search_tasks"] else {}
        )
        return {
            "eda": prepare_notebook_run("01_eda", {}, task_id="run_eda", **common),
            "train": prepare_notebook_run(
                "02_train_hpo",
                {
                    "n_trials": params["n_trials"],
                    "families": params["families"],
                    "cv_folds": params["cv_folds"],
                    "study_storage": params["study_storage"],
                    "mlflow_experiment_name": params["mlflow_experiment_name"],
                    "model_name": params["mlflow_model_name"],
                    **searched,
                },
                task_id="run_train_hpo",
                **common,
            ),
        }

    run_eda = PapermillOperator(task_id="run_eda", **papermill_args("prepare_notebooks", "eda"))
    run_train_hpo = PapermillOperator(
        task_id="run_train_hpo", **papermill_args("prepare_notebooks", "train")
    )

    @task
    def check_registration(ti=None, params=None):
        """Fail unless the run recorded its scraps and its model is registered (and champion)."""
        prepared = ti.xcom_pull(task_ids="prepare_notebooks")["train"]
        return training.check_registration(prepared, params["mlflow_model_name"])

    @task
    def prepare_retraining(params=None, run_id=None):
        """Check the retrain parameters and derive the 04_retrain .ipynb."""
        return prepare_notebook_run(
            "04_retrain",
            {
                "retraining_data_path": training.as_uri_list(params["retraining_data_path"]),
                "gate_data_path": training.as_uri_list(params["gate_data_path"]) or None,
                "n_trials": params["retrain_n_trials"],
                "mlflow_experiment_name": params["retrain_experiment_name"],
                "model_name": params["mlflow_model_name"],
                "promote": params["promote"],
            },
            run_id=run_id,
            dag_id=DAG_ID,
            task_id="run_retrain",
        )

    run_retrain = PapermillOperator(task_id="run_retrain", **papermill_args("prepare_retraining"))

    @task
    def record_retraining_result(ti=None, run_id=None):
        """Push the gate's decision to XCom and leave it for the monitoring DAG."""
        outcome = training.record_retraining(ti.xcom_pull(task_ids="prepare_retraining"), run_id)
        ti.xcom_push(key="decision", value=outcome["decision"])
        ti.xcom_push(key="promoted", value=outcome["promoted"])
        return outcome

    choose = choose_run_type()
    data = prepare_data()
    plan = plan_search(data)
    notebooks = prepare_notebooks()
    retraining = prepare_retraining()
    choose >> [data, retraining]
    searches = search_worker.expand(job=plan)
    # plan_search feeds the notebooks too, so they run when no search task does (search_tasks 0).
    [searches, plan] >> notebooks
    notebooks >> run_eda >> run_train_hpo >> check_registration()
    retraining >> run_retrain >> record_retraining_result()
