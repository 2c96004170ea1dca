"""The monitoring step: validate a batch, monitor it, decide, maybe retrain, advance the state.

One step for ``healthpredict loop`` (:func:`monitoring_step`, driven by
:func:`healthpredict.pipelines.local_loop.run_loop`) and for the monitoring DAG, whose tasks
(:mod:`healthpredict.pipelines.monitoring`) call its parts one by one. Both validate the batch
with :func:`validate_batch_size`, decide with :func:`decide` and move the cursor only with
:func:`advance`, after monitoring (and, on drift, retraining) succeeded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from healthpredict.core import layout, storage
from healthpredict.core.constants import DRIFT_DETECTED, MIN_BATCH_ROWS, NO_DRIFT
from healthpredict.data.uci import read_raw_csv
from healthpredict.mlops import tracking
from healthpredict.monitoring.lease import Lease
from healthpredict.monitoring.state import BatchWindow, LoopState, next_window, write_batch
from healthpredict.runs import Kernel, RunResult, run

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
