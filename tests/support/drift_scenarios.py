"""Drift scenarios with a known ground truth, applicable to any raw stream (real or synthetic).

Each scenario is a pure function ``(df, strength, seed) -> DataFrame`` that returns a new frame
and never touches its input. Covariate, label and concept scenarios keep the frame valid under
:func:`~healthpredict.data.schema.validate_raw`; schema faults deliberately break it, so fault
tests can check that bad batches are stopped with a message naming the column.

Resampling scenarios draw rows of the batch itself (weighted, with replacement), so no value is
invented. The drawn rows keep their stream order and receive the batch's own sorted
``encounter_id`` values, which keeps ids unique, increasing and inside the batch's id range.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from healthpredict.data.schema import AGE_BRACKETS, TARGET
from healthpredict.data.synthetic import EXPIRED_DISPOSITIONS, risk_logit

ScenarioKind = Literal["covariate", "label", "concept", "schema"]
ScenarioFn = Callable[[pd.DataFrame, float, int], pd.DataFrame]

_AGE_INDEX = {a: i for i, a in enumerate(AGE_BRACKETS)}
# A tilt exp(strength * score) with unclipped scores lets one outlier row dominate a batch.
_SCORE_CLIP = 3.0


def _standardized(score: np.ndarray) -> np.ndarray:
    sd = float(np.std(score))
    if not np.isfinite(sd) or sd == 0:
        return np.zeros_like(score, dtype=float)
    return np.clip((score - score.mean()) / sd, -_SCORE_CLIP, _SCORE_CLIP)


def _numeric(df: pd.DataFrame, col: str) -> np.ndarray:
    return pd.to_numeric(df[col], errors="coerce").fillna(0).to_numpy(dtype=float)


def _take(df: pd.DataFrame, positions: np.ndarray) -> pd.DataFrame:
    """Rows at ``positions`` (any multiset of length len(df)) as a valid, chronological batch."""
    out = df.iloc[np.sort(positions)].copy()
    out.index = df.index
    if "encounter_id" in df.columns:
        out["encounter_id"] = np.sort(df["encounter_id"].to_numpy())
    return out


def _tilt(df: pd.DataFrame, score: np.ndarray, strength: float, seed: int) -> pd.DataFrame:
    """Resample rows with weights exp(strength * standardized score); 0 returns a plain copy."""
    if strength == 0 or len(df) == 0:
        return df.copy()
    z = _standardized(np.asarray(score, dtype=float))
    w = np.exp(strength * z)
    rng = np.random.default_rng(seed)
    return _take(df, rng.choice(len(df), size=len(df), p=w / w.sum()))


def _check_strength(strength: float, name: str) -> float:
    strength = float(strength)
    if not np.isfinite(strength) or strength < 0:
        raise ValueError(f"{name}: strength must be a finite number >= 0, got {strength}")
    return strength


def _require(df: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name}: the frame lacks column(s) {', '.join(missing)}")


# --- covariate shift ------------------------------------------------------------------------


def older_patients(df: pd.DataFrame, strength: float, seed: int) -> pd.DataFrame:
    """Covariate shift: resample the batch towards older patients.

    Rows are drawn with replacement with weight ``exp(strength * z)``, ``z`` the standardized age
    bracket index (clipped to +-3), so the mean age moves up by roughly ``strength`` standard
    deviations (less when the batch has few old patients to draw from).

    Args:
        df: Raw batch; not modified.
        strength: Size of the tilt, >= 0; 0 returns an unchanged copy. Defaults 0.5 / 1.0.
        seed: Seed of the resampling.

    Returns:
        New frame of the same length; only the row mix changes (values are real rows).
    """
    strength = _check_strength(strength, "older_patients")
    _require(df, ("age",), "older_patients")
    age = df["age"].map(_AGE_INDEX).fillna(6).to_numpy(dtype=float)
    return _tilt(df, age, strength, seed)


def more_emergency(df: pd.DataFrame, strength: float, seed: int) -> pd.DataFrame:
    """Covariate shift: resample towards emergency admissions and frequent ER visitors.

    The score is ``[admission_type_id == 1] + [admission_source_id == 7] +
    log1p(number_emergency)``; rows are drawn with weight ``exp(strength * z)`` of its
    standardized value. The shares of admission type 1 and source 7 and the mean
    ``number_emergency`` go up.

    Args:
        df: Raw batch; not modified.
        strength: Size of the tilt, >= 0; 0 returns an unchanged copy. Defaults 0.5 / 1.0.
        seed: Seed of the resampling.

    Returns:
        New frame of the same length made of rows of ``df``.
    """
    strength = _check_strength(strength, "more_emergency")
    cols = ("admission_type_id", "admission_source_id", "number_emergency")
    _require(df, cols, "more_emergency")
    score = (
        (_numeric(df, "admission_type_id") == 1)
        + (_numeric(df, "admission_source_id") == 7)
        + np.log1p(_numeric(df, "number_emergency"))
    )
    return _tilt(df, score, strength, seed)


def more_prior_inpatient(df: pd.DataFrame, strength: float, seed: int) -> pd.DataFrame:
    """Covariate shift: resample towards patients with more inpatient visits in the prior year.

    Rows are drawn with weight ``exp(strength * z)``, ``z`` the standardized
    ``log1p(number_inpatient)``; the mean ``number_inpatient`` and, through the true risk
    model, the ``<30`` rate go up.

    Args:
        df: Raw batch; not modified.
        strength: Size of the tilt, >= 0; 0 returns an unchanged copy. Defaults 0.5 / 1.0.
        seed: Seed of the resampling.

    Returns:
        New frame of the same length made of rows of ``df``.
    """
    strength = _check_strength(strength, "more_prior_inpatient")
    _require(df, ("number_inpatient",), "more_prior_inpatient")
    return _tilt(df, np.log1p(_numeric(df, "number_inpatient")), strength, seed)


# --- label shift ----------------------------------------------------------------------------


def label_shift(df: pd.DataFrame, strength: float, seed: int) -> pd.DataFrame:
    """Label (prior) shift: resample so the ``<30`` rate rises by the factor ``1 + strength``.

    All ``<30`` rows are kept and more are drawn from them with replacement; the other rows are
    subsampled without replacement, keeping their mix of ``NO``/``>30``. Within each class the
    features keep their distribution, which is what distinguishes prior shift from concept
    drift. The rate is capped at 0.9.

    Args:
        df: Raw batch with ``readmitted``; not modified.
        strength: Relative increase of the ``<30`` rate, >= 0 (0.5 = x1.5); 0 returns an
            unchanged copy. Defaults 0.5 / 1.0.
        seed: Seed of the resampling.

    Returns:
        New frame of the same length made of rows of ``df``.

    Raises:
        ValueError: If ``readmitted`` is missing or the batch has no ``<30`` row to draw from.
    """
    strength = _check_strength(strength, "label_shift")
    _require(df, (TARGET,), "label_shift")
    if strength == 0:
        return df.copy()
    early = (df[TARGET] == "<30").to_numpy()
    n, n_early = len(df), int(early.sum())
    if n_early == 0:
        raise ValueError("label_shift: the batch has no '<30' rows, so their rate cannot rise")
    target = min(n_early / n * (1 + strength), 0.9)
    n_target = max(n_early, int(round(target * n)))
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(early), np.flatnonzero(~early)
    extra = rng.choice(pos, size=n_target - n_early, replace=True)
    kept_neg = rng.choice(neg, size=n - n_target, replace=False)
    return _take(df, np.concatenate([pos, extra, kept_neg]))


# --- concept drift --------------------------------------------------------------------------


def concept_drift(df: pd.DataFrame, strength: float, seed: int) -> pd.DataFrame:
    """Concept drift: the ``<30`` label is redrawn from an inverted risk relation.

    For a share ``strength`` of the rows the label is redrawn from ``P'(<30 | x)``, a logistic
    model whose linear part is the negative of the known risk model of
    :func:`healthpredict.data.synthetic.risk_probability` (so patients without prior inpatient
    visits now come back within 30 days more often, frequent visitors less), with its intercept
    set so that the batch's ``<30`` rate stays the same. A row that loses ``<30`` becomes ``>30``
    or ``NO`` in the batch's proportions; expired patients stay ``NO``. Features are untouched,
    so feature drift tests see nothing while a model's discrimination drops.

    Args:
        df: Raw batch with ``readmitted``; not modified.
        strength: Share of rows whose label is redrawn, in [0, 1]; 0 returns an unchanged copy.
            Defaults 0.5 / 1.0.
        seed: Seed of the redraw.

    Returns:
        New frame with the same rows, ids and features and a new ``readmitted``.

    Raises:
        ValueError: If ``readmitted`` is missing or strength is outside [0, 1].
    """
    strength = _check_strength(strength, "concept_drift")
    if strength > 1:
        raise ValueError(f"concept_drift: strength is a share of rows in [0, 1], got {strength}")
    _require(df, (TARGET,), "concept_drift")
    out = df.copy()
    if strength == 0 or len(df) == 0:
        return out
    rng = np.random.default_rng(seed)
    label = df[TARGET].astype(str).to_numpy(dtype=object)
    expired = pd.to_numeric(df["discharge_disposition_id"], errors="coerce").isin(
        EXPIRED_DISPOSITIONS
    )
    alive = ~expired.to_numpy()
    inverted = -risk_logit(df)
    inverted -= inverted[alive].mean() if alive.any() else 0.0
    rate = float((label == "<30").mean())
    intercept = _match_rate(inverted[alive], rate * len(df) / max(int(alive.sum()), 1))
    p_new = np.where(alive, 1.0 / (1.0 + np.exp(-(intercept + inverted))), 0.0)

    redraw = rng.random(len(df)) < strength
    now_early = rng.random(len(df)) < p_new
    late_share = _late_share(label)
    fallback = np.where(rng.random(len(df)) < late_share, ">30", "NO")
    new = label.copy()
    new[redraw & now_early] = "<30"
    lost = redraw & ~now_early & (label == "<30")
    new[lost] = fallback[lost]
    out[TARGET] = new
    return out


def _match_rate(linear: np.ndarray, rate: float) -> float:
    """Intercept b with mean(sigmoid(b + linear)) == rate, found by bisection."""
    rate = min(max(rate, 1e-6), 1 - 1e-6)
    lo, hi = -30.0, 30.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if np.mean(1.0 / (1.0 + np.exp(-(mid + linear)))) < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _late_share(label: np.ndarray) -> float:
    """Share of ``>30`` among the rows that are not ``<30`` (0.39 as in the real data if none)."""
    late, none = int((label == ">30").sum()), int((label == "NO").sum())
    return late / (late + none) if late + none else 0.39


# --- schema faults --------------------------------------------------------------------------


def drop_column(df: pd.DataFrame, strength: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """Schema fault: the ``A1Cresult`` column is missing (an upstream extract dropped it).

    Args:
        df: Raw batch; not modified.
        strength: Ignored (a column is either there or not).
        seed: Ignored.

    Returns:
        New frame without ``A1Cresult``; ``validate_raw`` reports it as a missing column.
    """
    return df.drop(columns=["A1Cresult"])


def rename_column(df: pd.DataFrame, strength: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """Schema fault: ``glyburide-metformin`` arrives as ``glyburide_metformin``.

    This is what a tool that "sanitizes" column names does; ``validate_raw`` reports the
    expected name as missing and the new one as unexpected.

    Args:
        df: Raw batch; not modified.
        strength: Ignored.
        seed: Ignored.

    Returns:
        New frame with the renamed column in the same position.
    """
    return df.rename(columns={"glyburide-metformin": "glyburide_metformin"})


_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen")  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def _in_words(n: int) -> str:
    """English words for 0 <= n < 1000, e.g. 42 -> "forty-two"."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    hundreds, rest = divmod(n, 100)
    return f"{_ONES[hundreds]} hundred" + (f" and {_in_words(rest)}" if rest else "")


def _rows_share(n: int, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Positions of ``strength`` of n rows (at least one), chosen at random."""
    share = min(max(float(strength), 0.0), 1.0)
    k = min(n, max(1, int(round(share * n))))
    return np.sort(rng.choice(n, size=k, replace=False))


def wrong_type(df: pd.DataFrame, strength: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """Schema fault: ``num_medications`` written out in words ("twelve") in a share of rows.

    Args:
        df: Raw batch; not modified.
        strength: Share of rows affected, clipped to [0, 1], at least one row. Defaults
            0.1 / 1.0.
        seed: Seed choosing the rows.

    Returns:
        New frame whose ``num_medications`` is an object column mixing ints and words;
        ``validate_raw`` reports values that are not integers.
    """
    out = df.copy()
    if len(df) == 0:
        return out
    rows = _rows_share(len(df), strength, np.random.default_rng(seed))
    values = out["num_medications"].astype(object).to_numpy(copy=True)
    values[rows] = [_in_words(int(v)) for v in values[rows]]
    out["num_medications"] = pd.Series(values, index=out.index, dtype=object)
    return out


def new_category(df: pd.DataFrame, strength: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """Schema fault: an unseen ``race`` value, "Martian", in a share of rows.

    Args:
        df: Raw batch; not modified.
        strength: Share of rows affected, clipped to [0, 1], at least one row. Defaults
            0.1 / 1.0.
        seed: Seed choosing the rows.

    Returns:
        New frame; ``validate_raw`` reports the unknown category of ``race``.
    """
    out = df.copy()
    if len(df) == 0:
        return out
    rows = _rows_share(len(df), strength, np.random.default_rng(seed))
    values = out["race"].astype(object).to_numpy(copy=True)
    values[rows] = "Martian"
    out["race"] = pd.Series(values, index=out.index, dtype=object)
    return out


# --- registry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """A named drift scenario and the strengths it is usually run with."""

    name: str
    kind: ScenarioKind
    description: str
    function: ScenarioFn
    strengths: tuple[float, float]  # (moderate, strong)

    @property
    def breaks_schema(self) -> bool:
        """Whether the result is meant to fail ``validate_raw``."""
        return self.kind == "schema"


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("older_patients", "covariate", "Resampled towards older age brackets.",
                 older_patients, (0.5, 1.0)),
        Scenario("more_emergency", "covariate",
                 "Resampled towards emergency admissions (type 1, source 7) and ER visits.",
                 more_emergency, (0.5, 1.0)),
        Scenario("more_prior_inpatient", "covariate",
                 "Resampled towards patients with more prior inpatient visits.",
                 more_prior_inpatient, (0.5, 1.0)),
        Scenario("label_shift", "label", "Resampled so the <30 rate is x(1+strength).",
                 label_shift, (0.5, 1.0)),
        Scenario("concept_drift", "concept",
                 "Labels of a share of rows redrawn from the inverted risk relation.",
                 concept_drift, (0.5, 1.0)),
        Scenario("drop_column", "schema", "A1Cresult column missing.", drop_column, (1.0, 1.0)),
        Scenario("rename_column", "schema", "glyburide-metformin renamed glyburide_metformin.",
                 rename_column, (1.0, 1.0)),
        Scenario("wrong_type", "schema", "num_medications written in words in some rows.",
                 wrong_type, (0.1, 1.0)),
        Scenario("new_category", "schema", "Unseen race 'Martian' in some rows.",
                 new_category, (0.1, 1.0)),
    )
}  # fmt: skip


def apply(
    name: str, df: pd.DataFrame, strength: float | None = None, seed: int = 0
) -> pd.DataFrame:
    """Apply a registered scenario to a raw batch.

    Args:
        name: Key of :data:`SCENARIOS`.
        df: Raw batch; not modified.
        strength: Strength of the scenario; None uses its moderate default.
        seed: Seed of any randomness.

    Returns:
        New frame; ``attrs["drift_scenario"]`` records name, kind, strength and seed, and
        ``attrs["data_source"]`` of the input is kept.

    Raises:
        KeyError: If ``name`` is not a registered scenario (the message lists them).
    """
    if name not in SCENARIOS:
        raise KeyError(f"unknown drift scenario {name!r}; known: {', '.join(SCENARIOS)}")
    scenario = SCENARIOS[name]
    value = scenario.strengths[0] if strength is None else float(strength)
    out = scenario.function(df, value, seed)
    out.attrs = {
        **df.attrs,
        "drift_scenario": {"name": name, "kind": scenario.kind, "strength": value, "seed": seed},
    }
    return out
