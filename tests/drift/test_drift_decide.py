"""decide(): the pure drift decision, over every combination of its signals."""

from __future__ import annotations

import itertools
import math

import pytest

from healthpredict.core.constants import DRIFT_DETECTED, NO_DRIFT
from healthpredict.monitoring.decision import decide

SHARES = {"below": 0.02, "at": 0.1, "above": 0.5}
DROPS = {"none": None, "nan": math.nan, "below": 0.01, "at": 0.05, "above": 0.2}


@pytest.mark.parametrize(
    ("share", "prediction", "drop", "tolerance"),
    list(itertools.product(SHARES, (False, True), DROPS, (0.05, None))),
)
def test_every_combination(share, prediction, drop, tolerance):
    status, reasons = decide(SHARES[share], 0.1, prediction, DROPS[drop], tolerance)
    share_fires = share in ("at", "above")  # "reaches" the threshold: >=
    perf_fires = tolerance is not None and drop == "above"  # "more than" the tolerance: >
    expected = [share_fires, prediction, perf_fires]
    assert status == (DRIFT_DETECTED if any(expected) else NO_DRIFT)
    assert len(reasons) == sum(expected)
    names = ("data drift", "prediction drift", "performance")
    kinds = [r.split(":")[0] for r in reasons]
    assert kinds == [k for k, fired in zip(names, expected, strict=True) if fired]


def test_reasons_name_the_numbers():
    status, reasons = decide(0.25, 0.2, True, 0.123, 0.05)
    assert status == DRIFT_DETECTED
    assert reasons[0] == "data drift: 25.0% of the monitored columns drifted (threshold 20.0%)"
    assert "predicted probabilities" in reasons[1]
    assert reasons[2] == "performance: ROC AUC dropped by 0.123 (tolerance 0.050)"


def test_no_drift_has_no_reasons():
    assert decide(0.0, 1 / 33, False, None, None) == (NO_DRIFT, [])
    assert decide(0.0, 1 / 33, False, -0.2, 0.0) == (NO_DRIFT, [])  # an AUC gain is no drift


def test_share_computed_as_k_over_c_counts_as_reached():
    assert decide(3 / 33, 3 / 33, False, None, None)[0] == DRIFT_DETECTED
    assert decide(2 / 33, 3 / 33, False, None, None)[0] == NO_DRIFT
    assert decide(1.0, 1.0, False, None, None)[0] == DRIFT_DETECTED


@pytest.mark.parametrize(
    ("share", "threshold", "tolerance", "message"),
    [
        (-0.1, 0.1, None, "drifted_share"),
        (1.5, 0.1, None, "drifted_share"),
        (math.nan, 0.1, None, "drifted_share"),
        (0.1, 0.0, None, "share_threshold"),
        (0.1, 1.2, None, "share_threshold"),
        (0.1, 0.1, -0.01, "performance_tolerance"),
        (0.1, 0.1, math.nan, "performance_tolerance"),
    ],
)
def test_bad_inputs_are_refused(share, threshold, tolerance, message):
    with pytest.raises(ValueError, match=message):
        decide(share, threshold, False, 0.1, tolerance)
