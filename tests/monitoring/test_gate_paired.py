"""The paired gate: an interval over patients, promotion only beyond noise or by its stated rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from healthpredict.core.constants import PROMOTED, REJECTED
from healthpredict.modeling.gate import (
    NO_RULE,
    NON_INFERIOR_MORE_DATA,
    SUPERIOR,
    GateRule,
    paired_auc_difference,
    paired_gate,
)


def _cohort(n: int = 3_000, seed: int = 0):
    """Labels from a known risk, a sharp score (the risk) and a blurred one (risk + noise)."""
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(risk - 2)))).astype(int)
    return y, risk, risk + rng.normal(scale=1.5, size=n), rng


def test_gain_is_the_plain_auc_difference():
    y, sharp, blurred, _ = _cohort()
    gain, low, high = paired_auc_difference(y, blurred, sharp, n_resamples=200)
    assert gain == pytest.approx(roc_auc_score(y, sharp) - roc_auc_score(y, blurred), abs=1e-12)
    assert low < gain < high


def test_clearly_better_challenger_is_promoted_as_superior():
    y, sharp, blurred, _ = _cohort()
    verdict = paired_gate(y, blurred, sharp, rule=GateRule(n_resamples=300))
    assert verdict.promote and verdict.rule == SUPERIOR and verdict.ci_low > 0
    assert verdict.decision == PROMOTED and verdict.as_dict()["decision"] == PROMOTED


def test_an_identical_challenger_is_not_promoted():
    y, sharp, _, _ = _cohort()
    verdict = paired_gate(y, sharp, sharp.copy(), rule=GateRule(n_resamples=200))
    assert not verdict.promote and verdict.gain == 0 and verdict.decision == REJECTED


def test_a_slightly_noisier_challenger_is_promoted_only_with_more_data():
    y, sharp, _, rng = _cohort(n=6_000)
    challenger = sharp + rng.normal(scale=0.05, size=len(y))  # within noise of the champion
    rule = GateRule(n_resamples=300, non_inferiority_margin=0.02)
    same = paired_gate(
        y, sharp, challenger, champion_train_rows=10, challenger_train_rows=10, rule=rule
    )
    more = paired_gate(
        y, sharp, challenger, champion_train_rows=10, challenger_train_rows=40, rule=rule
    )
    assert not same.promote and same.rule == NO_RULE and "within noise" in same.reason
    assert more.promote and more.rule == NON_INFERIOR_MORE_DATA and more.ci_low > -0.02


def test_patients_are_the_resampling_unit():
    y, sharp, blurred, _ = _cohort(n=600)
    # Each patient seen five times: resampling rows would pretend 3,000 independent encounters.
    rep = np.repeat(np.arange(600), 5)
    by_row = paired_auc_difference(y[rep], blurred[rep], sharp[rep], n_resamples=400)
    by_patient = paired_auc_difference(
        y[rep], blurred[rep], sharp[rep], groups=rep, n_resamples=400
    )
    assert (by_patient[2] - by_patient[1]) > 1.8 * (by_row[2] - by_row[1])


def test_the_verdict_is_reproducible_and_the_seed_matters():
    y, sharp, blurred, _ = _cohort()
    first = paired_gate(y, blurred, sharp, rule=GateRule(n_resamples=200, seed=1))
    again = paired_gate(y, blurred, sharp, rule=GateRule(n_resamples=200, seed=1))
    other = paired_gate(y, blurred, sharp, rule=GateRule(n_resamples=200, seed=2))
    assert first == again and first.ci_low != other.ci_low


def test_too_few_positives_keeps_the_champion():
    y = np.zeros(500, dtype=int)
    y[:5] = 1
    scores = np.linspace(0, 1, 500)
    verdict = paired_gate(y, scores, scores[::-1].copy(), rule=GateRule(n_resamples=100))
    assert not verdict.promote and verdict.rule == NO_RULE and math.isnan(verdict.ci_low)
    assert "fewer than ten" in verdict.reason


def test_lengths_must_match():
    with pytest.raises(ValueError, match="lengths differ"):
        paired_auc_difference([0, 1, 1], [0.1, 0.2, 0.3], [0.1, 0.2])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"confidence": 1.0}, "confidence"),
        ({"non_inferiority_margin": -0.01}, "non_inferiority_margin"),
        ({"more_data_ratio": 0.9}, "more_data_ratio"),
        ({"n_resamples": 10}, "n_resamples"),
    ],
)
def test_bad_rules_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GateRule(**kwargs)


def test_gain_matches_sklearn_with_tied_scores():
    y, sharp, blurred, _ = _cohort()
    champion = np.round(sharp, 1)  # many ties
    gain, low, high = paired_auc_difference(y, champion, blurred)
    assert gain == pytest.approx(roc_auc_score(y, blurred) - roc_auc_score(y, champion))
    assert low < gain < high


def test_a_clearly_worse_challenger_with_more_data_is_rejected():
    y, sharp, blurred, _ = _cohort()
    verdict = paired_gate(y, sharp, blurred, champion_train_rows=1, challenger_train_rows=9)
    assert not verdict.promote and verdict.rule == NO_RULE and verdict.ci_high < 0
