"""The recorded retraining on every labelled batch, with a paired promotion gate.

The batches the champion never learned from are split by patient into *new-train* and the gate
*holdout*; no model ever trains on the holdout. The challenger is refitted on ``initial_train``
+ every other labelled row (cumulative: on this stream more data beats recency) with a small
search warm-started from the champion's parameters; then both are scored on the SAME holdout
rows and :func:`healthpredict.modeling.gate.paired_gate` (pure) decides from the paired
interval of the ROC AUC gain. The alias moves only after everything else, logging included,
succeeded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import mlflow
import pandas as pd

from healthpredict.core import layout, storage
from healthpredict.core.constants import champion_uri
from healthpredict.core.portable import portable, portable_tree
from healthpredict.core.settings import get_settings
from healthpredict.core.stages import RetrainParams
from healthpredict.data.schema import make_target
from healthpredict.data.split import drop_unreadmittable
from healthpredict.mlops import registry, tracking
from healthpredict.mlops.model_card import LoggedCard, card_numbers, log_card
from healthpredict.mlops.run_logging import TrialLogger, log_calibration, log_metrics_prefixed
from healthpredict.modeling.evaluation import score, uncalibrated_scores
from healthpredict.modeling.fitting import FittedModel, data_tags, fit_final, load_training_splits
from healthpredict.modeling.gate import GateRule, GateVerdict, paired_gate
from healthpredict.modeling.models import FAMILIES, split_trial_params, trial_params_for
from healthpredict.modeling.retrain_data import (
    RetrainData,
    RetrainDataError,
    load_batches,
    retrain_data,
)
from healthpredict.modeling.runtime.model_meta import ModelInfo
from healthpredict.modeling.search import search
from healthpredict.modeling.studies import SearchSettings, trials_frame

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class RetrainOptions:
    """How :func:`retrain` searches, beyond the stage's parameters (:class:`RetrainParams`).

    Attributes:
        families: Families to search (default: the champion's family only, as the budget is
            small and the champion's parameters are the warm start).
        timeout_s: Search time limit per worker.
        n_workers: Search worker processes.
        study_storage: Optuna storage (see
            :func:`healthpredict.modeling.studies.open_study_storage`).
        target_recall: Threshold rule (default: max F1 on validation).
        progress: Progress bar over trials.
    """

    families: Sequence[str] | None = None
    timeout_s: float | None = None
    n_workers: int = 1
    study_storage: str | None = None
    target_recall: float | None = None
    progress: bool = True


@dataclass
class RetrainResult:
    """Outcome of :func:`retrain`, as the 04 notebook shows and records it."""

    decision: str
    promoted: bool
    reason: str
    challenger_version: str
    champion_version: str
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float]
    mlflow_run_id: str
    data_source: str
    banner: str | None
    target: str
    challenger_family: str
    challenger_params: dict[str, Any]
    rows: dict[str, int]
    trials: pd.DataFrame
    wall_s: float
    model_name: str = ""
    gate: dict[str, Any] = field(default_factory=dict)  # GateVerdict.as_dict(): interval, rule
    manifest: dict = field(repr=False, default_factory=dict)
    holdout_path: str = ""  # raw CSV of the new holdout: the monitor's prediction reference
    # False for a promotion left to the caller (``promote=False``: the loop moves it write-ahead)
    alias_moved: bool = False
    card: LoggedCard | None = None

    def comparison(self) -> pd.DataFrame:
        """Side-by-side table: one row per metric, columns champion, challenger, difference."""
        keys = [k for k in self.challenger_metrics if k in self.champion_metrics]
        table = pd.DataFrame(
            {
                "champion": [self.champion_metrics[k] for k in keys],
                "challenger": [self.challenger_metrics[k] for k in keys],
            },
            index=pd.Index(keys, name="metric"),
        )
        table["difference"] = table["challenger"] - table["champion"]
        return table


@dataclass
class _Champion:
    pipeline: Any
    info: ModelInfo


@dataclass
class _Verdict:
    """The two models' metrics on the same rows and the gate's verdict."""

    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float]
    gate: GateVerdict

    @property
    def promote(self) -> bool:
        """Whether the challenger replaces the champion."""
        return self.gate.promote

    @property
    def decision(self) -> str:
        """``PROMOTED`` or ``REJECTED``."""
        return self.gate.decision

    @property
    def reason(self) -> str:
        """The gate's sentence."""
        return self.gate.reason


# The options that are the search's own settings.
_SEARCH_OPTIONS = ("timeout_s", "n_workers", "study_storage", "progress")


def _search_settings(
    params: RetrainParams, options: RetrainOptions, champion: ModelInfo
) -> SearchSettings:
    """The challenger's search: the champion's family (unless told) warm-started at its params."""
    champion_family = champion.params.get("family")
    champion_params = {k: v for k, v in champion.params.items() if k != "family"}
    families = list(options.families or ([champion_family] if champion_family else FAMILIES))
    enqueue = (
        [trial_params_for(champion_family, champion_params)] if champion_family in families else []
    )
    searched = {k: getattr(options, k) for k in _SEARCH_OPTIONS}
    return SearchSettings(families, params.n_trials, seed=params.seed, enqueue=enqueue, **searched)


def _log_settings(
    params: RetrainParams,
    options: RetrainOptions,
    settings: SearchSettings,
    champion: ModelInfo,
    data: RetrainData,
    target: str,
) -> None:
    batches = _batch_uris(params)
    mlflow.log_params(  # paths as <storage>/...: the same text on every machine
        portable_tree(
            {
                "new_data_uris": ",".join(map(str, batches))[:6000],
                "gate_data_uris": ",".join(_gate_uris(params))[:6000],
                "holdout_fraction": params.holdout_fraction,
                "n_trials": params.n_trials,
                "non_inferiority_margin": params.non_inferiority_margin,
                "gate_confidence": params.gate_confidence,
                "seed": params.seed,
                "target": target,
                "families": ",".join(settings.families),
                "n_workers": options.n_workers,
                "warm_start": ",".join(f"{k}={v}" for k, v in sorted(champion.params.items()))[
                    :6000
                ],
                **{f"rows.{k}": v for k, v in data.rows.items()},
            }
        )
    )


def _judge(
    fitted: FittedModel, champion: _Champion, data: RetrainData, target: str, rule: GateRule
) -> _Verdict:
    """Score both models on the same rows, each at its own threshold; gate on the holdout."""
    challenger_metrics = {
        **score(fitted.pipeline, data.test, target, fitted.threshold, "test_"),
        **score(fitted.pipeline, data.holdout, target, fitted.threshold, "holdout_"),
        **{
            f"test_{k}": v
            for k, v in uncalibrated_scores(fitted.uncalibrated, data.test, target).items()
        },
    }
    threshold = champion.info.threshold
    champion_metrics = {
        **score(champion.pipeline, data.test, target, threshold, "test_"),
        **score(champion.pipeline, data.holdout, target, threshold, "holdout_"),
    }
    gate = paired_gate(
        make_target(data.holdout, target),
        champion.pipeline.predict_proba(data.holdout)[:, 1],
        fitted.pipeline.predict_proba(data.holdout)[:, 1],
        groups=data.holdout["patient_nbr"].to_numpy(),
        champion_train_rows=champion.info.train_rows,
        challenger_train_rows=len(data.train),
        rule=rule,
    )
    return _Verdict(challenger_metrics, champion_metrics, gate)


def _log_verdict(
    verdict: _Verdict, trials: pd.DataFrame, info: ModelInfo, champion: ModelInfo, run_id: str
) -> None:
    log_metrics_prefixed("challenger.", verdict.challenger_metrics)
    log_metrics_prefixed("champion.", verdict.champion_metrics)
    mlflow.log_dict(
        {
            "challenger": verdict.challenger_metrics,
            "champion": verdict.champion_metrics,
            **verdict.gate.as_dict(),
        },
        "gate.json",
    )
    log_metrics_prefixed(
        "gate.",
        {
            k: getattr(verdict.gate, k)
            for k in ("gain", "ci_low", "ci_high", "n_rows", "n_positives")
        },
    )
    mlflow.log_table(trials, "trials.json")
    mlflow.set_tags(
        {
            "decision": verdict.decision,
            "reason": verdict.reason[:5000],
            "challenger_version": info.version,
        }
    )
    for key, value in {
        "gate.decision": verdict.decision,
        "gate.reason": verdict.reason[:5000],
        "gate.champion_version": champion.version,
        "gate.retrain_run_id": run_id,
    }.items():
        mlflow.MlflowClient().set_model_version_tag(info.name, info.version, key, value)


def _challenge(
    study: optuna.Study,
    champion: _Champion,
    data: RetrainData,
    target: str,
    stage: tuple[RetrainParams, RetrainOptions],
) -> tuple[FittedModel, _Verdict]:
    """Refit the search's best trial and put it through the gate against the champion."""
    params, options = stage
    family, best = split_trial_params(study.best_trial.params)
    fitted = fit_final(
        family,
        best,
        data.train,
        data.val,
        target=target,
        seed=params.seed,
        target_recall=options.target_recall,
    )
    rule = GateRule(
        confidence=params.gate_confidence,
        non_inferiority_margin=params.non_inferiority_margin,
        seed=params.seed,
    )
    return fitted, _judge(fitted, champion, data, target, rule)


def _register_challenger(
    fitted: FittedModel,
    verdict: _Verdict,
    target: str,
    manifest: dict,
    data: RetrainData,
    name: str,
) -> ModelInfo:
    test_metrics = {
        k[len("test_") :]: v for k, v in verdict.challenger_metrics.items() if k.startswith("test_")
    }
    return registry.log_model(
        fitted.pipeline,
        threshold=fitted.threshold,
        target=target,
        test_metrics=test_metrics,
        input_example=data.train,
        data_source=str(manifest.get("data_source", "unknown")),
        params={"family": fitted.family, **fitted.params},
        train_rows=len(data.train),
        calibration=fitted.calibration.method,
        name=name,
    )


def _uris(value: str | Sequence[str] | None) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in (value or [])]


def _batch_uris(params: RetrainParams) -> list[str]:
    """Every labelled batch to learn from, as a list."""
    return _uris(params.retraining_data_path)


def _gate_uris(params: RetrainParams) -> list[str]:
    """The batches the champion never learned from (default: all of them).

    Raises:
        RetrainDataError: A gate batch is not among the batches to learn from.
    """
    batches = _batch_uris(params)
    gate = _uris(params.gate_data_path) or batches
    stray = [u for u in gate if u not in batches]
    if stray:
        raise RetrainDataError(
            f"gate_data_path must name batches of retraining_data_path; not there: {stray[:3]}"
        )
    return gate


def _load_data(params: RetrainParams, target: str) -> tuple[dict, RetrainData]:
    """The manifest and the rows of the comparison: fixed splits plus the labelled batches."""
    manifest, frames = load_training_splits(params.data_dir)
    gate = _gate_uris(params)
    learned = [u for u in _batch_uris(params) if u not in gate]
    data = retrain_data(
        frames,
        drop_unreadmittable(load_batches(gate)),
        learned=drop_unreadmittable(load_batches(learned)) if learned else None,
        target=target,
        holdout_fraction=params.holdout_fraction,
        seed=params.seed,
    )
    return manifest, data


def retrain(params: RetrainParams, options: RetrainOptions | None = None) -> RetrainResult:
    """Retrain on ``initial_train`` + new labelled batches and promote only through the gate.

    Args:
        params: The stage's parameters, as the 04 notebook takes them: the labelled batches
            (``retraining_data_path``; those the champion never saw: ``gate_data_path``), data
            folder, holdout share, search budget, gate rule, experiment, model name and where the new holdout is written.
        options: Search families, time limit, workers, storage, threshold rule, progress
            (default: :class:`RetrainOptions` as is).

    Raises:
        ModelNotFoundError: There is no champion to challenge.
        RawSchemaError: A batch does not match the raw schema.
        RetrainDataError: The new data cannot support the comparison.
    """
    options = options or RetrainOptions()
    started = time.perf_counter()
    model_name = params.model_name or get_settings().model_name
    tracking.setup_mlflow()
    champion = _Champion(*registry.load_pipeline(champion_uri(model_name)))
    target = champion.info.target or get_settings().target
    manifest, data = _load_data(params, target)
    settings = _search_settings(params, options, champion.info)
    exp_id = tracking.use_experiment(params.mlflow_experiment_name)
    with mlflow.start_run(
        run_name=f"retrain-{time.strftime('%Y%m%d-%H%M%S')}", tags=tracking.run_tags()
    ) as run:
        run_id = run.info.run_id
        mlflow.set_tags({**data_tags(manifest), "stage": "retrain", "model_name": model_name})
        mlflow.set_tag("champion_version", champion.info.version)
        _log_settings(params, options, settings, champion.info, data, target)
        study = search(
            data.train,
            data.val,
            study_name=f"healthpredict-retrain-{run_id}",
            target=target,
            settings=settings,
            on_trial=TrialLogger(run_id, exp_id),
        )
        fitted, verdict = _challenge(study, champion, data, target, (params, options))
        log_calibration(fitted)
        numbers = card_numbers(
            fitted,
            data.test,
            target=target,
            target_recall=options.target_recall,
            data_source=str(manifest.get("data_source", "unknown")),
            train_rows=len(data.train),
            uncalibrated_brier=verdict.challenger_metrics["test_uncalibrated_brier"],
            seed=params.seed,
        )
        # Written before the model is registered: a storage outage here moves no alias at all.
        holdout_path = storage.write_csv(
            params.holdout_output_path or layout.reference_csv(f"holdout_{run_id}"),
            data.holdout,
        )
        info = _register_challenger(fitted, verdict, target, manifest, data, model_name)
        card = log_card(numbers, info, run_id)
        trials = trials_frame(study)
        _log_verdict(verdict, trials, info, champion.info, run_id)
        mlflow.set_tag("holdout_path", portable(holdout_path))
        alias_moved = verdict.promote and params.promote
        if alias_moved:
            # Last step on purpose: an exception anywhere above leaves the champion in place.
            registry.promote(model_name, info.version)
        mlflow.set_tag("promoted", str(verdict.promote).lower())
        mlflow.set_tag("alias_moved", str(alias_moved).lower())
        wall = time.perf_counter() - started
        mlflow.log_metric("wall_s", wall)
    return RetrainResult(
        decision=verdict.decision,
        promoted=verdict.promote,
        reason=verdict.reason,
        challenger_version=info.version,
        champion_version=champion.info.version,
        challenger_metrics=verdict.challenger_metrics,
        champion_metrics=verdict.champion_metrics,
        mlflow_run_id=run_id,
        data_source=str(manifest.get("data_source", "unknown")),
        banner=manifest.get("banner"),
        target=target,
        challenger_family=fitted.family,
        challenger_params=fitted.params,
        rows=data.rows,
        trials=trials,
        wall_s=wall,
        model_name=model_name,
        gate=verdict.gate.as_dict(),
        manifest=manifest,
        holdout_path=holdout_path,
        alias_moved=alias_moved,
        card=card,
    )
