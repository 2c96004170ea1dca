"""The monitoring step: cut a batch, attach arrived labels, monitor, decide, maybe retrain, advance.

One step for ``healthpredict loop`` (:func:`monitoring_step`, driven by
:func:`healthpredict.pipelines.local_loop.run_loop`) and for the monitoring DAG, whose tasks
(:mod:`healthpredict.pipelines.monitoring`) call its parts one by one. Both validate the batch
with :func:`validate_batch_size`, handle labels with
:func:`~healthpredict.pipelines.step_labels.plan_step_labels`, decide with :func:`decide` and
move the cursor (and the champion alias, write-ahead) only with
:func:`~healthpredict.pipelines.commit.commit_step`, after monitoring (and, when the monitor
asked for it, retraining) succeeded.

Labels arrive late (:mod:`healthpredict.monitoring.labels`): a batch is monitored without its
target; the batches whose labels arrived since the last step go to the monitor, which measures
the champion's realised ROC AUC on them; retraining learns from labelled batches only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from healthpredict.core import layout
from healthpredict.core.constants import (
    DRIFT_DETECTED,
    ESTIMATE_WINDOW_BATCHES,
    MIN_BATCH_ROWS,
    NO_DRIFT,
)
from healthpredict.core.settings import get_settings
from healthpredict.core.stages import LoopParams
from healthpredict.mlops import registry, tracking
from healthpredict.modeling.runtime.model_meta import ModelNotFoundError
from healthpredict.monitoring.labels import LabelPlan
from healthpredict.monitoring.lease import Lease
from healthpredict.monitoring.state import BatchWindow, LoopState, next_window, write_batch
from healthpredict.pipelines.commit import commit_step
from healthpredict.pipelines.step_labels import (
    labelled_after,
    new_labelled_after,
    new_labelled_rows,
    plan_step_labels,
)
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
    """What the data-drift report alone would say (reported; the decision is the monitor's).

    Checks the status too: the history keeps it as a report.

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
        drift_status: ``DRIFT_DETECTED`` or ``NO_DRIFT`` (a report; it decides nothing).
        drifted_share: Share of drifted columns, as the monitor scrapped it.
        monitor_run_dir: The monitor's notebook run.
        retrain: Whether a retraining runs.
        triggers: The signals that asked for a retraining (the monitor's ``retrain_triggers``).
        reasons: Why, in sentences (``retrain_reasons``).
        retraining_data: Labelled batches a retraining learns from.
        gate_data: Labelled batches the champion never learned from (the gate's holdout pool).
        skipped: Why the monitor's request to retrain was not followed (None: it was, or there
            was none).
    """

    drift_status: str
    drifted_share: float | None
    monitor_run_dir: str
    retrain: bool
    triggers: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    retraining_data: list[str] = field(default_factory=list)
    gate_data: list[str] = field(default_factory=list)
    skipped: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (XCom)."""
        return {
            "drift_status": self.drift_status,
            "drifted_share": self.drifted_share,
            "monitor_run_dir": self.monitor_run_dir,
            "retrain": self.retrain,
            "triggers": list(self.triggers),
            "reasons": list(self.reasons),
            "retraining_data": list(self.retraining_data),
            "gate_data": list(self.gate_data),
            "skipped": self.skipped,
        }


def _scrap(scraps: Mapping[str, Any], name: str, kind: type) -> Any:
    if name not in scraps:
        raise ValueError(
            f"the drift monitor left no {name!r} scrap: the retraining decision needs "
            "retrain, retrain_triggers and retrain_reasons (a monitor notebook older than "
            "the label-aware loop?)"
        )
    value = scraps[name]
    if not isinstance(value, kind):
        raise ValueError(f"the drift monitor's {name!r} scrap is {value!r}, not a {kind.__name__}")
    return value


def decide(
    scraps: Mapping[str, Any],
    monitor_run_dir: str,
    labelled: Sequence[str],
    new_labelled: Sequence[str],
    retrain_window: int | None = None,
) -> Decision:
    """Decide on a monitored batch from the monitor's scraps and the labelled data at hand.

    The monitor says whether to retrain (``retrain``, ``retrain_triggers``,
    ``retrain_reasons``); a retraining runs only when there are labelled rows the champion
    never learned from, since the gate draws its holdout from them and there is nothing new to
    learn otherwise. It learns from all labelled batches so far (the backtest: more data beats
    recency here), or the last ``retrain_window`` of them.

    Args:
        scraps: The drift monitor's scraps.
        monitor_run_dir: Folder of the monitor's run.
        labelled: ``labelled_uri`` of every labelled batch so far, in stream order.
        new_labelled: Those the champion never learned from.
        retrain_window: None: all labelled batches; N: the last N.

    Raises:
        ValueError: The drift status is neither ``DRIFT_DETECTED`` nor ``NO_DRIFT``, or a
            retraining scrap is missing or of the wrong type.
    """
    status = scraps["drift_status"]
    should_retrain(status)  # validates the reported status
    wanted = _scrap(scraps, "retrain", bool)
    triggers = list(_scrap(scraps, "retrain_triggers", list))
    reasons = list(_scrap(scraps, "retrain_reasons", list))
    training = list(labelled) if retrain_window is None else list(labelled)[-int(retrain_window) :]
    skipped = None
    if wanted and not new_labelled:
        skipped = (
            "no labelled rows yet: labels are still pending"
            if not labelled
            else "no labelled rows the champion has not learned from: nothing new to learn "
            "and no holdout for the gate"
        )
    return Decision(
        drift_status=status,
        drifted_share=scraps.get("drifted_share"),
        monitor_run_dir=str(monitor_run_dir),
        retrain=wanted and skipped is None,
        triggers=triggers,
        reasons=reasons,
        retraining_data=training,
        gate_data=list(new_labelled),
        skipped=None if skipped is None else f"not retrained ({', '.join(triggers)}): {skipped}",
    )


@dataclass
class BatchOutcome:
    """What happened to one batch.

    ``labels`` is the step's :meth:`~healthpredict.monitoring.labels.LabelPlan.summary`;
    ``retrain`` the retraining's summary when one ran, ``retrain_skipped`` why the monitor's
    request to retrain was not followed.
    """

    window: BatchWindow
    batch_uri: str
    drift_status: str
    drifted_share: float | None
    monitor_run_dir: str
    retrain: dict | None = None
    triggers: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    retrain_skipped: str | None = None
    labels: dict | None = None

    def as_dict(self) -> dict:
        """JSON-ready summary for the state history."""
        return {
            "start": self.window.start,
            "end": self.window.end,
            "batch_uri": self.batch_uri,
            "drift_status": self.drift_status,
            "drifted_share": self.drifted_share,
            "monitor_run_dir": self.monitor_run_dir,
            "retrain_triggers": list(self.triggers),
            "retrain_reasons": list(self.reasons),
            "retrain": self.retrain,
            "retrain_skipped": self.retrain_skipped,
            "labels": self.labels,
        }


def outcome_of(
    window: BatchWindow,
    batch_uri: str,
    decision: Mapping[str, Any],
    plan: LabelPlan,
    retrain: dict | None = None,
) -> BatchOutcome:
    """The outcome of a batch from its decision (:meth:`Decision.as_dict`) and label plan."""
    return BatchOutcome(
        window,
        batch_uri,
        decision["drift_status"],
        decision.get("drifted_share"),
        decision["monitor_run_dir"],
        retrain,
        list(decision.get("triggers", [])),
        list(decision.get("reasons", [])),
        decision.get("skipped"),
        plan.summary(),
    )


def monitor_parameters(
    state: LoopState, batch_uri: str, default_reference: str, plan: LabelPlan | None = None
) -> dict:
    """Drift-monitor parameters for a batch, as the state and the step's labels imply.

    Since a promotion, the batches the champion learned from are the data reference and its
    gate holdout is the prediction reference. The champion's latest labelled batches (those it
    never learned from) go to the monitor (``labelled_data_path``): it measures the realised ROC
    AUC on the newest and anchors the batch's estimate on them.
    """
    plan = plan or LabelPlan()
    params = {
        "new_data_path": batch_uri,
        "reference_data_path": state.reference_uri or default_reference,
        # The champion's latest labelled batches: the newest is the realised signal, all of
        # them set the level of the batch's estimated ROC AUC.
        "labelled_data_path": new_labelled_after(state, plan)[-ESTIMATE_WINDOW_BATCHES:] or None,
        "new_labelled_rows": new_labelled_rows(state, plan),
    }
    if state.model_reference_uri:
        params["model_reference_path"] = state.model_reference_uri
    return params


def retrain_summary(
    scraps: Mapping[str, Any], run_dir: str | None, retraining_data: Sequence[str]
) -> dict:
    """What the loop keeps of a retraining run's scraps (or of its recorded outcome)."""
    return {
        "decision": scraps["decision"],
        "promoted": bool(scraps["promoted"]),
        "reason": scraps["reason"],
        "challenger_version": scraps["challenger_version"],
        "holdout_path": scraps.get("holdout_path"),
        "run_dir": run_dir,
        "retraining_data_path": list(retraining_data),
        "champion_version": scraps.get("champion_version"),
        "model_name": scraps.get("model_name"),
        # A retraining recorded before the loop moved aliases itself promoted on its own.
        "alias_moved": bool(scraps.get("alias_moved", scraps["promoted"])),
    }


# ---- the whole step, as the local loop runs it ----------------------------------------------


_LOOP_DEFAULTS = LoopParams()


@dataclass(frozen=True)
class StepConfig:
    """How the local loop monitors a batch.

    Attributes:
        batch_size: Rows per batch (at least ``MIN_BATCH_ROWS``).
        model_uri: Production model.
        default_reference: Drift reference before any promotion (the ``initial_train`` split).
        retrain_window: Labelled batches a retraining learns from (None: all so far).
        label_delay_batches: Batches after which a batch's labels are due.
        label_timeout_batches: Batches past due after which missing labels become a gap.
        label_source: ``replay`` (the loop delivers the stream's labels) or ``external``.
        monitor_params: Extra parameters for the drift-monitor notebook.
        retrain_params: Extra parameters for the retrain notebook.
        root: Storage root (default from settings).
        runner_id: The lease holder; tags the MLflow runs the notebooks start.
    """

    batch_size: int
    model_uri: str
    default_reference: str
    retrain_window: int | None = _LOOP_DEFAULTS.retrain_window
    label_delay_batches: int = _LOOP_DEFAULTS.label_delay_batches
    label_timeout_batches: int = _LOOP_DEFAULTS.label_timeout_batches
    label_source: str = _LOOP_DEFAULTS.label_source
    monitor_params: Mapping[str, Any] = field(default_factory=dict)
    retrain_params: Mapping[str, Any] = field(default_factory=dict)
    root: str | None = None
    runner_id: str | None = None

    @property
    def kernel(self) -> Kernel:
        """The notebooks' kernel: its environment names the runner, whose lease tags the runs."""
        return Kernel(env={tracking.LOOP_HOLDER_ENV: self.runner_id} if self.runner_id else {})

    @property
    def loop_params(self) -> LoopParams:
        """The loop settings this step uses (validated as ``healthpredict loop`` would)."""
        return LoopParams(
            batch_size=self.batch_size,
            retrain_window=self.retrain_window,
            label_delay_batches=self.label_delay_batches,
            label_timeout_batches=self.label_timeout_batches,
            label_source=self.label_source,
        )


def monitor_batch(params: Mapping[str, Any], kernel: Kernel) -> RunResult:
    """Run the drift-monitor notebook with ``params``; returns the notebook run's result."""
    return run(MONITOR_NOTEBOOK, dict(params), kernel=kernel)


def retrain_on(
    batch_uris: Sequence[str], gate_uris: Sequence[str], params: Mapping[str, Any], kernel: Kernel
) -> RunResult:
    """Run the retrain notebook (search + promotion gate) on labelled batches.

    Args:
        batch_uris: Labelled batches to learn from (``initial_train`` is added by the notebook).
        gate_uris: Labelled batches the champion never learned from: the gate's holdout pool.
        params: Extra notebook parameters.
        kernel: The notebook's kernel.
    """
    parameters = {
        "retraining_data_path": list(batch_uris),
        "gate_data_path": list(gate_uris),
        **params,
        # The loop moves the champion alias itself, recorded in its state first (write-ahead).
        "promote": False,
    }
    result = run(RETRAIN_NOTEBOOK, parameters, kernel=kernel)
    if result.reused and not _challenger_exists(result.scraps):
        # An identical earlier retraining is re-used (a redone step), unless the version it
        # registered was deleted since (a rolled-back promotion): its decision is void then.
        result = run(RETRAIN_NOTEBOOK, parameters, kernel=kernel, force=True)
    return result


def _challenger_exists(scraps: Mapping[str, Any]) -> bool:
    name = scraps.get("model_name") or get_settings().model_name
    try:
        registry.get_model_info(f"models:/{name}/{scraps['challenger_version']}")
    except ModelNotFoundError:
        return False
    return True


def monitoring_step(
    future: pd.DataFrame, state: LoopState, config: StepConfig, held: Lease | None = None
) -> BatchOutcome | None:
    """Monitor the next batch and retrain when the monitor asks; advance the state on success.

    Returns None when the stream is exhausted. Any failure raises with the state untouched,
    so the next call processes the same batch again (the files it wrote are named by batch
    and rewritten identically); the exception gets a note naming the batch. With ``held``,
    the lease is checked to still be ours just before the state moves.

    Raises:
        ValueError: The batch size is below ``MIN_BATCH_ROWS``.
        healthpredict.monitoring.labels.LabelStoreError: A label file is unusable or two
            labels of an encounter disagree.
        healthpredict.runs.NotebookRunError: The monitor or the retraining run failed.
    """
    validate_batch_size(config.batch_size)
    loop = config.loop_params
    window = next_window(state.next_batch_start_index, len(future), config.batch_size)
    if window is None:
        return None
    batch_uri = layout.batch_csv(window.name, config.root)
    try:
        batch_uri = write_batch(future, window, config.root)
        batch = {"batch_uri": batch_uri, "start": window.start, "end": window.end}
        plan = plan_step_labels(state, state.batches_done, batch, loop, future, config.root)
        params = {
            **monitor_parameters(state, batch_uri, config.default_reference, plan),
            "mlflow_model_uri": config.model_uri,
            **config.monitor_params,
        }
        result = monitor_batch(params, config.kernel)
        decision = decide(
            result.scraps,
            result.run_dir,
            labelled_after(state, plan),
            new_labelled_after(state, plan),
            config.retrain_window,
        )
        retrain = None
        if decision.retrain:
            if held is not None:
                held.renew()  # still ours? a retraining registers a model version
            retrained = retrain_on(
                decision.retraining_data,
                decision.gate_data,
                config.retrain_params,
                config.kernel,
            )
            retrain = retrain_summary(
                retrained.scraps, str(retrained.run_dir), decision.retraining_data
            )
        outcome = outcome_of(window, batch_uri, decision.as_dict(), plan, retrain)
        commit_step(state, outcome, plan, root=config.root, held=held)
    except Exception as exc:
        if state.promotion:  # recorded ahead, the alias not moved yet
            exc.add_note(
                f"batch rows {window.start}-{window.end} is done but the promotion of v"
                f"{state.promotion['challenger_version']} recorded in the loop state is not: the "
                "next run finishes it (or rolls it back) before anything else"
            )
        else:
            exc.add_note(
                f"batch rows {window.start}-{window.end} ({batch_uri}) was not completed: the "
                f"loop state is unchanged and the next run starts again at row {window.start}"
            )
        raise
    return outcome
