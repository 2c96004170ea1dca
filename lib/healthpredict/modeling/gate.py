"""The promotion gate: whether a retrained challenger replaces the champion (pure).

Both models are scored on the same held-out rows (labelled encounters the champion never saw and
the challenger was not fitted on). The ROC AUC difference gets a paired bootstrap interval over
patients (a patient's encounters move together); the challenger is promoted only when that
interval clears the rule: beyond noise (superior), or, when it learned from clearly more data,
not worse by more than a margin (non-inferior). A challenger that differs only by its seed
passes neither, whatever its point estimate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from healthpredict.core.constants import PROMOTED, REJECTED
from healthpredict.modeling.evaluation import MIN_CLASS_ROWS

SUPERIOR = "superior"
NON_INFERIOR_MORE_DATA = "non_inferior_more_data"
NO_RULE = "none"


@dataclass(frozen=True)
class GateRule:
    """What the challenger must show.

    Attributes:
        confidence: Level of the two-sided paired bootstrap interval of the gain.
        min_gain: Superior when the interval's lower end is above this (0: beyond noise).
        non_inferiority_margin: Non-inferior when the lower end is above ``-margin``; None
            disables the more-data rule.
        more_data_ratio: "Clearly more data": challenger training rows at least this multiple
            of the champion's.
        n_resamples: Bootstrap resamples.
        seed: Seed of the resampling (the verdict is reproducible).
    """

    confidence: float = 0.95
    min_gain: float = 0.0
    non_inferiority_margin: float | None = 0.01
    more_data_ratio: float = 1.1
    n_resamples: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.5 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0.5, 1), got {self.confidence}")
        if self.non_inferiority_margin is not None and not self.non_inferiority_margin >= 0:
            raise ValueError(
                f"non_inferiority_margin must be >= 0, got {self.non_inferiority_margin}"
            )
        if not self.more_data_ratio >= 1:
            raise ValueError(f"more_data_ratio must be >= 1, got {self.more_data_ratio}")
        if self.n_resamples < 100:
            raise ValueError(f"n_resamples must be >= 100, got {self.n_resamples}")


@dataclass(frozen=True)
class GateVerdict:
    """The gate's verdict and everything it rests on (scraps, MLflow, the notebook).

    Attributes:
        promote: Whether the challenger replaces the champion.
        rule: Which rule promoted it (``superior`` / ``non_inferior_more_data``) or ``none``.
        reason: One sentence with the numbers.
        champion_roc_auc: Champion's ROC AUC on the gate rows.
        challenger_roc_auc: Challenger's, on the same rows.
        gain: Challenger minus champion.
        ci_low: Lower end of the paired interval of the gain.
        ci_high: Upper end.
        confidence: The interval's level.
        n_rows: Gate rows.
        n_positives: Positives among them.
        n_patients: Patients among them (the bootstrap's units).
        champion_train_rows: Rows the champion learned from (None: unknown).
        challenger_train_rows: Rows the challenger learned from (None: unknown).
    """

    promote: bool
    rule: str
    reason: str
    champion_roc_auc: float
    challenger_roc_auc: float
    gain: float
    ci_low: float
    ci_high: float
    confidence: float
    n_rows: int
    n_positives: int
    n_patients: int
    champion_train_rows: int | None
    challenger_train_rows: int | None

    @property
    def decision(self) -> str:
        """``PROMOTED`` or ``REJECTED``."""
        return gate_verdict(self.promote)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**asdict(self), "decision": self.decision}


def _weighted_auc(
    order: np.ndarray, tie_starts: np.ndarray, y: np.ndarray, w: np.ndarray
) -> np.ndarray:
    """ROC AUC of each weight row of ``w`` (shape ``(B, n)``); ties count half, as sklearn."""
    ys = y[order]
    ws = w[:, order]
    pos = np.add.reduceat(ws * ys, tie_starts, axis=1)
    neg = np.add.reduceat(ws * (1 - ys), tie_starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives strictly below each tie group
    with np.errstate(divide="ignore", invalid="ignore"):
        return (pos * (below + 0.5 * neg)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))


def _ranking(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(score, kind="stable")
    sorted_score = score[order]
    tie_starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    return order, tie_starts


def paired_auc_difference(
    y_true: Any,
    champion_proba: Any,
    challenger_proba: Any,
    *,
    groups: Any = None,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """ROC AUC gain of the challenger over the champion and its paired bootstrap interval.

    Resamples whole groups (patients) with replacement; both models are scored on each
    resample's rows, so what the rows have in common cancels out.

    Returns:
        ``(gain, ci_low, ci_high)``; NaNs when a class has fewer than ten rows.
    """
    y = np.asarray(y_true).astype(int)
    a = np.asarray(champion_proba, dtype=float)
    b = np.asarray(challenger_proba, dtype=float)
    if not len(y) == len(a) == len(b):
        raise ValueError(f"lengths differ: labels {len(y)}, champion {len(a)}, challenger {len(b)}")
    n_pos = int(y.sum())
    if min(n_pos, len(y) - n_pos) < MIN_CLASS_ROWS:
        return math.nan, math.nan, math.nan
    codes = pd.factorize(pd.Series(groups if groups is not None else np.arange(len(y))))[0]
    n_groups = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    ranking_a, ranking_b = _ranking(a), _ranking(b)
    ones = np.ones((1, len(y)))
    gain = float(_weighted_auc(*ranking_b, y, ones)[0] - _weighted_auc(*ranking_a, y, ones)[0])
    diffs = []
    for start in range(0, n_resamples, 200):  # bounds memory: 200 resamples at a time
        size = min(200, n_resamples - start)
        counts = rng.multinomial(n_groups, np.full(n_groups, 1 / n_groups), size=size)
        w = counts[:, codes].astype(float)
        diffs.append(_weighted_auc(*ranking_b, y, w) - _weighted_auc(*ranking_a, y, w))
    d = np.concatenate(diffs)
    d = d[np.isfinite(d)]
    tail = (1 - confidence) / 2
    low, high = np.quantile(d, [tail, 1 - tail])
    return gain, float(low), float(high)


def paired_gate(
    y_true: Any,
    champion_proba: Any,
    challenger_proba: Any,
    *,
    groups: Any = None,
    champion_train_rows: int | None = None,
    challenger_train_rows: int | None = None,
    rule: GateRule | None = None,
) -> GateVerdict:
    """Whether the challenger replaces the champion, judged on the same rows.

    Args:
        y_true: Labels of the gate rows (0/1).
        champion_proba: Champion's probabilities on them.
        challenger_proba: Challenger's, on the same rows in the same order.
        groups: Patient of each row (bootstrap unit); None resamples rows.
        champion_train_rows: Rows the champion learned from (for the more-data rule).
        challenger_train_rows: Rows the challenger learned from.
        rule: The rule (default :class:`GateRule`).

    Returns:
        The verdict; an undefined interval (a class under ten rows) keeps the champion.
    """
    rule = rule or GateRule()
    y = np.asarray(y_true).astype(int)
    gain, low, high = paired_auc_difference(
        y,
        champion_proba,
        challenger_proba,
        groups=groups,
        confidence=rule.confidence,
        n_resamples=rule.n_resamples,
        seed=rule.seed,
    )
    ones = np.ones((1, len(y)))
    champion_auc = float(_weighted_auc(*_ranking(np.asarray(champion_proba, float)), y, ones)[0])
    challenger_auc = float(
        _weighted_auc(*_ranking(np.asarray(challenger_proba, float)), y, ones)[0]
    )
    more_data = (
        champion_train_rows is not None
        and challenger_train_rows is not None
        and challenger_train_rows >= rule.more_data_ratio * champion_train_rows
    )
    level = f"{rule.confidence:.0%}"
    interval = f"gain {gain:+.4f} ({level} paired interval {low:+.4f} to {high:+.4f})"
    if not math.isfinite(low):
        promote, which = False, NO_RULE
        reason = (
            "the gate rows have fewer than ten rows of a class: no comparison; keeping the champion"
        )
    elif low > rule.min_gain:
        promote, which = True, SUPERIOR
        reason = f"challenger is better beyond noise: {interval} > {rule.min_gain:+.4f}"
    elif (
        more_data and rule.non_inferiority_margin is not None and low > -rule.non_inferiority_margin
    ):
        promote, which = True, NON_INFERIOR_MORE_DATA
        reason = (
            f"challenger learned from {challenger_train_rows} rows vs {champion_train_rows} "
            f"and is not worse by more than {rule.non_inferiority_margin:.4f}: {interval}"
        )
    else:
        promote, which = False, NO_RULE
        needs = f"the lower end above {rule.min_gain:+.4f}"
        if more_data and rule.non_inferiority_margin is not None:
            needs += (
                f" (or above {-rule.non_inferiority_margin:+.4f} with its larger training data)"
            )
        reason = f"challenger's gain is within noise: {interval}; promotion needs {needs}"
    return GateVerdict(
        promote=promote,
        rule=which,
        reason=reason,
        champion_roc_auc=champion_auc,
        challenger_roc_auc=challenger_auc,
        gain=gain,
        ci_low=low,
        ci_high=high,
        confidence=rule.confidence,
        n_rows=len(y),
        n_positives=int(y.sum()),
        n_patients=int(pd.Series(groups).nunique()) if groups is not None else len(y),
        champion_train_rows=champion_train_rows,
        challenger_train_rows=challenger_train_rows,
    )


def gate_verdict(promote: bool) -> str:
    """The gate's verdict as the loop, the DAG and MLflow tags name it."""
    return PROMOTED if promote else REJECTED
