"""The numbers of a model card: performance, calibration, subgroups, capture and decision value.

Pure functions of the test rows, their 0/1 labels and the model's (calibrated) risks; the HTML
and figures are in ``card_report`` / ``card_plots``. Intervals: 95 % percentile bootstrap over
rows, paired, seeded and vectorised (one resample matrix per population, in bounded blocks).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from healthpredict.data.eda import ADMISSION_TYPES, MISSING_MARKERS
from healthpredict.modeling.evaluation import (
    MIN_CLASS_ROWS,
    N_BINS,
    _roc_auc_along,
    _sorted_by,
    expected_calibration_error,
    reliability_sums,
    roc_auc_interval,
)

LEVEL = 0.95
CAPTURE_SHARES = (0.05, 0.10, 0.20)
DECISION_THRESHOLDS = np.round(np.arange(2, 51) / 100, 2)  # 0.02 .. 0.50
TOO_FEW = "too few to judge"
UNKNOWN = "Unknown"
AGE_BANDS = ("<40", "40–59", "60–79", "80+")
# Admission types 5 (Not available), 6 (NULL) and 8 (Not mapped) say the same thing: unknown.
ADMISSION_GROUPS = {k: v for k, v in ADMISSION_TYPES.items() if k not in (5, 6, 8)}
SUBGROUP_METRICS = ("roc_auc", "citl", "flagged_rate")
METRIC_COLUMNS = [f"{m}{end}" for m in SUBGROUP_METRICS for end in ("", "_low", "_high")]
SUBGROUP_SOURCES = {"age band": "age", "sex": "gender", "race": "race", "admission type": "admission_type_id", "payer": "payer_code"}  # fmt: skip
_BLOCK_CELLS = 2_000_000  # resample cells drawn at once (~16 MB per float array)


def _unknown(values: pd.Series) -> pd.Series:
    """True where a raw value means "unknown": NaN, empty, "?" or "Missing"."""
    text = values.astype("string").fillna("").str.strip()
    return text.isin(MISSING_MARKERS) | text.eq("")


def subgroup_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """The subgroup of each raw row per attribute (columns: :data:`SUBGROUP_SOURCES` keys).

    Raises:
        ValueError: A raw column the subgroups come from is missing.
    """
    missing = [c for c in SUBGROUP_SOURCES.values() if c not in frame.columns]
    if missing:
        raise ValueError(f"model card: the test rows lack the subgroup column(s) {missing}")
    lower = frame["age"].astype("string").str.extract(r"^\[(\d+)-", expand=False)
    age = pd.cut(pd.to_numeric(lower), [-1, 39, 59, 79, np.inf], labels=list(AGE_BANDS))
    gender = frame["gender"]
    admission = pd.to_numeric(frame["admission_type_id"], errors="coerce")
    out = pd.DataFrame(
        {
            "age band": age.astype(object).where(age.notna(), UNKNOWN),
            "sex": gender.where(~(_unknown(gender) | gender.eq("Unknown/Invalid")), UNKNOWN),
            "race": frame["race"].where(~_unknown(frame["race"]), UNKNOWN),
            "admission type": admission.map(ADMISSION_GROUPS).fillna(UNKNOWN),
            "payer": np.where(_unknown(frame["payer_code"]), "unknown", "known"),
        }
    )
    return out.astype(str).set_axis(frame.index)


def risk_codes(p: np.ndarray) -> np.ndarray:
    """Dense ranks of the risks: the same order and ties in the smallest integer type.

    Sorting 16-bit integers is a radix sort in numpy, ~6x faster than sorting the floats; every
    rank-based figure here (ROC AUC, AP, bins) resamples these codes instead of the risks.
    """
    codes = np.unique(p, return_inverse=True)[1]
    return codes.astype(np.int16 if codes.max() < 2**15 else np.int32)


def reliability_table(y: np.ndarray, p: np.ndarray, n_bins: int = N_BINS) -> pd.DataFrame:
    """Mean predicted risk, observed rate (with a Wilson 95 % interval) and rows of each bin."""
    sum_y, sum_p, sizes = reliability_sums(np.asarray(y, float), np.asarray(p, float), n_bins)
    obs, z = sum_y / sizes, 1.959964
    centre = (obs + z * z / (2 * sizes)) / (1 + z * z / sizes)
    half = z * np.sqrt(obs * (1 - obs) / sizes + z * z / (4 * sizes**2)) / (1 + z * z / sizes)
    table = {"bin": np.arange(1, len(sizes) + 1), "mean_predicted": sum_p / sizes, "n": sizes}
    return pd.DataFrame(table).assign(observed_rate=obs, low=centre - half, high=centre + half)


def average_precision_along(y: np.ndarray, p: np.ndarray, key: Any = None) -> np.ndarray:
    """Average precision (PR AUC) along the last axis, as sklearn: tied risks form one step."""
    ps, ys = _sorted_by(p if key is None else key, p, np.asarray(y, float), descending=True)
    tp = np.cumsum(ys, axis=-1)
    is_end = np.ones(ps.shape, bool)
    is_end[..., :-1] = ps[..., :-1] != ps[..., 1:]
    # Each row's precision is the one at the end of its run of tied risks.
    end = np.where(is_end, np.arange(p.shape[-1]), p.shape[-1])
    end = np.flip(np.minimum.accumulate(np.flip(end, -1), axis=-1), -1)
    precision = np.take_along_axis(tp, end, axis=-1) / (end + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (ys * precision).sum(axis=-1) / tp[..., -1]


def net_benefit(y: np.ndarray, p: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Net benefit TP/n - FP/n * t/(1-t) of flagging risks >= t, for each threshold t."""
    y, p, t = np.asarray(y, bool), np.asarray(p, float), np.asarray(thresholds, float)
    flagged = p[None, :] >= t[:, None]
    tp = (flagged & y).sum(axis=1)
    fp = flagged.sum(axis=1) - tp
    return (tp - fp * t / (1 - t)) / len(y)


def treat_all_benefit(prevalence: float, thresholds: np.ndarray) -> np.ndarray:
    """Net benefit of following up everyone: prevalence - (1 - prevalence) * t/(1-t)."""
    t = np.asarray(thresholds, float)
    return prevalence - (1 - prevalence) * t / (1 - t)


def decision_curve(
    y: np.ndarray, p: np.ndarray, thresholds: np.ndarray = DECISION_THRESHOLDS
) -> pd.DataFrame:
    """Net benefit of the model, of treat-all and of treat-none (0) at each threshold."""
    t = np.asarray(thresholds, float)
    curve = {"threshold": t, "model": net_benefit(y, p, t)}
    return pd.DataFrame(curve).assign(treat_all=treat_all_benefit(np.mean(y), t), treat_none=0.0)


def capture_table(y: np.ndarray, p: np.ndarray, shares: tuple = CAPTURE_SHARES) -> pd.DataFrame:
    """What flagging the highest-risk share of encounters reaches (ties keep row order)."""
    p = np.asarray(p, float)
    ps, ys = _sorted_by(p, p, np.asarray(y, float), descending=True)
    tp, n_pos = np.cumsum(ys), ys.sum()
    k = np.maximum(np.rint(np.asarray(shares) * len(ys)).astype(int), 1)
    reached, precision = tp[k - 1], tp[k - 1] / k
    table = pd.DataFrame({"share_flagged": shares, "n_flagged": k, "risk_cutoff": ps[k - 1]})
    lift = precision / (n_pos / len(ys))
    return table.assign(readmissions_reached=reached / n_pos, precision=precision, lift=lift)


def _interval(
    stat: Callable, arrays: tuple[np.ndarray, ...], n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """Percentile interval, shape (2, k), of ``stat`` (resample matrices -> (B, k)) over rows."""
    n = len(arrays[0])
    block = max(1, _BLOCK_CELLS // n)
    values = []
    for start in range(0, n_resamples, block):
        rows = rng.integers(0, n, size=(min(block, n_resamples - start), n))
        values.append(stat(*(a[rows] for a in arrays)))
    tail = (1 - LEVEL) / 2 * 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column with no finite resample
        return np.nanpercentile(np.concatenate(values), [tail, 100 - tail], axis=0)


def _estimate(value: float, bounds: Any = (math.nan, math.nan)) -> dict[str, float]:
    return {"value": float(value), "low": float(bounds[0]), "high": float(bounds[1])}


def _overall_stats(y: np.ndarray, p: np.ndarray, codes: np.ndarray) -> np.ndarray:
    brier, citl = ((p - y) ** 2).mean(axis=-1), y.mean(axis=-1) - p.mean(axis=-1)
    ap, ece = average_precision_along(y, p, codes), expected_calibration_error(y, p, codes)
    return np.column_stack([ap, brier, ece, citl])


def _group_stats(y: np.ndarray, p: np.ndarray, codes: np.ndarray, flags: np.ndarray) -> np.ndarray:
    citl = y.mean(axis=-1) - p.mean(axis=-1)
    return np.column_stack([_roc_auc_along(y, codes, axis=-1), citl, flags.mean(axis=-1)])


def _flag_reason(row: Mapping[str, float], overall_auc: float, overall_rate: float) -> str:
    """Why a subgroup differs beyond its interval ("" when it does not)."""
    reasons = []
    if not row["roc_auc_low"] <= overall_auc <= row["roc_auc_high"]:
        side = "lower" if row["roc_auc"] < overall_auc else "higher"
        reasons.append(f"ROC AUC {side} than overall ({row['roc_auc']:.3f} vs {overall_auc:.3f})")
    if not row["citl_low"] <= 0 <= row["citl_high"]:
        side = "under" if row["citl"] > 0 else "over"
        reasons.append(f"risk {side}-estimated (observed - predicted {row['citl']:+.3f})")
    if not row["flagged_rate_low"] <= overall_rate <= row["flagged_rate_high"]:
        side = "more" if row["flagged_rate"] > overall_rate else "less"
        rate = row["flagged_rate"]
        reasons.append(f"flagged {side} often ({rate:.1%} vs {overall_rate:.1%} overall)")
    return "; ".join(reasons)


def subgroup_table(
    labels: pd.DataFrame,
    y: np.ndarray,
    p: np.ndarray,
    threshold: float,
    *,
    n_resamples: int,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """One row per (attribute, group): size, ROC AUC, calibration-in-the-large, flagged rate.

    Intervals from one resample matrix per group; ``flag`` says why a group differs beyond its
    interval (then ``differs``) or that it is too small to judge.
    """
    y, p = np.asarray(y, float), np.asarray(p, float)
    flagged, codes = (p >= threshold).astype(float), risk_codes(p)
    overall_auc, overall_rate = float(skm.roc_auc_score(y, p)), float(flagged.mean())
    rows = []
    for attribute in labels.columns:
        column, sizes = labels[attribute].to_numpy(), labels[attribute].value_counts()
        # Age bands in their order, other groups largest first; "Unknown" always last.
        order = [
            (g == UNKNOWN, AGE_BANDS.index(g) if g in AGE_BANDS else -n, g)
            for g, n in sizes.items()
        ]
        for *_, group in sorted(order):
            member = column == group
            yg, pg, fg = y[member], p[member], flagged[member]
            arrays = (yg, pg, codes[member], fg)
            row = {"attribute": attribute, "group": group, "n": int(member.sum())}
            row["positives"] = int(yg.sum())
            if min(row["positives"], row["n"] - row["positives"]) < MIN_CLASS_ROWS:
                rows.append({**row, "flag": TOO_FEW, "differs": False})
                continue
            bounds = _interval(_group_stats, arrays, n_resamples, rng)
            points = (skm.roc_auc_score(yg, pg), yg.mean() - pg.mean(), fg.mean())
            values = np.column_stack([points, *bounds]).ravel()  # value, low, high per metric
            row.update(zip(METRIC_COLUMNS, values, strict=True))
            reason = _flag_reason(row, overall_auc, overall_rate)
            rows.append({**row, "flag": reason, "differs": bool(reason)})
    columns = ["attribute", "group", "n", "positives", *METRIC_COLUMNS]
    table = pd.DataFrame(rows).reindex(columns=columns)
    return table.assign(flag=[r["flag"] for r in rows], differs=[r["differs"] for r in rows])


def operating_point(
    y: np.ndarray, p: np.ndarray, threshold: float, rule: str, curve: pd.DataFrame
) -> dict[str, Any]:
    """The threshold, its rule, what happens at it and where acting on the model pays."""
    y, flagged = np.asarray(y, bool), np.asarray(p, float) >= threshold
    tp, fp, n_pos, n_neg = (int(v.sum()) for v in (flagged & y, flagged & ~y, y, ~y))
    out = {
        "threshold": float(threshold),
        "rule": rule,
        "share_flagged": float(flagged.mean()),
        "sensitivity": tp / n_pos if n_pos else math.nan,
        "ppv": tp / (tp + fp) if tp + fp else math.nan,
        "specificity": (n_neg - fp) / n_neg if n_neg else math.nan,
        "net_benefit": float(net_benefit(y, p, [threshold])[0]),
        "treat_all_benefit": float(treat_all_benefit(y.mean(), [threshold])[0]),
    }
    # Where the model beats both: the longest run of grid thresholds, and how many beat them
    # outside it (next to treat-all and where few rows are flagged the curve is noisy).
    beats = (curve["model"] > np.maximum(curve["treat_all"], curve["treat_none"])).to_numpy()
    runs = np.flatnonzero(np.diff(np.r_[0, beats.astype(int), 0])).reshape(-1, 2)  # start, stop
    out.update(useful_low=math.nan, useful_high=math.nan, useful_elsewhere=0)
    if len(runs):
        start, stop = runs[np.argmax(runs[:, 1] - runs[:, 0])]
        out.update(useful_low=curve["threshold"][start], useful_high=curve["threshold"][stop - 1])
        out["useful_elsewhere"] = int(beats.sum() - (stop - start))
    out["pays"] = bool(out["net_benefit"] > max(out["treat_all_benefit"], 0))
    out["why"] = _why(out)
    return out


def _why(op: Mapping[str, Any]) -> str:
    t = op["threshold"]
    text = (
        f"The operating threshold {t:.3f} was chosen by {op['rule'].rstrip('.')}. At it the model "
        f"flags {op['share_flagged']:.1%} of encounters and reaches {op['sensitivity']:.1%} of "
        f"the readmissions (PPV {op['ppv']:.1%}, specificity {op['specificity']:.1%}); its net "
        f"benefit is {op['net_benefit']:.4f} against {max(op['treat_all_benefit'], 0):.4f} for the "
        f"better of treat-all and treat-none. Acting at risk >= {t:.3f} means accepting up to "
        f"{(1 - t) / t:.1f} follow-ups without a readmission per readmission reached. At this "
        f"threshold the model {'beats' if op['pays'] else 'does NOT beat'} both alternatives. "
    )
    low, high, stray = op["useful_low"], op["useful_high"], op["useful_elsewhere"]
    if math.isnan(low):
        return text + "On this test split no threshold of 0.02-0.50 beats both."
    more = f" (and at {stray} other grid threshold(s))" if stray else ""
    return text + f"Over 0.02-0.50 it beats both from {low:.2f} to {high:.2f}{more}."


@dataclass
class ModelCard:
    """The numbers of a model card (tables as DataFrames; intervals as value/low/high)."""

    facts: dict[str, Any]
    overall: dict[str, Any]
    calibration: dict[str, Any]
    subgroups: pd.DataFrame
    capture: pd.DataFrame
    decision_curve: pd.DataFrame
    operating_point: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (DataFrames as lists of records, NaN as None)."""
        return _jsonable(self.__dict__)


def _jsonable(value: Any) -> Any:
    if isinstance(value, pd.DataFrame):
        return _jsonable(value.to_dict(orient="records"))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if isinstance(value, str | int | float | bool | None) else str(value)


def build_card(
    frame: pd.DataFrame,
    y_true: np.ndarray,
    proba: np.ndarray,
    *,
    threshold: float,
    threshold_rule: str,
    facts: Mapping[str, Any],
    seed: int = 0,
    n_resamples: int = 1000,
) -> ModelCard:
    """All numbers of the model card of one model on its test rows.

    Args:
        frame: Raw test rows (UCI columns, for the subgroups), aligned with ``y_true``.
        y_true: 0/1 labels.
        proba: The model's (calibrated) probability of each row.
        threshold: The operating threshold (flag when ``proba >= threshold``).
        threshold_rule: How the threshold was chosen, as a phrase.
        facts: Plain facts for the "intended use and data" section, rendered in order.
        seed: Seed of every bootstrap.
        n_resamples: Bootstrap resamples per interval.

    Raises:
        ValueError: Misaligned inputs, labels other than 0/1, risks outside [0, 1], a threshold
            outside (0, 1), or a split without ten rows of each class.
    """
    y, p = np.asarray(y_true), np.asarray(proba, dtype=float)
    if not len(frame) == len(y) == len(p):
        raise ValueError(f"model card: {len(frame)} rows, {len(y)} labels, {len(p)} risks")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"model card: labels must be 0/1, got {sorted(set(y.tolist()))[:5]}")
    if not (np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()):
        raise ValueError("model card: risks must be finite probabilities in [0, 1]")
    if not 0 < threshold < 1:
        raise ValueError(f"model card: the threshold must be in (0, 1), got {threshold}")
    y, n, n_pos = y.astype(float), len(y), int(y.sum())
    if min(n_pos, n - n_pos) < MIN_CLASS_ROWS:
        raise ValueError(f"model card: {n_pos} positives of {n}; need {MIN_CLASS_ROWS} of each")
    rng, labels = np.random.default_rng(seed), subgroup_labels(frame)
    bounds = _interval(_overall_stats, (y, p, risk_codes(p)), n_resamples, rng)
    auc_ci = roc_auc_interval(y, p, level=LEVEL, n_resamples=n_resamples, seed=seed)
    overall = {"n": n, "positives": n_pos, "prevalence": n_pos / n}
    overall |= {
        "roc_auc": _estimate(skm.roc_auc_score(y, p), auc_ci),
        "pr_auc": _estimate(skm.average_precision_score(y, p), bounds[:, 0]),
        "brier": _estimate(skm.brier_score_loss(y, p), bounds[:, 1]),
        "brier_base_rate": n_pos / n * (1 - n_pos / n),  # always predicting the prevalence
    }
    calibration = {
        "table": reliability_table(y, p),
        "ece": _estimate(expected_calibration_error(y, p), bounds[:, 2]),
        "citl": _estimate(y.mean() - p.mean(), bounds[:, 3]),
    }
    curve = decision_curve(y, p)
    subgroups = subgroup_table(labels, y, p, threshold, n_resamples=n_resamples, rng=rng)
    point = operating_point(y, p, threshold, threshold_rule, curve)
    settings = {"seed": seed, "n_resamples": n_resamples, "level": LEVEL, "n_bins": N_BINS}
    return ModelCard(
        dict(facts), overall, calibration, subgroups, capture_table(y, p), curve, point, settings
    )
