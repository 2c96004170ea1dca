import math

import pytest

from healthpredict.modeling.gate import gate_decision


def metrics(test, holdout):
    return {"test_roc_auc": test, "holdout_roc_auc": holdout, "test_pr_auc": 0.2}


def test_better_everywhere_is_promoted():
    promote, reason = gate_decision(metrics(0.70, 0.72), metrics(0.68, 0.69), 0.01)
    assert promote
    assert "better on the new holdout" in reason


def test_not_better_on_holdout_is_rejected_even_if_better_on_test():
    promote, reason = gate_decision(metrics(0.80, 0.69), metrics(0.68, 0.69), 0.01)
    assert not promote
    assert "not better on the new holdout" in reason


def test_small_test_drop_within_tolerance_is_promoted():
    promote, _ = gate_decision(metrics(0.675, 0.72), metrics(0.68, 0.69), 0.01)
    assert promote


def test_test_drop_beyond_tolerance_is_rejected():
    promote, reason = gate_decision(metrics(0.65, 0.75), metrics(0.68, 0.69), 0.01)
    assert not promote
    assert "tolerance" in reason and "0.0300" in reason


def test_zero_tolerance_allows_equal_test_auc():
    assert gate_decision(metrics(0.68, 0.70), metrics(0.68, 0.69), 0.0)[0]


def test_undefined_auc_is_rejected():
    promote, reason = gate_decision(metrics(0.7, math.nan), metrics(0.68, 0.69), 0.01)
    assert not promote
    assert "undefined" in reason


def test_missing_metric_names_the_key():
    with pytest.raises(KeyError, match="holdout_roc_auc"):
        gate_decision({"test_roc_auc": 0.7}, metrics(0.68, 0.69), 0.01)


@pytest.mark.parametrize("tolerance", [-0.01, math.inf, math.nan])
def test_bad_tolerance(tolerance):
    with pytest.raises(ValueError, match="tolerance"):
        gate_decision(metrics(0.7, 0.7), metrics(0.6, 0.6), tolerance)
