"""Performance signals of a monitored batch, on cases with a known answer."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from healthpredict.monitoring.estimation import (
    LabelledBatch,
    ProbabilityCalibrator,
    estimate_roc_auc,
    expected_roc_auc,
)
from healthpredict.monitoring.signals import ArrivedBatch, performance_signals


def calibrated(n, seed):
    """Probabilities that are right by construction, and labels drawn from them."""
    rng = np.random.default_rng(seed)
    p = np.clip(rng.beta(1.2, 9, n), 0.001, 0.999)
    return p, (rng.random(n) < p).astype(int)


@pytest.fixture(scope="module")
def reference():
    p, y = calibrated(20000, 0)
    calibrator = ProbabilityCalibrator(p, y)
    return calibrator, roc_auc_score(y, p), expected_roc_auc(calibrator.transform(p))


def test_without_labels_the_estimate_is_the_reference_moved_by_the_expected_change(reference):
    calibrator, ref_auc, ref_expected = reference
    batch_p, _ = calibrated(2000, 1)
    now = expected_roc_auc(calibrator.transform(batch_p))
    s = performance_signals(calibrator, ref_auc, ref_expected, now)
    assert s.realised_roc_auc is None and s.realised_drop is None and s.arrived == []
    assert s.estimated_roc_auc == pytest.approx(ref_auc + (now - ref_expected))
    assert s.expected_drop == pytest.approx(ref_expected - now)
    assert abs(s.expected_drop) < 0.02  # the same distribution: sampling only


def test_the_newest_labelled_batch_is_the_realised_signal(reference):
    calibrator, ref_auc, ref_expected = reference
    old_p, old_y = calibrated(2000, 2)
    new_p, new_y = calibrated(2000, 3)
    new_y[:600] = 1 - new_y[:600]  # concept drift: labels the probabilities cannot see
    now = expected_roc_auc(calibrator.transform(calibrated(2000, 4)[0]))
    s = performance_signals(
        calibrator,
        ref_auc,
        ref_expected,
        now,
        [ArrivedBatch("b1", old_p, old_y), ArrivedBatch("b2", new_p, new_y)],
    )
    realised = roc_auc_score(new_y, new_p)
    assert s.realised_roc_auc == pytest.approx(realised) and s.realised_rows == 2000
    assert s.realised_drop == pytest.approx(ref_auc - realised) and s.realised_drop > 0.05
    assert [a["name"] for a in s.arrived] == ["b1", "b2"]
    # The estimate is the estimator's, fed with both labelled batches.
    recent = [
        LabelledBatch(a["realised_roc_auc"], a["expected_roc_auc"], a["rows"]) for a in s.arrived
    ]
    assert s.estimated_roc_auc == pytest.approx(
        estimate_roc_auc(now, ref_auc, ref_expected, recent)
    )
    assert s.estimated_roc_auc < ref_auc  # pulled down by what the labels showed


def test_a_newest_batch_of_one_class_gives_no_realised_figure(reference):
    calibrator, ref_auc, ref_expected = reference
    p, _ = calibrated(500, 5)
    s = performance_signals(
        calibrator, ref_auc, ref_expected, ref_expected, [ArrivedBatch("b", p, np.zeros(500, int))]
    )
    assert s.realised_roc_auc is None and np.isnan(s.arrived[0]["realised_roc_auc"])
