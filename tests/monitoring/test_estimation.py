"""Known answers of label-free performance estimation: calibrator, expected ROC AUC, estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from healthpredict.monitoring.estimation import (
    LabelledBatch,
    ProbabilityCalibrator,
    estimate_roc_auc,
    expected_roc_auc,
)


def _probabilities(n: int, seed: int) -> np.ndarray:
    """Readmission-like probabilities: mostly low, a tail of high ones, many ties (2 decimals)."""
    return np.round(np.random.default_rng(seed).beta(1.2, 8.0, size=n), 2)


def test_expected_roc_auc_is_the_mean_auc_of_labels_drawn_from_the_probabilities():
    p = _probabilities(2000, seed=1)
    rng = np.random.default_rng(2)
    draws = rng.random((400, len(p))) < p  # 400 label sets, each row positive with prob. p
    # Mann-Whitney with mid-ranks (ties count half): the scores, hence ranks, are fixed.
    ranks = rankdata(p)
    pos = draws.sum(axis=1)
    aucs = (draws @ ranks - pos * (pos + 1) / 2) / (pos * (len(p) - pos))
    assert aucs[0] == pytest.approx(roc_auc_score(draws[0], p))
    # The mean of 400 realised AUCs has a standard error of ~0.001.
    assert expected_roc_auc(p) == pytest.approx(aucs.mean(), abs=0.003)


def test_expected_roc_auc_equals_the_auc_of_fractional_labels_including_ties():
    # Each row counted as a positive with weight p and a negative with weight 1 - p: the ROC
    # AUC of that weighted sample is CBPE's expected AUC exactly, ties scored half as sklearn does.
    p = _probabilities(500, seed=3)
    y = np.r_[np.ones(len(p)), np.zeros(len(p))]
    weighted = roc_auc_score(y, np.r_[p, p], sample_weight=np.r_[p, 1 - p])
    assert expected_roc_auc(p) == pytest.approx(weighted, abs=1e-12)


def test_expected_roc_auc_edge_cases():
    assert expected_roc_auc([0.0, 0.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert expected_roc_auc(np.full(50, 0.3)) == pytest.approx(0.5)  # one tied step
    assert math.isnan(expected_roc_auc([]))
    assert math.isnan(expected_roc_auc([0.0, 0.0]))  # no expected positive


def test_calibrator_recovers_the_true_probabilities_from_a_monotone_score():
    rng = np.random.default_rng(4)
    p = rng.beta(1.2, 8.0, size=40_000)
    y = (rng.random(len(p)) < p).astype(int)
    scores = np.sqrt(p) * 5 - 1  # a monotone distortion of the true probability
    cal = ProbabilityCalibrator(scores[:20_000], y[:20_000])
    fitted = cal.transform(scores[20_000:])
    assert np.mean(np.abs(fitted - p[20_000:])) < 0.02
    assert fitted.mean() == pytest.approx(y[20_000:].mean(), abs=0.01)
    grid = np.linspace(scores.min() - 1, scores.max() + 1, 200)
    mapped = cal.transform(grid)
    assert np.all(np.diff(mapped) >= 0) and mapped.min() >= 0 and mapped.max() <= 1


@pytest.mark.parametrize(
    ("scores", "labels"),
    [([0.1, 0.2, 0.3], [0, 0, 0]), ([0.1, 0.2], [0, 1, 1])],
    ids=["one class", "length mismatch"],
)
def test_calibrator_refuses_unusable_labels(scores, labels):
    with pytest.raises(ValueError, match="both classes"):
        ProbabilityCalibrator(scores, labels)


def test_estimate_before_labels_is_the_reference_moved_by_the_change_of_expected_auc():
    assert estimate_roc_auc(0.64, 0.66, 0.65) == pytest.approx(0.65)


def test_estimate_anchors_on_realised_level_when_labels_show_concept_drift():
    # Same case mix (expected AUC unchanged) but the labels show the model worse than its
    # reference: CBPE alone would say 0.66, the estimate follows the labels.
    recent = [LabelledBatch(0.60, 0.66, 2000), LabelledBatch(0.62, 0.66, 2000)]
    assert estimate_roc_auc(0.66, 0.66, 0.66, recent, shrinkage=0) == pytest.approx(0.61)
    # ... and still adds the change of case mix it can see since those batches.
    assert estimate_roc_auc(0.64, 0.66, 0.66, recent, shrinkage=0) == pytest.approx(0.59)
    # By default the reference counts as half a batch: the level moves most of the way.
    assert estimate_roc_auc(0.66, 0.66, 0.66, recent) == pytest.approx(
        (0.61 * 2 + 0.66 * 0.5) / 2.5
    )


def test_estimate_window_row_weights_and_unusable_batches():
    recent = [
        LabelledBatch(0.50, 0.60, 2000),  # outside a window of 2
        LabelledBatch(0.70, 0.60, 1000),
        LabelledBatch(float("nan"), 0.60, 2000),  # no usable realised AUC: skipped
        LabelledBatch(0.64, 0.60, 3000),
    ]
    want = (0.70 * 1000 + 0.64 * 3000) / 4000
    assert estimate_roc_auc(0.60, 0.9, 0.6, recent, window=2, shrinkage=0) == pytest.approx(want)
    all_three = (0.50 * 2000 + 0.70 * 1000 + 0.64 * 3000) / 6000
    assert estimate_roc_auc(0.60, 0.9, 0.6, recent, window=0, shrinkage=0) == pytest.approx(
        all_three
    )


def test_estimate_shrinkage_and_change_weight():
    recent = [LabelledBatch(0.60, 0.62, 2000), LabelledBatch(0.62, 0.62, 2000)]
    # Shrinkage 2: the reference counts as two batches of the recent mean size.
    level = (0.60 + 0.62 + 2 * 0.68) / 4
    base = (0.62 + 0.62 + 2 * 0.66) / 4
    got = estimate_roc_auc(0.65, 0.68, 0.66, recent, shrinkage=2.0)
    assert got == pytest.approx(level + (0.65 - base))
    assert estimate_roc_auc(0.65, 0.68, 0.66, recent, 12, 0.0, change_weight=0.0) == pytest.approx(
        0.61
    )
    assert estimate_roc_auc(0.65, 0.68, 0.66, recent, 12, 0.0, change_weight=0.5) == pytest.approx(
        0.61 + 0.5 * (0.65 - 0.62)
    )


def test_estimate_refuses_negative_settings():
    with pytest.raises(ValueError, match="window and shrinkage"):
        estimate_roc_auc(0.6, 0.6, 0.6, window=-1)
    with pytest.raises(ValueError, match="window and shrinkage"):
        estimate_roc_auc(0.6, 0.6, 0.6, shrinkage=-0.5)
