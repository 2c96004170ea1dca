"""Performance signals of a monitored batch, on cases with a known answer."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from healthpredict.monitoring.signals import ArrivedBatch, performance_signals


def calibrated(n, seed, shift=0.0):
    """Probabilities that are right by construction, and labels drawn from them."""
    rng = np.random.default_rng(seed)
    p = np.clip(rng.beta(1.2, 9, n) + shift, 0.001, 0.999)
    return p, (rng.random(n) < p).astype(int)


def test_without_labels_the_estimate_is_the_reference_moved_by_the_expected_change():
    ref_p, ref_y = calibrated(20000, 0)
    batch_p, _ = calibrated(2000, 1)
    s = performance_signals(ref_p, ref_y, batch_p)
    assert s.reference_roc_auc == pytest.approx(roc_auc_score(ref_y, ref_p))
    assert s.realised_roc_auc is None and s.realised_drop is None and s.arrived == []
    expected_change = s.expected_roc_auc - s.reference_expected
    assert s.estimated_roc_auc == pytest.approx(s.reference_roc_auc + expected_change)
    assert s.expected_drop == pytest.approx(-expected_change)
    # Same distribution: the expected change is small (sampling only).
    assert abs(expected_change) < 0.02


def test_arrived_labels_set_the_realised_level_and_the_estimate():
    ref_p, ref_y = calibrated(20000, 0)
    old_p, old_y = calibrated(2000, 2)
    flipped = old_y.copy()
    flipped[:600] = 1 - flipped[:600]  # concept drift: labels the probabilities cannot see
    batch_p, _ = calibrated(2000, 3)
    s = performance_signals(ref_p, ref_y, batch_p, [ArrivedBatch("b1", old_p, flipped)])
    realised = roc_auc_score(flipped, old_p)
    assert s.realised_roc_auc == pytest.approx(realised)
    assert (
        s.realised_drop == pytest.approx(s.reference_roc_auc - realised) and s.realised_drop > 0.05
    )
    assert s.realised_rows == 2000 and s.arrived[0]["name"] == "b1"
    # The estimate anchors on what the labels showed, not on the reference.
    moved = s.expected_roc_auc - s.arrived[0]["expected_roc_auc"]
    assert s.estimated_roc_auc == pytest.approx(realised + moved)


def test_a_batch_of_one_class_gives_no_realised_figure():
    ref_p, ref_y = calibrated(5000, 0)
    p, _ = calibrated(500, 4)
    s = performance_signals(ref_p, ref_y, p, [ArrivedBatch("b", p, np.zeros(500, dtype=int))])
    assert s.realised_roc_auc is None and np.isnan(s.arrived[0]["realised_roc_auc"])
