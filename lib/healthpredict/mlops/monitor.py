"""The recorded monitoring run: one batch against the production model, logged to MLflow.

:func:`monitor` reads and validates the batch, loads the model from the registry, prepares the
reference (cached), builds the evidence and the decision with
:mod:`healthpredict.monitoring`, saves the Evidently HTML and records params, metrics, reports
and the ``drift_status`` tag in the monitoring experiment.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from healthpredict.core import layout, storage
from healthpredict.core.constants import (
    MIN_BATCH_ROWS,
    REFERENCE_SPLIT,
    champion_uri,
)
from healthpredict.core.settings import get_settings
from healthpredict.core.stages import MonitorParams
from healthpredict.data.schema import make_target, schema_hash, validate_raw
from healthpredict.data.uci import read_raw_csv
from healthpredict.mlops import evidently_workspace, registry, tracking
from healthpredict.mlops.monitor_logging import log_monitoring_run
from healthpredict.monitoring.decision import MonitorResult, decide
from healthpredict.monitoring.evidence import (
    Evidence,
    ScoredBatch,
    compared_predictions,
    gather_evidence,
    score_batch,
)
from healthpredict.monitoring.policy import PolicySettings, Signals, retrain_decision
from healthpredict.monitoring.reference import (
    PreparedReference,
    default_model_reference,
    predict_proba,
    prepare_reference,
    reference_info,
    target_name,
)
from healthpredict.monitoring.reports import save_html
from healthpredict.monitoring.signals import ArrivedBatch, PerformanceSignals, performance_signals

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

log = logging.getLogger(__name__)


class ModelSchemaError(ValueError):
    """The production model was trained on another raw schema than the current one."""


class BatchTooSmallError(ValueError):
    """The batch has fewer rows than the drift monitor needs (``constants.MIN_BATCH_ROWS``)."""


@dataclass(frozen=True)
class MonitorOptions:
    """How :func:`monitor` runs, beyond the stage's parameters (:class:`MonitorParams`).

    Attributes:
        seed: Seed of the calibration.
        min_rows: Fewest rows a batch may have (``constants.MIN_BATCH_ROWS``).
    """

    seed: int = 0
    min_rows: int = MIN_BATCH_ROWS


@dataclass(frozen=True)
class MonitorPaths:
    """A request's locations, resolved: absolute local paths, defaults filled in."""

    new_data: str
    reference: str
    model_uri: str
    reports_dir: str
    held_out: list[str]
    labelled: list[str]


class _Stopwatch:
    """Wall time of each step of a monitoring run, in seconds."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._clock = time.monotonic()

    def lap(self, step: str) -> None:
        """Record the time since the previous lap as ``step``."""
        now = time.monotonic()
        self.seconds[step] = round(now - self._clock, 3)
        self._clock = now


def _resolve_local(uri: str) -> str:
    return uri if storage.is_s3(uri) else str(Path(uri).expanduser().resolve())


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _paths(params: MonitorParams) -> MonitorPaths:
    if not params.new_data_path:
        raise ValueError("new_data_path is required: the raw batch CSV to monitor")
    reference = _resolve_local(str(params.reference_data_path or layout.split_csv(REFERENCE_SPLIT)))
    held_out = [_resolve_local(u) for u in _as_list(params.model_reference_path)]
    reports_dir = params.evidently_reports_path or str(Path(params.run_dir or ".") / "reports")
    return MonitorPaths(
        new_data=_resolve_local(params.new_data_path),
        reference=reference,
        model_uri=params.mlflow_model_uri or champion_uri(get_settings().model_name),
        reports_dir=_resolve_local(reports_dir),
        held_out=held_out or default_model_reference(reference),
        labelled=[_resolve_local(u) for u in _as_list(params.labelled_data_path)],
    )


def check_model(model_uri: str) -> Any:
    """The registry entry of the production model, checked against the current raw schema.

    Cheap (no model files are read): the loop calls it before any batch or kernel.

    Returns:
        The version's :class:`~healthpredict.modeling.runtime.model_meta.ModelInfo`.

    Raises:
        ModelNotFoundError: No such model, version or alias.
        ModelSchemaError: The model was trained on another raw schema.
    """
    info = registry.get_model_info(model_uri)
    current = schema_hash()
    if info.schema_hash and info.schema_hash != current:
        raise ModelSchemaError(
            f"model {info.name} version {info.version} ({model_uri}) was trained on raw schema "
            f"{info.schema_hash}, but the current schema is {current}: its inputs no longer match "
            "the data. Retrain it on the current schema before monitoring."
        )
    return info


def _load_model(model_uri: str) -> tuple[Pipeline, Any]:
    # mlflow costs ~3 s to import: only once a batch passed validation
    import mlflow.sklearn

    info = check_model(model_uri)
    # The version resolved once: the pipeline matches the info even if the alias moves meanwhile.
    return mlflow.sklearn.load_model(info.model_uri), info


def _read_labelled(uris: Sequence[str]) -> list[tuple[str, pd.DataFrame]]:
    """The batches whose labels arrived, validated with their labels (before any MLflow run)."""
    batches = []
    for uri in uris:
        frame = read_raw_csv(storage.read_bytes(uri), source=uri)
        validate_raw(frame, require_target=True, source=uri)
        batches.append((uri, frame))
    return batches


def _arrived(
    labelled: list[tuple[str, pd.DataFrame]], batch: ScoredBatch, batch_uri: str, pipeline, info
) -> list[ArrivedBatch]:
    """The labelled batches scored by the model; the batch itself when it came labelled."""
    target = target_name(info)
    arrived = [
        ArrivedBatch(uri, predict_proba(pipeline, frame), make_target(frame, target))
        for uri, frame in labelled
    ]
    if not arrived and batch.labelled:  # no label delay: the batch's own labels
        arrived = [ArrivedBatch(batch_uri, batch.proba, batch.target)]
    return arrived


def _read_batch(uri: str, min_rows: int) -> pd.DataFrame:
    """The raw batch, validated: a bad one raises before any MLflow run exists."""
    batch_raw = read_raw_csv(storage.read_bytes(uri), source=uri)
    validate_raw(batch_raw, source=uri)  # before any MLflow run: nothing to mark
    if len(batch_raw) < min_rows:
        raise BatchTooSmallError(
            f"too few rows: {uri} has {len(batch_raw)} row(s), the drift monitor needs "
            f"at least {min_rows} (drift statistics on fewer rows are noise): monitor it "
            "together with the next rows as one batch"
        )
    return batch_raw


def monitor(params: MonitorParams, options: MonitorOptions | None = None) -> MonitorResult:
    """Monitor one batch against the reference and the production model; log it to MLflow.

    Steps: read and validate the batch (a schema problem, or fewer than ``min_rows`` rows,
    raises before any MLflow run exists);
    load the model (a missing alias or a model trained on another schema raises before any
    work); prepare the reference (cached); score the batch; build the Evidently reports with the
    calibrated thresholds; decide; save the HTML reports; log params, metrics, reports and the
    ``drift_status`` tag to the monitoring experiment. A failure after the run started ends the
    run FAILED.

    Args:
        params: The stage's parameters, as the 03 notebook takes them: the batch, reference,
            model (default: the configured champion), report folder (default:
            ``<run_dir>/reports``) and decision settings.
        options: Calibration seed and the batch minimum (default: :class:`MonitorOptions`).

    Returns:
        The decision and its evidence.

    Raises:
        UCIDataError: The batch file is empty, not UTF-8, truncated or not a CSV.
        RawSchemaError: The batch does not match the raw schema (every problem listed).
        BatchTooSmallError: The batch has fewer than ``min_rows`` rows.
        ModelNotFoundError: No such model, version or alias.
        ModelSchemaError: The model was trained on another raw schema.
    """
    options = options or MonitorOptions()
    watch = _Stopwatch()
    paths = _paths(params)
    batch_raw = _read_batch(paths.new_data, options.min_rows)
    labelled = _read_labelled(paths.labelled)
    watch.lap("read_validate")
    tracking.setup_mlflow()
    pipeline, info = _load_model(paths.model_uri)
    watch.lap("load_model")

    # mlflow costs ~3 s to import: only once a batch passed validation
    import mlflow

    exp_id = tracking.experiment_id(params.mlflow_experiment_name)
    run = mlflow.start_run(
        experiment_id=exp_id,
        run_name=f"monitor {Path(paths.new_data).name}",
        tags=tracking.run_tags(),
        # A caller's own run (a DAG task, a notebook) stays open: ours becomes its child.
        nested=mlflow.active_run() is not None,
    )
    try:
        result = _monitor_in_run(
            (params, options), paths, (batch_raw, labelled), (pipeline, info), watch
        )
        result.mlflow_run_id = run.info.run_id
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run()
    return result


def _monitor_in_run(
    stage: tuple[MonitorParams, MonitorOptions],
    paths: MonitorPaths,
    data: tuple[pd.DataFrame, list[tuple[str, pd.DataFrame]]],
    model: tuple[Pipeline, Any],
    watch: _Stopwatch,
) -> MonitorResult:
    """The body of :func:`monitor` once its MLflow run is active."""
    params, options = stage
    batch_raw, labelled = data
    pipeline, info = model
    # mlflow costs ~3 s to import: only once a batch passed validation
    import mlflow

    prepared = prepare_reference(
        paths.reference,
        paths.held_out,
        pipeline,
        info,
        len(batch_raw),
        n_null=params.n_null_batches,
        seed=options.seed,
    )
    watch.lap("reference")
    if prepared.in_sample:
        log.warning(
            "prediction drift and performance compare the batch with the reference rows "
            "themselves (%s); if the model was trained on them its predictions there are "
            "optimistic: pass model_reference_path with held-out rows",
            paths.reference,
        )

    batch = score_batch(batch_raw, pipeline, info, prepared)
    arrived = _arrived(labelled, batch, paths.new_data, pipeline, info)
    thresholds = prepared.calibration.thresholds(
        params.false_alarm_rate,
        labelled=bool(arrived),
        share_threshold=params.drift_share_threshold,
        prediction_drift_threshold=params.prediction_drift_threshold,
        performance_tolerance=params.performance_tolerance,
    )
    watch.lap("score")
    evidence = gather_evidence(prepared, batch, thresholds)
    watch.lap("reports")

    verdict = decide(
        evidence.drifted_share,
        thresholds.share_threshold,
        evidence.prediction_drift,
        evidence.performance_drop,
        thresholds.performance_tolerance,
    )
    performance = _performance_signals(prepared, evidence, arrived)
    retrain = retrain_decision(
        Signals(
            realised_drop=performance.realised_drop if performance else None,
            realised_tolerance=thresholds.performance_tolerance,
            estimated_drop=performance.expected_drop if performance else None,
            estimated_tolerance=thresholds.estimated_tolerance,
            data_drift=evidence.drifted_share >= thresholds.share_threshold - 1e-12,
            new_labelled_rows=params.new_labelled_rows,
            champion_train_rows=info.train_rows,
        ),
        PolicySettings(growth_trigger=params.growth_trigger),
    )
    watch.lap("decide")
    report_paths = {
        name: save_html(snap, storage.join(paths.reports_dir, f"{name}.html"))
        for name, snap in evidence.snapshots.items()
    }
    watch.lap("save_html")

    result = _result(paths, info, prepared, batch, evidence, verdict, report_paths, watch.seconds)
    result.performance_signals = performance
    result.retrain = retrain
    result.new_labelled_rows = params.new_labelled_rows
    log_monitoring_run(result, evidence.snapshots, paths, prepared, options.seed)
    watch.lap("mlflow")
    # The dashboard over time; a failed write is logged and tagged, and the result stands.
    workspace = evidently_workspace.record_monitoring(
        result, evidence.snapshots, paths.new_data, mlflow.active_run().info.run_id
    )
    result.evidently_workspace = workspace.tag()
    mlflow.set_tag("evidently_workspace", result.evidently_workspace)
    watch.lap("evidently_workspace")
    mlflow.set_tag("seconds", json.dumps(watch.seconds))
    return result


def _performance_signals(
    prepared: PreparedReference, evidence: Evidence, labelled: list[ArrivedBatch]
) -> PerformanceSignals | None:
    """Estimated and realised ROC AUC; None when the held-out rows have no labels."""
    if prepared.calibrator is None or evidence.expected_roc_auc is None:
        return None
    return performance_signals(
        prepared.calibrator,
        prepared.reference_roc_auc,
        prepared.reference_expected_roc_auc,
        evidence.expected_roc_auc,
        labelled,
    )


def _result(
    paths: MonitorPaths,
    info: Any,
    prepared: PreparedReference,
    batch: ScoredBatch,
    evidence: Evidence,
    verdict: tuple[str, list[str]],
    report_paths: dict[str, str],
    seconds: dict[str, float],
) -> MonitorResult:
    """The monitoring result (without its MLflow run id, known once the run ends)."""
    status, reasons = verdict
    source = reference_info(paths.reference)
    data_source = source["data_source"] or {"uci": "real"}.get(info.data_source, info.data_source)
    return MonitorResult(
        status=status,
        reasons=reasons,
        drifted_share=evidence.drifted_share,
        n_drifted_columns=len(evidence.drifted_columns),
        n_columns=len(evidence.drift_table),
        drifted_columns=evidence.drifted_columns,
        drift_table=evidence.drift_table,
        prediction_drift=evidence.prediction_drift,
        prediction_drift_score=evidence.prediction_drift_score,
        prediction_table=evidence.prediction_table,
        performance=evidence.performance,
        performance_drop=evidence.performance_drop,
        thresholds=evidence.thresholds,
        report_paths=report_paths,
        model_name=info.name,
        model_version=str(info.version),
        model_uri=paths.model_uri,
        mlflow_run_id=None,
        data_source=data_source or "unknown",
        banner=source["banner"],
        batch_rows=len(batch.proba),
        reference_rows=len(prepared.features),
        model_reference_rows=len(prepared.model_reference),
        model_reference_in_sample=prepared.in_sample,
        calibration_from_cache=prepared.calibration.from_cache,
        # The same dict as the stopwatch's: the MLflow step, timed after this, is included.
        seconds=seconds,
        predictions=compared_predictions(prepared.model_reference, batch),
        decision_threshold=batch.threshold,
    )
