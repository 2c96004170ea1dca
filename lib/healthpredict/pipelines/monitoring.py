"""The monitoring DAG's tasks: the monitoring step of ``healthpredict loop``, task by task.

Each task calls a part of :mod:`healthpredict.pipelines.monitoring_step`: the batch is validated
and cut (:func:`simulate_batch`), the champion pinned and the monitor prepared
(:func:`prepare_monitoring`, executed by PapermillOperator), the decision taken from its scraps
(:func:`decide_from_run`) and the cursor moved last (:func:`advance_state`), with the same
functions as the loop.

Nothing here imports Airflow at module level: the package works without the ``airflow`` extra.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from healthpredict.core import storage
from healthpredict.data.uci import read_raw_csv
from healthpredict.mlops import registry, tracking
from healthpredict.monitoring.lease import lease
from healthpredict.monitoring.state import BatchWindow, LoopState, next_window, write_batch
from healthpredict.pipelines.monitoring_step import (
    MONITOR_NOTEBOOK,
    BatchOutcome,
    advance,
    decide,
    monitor_parameters,
    retrain_summary,
    validate_batch_size,
)
from healthpredict.pipelines.training import retrain_result_uri
from healthpredict.runs.papermill_task import prepare_notebook_run, read_run_scraps


def iteration_state(root: str | None = None) -> dict[str, Any]:
    """The loop's state, read under its lease (so a running ``healthpredict loop`` is refused).

    Raises:
        healthpredict.monitoring.lease.LoopLockedError: Another runner holds the lease.
    """
    with lease(root):
        state = LoopState.load(root)
    return {
        "next_batch_start_index": state.next_batch_start_index,
        "batches_since_retrain": list(state.batches_since_retrain),
        "reference_uri": state.reference_uri,
        "model_reference_uri": state.model_reference_uri,
        "batches_done": len(state.history),
    }


def simulate_batch(
    future_uri: str, next_start: int, batch_size: int, root: str | None = None
) -> dict[str, Any]:
    """Cut the next batch of the future stream and write it (named by its start index).

    Returns:
        ``has_data`` False when the stream is exhausted; otherwise ``start``, ``end`` and
        ``batch_uri`` of the batch written. ``total_rows`` either way.

    Raises:
        ValueError: ``batch_size`` is below ``MIN_BATCH_ROWS`` (as ``healthpredict loop``).
    """
    validate_batch_size(int(batch_size))
    future = read_raw_csv(future_uri)
    window = next_window(int(next_start), len(future), int(batch_size))
    if window is None:
        return {"has_data": False, "start": int(next_start), "total_rows": len(future)}
    return {
        "has_data": True,
        "start": window.start,
        "end": window.end,
        "batch_uri": write_batch(future, window, root),
        "total_rows": len(future),
    }


@dataclass(frozen=True)
class MonitorRun:
    """Where and how the monitoring DAG runs the drift monitor.

    Attributes:
        model_name: Registered model (default from settings).
        reference_uri: Drift reference before any promotion.
        experiment_name: MLflow experiment of the monitoring runs.
        run_id: Airflow run id.
        dag_id: Airflow DAG id, for the record.
        task_id: The task executing the notebook, for the record.
        monitor_params: Extra parameters for the drift-monitor notebook.
    """

    model_name: str | None
    reference_uri: str
    experiment_name: str
    run_id: str
    dag_id: str | None = None
    task_id: str | None = None
    monitor_params: Mapping[str, Any] = field(default_factory=dict)


def prepare_monitoring(
    batch: Mapping[str, Any], state: Mapping[str, Any], how: MonitorRun
) -> dict[str, Any]:
    """Pin the production model and prepare the drift-monitor run for ``batch``.

    The champion alias is resolved to its version now, so the notebook and the record name the
    model that was actually monitored even if the alias moves meanwhile. The reference is the
    loop's (set after a promotion) or else ``how.reference_uri``, as in
    :func:`~healthpredict.pipelines.monitoring_step.monitoring_step`.

    Raises:
        healthpredict.modeling.runtime.model_meta.ModelNotFoundError: No champion: train a model first.
    """
    # MLflow's own default would be ./mlflow.db in whatever folder the task runs in.
    tracking.setup_mlflow()
    info = registry.get_model_info(registry.champion_uri(how.model_name))
    loop_state = LoopState(
        reference_uri=state.get("reference_uri"),
        model_reference_uri=state.get("model_reference_uri"),
    )
    parameters = {
        **monitor_parameters(loop_state, batch["batch_uri"], how.reference_uri),
        "mlflow_model_uri": info.model_uri,
        "mlflow_experiment_name": how.experiment_name,
        **dict(how.monitor_params),
    }
    monitor = prepare_notebook_run(
        MONITOR_NOTEBOOK, parameters, run_id=how.run_id, dag_id=how.dag_id, task_id=how.task_id
    )
    return {"model_uri": info.model_uri, "model_version": info.version, "monitor": monitor}


def decide_from_run(
    prepared: Mapping[str, Any],
    state: Mapping[str, Any],
    batch: Mapping[str, Any],
    retrain_window: int,
) -> dict[str, Any]:
    """Read the monitor run's scraps and decide, as the local loop's monitoring step does.

    Returns:
        The decision's ``as_dict()``: ``drift_status``, ``drifted_share``, ``monitor_run_dir``,
        ``retrain`` and ``recent_batches``.

    Raises:
        healthpredict.runs.NotebookRunError: A required scrap is missing.
    """
    scraps = read_run_scraps(prepared)
    decision = decide(
        scraps,
        prepared["run_dir"],
        state["batches_since_retrain"],
        batch["batch_uri"],
        retrain_window,
    )
    return decision.as_dict()


def retraining_outcome(
    trigger_run_id: str | None, awaited: bool, root: str | None = None
) -> dict[str, Any] | None:
    """Outcome of the retraining run the monitoring DAG triggered; None when not awaited.

    Raises:
        RuntimeError: The run was awaited (so it succeeded) but left no outcome: fail closed.
    """
    if not awaited:
        return None
    if not trigger_run_id:
        raise RuntimeError("the retraining trigger left no run id in XCom")
    uri = retrain_result_uri(trigger_run_id, root)
    if not storage.exists(uri):
        raise RuntimeError(f"retraining run {trigger_run_id} finished but left no outcome at {uri}")
    return storage.read_json(uri)


def promotion_gate(trigger_task_id: str) -> Callable[[Any], None]:
    """A ``pre_execute`` hook that skips its task unless the awaited retraining promoted.

    Without ``wait_for_retraining`` the outcome is unknown when the task runs, so it is skipped
    (the deployment can be triggered by hand once the retraining run promoted).
    """

    def gate(context) -> None:
        # Airflow is an optional extra: imported only inside a running task
        from airflow.sdk.exceptions import AirflowSkipException

        params = context["params"]
        trigger_run_id = context["ti"].xcom_pull(task_ids=trigger_task_id, key="trigger_run_id")
        outcome = retraining_outcome(trigger_run_id, bool(params["wait_for_retraining"]))
        if outcome is None:
            raise AirflowSkipException(
                f"retraining run {trigger_run_id} was not awaited (wait_for_retraining is off): "
                "its promotion is unknown, so nothing is deployed"
            )
        if not outcome.get("promoted"):
            raise AirflowSkipException(
                f"retraining {outcome.get('decision')}: {outcome.get('reason')}; nothing to deploy"
            )

    return gate


def _dag_retrain_summary(
    decision: Mapping[str, Any],
    retrain_outcome: Mapping[str, Any] | None,
    trigger_run_id: str | None,
) -> dict | None:
    if not decision["retrain"]:
        return None
    if retrain_outcome is None:
        return {"triggered_run_id": trigger_run_id, "awaited": False}
    summary = retrain_summary(retrain_outcome, retrain_outcome.get("run_dir"))
    summary["triggered_run_id"] = trigger_run_id
    return summary


def advance_state(
    batch: Mapping[str, Any],
    decision: Mapping[str, Any],
    *,
    model_uri: str,
    retrain_outcome: Mapping[str, Any] | None = None,
    trigger_run_id: str | None = None,
    dag_run_id: str | None = None,
    root: str | None = None,
) -> dict[str, Any]:
    """Move the cursor past ``batch`` with :func:`advance`, under the lease, from its start only.

    A promotion (known only when the retraining was awaited) makes the recent batches the new
    drift reference and empties the list; otherwise the batch joins the recent batches.

    Returns:
        The history entry appended to the state.

    Raises:
        RuntimeError: The cursor is no longer at this batch (another runner moved it).
        healthpredict.monitoring.lease.LoopLockedError: Another runner holds the lease.
    """
    with lease(root):
        state = LoopState.load(root)
        if state.next_batch_start_index != batch["start"]:
            raise RuntimeError(
                f"the loop cursor is at {state.next_batch_start_index}, not at this batch's "
                f"start {batch['start']}: another runner processed it; nothing was changed"
            )
        outcome = BatchOutcome(
            BatchWindow(batch["start"], batch["end"]),
            batch["batch_uri"],
            decision["drift_status"],
            decision.get("drifted_share"),
            decision["monitor_run_dir"],
            _dag_retrain_summary(decision, retrain_outcome, trigger_run_id),
        )
        return advance(
            state,
            outcome,
            list(decision["recent_batches"]),
            root=root,
            model_uri=model_uri,
            dag_run_id=dag_run_id,
        )
