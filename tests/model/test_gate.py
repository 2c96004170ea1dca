"""The paired promotion gate, on cases with a known answer."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from healthpredict.modeling.gate import (
    NON_INFERIOR_MORE_DATA,
    NO_RULE,
    SUPERIOR,
    GateRule,
    paired_auc_difference,
    paired_gate,
)


def scored(n=3000, seed=0, signal=1.0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.12).astype(int)
    base = rng.normal(0, 1, n) + signal * y
    return y, base, rng.integers(0, n // 2, n)


def test_gain_matches_sklearn_with_ties_and_interval_contains_it():
    y, base, groups = scored()
    champion = np.round(base, 1)  # many ties
    challenger = base + np.random.default_rng(1).normal(0, 0.3, len(y))
    gain, low, high = paired_auc_difference(y, champion, challenger, groups=groups)
    assert gain == pytest.approx(roc_auc_score(y, challenger) - roc_auc_score(y, champion))
    assert low < gain < high


def test_the_same_model_is_never_promoted():
    y, base, groups = scored()
    verdict = paired_gate(
        y, base, base, groups=groups, champion_train_rows=100, challenger_train_rows=100
    )
    assert not verdict.promote and verdict.rule == NO_RULE
    assert verdict.gain == 0 and verdict.ci_low == 0 and verdict.ci_high == 0
    assert "within noise" in verdict.reason


def test_a_clearly_better_challenger_is_promoted_as_superior():
    y, base, groups = scored(signal=0.6)
    better = base + 0.8 * y  # more separation of the same rows
    verdict = paired_gate(y, base, better, groups=groups)
    assert verdict.promote and verdict.rule == SUPERIOR
    assert verdict.ci_low > 0 and verdict.decision == "PROMOTED"


def test_more_data_promotes_a_non_inferior_challenger_only_with_its_margin():
    y, base, groups = scored()
    noisy = base + np.random.default_rng(2).normal(0, 0.05, len(y))  # equal within noise
    more = paired_gate(
        y, base, noisy, groups=groups, champion_train_rows=1000, challenger_train_rows=4000
    )
    assert more.promote and more.rule == NON_INFERIOR_MORE_DATA
    same_data = paired_gate(
        y, base, noisy, groups=groups, champion_train_rows=1000, challenger_train_rows=1000
    )
    assert not same_data.promote
    strict = paired_gate(
        y, base, noisy, groups=groups, champion_train_rows=1000, challenger_train_rows=4000,
        rule=GateRule(non_inferiority_margin=None),
    )  # fmt: skip
    assert not strict.promote


def test_a_worse_challenger_with_more_data_is_rejected():
    y, base, groups = scored()
    worse = base + np.random.default_rng(3).normal(0, 1.5, len(y))
    verdict = paired_gate(
        y, base, worse, groups=groups, champion_train_rows=1, challenger_train_rows=9
    )
    assert not verdict.promote and verdict.ci_high < 0


def test_one_class_keeps_the_champion():
    y = np.zeros(200, dtype=int)
    y[:5] = 1
    verdict = paired_gate(y, np.linspace(0, 1, 200), np.linspace(1, 0, 200))
    assert not verdict.promote and math.isnan(verdict.ci_low)
    assert "fewer than ten" in verdict.reason


@pytest.mark.parametrize(
    "kwargs",
    [
        {"confidence": 1.0},
        {"non_inferiority_margin": -0.1},
        {"more_data_ratio": 0.5},
        {"n_resamples": 10},
    ],
)
def test_bad_rules_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        GateRule(**kwargs)


def test_the_verdict_is_reproducible_and_json_ready():
    y, base, groups = scored()
    other = base + np.random.default_rng(4).normal(0, 0.2, len(y))
    first = paired_gate(y, base, other, groups=groups).as_dict()
    assert first == paired_gate(y, base, other, groups=groups).as_dict()
    assert first["decision"] in ("PROMOTED", "REJECTED") and first["n_patients"] <= len(y)
