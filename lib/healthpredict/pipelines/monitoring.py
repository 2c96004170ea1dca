"""The monitoring step: validate a batch, monitor it, decide, maybe retrain, advance the state.

One step for ``healthpredict loop`` (:func:`monitoring_step`, driven by
:func:`healthpredict.pipelines.local_loop.run_loop`) and for the monitoring DAG, whose tasks
call its parts one by one (:func:`simulate_batch`, :func:`prepare_monitoring`,
:func:`decide_from_run`, :func:`advance_state`). Both validate the batch with
:func:`validate_batch_size`, decide with :func:`decide` and move the cursor only with
:func:`advance`, after monitoring (and an awaited retraining) succeeded.

Nothing here imports Airflow at module level: the package works without the ``airflow`` extra.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from healthpredict.core import layout, storage
from healthpredict.core.constants import DRIFT_DETECTED, MIN_BATCH_ROWS, NO_DRIFT
from healthpredict.data.uci import read_raw_csv
from healthpredict.mlops import registry, tracking
from healthpredict.monitoring.lease import Lease, lease
from healthpredict.monitoring.state import BatchWindow, LoopState, next_window, write_batch
from healthpredict.pipelines.training import retrain_result_uri
from healthpredict.runs import Kernel, RunResult, run
from healthpredict.runs.papermill_task import prepare_notebook_run, read_run_scraps

log = logging.getLogger(__name__)

MONITOR_NOTEBOOK = "03_drift_monitor"
RETRAIN_NOTEBOOK = "04_retrain"


# ---- pure decisions -------------------------------------------------------------------------


def validate_batch_size(batch_size: int) -> None:
    """Refuse batches the drift monitor cannot judge.

    Raises:
        ValueError: ``batch_size`` is below :data:`~healthpredict.core.constants.MIN_BATCH_ROWS`.
    """
    if batch_size < MIN_BATCH_ROWS:
        raise ValueError(
            f"batch_size {batch_size} is below the {MIN_BATCH_ROWS} rows the drift monitor needs"
        )


def should_retrain(drift_status: str) -> bool:
    """Retrain exactly when the monitor reported drift; any other value is an error.

    Raises:
        ValueError: When the status is neither ``DRIFT_DETECTED`` nor ``NO_DRIFT``.
    """
    if drift_status not in (DRIFT_DETECTED, NO_DRIFT):
        raise ValueError(f"unexpected drift_status {drift_status!r}")
    return drift_status == DRIFT_DETECTED


@dataclass(frozen=True)
class Decision:
    """What the monitor said about a batch and what follows from it.

    Attributes:
        drift_status: ``DRIFT_DETECTED`` or ``NO_DRIFT``.
        drifted_share: Share of drifted columns, as the monitor scrapped it.
        monitor_run_dir: The monitor's notebook run.
        retrain: Whether to retrain.
        recent_batches: The batches a retraining learns from (this one included).
    """

    drift_status: str
    drifted_share: float | None
    monitor_run_dir: str
    retrain: bool
    recent_batches: list[str]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (XCom)."""
        return {
            "drift_status": self.drift_status,
            "drifted_share": self.drifted_share,
            "monitor_run_dir": self.monitor_run_dir,
            "retrain": self.retrain,
            "recent_batches": list(self.recent_batches),
        }


def decide(
    scraps: Mapping[str, Any],
    monitor_run_dir: str,
    batches_since_retrain: Sequence[str],
    batch_uri: str,
    retrain_window: int,
) -> Decision:
    """Decide on a monitored batch from the monitor's scraps.

    Args:
        scraps: The drift monitor's scraps (``drift_status``, ``drifted_share``).
        monitor_run_dir: Folder of the monitor's run.
        batches_since_retrain: Batches since the last promotion, before this one.
        batch_uri: This batch.
        retrain_window: How many recent batches a retraining learns from.

    Raises:
        ValueError: The status is neither ``DRIFT_DETECTED`` nor ``NO_DRIFT``.
    """
    status = scraps["drift_status"]
    return Decision(
        drift_status=status,
        drifted_share=scraps.get("drifted_share"),
        monitor_run_dir=str(monitor_run_dir),
        retrain=should_retrain(status),
        recent_batches=[*batches_since_retrain, batch_uri][-int(retrain_window) :],
    )


@dataclass
class BatchOutcome:
    """What happened to one batch."""

    window: BatchWindow
    batch_uri: str
    drift_status: str
    drifted_share: float | None
    monitor_run_dir: str
    retrain: dict | None = None

    def as_dict(self) -> dict:
        """JSON-ready summary for the state history."""
        return {
            "start": self.window.start,
            "end": self.window.end,
            "batch_uri": self.batch_uri,
            "drift_status": self.drift_status,
            "drifted_share": self.drifted_share,
            "monitor_run_dir": self.monitor_run_dir,
            "retrain": self.retrain,
        }


def monitor_parameters(state: LoopState, batch_uri: str, default_reference: str) -> dict:
    """Drift-monitor parameters for a batch, as the state implies.

    Since a promotion, the batches the champion learned from are the data reference and its
    retraining holdout is the prediction reference.
    """
    params = {
        "new_data_path": batch_uri,
        "reference_data_path": state.reference_uri or default_reference,
    }
    if state.model_reference_uri:
        params["model_reference_path"] = state.model_reference_uri
    return params


def retrain_summary(scraps: Mapping[str, Any], run_dir: str | None) -> dict:
    """What the loop keeps of a retraining run's scraps (or of its recorded outcome)."""
    return {
        "decision": scraps["decision"],
        "promoted": bool(scraps["promoted"]),
        "reason": scraps["reason"],
        "challenger_version": scraps["challenger_version"],
        "holdout_path": scraps.get("holdout_path"),
        "run_dir": run_dir,
    }


# ---- the state's only step forward ----------------------------------------------------------


def write_reference(batch_uris: list[str], name: str, root: str | None = None) -> str:
    """Concatenate batches into a new drift reference (the data a new champion learned from)."""
    frame = pd.concat([read_raw_csv(u) for u in batch_uris], ignore_index=True)
    return storage.write_csv(layout.reference_csv(name, root), frame)


def advance(
    state: LoopState,
    outcome: BatchOutcome,
    recent: list[str],
    *,
    root: str | None = None,
    **record: object,
) -> dict:
    """Move the cursor past ``outcome``'s batch and save the state: the loop's only step forward.

    Called once every step for the batch succeeded. After a promotion the recent batches become
    the drift reference (the data the new champion learned from), the retraining holdout the
    prediction reference, and the list of recent batches starts again.

    Args:
        state: State to update (in place) and save.
        outcome: The batch's outcome; ``outcome.retrain`` holds the retraining summary, if any.
        recent: Batches since the last promotion, this one included.
        root: Storage root.
        **record: Extra fields for the history entry (the DAG adds its run id).

    Returns:
        The history entry appended.
    """
    retrain = outcome.retrain or {}
    if retrain.get("promoted"):
        state.reference_uri = write_reference(recent, f"reference_{outcome.window.start:07d}", root)
        state.model_reference_uri = retrain.get("holdout_path") or None
        recent = []
    entry = {**outcome.as_dict(), **record}
    state.next_batch_start_index = outcome.window.end
    state.batches_since_retrain = recent
    state.history.append(entry)
    state.save(root)
    return entry


# ---- the whole step, as the local loop runs it ----------------------------------------------


@dataclass(frozen=True)
class StepConfig:
    """How the local loop monitors a batch.

    Attributes:
        batch_size: Rows per batch (at least ``MIN_BATCH_ROWS``).
        model_uri: Production model.
        default_reference: Drift reference before any promotion (the ``initial_train`` split).
        retrain_window: How many recent batches a retraining learns from.
        monitor_params: Extra parameters for the drift-monitor notebook.
        retrain_params: Extra parameters for the retrain notebook.
        root: Storage root (default from settings).
        runner_id: The lease holder; tags the MLflow runs the notebooks start.
    """

    batch_size: int
    model_uri: str
    default_reference: str
    retrain_window: int = 5
    monitor_params: Mapping[str, Any] = field(default_factory=dict)
    retrain_params: Mapping[str, Any] = field(default_factory=dict)
    root: str | None = None
    runner_id: str | None = None

    @property
    def kernel(self) -> Kernel:
        """The notebooks' kernel: its environment names the runner, whose lease tags the runs."""
        return Kernel(env={tracking.LOOP_HOLDER_ENV: self.runner_id} if self.runner_id else {})


def monitor_batch(params: Mapping[str, Any], kernel: Kernel) -> RunResult:
    """Run the drift-monitor notebook with ``params``; returns the notebook run's result."""
    return run(MONITOR_NOTEBOOK, dict(params), kernel=kernel)


def retrain_on(batch_uris: list[str], params: Mapping[str, Any], kernel: Kernel) -> RunResult:
    """Run the retrain notebook (search + promotion gate) on labelled batches."""
    parameters = {"retraining_data_path": list(batch_uris), **params}
    return run(RETRAIN_NOTEBOOK, parameters, kernel=kernel)


def monitoring_step(
    future: pd.DataFrame, state: LoopState, config: StepConfig, held: Lease | None = None
) -> BatchOutcome | None:
    """Monitor the next batch and retrain on drift; advance and save the state only on success.

    Returns None when the stream is exhausted. Any failure raises with the state untouched,
    so the next call processes the same batch again; the exception gets a note naming the
    batch. With ``held``, the lease is checked to still be ours just before the state moves.

    Raises:
        ValueError: The batch size is below ``MIN_BATCH_ROWS``.
        healthpredict.runs.NotebookRunError: The monitor or the retraining run failed.
    """
    validate_batch_size(config.batch_size)
    window = next_window(state.next_batch_start_index, len(future), config.batch_size)
    if window is None:
        return None
    batch_uri = layout.batch_csv(window.name, config.root)
    try:
        batch_uri = write_batch(future, window, config.root)
        params = {
            **monitor_parameters(state, batch_uri, config.default_reference),
            "mlflow_model_uri": config.model_uri,
            **config.monitor_params,
        }
        result = monitor_batch(params, config.kernel)
        decision = decide(
            result.scraps,
            result.run_dir,
            state.batches_since_retrain,
            batch_uri,
            config.retrain_window,
        )
        outcome = BatchOutcome(
            window, batch_uri, decision.drift_status, decision.drifted_share, str(result.run_dir)
        )
        if decision.retrain:
            retrained = retrain_on(decision.recent_batches, config.retrain_params, config.kernel)
            outcome.retrain = retrain_summary(retrained.scraps, str(retrained.run_dir))
        if held is not None:
            held.renew()  # still ours? otherwise another runner owns the cursor now
        advance(state, outcome, decision.recent_batches, root=config.root)
    except Exception as exc:
        exc.add_note(
            f"batch rows {window.start}-{window.end} ({batch_uri}) was not completed: the loop "
            f"state is unchanged and the next run starts again at row {window.start}"
        )
        raise
    return outcome


# ---- the same step, task by task in the monitoring DAG ---------------------------------------


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
    loop's (set after a promotion) or else ``how.reference_uri``, as in :func:`monitoring_step`.

    Raises:
        healthpredict.mlops.registry.ModelNotFoundError: No champion: train a model first.
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
    """Read the monitor run's scraps and :func:`decide`, as :func:`monitoring_step` does.

    Returns:
        :meth:`Decision.as_dict`: ``drift_status``, ``drifted_share``, ``monitor_run_dir``,
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
