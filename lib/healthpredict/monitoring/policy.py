"""The retraining decision (pure): is the model getting worse, or about to?

One function for the local loop, the monitoring DAG and the backtest (``make bench-loop``). It
weighs what the monitor measured (:class:`Signals`) with the loop's rule (:class:`PolicySettings`)
and says whether to retrain and why. Realised performance (labels arrived) comes first; the
label-free estimate speaks for the batch not yet labelled; and because the backtest shows that
more labelled data is worth more than recency on this stream, a model is also refreshed once the
labelled rows it never learned from have grown by a set share of its training rows. Data drift
alone is reported, not acted on: on time-ordered data it moves with coding practice without
telling whether the model got worse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from healthpredict.core.constants import GROWTH_TRIGGER

REALISED = "realised_performance"
ESTIMATED = "estimated_performance"
DATA_GROWTH = "data_growth"
DATA_DRIFT = "data_drift"


@dataclass(frozen=True)
class PolicySettings:
    """The loop's rule.

    Defaults as measured by ``make bench-loop`` (docs/loop_backtest.md; real stream, 40 batches
    of 2,000, label delay 1, not tuned on that figure): growth at 0.5 with the realised and
    estimated triggers retrained 6 times (every_1: 38) and reached pooled ROC AUC 0.665 vs
    every_1's 0.670 and frozen's 0.636; three retrainings came from growth, three from a
    realised drop. Cumulative data beat a 20,000-row window (0.670 vs 0.665 when both retrain
    after every batch), hence growth relative to the champion's training rows.

    Attributes:
        growth_trigger: Retrain when labelled rows the champion never learned from reach this
            share of its training rows (None: off).
        use_estimated: Whether the label-free estimate may trigger a retraining.
        use_data_drift: Whether data drift alone may trigger one (off: see the module doc).
    """

    growth_trigger: float | None = GROWTH_TRIGGER
    use_estimated: bool = True
    use_data_drift: bool = False


@dataclass(frozen=True)
class Signals:
    """What the monitor measured for a batch (drops are reference minus batch ROC AUC).

    Attributes:
        realised_drop: Drop of the realised ROC AUC on the batches whose labels just arrived
            (None: none arrived).
        realised_tolerance: Largest realised drop that is noise, calibrated on time-ordered
            held-out batches of the reference period.
        estimated_drop: Drop of the estimated ROC AUC of the unlabelled batch.
        estimated_tolerance: Its calibrated tolerance.
        data_drift: Whether the data-drift test flagged the batch.
        new_labelled_rows: Labelled rows the champion never learned from.
        champion_train_rows: Rows the champion learned from (None: unknown).
    """

    realised_drop: float | None = None
    realised_tolerance: float | None = None
    estimated_drop: float | None = None
    estimated_tolerance: float | None = None
    data_drift: bool = False
    new_labelled_rows: int = 0
    champion_train_rows: int | None = None


@dataclass(frozen=True)
class RetrainDecision:
    """Whether to retrain, which signals said so (names above) and why, in sentences."""

    retrain: bool
    triggers: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def _beyond(drop: float | None, tolerance: float | None) -> bool:
    return (
        drop is not None
        and tolerance is not None
        and math.isfinite(drop)
        and math.isfinite(tolerance)
        and drop > tolerance
    )


def retrain_decision(signals: Signals, settings: PolicySettings | None = None) -> RetrainDecision:
    """Decide whether to retrain on a monitored batch, with one reason per trigger."""
    settings = settings or PolicySettings()
    triggers: list[str] = []
    reasons: list[str] = []
    if _beyond(signals.realised_drop, signals.realised_tolerance):
        triggers.append(REALISED)
        reasons.append(
            f"realised ROC AUC dropped by {signals.realised_drop:.3f} on the batches just "
            f"labelled (noise up to {signals.realised_tolerance:.3f})"
        )
    if settings.use_estimated and _beyond(signals.estimated_drop, signals.estimated_tolerance):
        triggers.append(ESTIMATED)
        reasons.append(
            f"estimated ROC AUC of the unlabelled batch dropped by {signals.estimated_drop:.3f} "
            f"(noise up to {signals.estimated_tolerance:.3f})"
        )
    if (
        settings.growth_trigger is not None
        and signals.champion_train_rows
        and signals.new_labelled_rows >= settings.growth_trigger * signals.champion_train_rows
    ):
        triggers.append(DATA_GROWTH)
        reasons.append(
            f"{signals.new_labelled_rows} labelled rows the champion never learned from, "
            f"{signals.new_labelled_rows / signals.champion_train_rows:.0%} of its "
            f"{signals.champion_train_rows} training rows (refresh at {settings.growth_trigger:.0%})"
        )
    if settings.use_data_drift and signals.data_drift:
        triggers.append(DATA_DRIFT)
        reasons.append("data drift beyond its calibrated threshold")
    return RetrainDecision(bool(triggers), triggers, reasons)
