"""The monitoring DAG's tasks: the monitoring step of ``healthpredict loop``, task by task.

Each task calls a part of :mod:`healthpredict.pipelines.monitoring_step`: the batch is validated,
cut and its arrived labels attached (:func:`simulate_batch`), the champion pinned and the monitor
prepared with the batches labelled in this step (:func:`prepare_monitoring`, executed by
PapermillOperator), the decision taken from its ``retrain`` scraps (:func:`decide_from_run`) and
the cursor moved last, labels and all (:func:`advance_state`), with the same functions as the
loop.

Nothing here imports Airflow at module level: the package works without the ``airflow`` extra.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from healthpredict.core import storage
from healthpredict.core.stages import LoopParams
from healthpredict.data.uci import read_raw_csv
from healthpredict.mlops import registry, tracking
from healthpredict.monitoring.labels import LabelPlan
from healthpredict.monitoring.lease import lease
from healthpredict.monitoring.state import BatchWindow, LoopState, next_window, write_batch
from healthpredict.pipelines.commit import commit_step, resume_promotion
from healthpredict.pipelines.monitoring_step import (
    MONITOR_NOTEBOOK,
    decide,
    monitor_parameters,
    outcome_of,
    retrain_summary,
    validate_batch_size,
)
from healthpredict.pipelines.step_labels import (
    labelled_after,
    new_labelled_after,
    plan_step_labels,
)
from healthpredict.pipelines.training import retrain_result_uri
from healthpredict.runs.papermill_task import prepare_notebook_run, read_run_scraps

# The LoopParams fields the monitoring DAG exposes as Params (same names).
LOOP_DAG_PARAMS = (
    "batch_size",
    "retrain_window",
    "label_delay_batches",
    "label_timeout_batches",
    "label_source",
)


def loop_params(params: Mapping[str, Any]) -> LoopParams:
    """The loop's settings from the DAG run's Params (validated as ``healthpredict loop`` does)."""
    return LoopParams(**{name: params[name] for name in LOOP_DAG_PARAMS if name in params})


def iteration_state(root: str | None = None) -> dict[str, Any]:
    """The loop's state without its history, read under its lease (a running loop is refused).

    A promotion a stopped run recorded but did not finish is finished (or rolled back) first.

    Returns:
        The state's fields (JSON-safe, for XCom) and ``batches_done``.

    Raises:
        healthpredict.monitoring.lease.LoopLockedError: Another runner holds the lease.
    """
    with lease(root) as held:
        state = LoopState.load(root)
        resume_promotion(state, root=root, held=held)
    fields = {k: v for k, v in state.__dict__.items() if k not in ("history", "promotion")}
    return {**fields, "batches_done": state.batches_done}


def _state(xcom: Mapping[str, Any]) -> LoopState:
    """The state (without history) from :func:`iteration_state`'s XCom."""
    return LoopState(**{k: v for k, v in xcom.items() if k in LoopState.__dataclass_fields__})


def simulate_batch(
    future_uri: str, state: Mapping[str, Any], loop: LoopParams, root: str | None = None
) -> dict[str, Any]:
    """Cut the batch at the cursor, write it without labels, and attach the labels that arrived.

    In the replay (``label_source`` ``replay``) the labels of the batches now due are delivered
    from the stream first, as the hospital would.

    Args:
        future_uri: The future stream (raw CSV with its labels, for the replay).
        state: :func:`iteration_state`.
        loop: Batch size and label settings.
        root: Storage root.

    Returns:
        ``has_data`` False when the stream is exhausted; otherwise ``start``, ``end``,
        ``batch_uri`` of the batch written and ``labels`` (the step's label plan).
        ``total_rows`` either way.

    Raises:
        ValueError: ``batch_size`` is below ``MIN_BATCH_ROWS`` (as ``healthpredict loop``).
        healthpredict.monitoring.labels.LabelStoreError: An unusable label file or a conflict.
    """
    validate_batch_size(loop.batch_size)
    future = read_raw_csv(future_uri)
    next_start = int(state["next_batch_start_index"])
    window = next_window(next_start, len(future), loop.batch_size)
    if window is None:
        return {"has_data": False, "start": next_start, "total_rows": len(future)}
    batch = {
        "batch_uri": write_batch(future, window, root),
        "start": window.start,
        "end": window.end,
    }
    plan = plan_step_labels(_state(state), int(state["batches_done"]), batch, loop, future, root)
    return {**batch, "has_data": True, "total_rows": len(future), "labels": plan.as_dict()}


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
    loop's (set after a promotion) or else ``how.reference_uri``, and the batches labelled in
    this step go to the monitor, as in
    :func:`~healthpredict.pipelines.monitoring_step.monitoring_step`.

    Raises:
        healthpredict.modeling.runtime.model_meta.ModelNotFoundError: No champion: train a model first.
    """
    # MLflow's own default would be ./mlflow.db in whatever folder the task runs in.
    tracking.setup_mlflow()
    info = registry.get_model_info(registry.champion_uri(how.model_name))
    parameters = {
        **monitor_parameters(
            _state(state),
            batch["batch_uri"],
            how.reference_uri,
            LabelPlan.from_dict(batch["labels"]),
        ),
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
    retrain_window: int | None,
) -> dict[str, Any]:
    """Read the monitor run's scraps and decide, as the local loop's monitoring step does.

    Returns:
        The decision's ``as_dict()``: ``retrain``, its ``triggers`` and ``reasons``, the
        ``retraining_data`` and ``gate_data`` a retraining gets, why it was ``skipped``, and
        the reported ``drift_status``, ``drifted_share`` and ``monitor_run_dir``.

    Raises:
        healthpredict.runs.NotebookRunError: A required scrap is missing.
        ValueError: A retraining scrap is missing or of the wrong type.
    """
    scraps = read_run_scraps(prepared)
    loop_state, plan = _state(state), LabelPlan.from_dict(batch["labels"])
    decision = decide(
        scraps,
        prepared["run_dir"],
        labelled_after(loop_state, plan),
        new_labelled_after(loop_state, plan),
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
    summary = retrain_summary(
        retrain_outcome, retrain_outcome.get("run_dir"), decision["retraining_data"]
    )
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
    """Move the cursor past ``batch`` with :func:`commit_step`, under the lease, from its start.

    The step's labels apply. An awaited retraining that promoted (it left the alias to this
    task) is promoted here, write-ahead, which makes the labelled batches the new champion
    learned from the drift reference and no longer new; an unawaited retraining promotes by
    itself and leaves them new. A retried task whose batch this DAG run already committed
    returns that entry.

    Returns:
        The history entry appended to the state.

    Raises:
        RuntimeError: The cursor is no longer at this batch (another runner moved it).
        healthpredict.monitoring.lease.LoopLockedError: Another runner holds the lease.
    """
    with lease(root) as held:
        state = LoopState.load(root)
        resume_promotion(state, root=root, held=held)
        done = state.history[-1] if state.history else {}
        if dag_run_id and (done.get("start"), done.get("dag_run_id")) == (
            batch["start"],
            dag_run_id,
        ):
            return done  # this run committed the batch already (a retried task)
        if state.next_batch_start_index != batch["start"]:
            raise RuntimeError(
                f"the loop cursor is at {state.next_batch_start_index}, not at this batch's "
                f"start {batch['start']}: another runner processed it; nothing was changed"
            )
        outcome = outcome_of(
            BatchWindow(batch["start"], batch["end"]),
            batch["batch_uri"],
            decision,
            LabelPlan.from_dict(batch["labels"]),
            _dag_retrain_summary(decision, retrain_outcome, trigger_run_id),
        )
        return commit_step(
            state,
            outcome,
            LabelPlan.from_dict(batch["labels"]),
            root=root,
            held=held,
            model_uri=model_uri,
            dag_run_id=dag_run_id,
        )
