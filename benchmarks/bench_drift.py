"""Benchmark of the drift and retraining decisions: false alarms, detection, the stream, speed.

For each data set (the real UCI file when available, always the synthetic generator) and each
of ``--repeats`` patient-grouped splits of the initial period, a logistic regression is trained
on ``initial_train`` (the drift reference). Cross-fitted per batch size: thresholds are
calibrated on the time-ordered windows of the ``validation`` patients and judged on those of
the ``test`` patients, then the other way round (never on the same windows):

* false-alarm rates of the retraining decision (:func:`healthpredict.monitoring.policy.
  retrain_decision`), of the drift status (:func:`healthpredict.monitoring.decision.decide`) and
  of each signal, and of calibration v2 (random whole-patient batches) on the same windows;
* detection rate: the same windows after each covariate, label and concept scenario of
  :mod:`tests.support.drift_scenarios`, at its moderate and strong strength.

Windows are judged with the fast vectorised scores; a few are checked against full Evidently
reports. With the real data, the chronological ``future_data`` stream is
also monitored batch by batch (production defaults: held-out rows = validation + test).
Finally one 2,000-row batch is monitored through the notebook runner (HTML included), warm
cache, to time a monitored batch end to end.

Writes ``var/bench/drift.json`` and the tables of ``docs/drift_calibration.md``.
Usage: ``make bench-drift`` or ``python benchmarks/bench_drift.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support (drift scenarios) is test support, not shipped
KINDS = ("covariate", "label", "concept")
GOAL_FALSE_ALARM, GOAL_DETECTION, GOAL_SECONDS = 0.05, 0.95, 15.0
UNCALIBRATED_COLUMN, UNCALIBRATED_SHARE = 0.1, 0.3  # Evidently's default, a typical trigger


def find_real_data() -> str | None:
    """Path or URI of the real UCI data (``HP_UCI_SOURCE``, the bundled zip, the cache), or None."""
    from healthpredict.data.uci import real_data_source

    return real_data_source()


@dataclass
class Part:
    """One held-out split of the reference period (patients the reference never saw), in time order."""

    raw: pd.DataFrame  # raw rows sorted by encounter_id
    eng: pd.DataFrame  # engineered, numeric tails capped like the reference
    proba: np.ndarray
    label: np.ndarray

    def model_reference(self):
        """The part as the model reference of a calibration (predictions, labels, features)."""
        from healthpredict.monitoring.nulls import ModelReference

        return ModelReference(
            self.proba,
            self.label,
            self.raw["patient_nbr"].to_numpy(),
            self.raw["encounter_id"].to_numpy(),
            self.eng,
        )


@dataclass
class Setup:
    """One split of one data set: drift reference, held-out parts and a fitted model."""

    reference: pd.DataFrame  # engineered initial_train, numeric tails capped
    caps: dict
    parts: dict  # "validation" / "test" -> Part
    pipeline: object
    reference_groups: np.ndarray | None = None  # patient of each reference row
    scorer: object = None  # statistics.ReferenceScorer of ``reference``

    def __post_init__(self) -> None:
        from healthpredict.monitoring import statistics

        self.scorer = self.scorer or statistics.ReferenceScorer(self.reference)

    def engineer(self, raw: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray | None]:
        """Capped engineered features, probabilities and labels of raw rows (engineered once)."""
        from healthpredict.data.schema import make_target
        from healthpredict.modeling.features import MODEL_FEATURES, clean_data, engineer_features
        from healthpredict.monitoring import statistics

        eng = engineer_features(clean_data(raw))
        # The fitted pipeline is preprocess (engineer + encode) then model: reuse ``eng``.
        encode = self.pipeline.named_steps["preprocess"].named_steps["encode"]
        proba = self.pipeline.named_steps["model"].predict_proba(
            encode.transform(eng[list(MODEL_FEATURES)])
        )[:, 1]
        label = make_target(raw) if "readmitted" in raw.columns else None
        return statistics.cap_tails(eng, self.caps).reset_index(drop=True), proba, label


def make_setup(raw: pd.DataFrame, seed: int, initial_fraction: float) -> Setup:
    """Split, train the logistic regression and precompute the held-out parts in time order."""
    from healthpredict.data.schema import make_target
    from healthpredict.data.split import SplitParams, split_frame
    from healthpredict.modeling.features import clean_data, engineer_features
    from healthpredict.modeling.models import make_pipeline
    from healthpredict.monitoring import statistics

    split = split_frame(raw, SplitParams(initial_fraction=initial_fraction, seed=seed))
    train = split["initial_train"].reset_index(drop=True)
    pipeline = make_pipeline("logreg", {"C": 1.0}, seed=0).fit(train, make_target(train))
    reference = engineer_features(clean_data(train))
    caps = statistics.tail_caps(reference)
    setup = Setup(
        statistics.cap_tails(reference, caps), caps, {}, pipeline, train["patient_nbr"].to_numpy()
    )
    for name in ("validation", "test"):
        part = split[name].sort_values("encounter_id", kind="stable").reset_index(drop=True)
        eng, proba, label = setup.engineer(part)
        setup.parts[name] = Part(part, eng, proba, label)
    return setup


@dataclass
class Calibrated:
    """Thresholds calibrated on one held-out part, and what judging a batch against it needs."""

    part: Part
    labelled: object  # Thresholds with the realised tolerance
    unlabelled: object  # Thresholds without it
    calibrator: object
    reference_auc: float
    reference_expected: float
    calibration: object


def calibrate_on(setup: Setup, part: Part, size: int, args) -> Calibrated:
    """Calibrate on ``part``'s time-ordered windows (the production procedure)."""
    from healthpredict.monitoring import nulls

    model_ref = part.model_reference()
    cal = nulls.calibrate(
        setup.reference, model_ref, size, n_null=args.n_null, groups=setup.reference_groups
    )
    return Calibrated(
        part=part,
        labelled=cal.thresholds(args.false_alarm_rate, labelled=True),
        unlabelled=cal.thresholds(args.false_alarm_rate),
        calibrator=model_ref.calibrator(),
        reference_auc=cal.meta["reference_roc_auc"],
        reference_expected=cal.meta["reference_expected_roc_auc"],
        calibration=cal,
    )


def random_patient_calibrated(setup: Setup, part: Part, size: int, args) -> Calibrated:
    """The previous procedure, for comparison: random whole-patient draws, no time order.

    Null batches are random whole patients of the drift reference scored against its rest, and
    random whole patients of the held-out part against its rest (calibration v2); there is no
    estimated-performance signal.
    """
    from healthpredict.monitoring import calibration, statistics

    n_ref = len(setup.reference)
    m, scale = statistics.subsample(n_ref, size)
    groups = setup.reference_groups
    idx = statistics.null_indices(n_ref, m, args.n_null, 0, groups)
    feature_null = scale * np.column_stack(
        [
            statistics.null_column_scores(setup.reference[c], statistics.METHODS[c], idx)
            for c in statistics.DRIFT_COLUMNS
        ]
    )
    m_p, scale_p = statistics.subsample(len(part.proba), size)
    idx_p = statistics.null_indices(
        len(part.proba), m_p, args.n_null, 1, part.raw["patient_nbr"].to_numpy()
    )
    pred_null, perf_null = statistics.null_prediction_scores(part.proba, part.label, idx_p)
    cal = calibration.Calibration(
        size, list(statistics.DRIFT_COLUMNS), feature_null, pred_null * scale_p,
        perf_null * scale_p,
    )  # fmt: skip
    return Calibrated(
        part=part,
        labelled=cal.thresholds(args.false_alarm_rate, labelled=True),
        unlabelled=cal.thresholds(args.false_alarm_rate),
        calibrator=None,
        reference_auc=float(_auc(part.label, part.proba)),
        reference_expected=math.nan,
        calibration=cal,
    )


def _auc(label, proba) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(label, proba)) if len(np.unique(label)) == 2 else math.nan


def judge(c: Calibrated, scores: pd.Series, proba: np.ndarray, label) -> dict:
    """Drift status (with and without labels) and retraining decision of one scored batch."""
    from healthpredict.core import constants
    from healthpredict.monitoring import decision, estimation, policy, statistics

    th = c.labelled
    drifted = [col for col in scores.index if scores[col] >= th.per_column[col]]
    data_drift = len(drifted) >= th.min_drifted_columns
    pred_score = statistics.column_distance(c.part.proba, proba, statistics.NUMERIC_METHOD)
    drop = None
    if label is not None and len(np.unique(label)) == 2:
        drop = c.reference_auc - _auc(label, proba)
    est_drop = None
    if c.calibrator is not None:
        est_drop = c.reference_expected - estimation.expected_roc_auc(c.calibrator.transform(proba))
    share = len(drifted) / len(scores)
    status, reasons = decision.decide(
        share, th.share_threshold, pred_score >= th.prediction_drift_threshold, drop,
        th.performance_tolerance,
    )  # fmt: skip
    th_u = c.unlabelled
    drifted_u = sum(scores[col] >= th_u.per_column[col] for col in scores.index)
    status_u, _ = decision.decide(
        drifted_u / len(scores), th_u.share_threshold,
        pred_score >= th_u.prediction_drift_threshold, None, None,
    )  # fmt: skip
    retrain = policy.retrain_decision(
        policy.Signals(
            realised_drop=drop,
            realised_tolerance=th.performance_tolerance,
            estimated_drop=est_drop,
            estimated_tolerance=th.estimated_tolerance,
            data_drift=data_drift,
            new_labelled_rows=0,
            champion_train_rows=None,
        )
    )
    return {
        "drift": status == constants.DRIFT_DETECTED,
        "drift_unlabelled": status_u == constants.DRIFT_DETECTED,
        "retrain": retrain.retrain,
        "triggers": retrain.triggers,
        "signals": [r.split(":")[0] for r in reasons],
        "data_drift": data_drift,
        "prediction_drift": pred_score >= th.prediction_drift_threshold,
        "realised": drop is not None and drop > th.performance_tolerance,
        "estimated": est_drop is not None
        and th.estimated_tolerance is not None
        and est_drop > th.estimated_tolerance,
        "drifted": sorted(drifted, key=lambda col: -scores[col] / th.per_column[col]),
        "prediction_score": pred_score,
        "roc_auc_drop": drop,
        "estimated_drop": est_drop,
        "uncalibrated": float(np.mean(scores >= UNCALIBRATED_COLUMN)) >= UNCALIBRATED_SHARE,
        "share_at_0.1": float(np.mean(scores >= UNCALIBRATED_COLUMN)),
    }


def _rate(items: list[dict], key: str = "drift") -> float:
    return float(np.mean([bool(i[key]) for i in items])) if items else math.nan


FALSE_ALARM_KEYS = (
    "retrain",
    "drift",
    "drift_unlabelled",
    "data_drift",
    "prediction_drift",
    "realised",
    "estimated",
)
CROSS_FITS = (("validation", "test"), ("test", "validation"))


def eval_windows(part: Part, size: int) -> np.ndarray:
    """Time-ordered windows of ``size`` rows of a part (stride: a twentieth of a batch)."""
    from healthpredict.monitoring import windows

    return windows.time_ordered_windows(
        part.raw["encounter_id"].to_numpy(), size, max(1, size // 20)
    )


def window_scores(setup: Setup, part: Part, idx: np.ndarray) -> list[pd.Series]:
    """Column scores of each window of ``part`` against the drift reference (vectorised)."""
    from healthpredict.monitoring import statistics, windows

    cols = list(statistics.DRIFT_COLUMNS)
    matrix = np.column_stack(
        [
            windows.external_window_scores(
                setup.reference[c], part.eng[c], statistics.METHODS[c], idx
            )
            for c in cols
        ]
    )
    return [pd.Series(row, index=cols) for row in matrix]


def evaluate(name: str, raw: pd.DataFrame, args, log) -> dict:
    """Cross-fitted false alarms and detection of one data set, over split seeds and sizes."""
    from tests.support import drift_scenarios

    scenarios = [s for s in drift_scenarios.SCENARIOS.values() if s.kind in KINDS]
    out: dict = {
        "false_alarm": {k: {} for k in FALSE_ALARM_KEYS},
        "false_alarm_by_fit": {},
        "false_alarm_before": {k: {} for k in ("drift", "drift_unlabelled", "retrain")},
        "false_alarm_uncalibrated": {},
        "mean_share_at_0.1_no_drift": {},
        "detection": {},
        "thresholds": {},
        "windows": {},
        "evidently_check": [],
    }
    setups = []
    for r in range(args.repeats):
        started = time.monotonic()
        setups.append(make_setup(raw, 42 + r, args.initial_fraction))
        s = setups[-1]
        log(
            f"[{name}] split {r}: reference {len(s.reference):,} rows, validation "
            f"{len(s.parts['validation'].raw):,}, test {len(s.parts['test'].raw):,} "
            f"({time.monotonic() - started:.1f} s)"
        )
    scen_per = math.ceil(args.scenario_batches / (args.repeats * len(CROSS_FITS)))
    for n in args.sizes:
        key = str(n)
        nulls, before, by_fit = [], [], []
        found: dict[str, dict[str, list]] = {}
        thresholds, n_cal_windows = [], []
        for r, s in enumerate(setups):
            for cal_name, eval_name in CROSS_FITS:
                cal_part, eval_part = s.parts[cal_name], s.parts[eval_name]
                c = calibrate_on(s, cal_part, n, args)
                old = random_patient_calibrated(s, cal_part, n, args)
                thresholds.append(c.labelled)
                n_cal_windows.append(c.calibration.meta["windows"])
                idx = eval_windows(eval_part, n)
                scores = window_scores(s, eval_part, idx)
                fit = []
                for w, sc in zip(idx, scores, strict=True):
                    proba, label = eval_part.proba[w], eval_part.label[w]
                    fit.append(judge(c, sc, proba, label))
                    before.append(judge(old, sc, proba, label))
                nulls += fit
                by_fit.append(
                    {
                        "seed": 42 + r,
                        "calibrated_on": cal_name,
                        "measured_on": eval_name,
                        "windows": len(fit),
                        **{k: _rate(fit, k) for k in ("retrain", "drift", "data_drift")},
                    }
                )
                picks = np.linspace(0, len(idx) - 1, scen_per).round().astype(int)
                for sc_def in scenarios:
                    for strength in sc_def.strengths:
                        cell = found.setdefault(sc_def.name, {}).setdefault(str(strength), [])
                        for i, p in enumerate(picks):
                            batch = eval_part.raw.iloc[idx[p]].reset_index(drop=True)
                            shifted = drift_scenarios.apply(sc_def.name, batch, strength, seed=i)
                            eng, proba, label = s.engineer(shifted)
                            scores_s = s.scorer.score(eng)
                            cell.append((judge(c, scores_s, proba, label),
                                         judge(old, scores_s, proba, label)))  # fmt: skip
                if r == 0 and cal_name == "validation":
                    out["evidently_check"].append(evidently_check(s, c.labelled, eval_part, idx))
        for k in FALSE_ALARM_KEYS:
            out["false_alarm"][k][key] = _rate(nulls, k)
        for k in out["false_alarm_before"]:
            out["false_alarm_before"][k][key] = _rate(before, k)
        out["false_alarm_by_fit"][key] = by_fit
        out["false_alarm_uncalibrated"][key] = _rate(nulls, "uncalibrated")
        out["mean_share_at_0.1_no_drift"][key] = float(np.mean([x["share_at_0.1"] for x in nulls]))
        out["detection"][key] = {
            sc: {
                st: {
                    "drift": _rate([a for a, _ in cells]),
                    "drift_unlabelled": _rate([a for a, _ in cells], "drift_unlabelled"),
                    "retrain": _rate([a for a, _ in cells], "retrain"),
                    "data_drift": _rate([a for a, _ in cells], "data_drift"),
                    "before": _rate([b for _, b in cells]),
                    "uncalibrated": _rate([a for a, _ in cells], "uncalibrated"),
                }
                for st, cells in by.items()
            }
            for sc, by in found.items()
        }
        out["thresholds"][key] = {
            "median_column_threshold": float(
                np.median([np.median(list(t.per_column.values())) for t in thresholds])
            ),
            "prediction_drift_threshold": float(
                np.median([t.prediction_drift_threshold for t in thresholds])
            ),
            "performance_tolerance": float(
                np.median([t.performance_tolerance for t in thresholds])
            ),
            "performance_floor": float(np.median([t.floors["performance"] for t in thresholds])),
            "estimated_tolerance": float(np.median([t.estimated_tolerance for t in thresholds])),
            "estimated_floor": float(
                np.median([t.floors["estimated_performance"] for t in thresholds])
            ),
            "alpha": thresholds[0].alpha,
        }
        out["windows"][key] = {
            "calibration_feature_windows": int(np.median([w["features"] for w in n_cal_windows])),
            "calibration_prediction_windows": int(
                np.median([w["predictions"] for w in n_cal_windows])
            ),
            "evaluation_windows": len(nulls),
            "evaluation_stride": max(1, n // 20),
        }
        out["n_batches_per_scenario"] = len(next(iter(next(iter(found.values())).values())))
        fa = out["false_alarm"]
        log(
            f"[{name}] n={n}: false alarms: retraining {fa['retrain'][key]:.1%}, drift status "
            f"{fa['drift'][key]:.1%} (data drift {fa['data_drift'][key]:.1%}); before "
            f"{out['false_alarm_before']['drift'][key]:.1%}"
        )
    first = setups[0]
    out["sizes"] = {
        "reference": len(first.reference),
        "validation": len(first.parts["validation"].raw),
        "test": len(first.parts["test"].raw),
    }
    return out


def evidently_check(s: Setup, th, part: Part, idx: np.ndarray) -> dict:
    """Full Evidently reports on two no-drift windows and one shifted window vs the fast path."""
    from healthpredict.modeling.features import clean_data, engineer_features
    from healthpredict.monitoring import reports, statistics
    from tests.support import drift_scenarios

    worst, agree = 0.0, True
    for i, w in enumerate((idx[0], idx[-1], idx[len(idx) // 2])):
        batch = part.raw.iloc[w].reset_index(drop=True)
        if i == 2:
            batch = drift_scenarios.apply("older_patients", batch, 0.5)
        eng = statistics.cap_tails(engineer_features(clean_data(batch)), s.caps)
        _, table = reports.data_drift_report(s.reference, eng, th)
        fast = statistics.column_scores(s.reference, eng)
        table = table.set_index("column")
        worst = max(worst, float((table["score"] - fast[table.index]).abs().max()))
        fast_drifted = {c for c in fast.index if fast[c] >= th.per_column[c]}
        agree &= fast_drifted == set(table.index[table["drifted"]])
    return {
        "batch_size": len(idx[0]),
        "max_abs_score_diff": worst,
        "same_drifted_columns": bool(agree),
    }


def real_stream(raw: pd.DataFrame, args, log) -> dict:
    """Monitor the real chronological future stream in batches (production defaults)."""
    from healthpredict.data.split import SplitParams, split_frame
    from healthpredict.monitoring import statistics

    setup = make_setup(raw, SplitParams().seed, args.initial_fraction)
    held_raw = pd.concat([p.raw for p in setup.parts.values()], ignore_index=True)
    held_raw = held_raw.sort_values("encounter_id", kind="stable").reset_index(drop=True)
    eng, proba, label = setup.engineer(held_raw)
    held = Part(held_raw, eng, proba, label)  # validation + test: the production default
    future = split_frame(raw, SplitParams(initial_fraction=args.initial_fraction))["future_data"]
    future = future.reset_index(drop=True)
    n = args.stream_batch
    calibrated: dict[int, Calibrated] = {}
    rows = []
    for start in range(0, len(future), n):
        batch = future.iloc[start : start + n]
        size = len(batch)
        if size not in calibrated:
            calibrated[size] = calibrate_on(setup, held, size, args)
        eng_b, proba_b, label_b = setup.engineer(batch)
        res = judge(calibrated[size], setup.scorer.score(eng_b), proba_b, label_b)
        top = res["drifted"][:3]
        effects = statistics.effect_sizes(setup.reference, eng_b, top) if top else None
        rows.append(
            {
                "batch": start // n,
                "rows": size,
                "first_encounter_id": int(batch["encounter_id"].iloc[0]),
                "last_encounter_id": int(batch["encounter_id"].iloc[-1]),
                "status": "DRIFT_DETECTED" if res["drift"] else "NO_DRIFT",
                "signals": res["signals"],
                "retrain": res["retrain"],
                "retrain_triggers": res["triggers"],
                "n_drifted_columns": len(res["drifted"]),
                "drifted_columns": res["drifted"],
                "top_effects": [] if effects is None else effects["effect"].tolist(),
                "prediction_drift_score": res["prediction_score"],
                "roc_auc_drop": res["roc_auc_drop"],
                "estimated_drop": res["estimated_drop"],
                "uncalibrated_status": "DRIFT_DETECTED" if res["uncalibrated"] else "NO_DRIFT",
            }
        )
    th = calibrated[n].labelled
    detected = sum(r["status"] == "DRIFT_DETECTED" for r in rows)
    retrains = sum(r["retrain"] for r in rows)
    log(f"[real stream] {detected} of {len(rows)} batches flagged, {retrains} retrain decisions")
    return {
        "batch_size": n,
        "n_batches": len(rows),
        "n_drift_detected": detected,
        "n_retrain": retrains,
        "performance_tolerance": th.performance_tolerance,
        "estimated_tolerance": th.estimated_tolerance,
        "batches": rows,
    }


def time_notebook(source: str, args, log) -> dict:
    """Seconds per monitored 2,000-row batch through the notebook runner (HTML included)."""
    import mlflow

    from healthpredict import runs
    from healthpredict.core import storage
    from healthpredict.core.settings import get_settings
    from healthpredict.data.schema import make_target
    from healthpredict.data.split import SplitParams, load_split, prepare
    from healthpredict.mlops import registry, tracking
    from healthpredict.modeling.evaluation import choose_threshold
    from healthpredict.modeling.models import make_pipeline

    saved = {
        k: os.environ.get(k)
        for k in ("HP_STORAGE", "HP_MLFLOW_TRACKING_URI", "HP_RENDERED_DIR", "MLFLOW_TRACKING_URI")
    }
    with tempfile.TemporaryDirectory(prefix="hp-bench-drift-") as tmp:
        os.environ.update(
            {
                "HP_STORAGE": f"{tmp}/var",
                "HP_RENDERED_DIR": f"{tmp}/rendered",
                "HP_MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
            }
        )
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        get_settings.cache_clear()
        try:
            prepare(source, params=SplitParams(initial_fraction=args.initial_fraction))
            train, val = load_split("initial_train"), load_split("validation")
            pipeline = make_pipeline("logreg", {"C": 1.0}, seed=0).fit(train, make_target(train))
            threshold = choose_threshold(make_target(val), pipeline.predict_proba(val)[:, 1])
            tracking.setup_mlflow()
            tracking.use_experiment("HealthPredict_Training")
            with mlflow.start_run():
                registry.log_model(
                    pipeline,
                    threshold=threshold,
                    target="<30",
                    test_metrics={},
                    input_example=train,
                    data_source="bench",
                    params={},
                )
            batch = storage.write_csv(f"{tmp}/batch.csv", load_split("future_data").iloc[:2000])
            params = {"new_data_path": batch}
            timings, cold = [], None
            for i in range(args.timing_runs + 1):
                started = time.monotonic()
                result = runs.run("03_drift_monitor", params, force=True, progress=False)
                took = time.monotonic() - started
                if i == 0:
                    cold = took
                else:
                    timings.append(took)
                log(
                    f"[timing] run {i} ({'cold cache' if i == 0 else 'warm'}): {took:.1f} s, "
                    f"{result.scraps['drift_status']}"
                )
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
            get_settings.cache_clear()
    return {
        "seconds_per_batch": statistics.median(timings),
        "runs": timings,
        "cold_cache_seconds": cold,
        "load_average": os.getloadavg()[0],
    }


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1%}"


def _named(batch: dict) -> list[str]:
    """Effects of a stream batch's top drifted columns, each naming its column."""
    return [
        e if e.startswith(f"{c}=") else f"{c}: {e}"
        for c, e in zip(batch["drifted_columns"], batch["top_effects"], strict=False)
    ]


def _row(label: str, values: list[str]) -> str:
    return f"| {label} | " + " | ".join(values) + " |"


def tables(result: dict) -> str:
    """Markdown tables of the results."""
    lines = []
    for name, data in result["datasets"].items():
        sizes = list(data["false_alarm"]["retrain"])
        fa, before = data["false_alarm"], data["false_alarm_before"]
        w = data["windows"]
        lines += [
            f"### {name} data ({data['sizes']['reference']:,}-row reference; held-out parts "
            f"of {data['sizes']['validation']:,} (validation) and {data['sizes']['test']:,} "
            f"(test) rows; {data['n_batches_per_scenario']} batches per scenario and strength)",
            "",
            "| | " + " | ".join(f"{s} rows" for s in sizes) + " |",
            "|---|" + "---|" * len(sizes),
            _row(
                "time-ordered no-drift windows judged (cross-fitted; stride)",
                [
                    f"{w[s]['evaluation_windows']} (stride {w[s]['evaluation_stride']})"
                    for s in sizes
                ],
            ),
            _row(
                "**(b) retraining decision: false alarms** (realised or estimated drop)",
                [f"**{_pct(fa['retrain'][s])}**" for s in sizes],
            ),
            _row(
                "(a) drift status: false alarms (data, prediction, realised performance)",
                [_pct(fa["drift"][s]) for s in sizes],
            ),
            _row("drift status without labels", [_pct(fa["drift_unlabelled"][s]) for s in sizes]),
            _row(
                "per signal: data drift / prediction drift / realised / estimated",
                [
                    " / ".join(
                        _pct(fa[k][s])
                        for k in ("data_drift", "prediction_drift", "realised", "estimated")
                    )
                    for s in sizes
                ],
            ),
            _row(
                "range over the 6 cross-fits: retraining / drift status",
                [
                    f"{_pct(min(f['retrain'] for f in data['false_alarm_by_fit'][s]))}-"
                    f"{_pct(max(f['retrain'] for f in data['false_alarm_by_fit'][s]))} / "
                    f"{_pct(min(f['drift'] for f in data['false_alarm_by_fit'][s]))}-"
                    f"{_pct(max(f['drift'] for f in data['false_alarm_by_fit'][s]))}"
                    for s in sizes
                ],
            ),
            _row(
                "before (random whole-patient calibration, v2): drift status / without labels",
                [
                    f"{_pct(before['drift'][s])} / {_pct(before['drift_unlabelled'][s])}"
                    for s in sizes
                ],
            ),
            _row(
                "uncalibrated (0.1 per column, 30% of columns)",
                [_pct(data["false_alarm_uncalibrated"][s]) for s in sizes],
            ),
        ]
        first = data["detection"][sizes[0]]
        for sc, by in first.items():
            for st in by:
                cells = []
                for s in sizes:
                    d = data["detection"][s][sc][st]
                    cells.append(
                        f"{_pct(d['drift'])} (unlabelled {_pct(d['drift_unlabelled'])}; "
                        f"retrain {_pct(d['retrain'])}; before {_pct(d['before'])})"
                    )
                lines.append(_row(f"detection: {sc} @ {st}", cells))
        th = data["thresholds"]
        lines += [
            _row(
                "median thresholds: column / prediction",
                [
                    f"{th[s]['median_column_threshold']:.3f} / "
                    f"{th[s]['prediction_drift_threshold']:.3f}"
                    for s in sizes
                ],
            ),
            _row(
                "ROC AUC tolerances: realised (floor) / estimated (floor)",
                [
                    f"{th[s]['performance_tolerance']:.3f} ({th[s]['performance_floor']:.3f}) / "
                    f"{th[s]['estimated_tolerance']:.3f} ({th[s]['estimated_floor']:.3f})"
                    for s in sizes
                ],
            ),
            _row(
                "calibration windows: features / predictions (per part, median)",
                [
                    f"{w[s]['calibration_feature_windows']} / "
                    f"{w[s]['calibration_prediction_windows']}"
                    for s in sizes
                ],
            ),
            "",
        ]
        checks = data["evidently_check"]
        lines.append(
            "Evidently check (3 windows per size): largest score difference "
            f"{max(c['max_abs_score_diff'] for c in checks):.1e}, same drifted columns: "
            f"{all(c['same_drifted_columns'] for c in checks)}."
        )
        lines.append("")
    stream = result.get("real_stream")
    if stream:
        lines += [
            f"### Real chronological stream ({stream['n_batches']} batches of "
            f"{stream['batch_size']:,} rows, labels on arrival): {stream['n_drift_detected']} "
            f"flagged, {stream['n_retrain']} retraining decisions (realised tolerance "
            f"{stream['performance_tolerance']:.3f}, estimated {stream['estimated_tolerance']:.3f})",
            "",
            "| batch | encounter ids | status | signals | retrain | largest effects (top 3 "
            "drifted columns) | realised drop | estimated drop |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for b in stream["batches"]:
            drop = "n/a" if b["roc_auc_drop"] is None else f"{b['roc_auc_drop']:+.3f}"
            est = "n/a" if b["estimated_drop"] is None else f"{b['estimated_drop']:+.3f}"
            lines.append(
                f"| {b['batch']} | {b['first_encounter_id']}..{b['last_encounter_id']} | "
                f"{b['status']} | {', '.join(b['signals']) or '-'} | "
                f"{', '.join(b['retrain_triggers']) or '-'} | "
                f"{'; '.join(_named(b)) or '-'} | {drop} | {est} |"
            )
        lines.append("")
    elif result.get("real_stream_skipped"):
        lines += [f"Real stream: {result['real_stream_skipped']}", ""]
    timing = result.get("timing")
    if timing:
        lines += [
            f"Seconds per monitored 2,000-row batch through the notebook runner (HTML "
            f"included, warm cache, median of {len(timing['runs'])}): "
            f"**{timing['seconds_per_batch']:.1f} s** (cold cache: "
            f"{timing['cold_cache_seconds']:.1f} s; 1-min load average "
            f"{timing['load_average']:.1f} on {os.cpu_count()} cores).",
            "",
        ]
    if "wall_s" in result:
        st = result["settings"]
        lines += [
            f"Benchmark wall time: {result['wall_s'] / 60:.1f} min (data sets: "
            f"{', '.join(result['datasets'])}; {st['repeats']} split seeds, "
            f"{st['scenario_batches']} batches per scenario and strength, at most "
            f"{st['n_null']} calibration windows, {st['timing_runs']} warm timing run(s)).",
            "",
        ]
    return "\n".join(lines)


DOC_HEAD = """# Drift calibration

How `healthpredict.monitoring` calibrates its signals (data drift, prediction drift, realised
and estimated ROC AUC), and how often they fire when nothing happened.

## Why calibrate, and on what

Evidently scores each column with a distance (normed Wasserstein for numbers, Jensen-Shannon for
categories) and, by default, calls a column drifted at 0.1. Two samples of the same
distribution are never at distance 0: the distance under "no drift" shrinks like
`sqrt(1/n_batch + 1/n_reference)`, so a fixed 0.1 flags columns of small batches that did not
move. And a stream is not a random sample of its reference: inside the reference period itself
coding changes (in the real file discharge disposition 25 is 28.6% of the first 2,000
encounters and then vanishes; code 18 is 33-36% of encounters 8k-18k and absent elsewhere).
Thresholds calibrated on random batches (calibration v2) called 91-100% of time-ordered batches
of reference-period patients drifted (table below, "before"), so "all batches flagged" said
nothing about the stream.

## Method (calibration v3)

1. **Null windows: time-ordered, whole held-out patients.** The model reference (validation +
   test of the initial period: patients disjoint from the drift reference `initial_train`) is
   sorted by `encounter_id` and cut into consecutive windows of the monitored batch size, at
   most `n_null` (1,000) of them: with few rows they overlap (stride
   `ceil((N - n) / (n_null - 1))`, never more than a batch, the last window ending at the last
   row). Each window is scored as a production batch is: its columns against the whole drift
   reference (exact Evidently distances, vectorised over windows with value counts); its
   predicted probabilities, realised ROC AUC and expected ROC AUC against the rest of the
   held-out rows. When a batch is larger than half the rows, windows of half the rows are used
   and scores are rescaled by `sqrt((1/n + 1/N) / (1/m + 1/N'))` to the production comparison
   (`n` new rows against `N` reference rows; `m` window rows against `N'`).
2. **Sampling noise from many independent batches.** Overlapping windows are correlated: a
   held-out set of `N` rows holds only about `N / n` independent windows (3 for 2,000-row
   batches of 6,000 held-out rows), so their empirical quantiles are unbiased but very noisy,
   and a `1 - alpha` point with `alpha` near 1% is in effect their maximum. Two safeguards keep a
   band from being narrower than sampling noise:
   - data drift: 1,000 random whole-patient batches of the drift reference are scored against
     its rest (calibration v2's null); each column's scale is the larger 95th percentile of the
     two nulls, and the max-T cut is the larger of the two nulls' cuts, so the threshold holds
     on both (windows: the period's coding changes; random batches: a well-estimated tail);
   - ROC AUC tolerances: a parametric floor `z_{1-alpha} * sqrt(SE_batch^2 + SE_reference^2)`:
     Hanley-McNeil for the realised ROC AUC at the held-out rows' positive rate, the delta
     method (influence function of CBPE's expected ROC AUC) for the estimated one.
3. **Signals and their budget.** The target false-alarm rate (default 5%) is split evenly over
   the signals in use: data drift, prediction drift, the estimated ROC AUC drop (when the
   held-out rows have labels to fit an isotonic `ProbabilityCalibrator` on) and the realised
   ROC AUC drop (when labels are judged). By the union bound any decision made from a subset of
   them stays under the target whatever their dependence: the drift status
   (`DRIFT_DETECTED`: data, prediction, realised performance) and the retraining decision
   (`policy.retrain_decision`: realised and estimated performance). For data drift, each
   column's null scores are divided by their scale and the cut `c` is the `1 - alpha` point of
   the largest scaled score over the null batches (single-step max-T: correlated columns are
   accounted for without extreme per-column quantiles); column `j` drifts when its score
   reaches `c * scale_j`, data drift is one column (or the share given as
   `drift_share_threshold`, then the k-th largest score). Prediction drift and the two
   tolerances are the `1 - alpha` points of their null values, each tolerance at least its
   floor. Cuts sit halfway between observed null values, so discrete scores never sit on them.
   Numeric columns are monitored with their tails capped at the reference's 0.1% and 99.9%
   quantiles (one patient with three encounters at 25 emergency visits would otherwise move a
   batch's normed Wasserstein distance past any threshold on his own).
4. **Effect sizes.** The drift table says what moved and by how much, per column: the shift of
   the mean in reference standard deviations (`mean 0.37 -> 0.52 (+0.12 SD)`), or the category
   whose share moved most, with both shares (`discharge_disposition_id=25: 28.6% -> 0.0%`).
5. **Cache.** Engineered reference and held-out features, held-out predictions and null scores
   are stored under `<storage>/drift_cache/v3/<reference sha>/<held-out sha>/<model>-v<version>-
   <run>/`, keyed by content, model version and batch size: a batch costs only its own scoring
   and reports.
6. **Evidently shows what decides.** The calibrated thresholds go into
   `DataDriftPreset(per_column_method=..., per_column_threshold=..., drift_share=...)`, the
   prediction report's `ValueDrift(threshold=...)` and the ROC AUC test of `ClassificationPreset`.

## Benchmark

`make bench-drift` (`benchmarks/bench_drift.py`). For 3 patient-grouped split seeds of the
initial period (20% of encounters) and batch sizes 1,000 and 2,000, a logistic regression is
trained on `initial_train` (the drift reference) and the benchmark is **cross-fitted**:
thresholds are calibrated on the validation patients' time-ordered windows and judged on the
test patients' time-ordered windows (stride of a twentieth of a batch), then the other way
round; never on the same windows. A judged window is what production sees: `n` consecutive
encounters of patients neither the reference nor the calibration saw, against the whole drift
reference; its ROC AUC drops are against the calibration part's ROC AUC and expected ROC AUC.
Reported: false alarms of **(b) the retraining decision**
`policy.retrain_decision(Signals(realised_drop, realised_tolerance, estimated_drop,
estimated_tolerance, data_drift, new_labelled_rows=0, champion_train_rows=None))` (goal <= 5%),
and of **(a) the drift status** (data drift, prediction drift, realised performance), each
signal alone, and "before": the same windows judged with calibration v2 (random whole-patient
batches). Judged windows overlap, so the rates are averages over time positions of few
independent windows (about 3 per part at 1,000 rows): read their second digit loosely.
Detection: the same windows after each covariate, label and concept scenario of
`tests.support.drift_scenarios` at its moderate and strong strength. Concept drift changes only
labels, so it is visible to realised performance only; label shift moves the features only
through their link with the label. Retraining is decided on performance, so covariate shifts
that do not hurt the model's ROC AUC are reported as drift and do not trigger it.

The real stream is monitored with production defaults (held-out rows = validation + test, labels
on arrival): the file spans 1999-2008 and practice changed (payer codes start being recorded,
discharge dispositions, outpatient visits and the number of diagnoses shift), so data drift is
reported; the retraining column shows what the performance signals make of it. Data drift is
reported, not acted on (`PolicySettings.use_data_drift=False`).

"""


def main() -> int:
    """Run the benchmark; return the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000])
    parser.add_argument("--repeats", type=int, default=3, help="patient-grouped split seeds")
    parser.add_argument(
        "--scenario-batches", type=int, default=60, help="batches per scenario, strength and size"
    )
    parser.add_argument("--n-null", type=int, default=1000, help="most calibration windows")
    parser.add_argument("--false-alarm-rate", type=float, default=0.05)
    parser.add_argument("--initial-fraction", type=float, default=0.2)
    parser.add_argument("--stream-batch", type=int, default=2000)
    parser.add_argument("--timing-runs", type=int, default=3, help="warm notebook runs timed")
    parser.add_argument("--synthetic-rows", type=int, default=101_766)
    parser.add_argument(
        "--no-synthetic", action="store_true", help="skip the synthetic data set when real exists"
    )
    parser.add_argument("--quick", action="store_true", help="small numbers, for a smoke run")
    parser.add_argument("--out", default=str(ROOT / "var" / "bench" / "drift.json"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "drift_calibration.md"))
    parser.add_argument(
        "--from-json", help="re-render the tables and the doc from an earlier JSON, run nothing"
    )
    args = parser.parse_args()
    if args.from_json:
        report(json.loads(Path(args.from_json).read_text()), args.doc)
        return 0
    if args.quick:
        args.repeats, args.scenario_batches = 1, 4
        args.n_null, args.timing_runs = 200, min(args.timing_runs, 1)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    from healthpredict.data import synthetic
    from healthpredict.data.uci import load_uci

    started = time.monotonic()
    result: dict = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "doc")},
        "datasets": {},
    }
    real_source = find_real_data()
    if real_source:
        raw_real = load_uci(real_source).frame
        result["datasets"]["real"] = evaluate("real", raw_real, args, log)
        result["real_stream"] = real_stream(raw_real, args, log)
    else:
        result["real_stream_skipped"] = (
            "real data not found (looked at HP_UCI_SOURCE, data/uci and the cache): the real "
            "chronological stream is skipped; everything else runs on synthetic data"
        )
        log(result["real_stream_skipped"])
    if not (real_source and args.no_synthetic):
        raw_synth = synthetic.generate(args.synthetic_rows, seed=0)
        result["datasets"]["synthetic"] = evaluate("synthetic", raw_synth, args, log)
    primary = "real" if real_source else "synthetic"
    result["primary_dataset"] = primary
    for key in ("false_alarm", "false_alarm_before", "detection"):
        result[key] = result["datasets"][primary][key]
    if args.timing_runs > 0:
        result["timing"] = time_notebook(real_source or "synthetic", args, log)
        result["seconds_per_batch"] = result["timing"]["seconds_per_batch"]
    result["wall_s"] = round(time.monotonic() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    report(result, None if args.quick else args.doc)
    print(f"JSON: {out}")
    return 0


def summary(result: dict) -> str:
    """One paragraph: the goals and where the primary data set stands."""
    data = result["datasets"][result["primary_dataset"]]
    fa = data["false_alarm"]
    covariate = min(
        v["0.5"]["drift"]
        for s in data["detection"].values()
        for k, v in s.items()
        if k in ("older_patients", "more_emergency", "more_prior_inpatient")
    )
    seconds = result.get("seconds_per_batch", math.nan)
    return (
        f"Primary data set: **{result['primary_dataset']}**, time-ordered windows of held-out "
        "reference-period patients, cross-fitted. Retraining decision false alarms: "
        f"**{max(fa['retrain'].values()):.1%}** at worst (goal <= {GOAL_FALSE_ALARM:.0%}). "
        f"Drift status false alarms: **{max(fa['drift'].values()):.1%}** at worst "
        f"(before: {max(data['false_alarm_before']['drift'].values()):.1%}); data drift is "
        "reported, not acted on. Moderate covariate shift detected in at least "
        f"**{covariate:.1%}** of batches (goal >= {GOAL_DETECTION:.0%}); "
        f"**{seconds:.1f} s** per monitored 2,000-row batch through the notebook runner "
        f"(goal <= {GOAL_SECONDS:.0f} s)."
    )


def report(result: dict, doc: str | None) -> None:
    """Print the tables; write them with the method into ``doc`` when given."""
    text = summary(result) + "\n\n" + tables(result)
    print(text)
    if doc:
        Path(doc).write_text(DOC_HEAD + "## Results\n\n" + text)


if __name__ == "__main__":
    sys.exit(main())
