"""Retraining on new labelled batches, with a promotion gate judged on shared data.

The new encounters are split by patient into *new-train* and *new-holdout*; neither model ever
trains on the holdout. The challenger is refitted on ``initial_train`` + new-train with a small
search warm-started from the champion's parameters, then champion and challenger are scored on
the SAME rows: the fixed ``test`` split and the new holdout. :func:`gate_decision` (pure) decides;
the alias moves only after everything else, logging included, succeeded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

from healthpredict.modeling import training
from healthpredict.modeling.features import make_target

DEFAULT_EXPERIMENT = "HealthPredict_Retraining"
PROMOTED, REJECTED = "PROMOTED", "REJECTED"


class RetrainDataError(ValueError):
    """The new batches cannot support a fair comparison; the message says why."""


def gate_decision(
    challenger_metrics: dict[str, float],
    champion_metrics: dict[str, float],
    tolerance: float = 0.01,
) -> tuple[bool, str]:
    """Whether the challenger replaces the champion, and why.

    Both metric sets must come from the same rows. The challenger must be strictly better on
    the new holdout (``holdout_roc_auc``: the recent data it was retrained for) and no worse
    than ``tolerance`` on the fixed test split (``test_roc_auc``: no forgetting of the past).

    Args:
        challenger_metrics: Needs ``holdout_roc_auc`` and ``test_roc_auc``.
        champion_metrics: The same keys for the champion.
        tolerance: Allowed drop of test ROC AUC (absolute, >= 0).

    Returns:
        ``(promote, reason)``; a missing or non-finite score means no promotion.

    Raises:
        KeyError: A required metric is missing (a caller bug, not a data problem).
        ValueError: ``tolerance`` is negative or not finite.
    """
    if not (isinstance(tolerance, int | float) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    keys = ("holdout_roc_auc", "test_roc_auc")
    for who, metrics in (("challenger", challenger_metrics), ("champion", champion_metrics)):
        for key in keys:
            if key not in metrics:
                raise KeyError(f"{who} metrics lack {key!r} (have: {sorted(metrics)})")
    ch_h, cp_h = (float(m["holdout_roc_auc"]) for m in (challenger_metrics, champion_metrics))
    ch_t, cp_t = (float(m["test_roc_auc"]) for m in (challenger_metrics, champion_metrics))
    if not all(math.isfinite(v) for v in (ch_h, cp_h, ch_t, cp_t)):
        return False, (
            "a ROC AUC is undefined (one class only?): "
            f"holdout {ch_h} vs {cp_h}, test {ch_t} vs {cp_t}; keeping the champion"
        )
    if ch_h <= cp_h:
        return False, (
            f"challenger is not better on the new holdout: ROC AUC {ch_h:.4f} vs "
            f"champion {cp_h:.4f}"
        )
    if ch_t < cp_t - tolerance:
        return False, (
            f"challenger is better on the new holdout ({ch_h:.4f} vs {cp_h:.4f}) but worse on "
            f"the fixed test split by {cp_t - ch_t:.4f} > tolerance {tolerance:.4f} "
            f"({ch_t:.4f} vs {cp_t:.4f})"
        )
    return True, (
        f"challenger is better on the new holdout ({ch_h:.4f} vs {cp_h:.4f}) and within "
        f"tolerance {tolerance:.4f} on the fixed test split ({ch_t:.4f} vs {cp_t:.4f})"
    )


def load_batches(uris: Sequence[str] | str | None) -> pd.DataFrame:
    """Read, validate (target required) and concatenate labelled raw batches.

    Raises:
        RawSchemaError: A batch does not match the raw schema (named by its URI).
        RetrainDataError: No URI was given, or the batches share encounter ids.
    """
    from healthpredict.data.schema import validate_raw
    from healthpredict.data.uci import read_raw_csv

    uris = [uris] if isinstance(uris, str) else list(uris or [])
    if not uris:
        raise RetrainDataError("no new data given: pass at least one batch URI")
    frames = []
    for uri in uris:
        frame = read_raw_csv(str(uri), source=str(uri))
        validate_raw(frame, require_target=True, source=str(uri))
        frames.append(frame)
    combined = pd.concat(frames, ignore_index=True)
    validate_raw(combined, require_target=True, source=f"{len(uris)} batch(es) together")
    return combined


def split_new_data(
    new: pd.DataFrame, *, holdout_fraction: float, seed: int, exclude_patients: set | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Split new encounters by patient into (new-train, new-holdout).

    Patients of ``exclude_patients`` (those of the fixed validation/test splits) are dropped
    from new-train: training on their later encounters would flatter the challenger on test.

    Returns:
        New-train, new-holdout and the number of rows dropped from new-train.
    """
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    if new["patient_nbr"].nunique() < 2:
        raise RetrainDataError(
            f"the new data has {new['patient_nbr'].nunique()} patient(s); a patient-grouped "
            "holdout needs at least 2"
        )
    splitter = GroupShuffleSplit(n_splits=1, test_size=holdout_fraction, random_state=seed)
    train_idx, hold_idx = next(splitter.split(new, groups=new["patient_nbr"]))
    new_train, holdout = new.iloc[np.sort(train_idx)], new.iloc[np.sort(hold_idx)]
    dropped = 0
    if exclude_patients:
        keep = ~new_train["patient_nbr"].isin(exclude_patients)
        dropped = int((~keep).sum())
        new_train = new_train[keep]
    return new_train.reset_index(drop=True), holdout.reset_index(drop=True), dropped


def score(pipeline: Any, frame: pd.DataFrame, target: str, threshold: float, prefix: str) -> dict:
    """Metrics of one model on one frame, keys prefixed (``test_roc_auc``, ...)."""
    with training.single_threaded():
        proba = pipeline.predict_proba(frame)[:, 1]
    metrics = training.classification_metrics(make_target(frame, target), proba, threshold)
    return {f"{prefix}{k}": v for k, v in metrics.items()}


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
    tolerance: float = 0.01
    manifest: dict = field(repr=False, default_factory=dict)
    holdout_path: str = ""  # raw CSV of the new holdout: the monitor's prediction reference

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


def retrain(
    new_data_uris: Sequence[str] | str,
    *,
    data_dir: str | None = None,
    holdout_fraction: float = 0.3,
    n_trials: int = 8,
    tolerance: float = 0.01,
    seed: int = 42,
    experiment_name: str = DEFAULT_EXPERIMENT,
    model_name: str | None = None,
    families: Sequence[str] | None = None,
    timeout_s: float | None = None,
    n_workers: int = 1,
    study_storage: str | None = None,
    target_recall: float | None = None,
    progress: bool = True,
    holdout_output_path: str | None = None,
) -> RetrainResult:
    """Retrain on ``initial_train`` + new labelled batches and promote only through the gate.

    Args:
        new_data_uris: Labelled raw batch CSVs (paths or ``s3://`` URIs), or one of them.
        data_dir: Prepared data folder with ``initial_train``/``validation``/``test``.
        holdout_fraction: Share of the new patients kept out of training for the gate.
        n_trials: Search trials (the first re-evaluates the champion's parameters).
        tolerance: Allowed ROC AUC drop on the fixed test split.
        seed: Seed of the holdout split, sampler and estimators.
        experiment_name: MLflow experiment of the retraining run.
        model_name: Registered model (default ``settings.model_name``).
        families: Families to search (default: the champion's family only, as the budget is
            small and the champion's parameters are the warm start).
        timeout_s: Search time limit per worker.
        n_workers: Search worker processes.
        study_storage: Optuna storage (see :func:`healthpredict.modeling.training.open_study_storage`).
        target_recall: Threshold rule (default: max F1 on validation).
        progress: Progress bar over trials.
        holdout_output_path: Where to write the new holdout as a raw CSV (default
            ``<storage>/monitoring/reference/holdout_<run id>.csv``). After a promotion the drift
            monitor compares predictions against these rows, which the new champion never saw.

    Raises:
        ModelNotFoundError: There is no champion to challenge.
        RawSchemaError: A batch does not match the raw schema.
        RetrainDataError: The new data cannot support the comparison.
    """
    import mlflow

    from healthpredict.core import storage
    from healthpredict.core.layout import monitoring_dir
    from healthpredict.core.settings import get_settings
    from healthpredict.data.split import drop_unreadmittable
    from healthpredict.mlops import registry, tracking

    started = time.perf_counter()
    model_name = model_name or get_settings().model_name
    tracking.setup_mlflow()
    champion_pipeline, champion = registry.load_pipeline(registry.champion_uri(model_name))
    target = champion.target or get_settings().target
    manifest, frames = training.load_training_splits(data_dir)
    new = drop_unreadmittable(load_batches(new_data_uris))
    fixed_patients = set(frames["validation"]["patient_nbr"]) | set(frames["test"]["patient_nbr"])
    new_train, holdout, dropped = split_new_data(
        new, holdout_fraction=holdout_fraction, seed=seed, exclude_patients=fixed_patients
    )
    if len(np.unique(make_target(holdout, target))) < 2:
        raise RetrainDataError(
            f"the new holdout ({len(holdout)} rows) has only one class for target {target!r}; "
            "the gate could not compare ROC AUC: give more new data"
        )
    train_df = pd.concat([frames["initial_train"], new_train], ignore_index=True)
    val_df, test_df = frames["validation"], frames["test"]
    champion_family = champion.params.get("family")
    champion_params = {k: v for k, v in champion.params.items() if k != "family"}
    families = list(families or ([champion_family] if champion_family else training.FAMILIES))
    enqueue = (
        [training.trial_params_for(champion_family, champion_params)]
        if champion_family in families
        else []
    )
    rows = {
        "initial_train": len(frames["initial_train"]),
        "new_rows": len(new),
        "new_train": len(new_train),
        "new_holdout": len(holdout),
        "new_train_dropped_fixed_patients": dropped,
        "train_total": len(train_df),
        "validation": len(val_df),
        "test": len(test_df),
    }
    exp_id = tracking.use_experiment(experiment_name)
    with mlflow.start_run(
        run_name=f"retrain-{time.strftime('%Y%m%d-%H%M%S')}", tags=tracking.run_tags()
    ) as run:
        run_id = run.info.run_id
        mlflow.set_tags(
            {
                **training.data_tags(manifest),
                "stage": "retrain",
                "champion_version": champion.version,
                "model_name": model_name,
            }
        )
        batches = [new_data_uris] if isinstance(new_data_uris, str) else list(new_data_uris)
        mlflow.log_params(
            {
                "new_data_uris": ",".join(map(str, batches))[:6000],
                "holdout_fraction": holdout_fraction,
                "n_trials": n_trials,
                "tolerance": tolerance,
                "seed": seed,
                "target": target,
                "families": ",".join(families),
                "n_workers": n_workers,
                "warm_start": ",".join(f"{k}={v}" for k, v in sorted(champion.params.items()))[
                    :6000
                ],
                **{f"rows.{k}": v for k, v in rows.items()},
            }
        )
        study = training.search(
            train_df,
            val_df,
            target=target,
            families=families,
            n_trials=n_trials,
            timeout_s=timeout_s,
            n_workers=n_workers,
            study_storage=study_storage,
            study_name=f"healthpredict-retrain-{run_id}",
            seed=seed,
            enqueue=enqueue,
            on_trial=training.TrialLogger(run_id, exp_id),
            progress=progress,
        )
        family, params = training.split_trial_params(study.best_trial.params)
        fitted = training.fit_final(
            family, params, train_df, val_df, target=target, seed=seed, target_recall=target_recall
        )
        # Same rows for both models; each at its own registered threshold.
        challenger_metrics = {
            **score(fitted.pipeline, test_df, target, fitted.threshold, "test_"),
            **score(fitted.pipeline, holdout, target, fitted.threshold, "holdout_"),
        }
        champion_metrics = {
            **score(champion_pipeline, test_df, target, champion.threshold, "test_"),
            **score(champion_pipeline, holdout, target, champion.threshold, "holdout_"),
        }
        promote, reason = gate_decision(challenger_metrics, champion_metrics, tolerance)
        decision = PROMOTED if promote else REJECTED
        # Written before the model is registered: a storage outage here moves no alias at all.
        holdout_path = storage.write_csv(
            holdout_output_path
            or storage.join(monitoring_dir(), "reference", f"holdout_{run_id}.csv"),
            holdout,
        )
        info = registry.log_model(
            fitted.pipeline,
            threshold=fitted.threshold,
            target=target,
            test_metrics={
                k[len("test_") :]: v for k, v in challenger_metrics.items() if k.startswith("test_")
            },
            input_example=train_df,
            data_source=str(manifest.get("data_source", "unknown")),
            params={"family": family, **params},
            name=model_name,
        )
        training.log_metrics_prefixed("challenger.", challenger_metrics)
        training.log_metrics_prefixed("champion.", champion_metrics)
        mlflow.log_dict(
            {
                "challenger": challenger_metrics,
                "champion": champion_metrics,
                "decision": decision,
                "reason": reason,
            },
            "gate.json",
        )
        mlflow.log_table(training.trials_frame(study), "trials.json")
        mlflow.set_tags(
            {"decision": decision, "reason": reason[:5000], "challenger_version": info.version}
        )
        mlflow.set_tag("holdout_path", holdout_path)
        for key, value in {
            "gate.decision": decision,
            "gate.reason": reason[:5000],
            "gate.champion_version": champion.version,
            "gate.retrain_run_id": run_id,
        }.items():
            mlflow.MlflowClient().set_model_version_tag(model_name, info.version, key, value)
        if promote:
            # Last step on purpose: an exception anywhere above leaves the champion in place.
            registry.promote(model_name, info.version)
            mlflow.set_tag("promoted", "true")
        else:
            mlflow.set_tag("promoted", "false")
        wall = time.perf_counter() - started
        mlflow.log_metric("wall_s", wall)
    return RetrainResult(
        decision=decision,
        promoted=promote,
        reason=reason,
        challenger_version=info.version,
        champion_version=champion.version,
        challenger_metrics=challenger_metrics,
        champion_metrics=champion_metrics,
        mlflow_run_id=run_id,
        data_source=str(manifest.get("data_source", "unknown")),
        banner=manifest.get("banner"),
        target=target,
        challenger_family=family,
        challenger_params=params,
        rows=rows,
        trials=training.trials_frame(study),
        wall_s=wall,
        model_name=model_name,
        tolerance=tolerance,
        manifest=manifest,
        holdout_path=holdout_path,
    )
