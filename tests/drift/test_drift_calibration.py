"""Vectorised drift scores (against scipy and Evidently) and the calibration of thresholds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial import distance
from sklearn.metrics import roc_auc_score

from healthpredict.core import constants
from healthpredict.monitoring import calibration, decision, reports, statistics
from healthpredict.monitoring.nulls import ModelReference, calibrate

METHODS = {"x": "wasserstein", "k": "wasserstein", "c": "jensenshannon", "d": "jensenshannon"}


def _frame(n: int, rng: np.random.Generator, shift: float = 0.0) -> pd.DataFrame:
    """Two numeric columns (continuous, small counts) and two categorical ones."""
    return pd.DataFrame(
        {
            "x": rng.normal(shift, 1.0, n),
            "k": rng.poisson(0.4 + shift, n).astype(float),
            "c": rng.choice(["a", "b", "c", "rare"], n, p=[0.5, 0.3, 0.19, 0.01]),
            "d": rng.choice(["yes", "no"], n, p=[0.8, 0.2]),
        }
    )


def test_distances_match_scipy():
    rng = np.random.default_rng(0)
    ref, cur = _frame(3000, rng), _frame(700, rng, shift=0.2)
    for col in ("x", "k"):
        expected = stats.wasserstein_distance(ref[col], cur[col]) / np.std(ref[col])
        assert statistics.column_distance(ref[col], cur[col], "wasserstein") == pytest.approx(
            expected
        )
    keys = sorted(set(ref["c"]) | set(cur["c"]))
    p = ref["c"].value_counts().reindex(keys, fill_value=0).to_numpy()
    q = cur["c"].value_counts().reindex(keys, fill_value=0).to_numpy()
    assert statistics.column_distance(ref["c"], cur["c"], "jensenshannon") == pytest.approx(
        distance.jensenshannon(p / p.sum(), q / q.sum())
    )
    # A category only the batch has, missing values dropped, a constant reference (std floor).
    assert statistics.column_distance(["a", "a", None], ["a", "new"], "jensenshannon") > 0.4
    assert statistics.column_distance(
        [2.0] * 50, [2.0] * 10 + [3.0], "wasserstein"
    ) == pytest.approx((1 / 11) / 0.001)
    assert np.isnan(statistics.column_distance([], [1.0], "wasserstein"))
    with pytest.raises(ValueError, match="unknown drift method"):
        statistics.column_distance([1], [1], "psi")


def test_fast_scores_match_evidently_report():
    from healthpredict.data import synthetic
    from healthpredict.modeling.features import clean_data, engineer_features
    from tests.support import drift_scenarios

    raw = synthetic.generate(3000, seed=3)
    ref = engineer_features(clean_data(raw.iloc[:2400]))
    cur = engineer_features(
        clean_data(drift_scenarios.apply("older_patients", raw.iloc[2400:].reset_index(drop=True)))
    )
    thresholds = calibration.Thresholds(
        {c: 0.05 + i / 1000 for i, c in enumerate(statistics.DRIFT_COLUMNS)},
        0.1, 4, 0.1, None, 0.05, 0.025, {}, {},
    )  # fmt: skip
    snapshot, table = reports.data_drift_report(ref, cur, thresholds)
    table = table.set_index("column")
    fast = statistics.column_scores(ref, cur)
    assert len(table) == len(statistics.DRIFT_COLUMNS) == 33
    assert np.allclose(table["score"], fast[table.index], rtol=1e-9, atol=1e-12)
    # Evidently received the per-column thresholds: they are what its metrics report.
    assert table["threshold"].to_dict() == pytest.approx(thresholds.per_column)
    assert set(table["method"]) == {"wasserstein", "jensenshannon"}
    count = snapshot.dict()["metrics"][0]["value"]["count"]
    assert count == table["drifted"].sum() and "age_ordinal" in table.index[table["drifted"]]


def test_null_scores_equal_scores_of_explicit_splits():
    rng = np.random.default_rng(1)
    ref = _frame(900, rng)
    idx = statistics.null_indices(len(ref), 200, 5, seed=4)
    for col, method in METHODS.items():
        vectorised = statistics.null_column_scores(ref[col], method, idx)
        for b in range(5):
            rest = np.setdiff1d(np.arange(len(ref)), idx[b])
            one = statistics.column_distance(ref[col].iloc[rest], ref[col].iloc[idx[b]], method)
            assert vectorised[b] == pytest.approx(one, rel=1e-9)
    proba = np.round(rng.random(900), 3)  # ties on purpose
    label = (rng.random(900) < proba).astype(int)
    scores, drops = statistics.null_prediction_scores(proba, label, idx)
    for b in range(5):
        rest = np.setdiff1d(np.arange(900), idx[b])
        assert scores[b] == pytest.approx(
            statistics.column_distance(proba[rest], proba[idx[b]], "wasserstein")
        )
        expected = roc_auc_score(label[rest], proba[rest]) - roc_auc_score(
            label[idx[b]], proba[idx[b]]
        )
        assert drops[b] == pytest.approx(expected)


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
def test_upper_cut_keeps_the_rate_even_for_discrete_scores(alpha):
    rng = np.random.default_rng(2)
    for null in (rng.random(1000), rng.integers(0, 4, 1000).astype(float), np.zeros(500)):
        cut = statistics.upper_cut(null, alpha)
        assert np.mean(null >= cut) <= alpha
        assert not np.any(np.isclose(null, cut))  # never on an attainable value
    assert statistics.upper_cut(np.array([np.nan]), 0.05) == np.inf


def _calibration(n_ref=4000, batch=400, seed=0):
    rng = np.random.default_rng(seed)
    ref = _frame(n_ref, rng)
    proba = rng.beta(1, 8, 1500)
    label = (rng.random(1500) < proba).astype(int)
    cal = calibrate(
        ref, ModelReference(proba, label), batch, n_null=400, columns=list(METHODS), methods=METHODS
    )
    return cal, ref, proba, label


def test_thresholds_split_the_false_alarm_budget():
    cal, *_ = _calibration()
    assert cal.feature_null.shape[1] == 4 and cal.performance_null.shape == cal.estimated_null.shape
    assert cal.feature_noise_null.shape == (400, 4)
    # Labelled held-out rows give the estimated-performance signal: 3 signals without labels...
    plain = cal.thresholds(0.06)
    assert plain.alpha == pytest.approx(0.02) and plain.performance_tolerance is None
    assert plain.min_drifted_columns == 1 and plain.share_threshold == pytest.approx(0.25)
    assert set(plain.expected_false_alarm) == {
        "data_drift", "prediction_drift", "estimated_performance"
    }  # fmt: skip
    assert all(v <= 0.02 for v in plain.expected_false_alarm.values())
    assert plain.estimated_tolerance >= plain.floors["estimated_performance"] > 0
    # ... and 4 with them; the budget still holds in total.
    labelled = cal.thresholds(0.06, labelled=True)
    assert labelled.alpha == pytest.approx(0.015) and labelled.performance_tolerance > 0
    assert labelled.performance_tolerance >= labelled.floors["performance"] > 0
    assert labelled.expected_false_alarm_rate <= 0.06
    # A stricter budget gives higher thresholds; a larger share gives lower per-column ones.
    strict = cal.thresholds(0.01)
    assert all(strict.per_column[c] >= plain.per_column[c] for c in METHODS)
    half = cal.thresholds(0.06, share_threshold=0.5)
    assert half.min_drifted_columns == 2 and half.share_threshold == 0.5
    assert all(half.per_column[c] < plain.per_column[c] for c in METHODS)
    fixed = cal.thresholds(0.06, labelled=True, prediction_drift_threshold=1.0,
                           performance_tolerance=0.5, estimated_tolerance=0.25)  # fmt: skip
    assert fixed.prediction_drift_threshold == 1.0 and fixed.performance_tolerance == 0.5
    assert fixed.estimated_tolerance == 0.25 and fixed.calibrated["estimated_tolerance"] is False
    assert fixed.calibrated["prediction_drift_threshold"] is False
    with pytest.raises(ValueError, match="false_alarm_rate"):
        cal.thresholds(0.0)
    with pytest.raises(ValueError, match="n_null"):
        calibrate(_frame(100, np.random.default_rng(0)), ModelReference(np.ones(10)), 10, n_null=50,
                        columns=list(METHODS), methods=METHODS)  # fmt: skip


def test_calibration_round_trips_through_bytes():
    cal, *_ = _calibration(n_ref=1000, batch=100)
    back = calibration.Calibration.from_bytes(cal.to_bytes())
    assert back.from_cache and not cal.from_cache
    assert np.array_equal(back.feature_null, cal.feature_null) and back.columns == cal.columns
    assert np.array_equal(back.estimated_null, cal.estimated_null)
    assert np.array_equal(back.feature_noise_null, cal.feature_noise_null)
    assert back.batch_size == 100 and back.meta["n_null"] == 400
    assert back.thresholds(0.05).to_dict() == cal.thresholds(0.05).to_dict()


def test_false_alarms_on_independent_batches_stay_near_the_target():
    """Independent no-drift batches (not drawn from the reference) alarm at about the target."""
    cal, ref, proba, _ = _calibration(n_ref=4000, batch=400, seed=5)
    th = cal.thresholds(0.10)
    rng = np.random.default_rng(11)
    alarms, detections = [], []
    for _ in range(300):
        scores = statistics.column_scores(ref, _frame(400, rng), list(METHODS), METHODS)
        new_proba = rng.beta(1, 8, 400)
        pred = statistics.column_distance(proba, new_proba, "wasserstein")
        share = np.mean([scores[c] >= th.per_column[c] for c in METHODS])
        alarms.append(decision.decide(share, th.share_threshold, pred >= th.prediction_drift_threshold,
                                   None, None)[0])  # fmt: skip
    for _ in range(50):
        scores = statistics.column_scores(ref, _frame(400, rng, shift=0.3), list(METHODS), METHODS)
        share = np.mean([scores[c] >= th.per_column[c] for c in METHODS])
        detections.append(decision.decide(share, th.share_threshold, False, None, None)[0])
    false_alarm = np.mean(np.array(alarms) == constants.DRIFT_DETECTED)
    assert false_alarm <= 0.16  # target 10%; 300 batches give a standard error of ~1.7%
    assert np.mean(np.array(detections) == constants.DRIFT_DETECTED) >= 0.95


def test_subsample_scale_for_small_references():
    assert statistics.subsample(10_000, 2000) == (2000, pytest.approx(np.sqrt(0.0006 / 0.000625)))
    m, scale = statistics.subsample(3000, 2000)
    assert m == 1500 and scale == pytest.approx(np.sqrt((1 / 2000 + 1 / 3000) / (2 / 1500)))
    with pytest.raises(ValueError, match="at least 4"):
        statistics.subsample(3, 2)


def test_grouped_null_batches_hold_out_whole_patients():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(300), rng.integers(1, 6, 300))
    idx = statistics.null_indices(len(groups), 100, 50, seed=1, groups=groups)
    assert idx.shape == (50, 100)
    for row in idx:
        assert len(set(row)) == 100  # no row twice
        patients, counts = np.unique(groups[row], return_counts=True)
        complete = counts == np.bincount(groups)[patients]
        assert complete.sum() >= len(patients) - 1  # at most the last patient is cut
    # Different batches differ; the same seed repeats them.
    assert len({tuple(sorted(r)) for r in idx}) == 50
    assert np.array_equal(idx, statistics.null_indices(len(groups), 100, 50, seed=1, groups=groups))


def test_tails_are_capped_at_reference_quantiles():
    ref = pd.DataFrame({"k": np.r_[np.zeros(990), np.arange(10) + 20.0], "c": ["a"] * 1000})
    caps = statistics.tail_caps(ref, {"k": "wasserstein", "c": "jensenshannon"}, quantile=0.005)
    assert set(caps) == {"k"} and caps["k"][0] == 0.0 and 20 <= caps["k"][1] < 29
    capped = statistics.cap_tails(pd.DataFrame({"k": [-5.0, 3.0, 100.0], "c": "a"}), caps)
    assert capped["k"].tolist() == [0.0, 3.0, caps["k"][1]] and capped["c"].tolist() == ["a"] * 3
    # One extreme patient moves the capped distance far less than the raw one.
    batch = pd.Series(np.r_[np.zeros(497), [60.0] * 3])
    raw_d = statistics.column_distance(ref["k"], batch, "wasserstein")
    capped_d = statistics.column_distance(
        statistics.cap_tails(ref, caps)["k"], batch.clip(*caps["k"]), "wasserstein"
    )
    assert capped_d < raw_d / 2
