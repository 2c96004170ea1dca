"""Time-ordered null windows, the performance tolerances and their floors, and effect sizes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from healthpredict.monitoring import calibration, estimation, statistics, windows
from healthpredict.monitoring.nulls import ModelReference, calibrate

METHODS = {"x": "wasserstein", "disp": "jensenshannon"}


def test_windows_are_time_ordered_and_consecutive():
    rng = np.random.default_rng(0)
    key = rng.permutation(1000) * 7  # encounter ids, rows shuffled
    consecutive = windows.time_ordered_windows(key, 100, 40)
    assert consecutive.shape == ((1000 - 100) // 40 + 1, 100)
    rank = np.argsort(np.argsort(key))  # position of each row in time
    for i, w in enumerate(consecutive):
        assert np.array_equal(rank[w], np.arange(i * 40, i * 40 + 100))  # consecutive, in order
    disjoint = windows.time_ordered_windows(key, 250)
    assert disjoint.shape == (4, 250) and len(np.unique(disjoint)) == 1000
    # null_windows: at most max_windows, overlapping only when needed, every row covered.
    few = windows.null_windows(key, 300, 50)
    assert len(few) <= 50 and len(np.unique(few)) == 1000
    # The stride never exceeds the batch: many rows give more (disjoint) windows, no gaps.
    assert np.array_equal(windows.null_windows(key, 100, 5), windows.time_ordered_windows(key, 100))
    with pytest.raises(ValueError, match="cannot make a time-ordered batch"):
        windows.time_ordered_windows(key[:50], 100)
    with pytest.raises(ValueError, match="positive"):
        windows.time_ordered_windows(key, 100, 0)


def test_window_scores_against_an_external_reference_match_one_by_one():
    rng = np.random.default_rng(1)
    ref = pd.DataFrame(
        {"x": rng.poisson(2, 3000).astype(float), "disp": rng.choice(list("abc"), 3000)}
    )
    held = pd.DataFrame(
        {"x": rng.poisson(2.2, 800).astype(float), "disp": rng.choice(list("abd"), 800)}
    )
    idx = windows.time_ordered_windows(np.arange(800), 200, 150)
    for col, method in METHODS.items():
        fast = windows.external_window_scores(ref[col], held[col], method, idx)
        slow = [statistics.column_distance(ref[col], held[col].iloc[w], method) for w in idx]
        assert fast == pytest.approx(slow, rel=1e-9)


def _period(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """A reference period whose coding changes: disposition "25" is 30% of the first tenth only."""
    t = np.sort(rng.random(n))
    early = t < 0.1
    disp = np.where(
        early & (rng.random(n) < 0.3), "25", rng.choice(["1", "3", "6"], n, p=[0.6, 0.25, 0.15])
    )
    return pd.DataFrame({"x": rng.normal(0, 1, n), "disp": disp, "t": t})


def test_coding_change_inside_the_period_is_not_a_false_alarm_after_calibration():
    rng = np.random.default_rng(2)
    reference, held, fresh = _period(12_000, rng), _period(6000, rng), _period(3000, rng)
    proba = rng.beta(2, 10, len(held))
    label = (rng.random(len(held)) < proba).astype(int)
    model_ref = ModelReference(proba, label, order=held["t"].to_numpy(), features=held)
    cal = calibrate(reference, model_ref, 1000, n_null=300, columns=list(METHODS), methods=METHODS)
    assert cal.meta["window_source"] == "held_out" and cal.meta["windows"]["features"] <= 300
    th = cal.thresholds(0.05)
    # Fresh patients of the same period, in time order: the first window holds the old coding.
    in_time = windows.time_ordered_windows(fresh["t"], 1000, 100)
    disp_scores = windows.external_window_scores(
        reference["disp"], fresh["disp"], "jensenshannon", in_time
    )
    assert np.mean(disp_scores >= th.per_column["disp"]) <= 0.05
    # The same reference calibrated on random batches alone (sampling noise, no time order)
    # flags the early windows: that was every real batch's false alarm.
    noise_only = calibration.Calibration(
        1000, list(METHODS), cal.feature_noise_null, cal.prediction_null, None
    )
    noise_th = noise_only.thresholds(0.05)
    assert disp_scores[0] >= noise_th.per_column["disp"]
    assert th.per_column["disp"] > noise_th.per_column["disp"]


def test_hanley_mcneil_standard_error_known_values():
    # AUC 0.5: Q1 = 1/3, Q2 = 1/3, so var = (1/4 + (n1 - 1 + n0 - 1) / 12) / (n1 n0).
    assert windows.hanley_mcneil_se(0.5, 100, 900) == pytest.approx(
        math.sqrt((0.25 + 998 / 12) / 90_000)
    )
    assert math.isnan(windows.hanley_mcneil_se(0.7, 0, 100))
    # Close to the spread of real AUCs of simulated batches (binormal scores).
    rng = np.random.default_rng(3)
    aucs = []
    for _ in range(400):
        y = (rng.random(2000) < 0.11).astype(int)
        aucs.append(roc_auc_score(y, rng.normal(0.55 * y, 1.0)))
    se = windows.hanley_mcneil_se(float(np.mean(aucs)), 2000 * 0.11, 2000 * 0.89)
    assert se == pytest.approx(np.std(aucs), rel=0.15)


def test_expected_auc_drops_and_their_standard_error():
    rng = np.random.default_rng(4)
    proba = np.round(rng.beta(1, 8, 3000), 3)  # ties on purpose
    idx = windows.time_ordered_windows(np.arange(3000), 500, 500)
    drops = windows.null_expected_auc_drops(proba, idx)
    for b, w in enumerate(idx):
        rest = np.setdiff1d(np.arange(3000), w)
        expected = estimation.expected_roc_auc(proba[rest]) - estimation.expected_roc_auc(proba[w])
        assert drops[b] == pytest.approx(expected, abs=1e-12)
    # The delta-method variance gives the spread of the expected AUC of random batches.
    var = windows.expected_auc_influence_variance(proba)
    sims = [estimation.expected_roc_auc(rng.choice(proba, 500)) for _ in range(600)]
    assert math.sqrt(var / 500) == pytest.approx(np.std(sims), rel=0.15)


def test_estimated_tolerance_exists_and_respects_its_floor():
    rng = np.random.default_rng(5)
    held = _period(4000, rng)
    proba = rng.beta(2, 12, 4000)
    label = (rng.random(4000) < proba).astype(int)
    model_ref = ModelReference(proba, label, order=held["t"].to_numpy(), features=held)
    for batch in (200, 1000):
        cal = calibrate(
            _period(8000, rng), model_ref, batch, n_null=200, columns=list(METHODS), methods=METHODS
        )
        th = cal.thresholds(0.05, labelled=True)
        floors = cal.floors(th.alpha)
        assert th.floors == floors
        assert th.estimated_tolerance >= floors["estimated_performance"] > 0
        assert th.performance_tolerance >= floors["performance"] > 0
        z = 2.241402727604947  # z of 1 - 0.05 / 4
        calibrated = model_ref.calibrator().transform(proba)
        assert floors["estimated_performance"] == pytest.approx(
            z
            * math.sqrt(
                windows.expected_auc_influence_variance(calibrated) * (1 / batch + 1 / 4000)
            )
        )
    # Smaller batches are noisier: wider bands.
    small = calibrate(held, model_ref, 200, n_null=200, columns=list(METHODS), methods=METHODS)
    large = calibrate(held, model_ref, 1000, n_null=200, columns=list(METHODS), methods=METHODS)
    assert small.thresholds(0.05).estimated_tolerance > large.thresholds(0.05).estimated_tolerance
    # Without labels there is no estimated signal (nothing to calibrate the probabilities on).
    unlabelled = calibrate(held, ModelReference(proba, order=held["t"].to_numpy(), features=held),
                                       500, n_null=200, columns=list(METHODS), methods=METHODS)  # fmt: skip
    assert unlabelled.thresholds(0.05).estimated_tolerance is None


def test_effect_sizes_say_what_moved():
    ref = pd.DataFrame(
        {"disp": ["25"] * 286 + ["1"] * 714, "x": np.r_[np.zeros(500), np.full(500, 2.0)]}
    )
    cur = pd.DataFrame({"disp": ["1"] * 900 + ["3"] * 100, "x": np.full(1000, 2.0)})
    table = statistics.effect_sizes(ref, cur, ["disp", "x"], METHODS)
    assert table.loc["disp", "effect"] == "disp=25: 28.6% -> 0.0%"
    assert table.loc["disp", "effect_size"] == pytest.approx(-0.286)
    # Mean 1 -> 2 with a reference SD of 1: +1 SD.
    assert table.loc["x", "effect"] == "mean 1 -> 2 (+1.00 SD)"
    assert table.loc["x", "effect_size"] == pytest.approx(1.0)
    empty = statistics.effect_sizes(
        ref, pd.DataFrame({"disp": [None], "x": [np.nan]}), ["disp", "x"], METHODS
    )
    assert empty["effect"].tolist() == ["no values", "no values"]


def test_prepared_reference_windows_held_out_patients(drift_env):
    """The production path: held-out rows' features in encounter order, calibrator, estimate."""
    from healthpredict.monitoring.evidence import gather_evidence, score_batch
    from healthpredict.monitoring.reference import default_model_reference, prepare_reference

    reference = str(drift_env.data_dir / "initial_train.csv")
    prepared = prepare_reference(
        reference, default_model_reference(reference), drift_env.pipeline, drift_env.info, 300,
        n_null=200, cache_root=str(drift_env.tmp / "windows-cache"),
    )  # fmt: skip
    meta = prepared.calibration.meta
    assert meta["window_source"] == "held_out" and meta["ordered_by"] == "order key"
    assert meta["version"] == calibration.CALIBRATION_VERSION
    assert prepared.calibrator is not None and 0.5 < prepared.reference_expected_roc_auc < 1
    assert "encounter_id" in prepared.model_reference  # the windows' time order
    batch = score_batch(drift_env.clean_batch, drift_env.pipeline, drift_env.info, prepared)
    th = prepared.calibration.thresholds(0.05, labelled=batch.labelled)
    # The prediction-drift cut holds on the windows and on sampling noise alone (many draws).
    noise = prepared.calibration.prediction_noise_null
    assert noise is not None and len(noise) == 200
    assert th.prediction_drift_threshold >= statistics.upper_cut(noise, th.alpha)
    assert th.prediction_drift_threshold >= statistics.upper_cut(
        prepared.calibration.prediction_null, th.alpha
    )
    evidence = gather_evidence(prepared, batch, th)
    assert evidence.estimated_drop == pytest.approx(
        prepared.reference_expected_roc_auc
        - estimation.expected_roc_auc(prepared.calibrator.transform(batch.proba))
    )
    assert {"effect", "effect_size"} <= set(evidence.drift_table.columns)
    assert evidence.drift_table["effect"].str.len().gt(0).all()
