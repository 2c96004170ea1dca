"""``healthpredict loop``: the monitoring step over the future stream, under the loop's lease.

The lease (:mod:`healthpredict.monitoring.lease`) keeps a second runner (or the monitoring DAG)
from moving the same cursor; a runner that takes over the lease of a dead one ends the MLflow
runs it left RUNNING and finishes the promotion it recorded but did not finish
(:mod:`healthpredict.pipelines.commit`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from healthpredict.core import layout, storage
from healthpredict.core.constants import REFERENCE_SPLIT, STREAM_SPLIT
from healthpredict.core.stages import LoopParams
from healthpredict.mlops import registry, tracking
from healthpredict.monitoring.lease import lease
from healthpredict.monitoring.state import LoopState
from healthpredict.pipelines.commit import resume_promotion
from healthpredict.pipelines.monitoring_step import (
    BatchOutcome,
    StepConfig,
    monitoring_step,
    validate_batch_size,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopOptions:
    """How ``healthpredict loop`` runs, beyond the loop's parameters (:class:`LoopParams`).

    Attributes:
        monitor_params: Extra parameters for the drift-monitor notebook.
        retrain_params: Extra parameters for the retrain notebook.
        root: Storage root (default from settings).
    """

    monitor_params: Mapping[str, Any] = field(default_factory=dict)
    retrain_params: Mapping[str, Any] = field(default_factory=dict)
    root: str | None = None


def run_loop(
    params: LoopParams | None = None,
    options: LoopOptions | None = None,
    on_batch: Callable[[BatchOutcome], None] | None = None,
) -> list[BatchOutcome]:
    """Monitor the future stream batch by batch, labels arriving late, under the loop's lease.

    Each batch is monitored without its labels; labels are attached when they arrive (the
    replay delivers them ``label_delay_batches`` later), and a retraining, when the monitor asks
    for one, learns from labelled batches only.

    Args:
        params: Batch size, how many batches, retraining window, label delay, timeout and
            source, data and model (the ``healthpredict loop`` options and the monitoring DAG's
            Params).
        options: Extra notebook parameters and the storage root (default: none).
        on_batch: Called with each :class:`BatchOutcome` (progress display).

    Raises:
        ValueError: ``batch_size`` is below :data:`~healthpredict.core.constants.MIN_BATCH_ROWS`.
        healthpredict.monitoring.lease.LoopLockedError: Another runner holds the lease (nothing
            was done).
        healthpredict.mlops.tracking.TrackingUnavailableError: MLflow cannot be reached, checked
            with the model (:func:`preflight`) before any batch is written or kernel started.
        healthpredict.runs.NotebookRunError: A batch's notebook run failed; its files are
            in the rendered folder, the state did not move and a note names the batch.
        healthpredict.monitoring.labels.LabelStoreError: A label file is unusable or labels
            disagree (the state did not move; the message names the files).
    """
    # the split module loads scikit-learn (seconds, measured): only once the loop runs
    from healthpredict.data.split import load_split

    params = params or LoopParams()
    options = options or LoopOptions()
    data_dir = params.data_dir or layout.processed_data()
    model_uri = params.model_uri or registry.champion_uri()
    validate_batch_size(params.batch_size)
    preflight(model_uri)
    outcomes: list[BatchOutcome] = []
    with lease(options.root) as held:
        if held.took_over_from:
            _close_runs_of(held.took_over_from)
        future = load_split(STREAM_SPLIT, data_dir)  # read once, sliced per batch
        state = LoopState.load(options.root)
        # A runner stopped between recording a promotion and clearing it: finish it first.
        resume_promotion(state, root=options.root, held=held)
        config = StepConfig(
            batch_size=params.batch_size,
            model_uri=model_uri,
            default_reference=layout.split_csv(REFERENCE_SPLIT, data_dir),
            retrain_window=params.retrain_window,
            label_delay_batches=params.label_delay_batches,
            label_timeout_batches=params.label_timeout_batches,
            label_source=params.label_source,
            monitor_params=options.monitor_params,
            retrain_params=options.retrain_params,
            root=options.root,
            runner_id=held.holder,
        )
        while params.max_batches is None or len(outcomes) < params.max_batches:
            outcome = monitoring_step(future, state, config, held)
            if outcome is None:
                break
            outcomes.append(outcome)
            if on_batch:
                on_batch(outcome)
    return outcomes


def preflight(model_uri: str):
    """Check what every batch needs before any batch is written or kernel started.

    Returns:
        The model's :class:`~healthpredict.modeling.runtime.model_meta.ModelInfo`.

    Raises:
        healthpredict.mlops.tracking.TrackingUnavailableError: MLflow cannot be reached.
        healthpredict.modeling.runtime.model_meta.ModelNotFoundError: The model or its alias does not exist.
        healthpredict.mlops.monitor.ModelSchemaError: The model was trained on another raw
            schema.
    """
    # the drift module loads Evidently (seconds, measured): only once the loop runs
    from healthpredict.mlops.monitor import check_model

    tracking.check_reachable()
    return check_model(model_uri)


def _close_runs_of(holder: str) -> None:
    """End the MLflow runs a dead runner left RUNNING (best effort: never blocks the loop)."""
    try:
        tracking.close_stale_runs(holder)
    except Exception as exc:
        log.warning("could not end the runs of the dead loop runner %s: %s", holder, exc)


# ---- what a person reads about each batch (the CLI's lines and summary table) ---------------


@dataclass(frozen=True)
class BatchSummary:
    """One batch of a loop run, as the console shows it.

    Attributes:
        rows: The batch's rows of the stream, ``start-end``.
        drift_status: ``DRIFT_DETECTED`` or ``NO_DRIFT``.
        drifted_share: Share of drifted columns.
        decision: What followed: ``keep`` (no retraining asked for), ``retrain skipped``
            (asked for, nothing new to learn), ``promote vN`` or ``vN rejected``.
        champion_version: The champion after the batch (the monitored one unless promoted).
        estimated_roc_auc: The champion's ROC AUC estimated on the batch (no labels needed).
        realised_roc_auc: Its ROC AUC on the labels that arrived since the last batch (None:
            none arrived).
        reasons: Why a retraining was asked for, and why it was skipped, in sentences.
    """

    rows: str
    drift_status: str
    drifted_share: float | None
    decision: str
    champion_version: str | None
    estimated_roc_auc: float | None
    realised_roc_auc: float | None
    reasons: tuple[str, ...] = ()


def decision_text(outcome: BatchOutcome) -> str:
    """What followed the batch, in a few words (the reasons are in :func:`summarize`)."""
    retrain = outcome.retrain
    if retrain is None:
        return "retrain skipped" if outcome.retrain_skipped else "keep"
    version = retrain["challenger_version"]
    return f"promote v{version}" if retrain["promoted"] else f"v{version} rejected"


def summarize(outcome: BatchOutcome) -> BatchSummary:
    """The batch as the console shows it, with the monitor's ROC AUC scraps from its run record.

    Raises:
        healthpredict.core.storage.StorageError: The monitor run's ``run.json`` is unreadable.
    """
    scraps = storage.read_json(storage.join(outcome.monitor_run_dir, layout.RUN_JSON))["scraps"]
    retrain = outcome.retrain
    promoted = retrain is not None and retrain["promoted"]
    reasons = [*outcome.reasons]
    if outcome.retrain_skipped:
        reasons.append(outcome.retrain_skipped)
    if retrain is not None:
        reasons.append(f"gate: {retrain['reason']}")
    return BatchSummary(
        rows=f"{outcome.window.start}-{outcome.window.end}",
        drift_status=outcome.drift_status,
        drifted_share=outcome.drifted_share,
        decision=decision_text(outcome),
        champion_version=str(retrain["challenger_version"])
        if promoted
        else scraps.get("model_version"),
        estimated_roc_auc=scraps.get("estimated_roc_auc"),
        realised_roc_auc=scraps.get("realised_roc_auc"),
        reasons=tuple(reasons),
    )
