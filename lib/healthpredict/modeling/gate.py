"""The promotion gate: whether a retrained challenger replaces the champion (pure)."""

from __future__ import annotations

import math

from healthpredict.core.constants import PROMOTED, REJECTED


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


def gate_verdict(promote: bool) -> str:
    """The gate's verdict as the loop, the DAG and MLflow tags name it."""
    return PROMOTED if promote else REJECTED
