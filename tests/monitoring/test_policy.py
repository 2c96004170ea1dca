"""The retraining decision: which signal fires, when, and what it says."""

from __future__ import annotations

import math

import pytest

from healthpredict.monitoring.policy import (
    DATA_DRIFT,
    DATA_GROWTH,
    ESTIMATED,
    REALISED,
    PolicySettings,
    Signals,
    retrain_decision,
)

CALM = Signals(
    realised_drop=0.01,
    realised_tolerance=0.04,
    estimated_drop=0.01,
    estimated_tolerance=0.05,
    new_labelled_rows=1_000,
    champion_train_rows=14_000,
)


def _with(**changes) -> Signals:
    return Signals(**{**CALM.__dict__, **changes})


def test_calm_batch_keeps_the_champion():
    decision = retrain_decision(CALM)
    assert not decision.retrain and decision.triggers == [] and decision.reasons == []


def test_realised_drop_beyond_its_band_retrains_with_the_numbers():
    decision = retrain_decision(_with(realised_drop=0.06))
    assert decision.retrain and decision.triggers == [REALISED]
    assert "0.060" in decision.reasons[0] and "0.040" in decision.reasons[0]


def test_a_drop_equal_to_the_band_is_noise():
    assert not retrain_decision(_with(realised_drop=0.04)).retrain


def test_estimated_drop_fires_only_when_allowed():
    signals = _with(estimated_drop=0.08)
    assert retrain_decision(signals).triggers == [ESTIMATED]
    assert not retrain_decision(signals, PolicySettings(use_estimated=False)).retrain


@pytest.mark.parametrize("drop", [None, math.nan])
def test_missing_or_undefined_drops_never_fire(drop):
    signals = _with(realised_drop=drop, estimated_drop=drop)
    assert not retrain_decision(signals).retrain
    assert not retrain_decision(_with(realised_drop=0.5, realised_tolerance=math.nan)).retrain


def test_growth_fires_at_its_share_of_the_champions_rows():
    share = PolicySettings().growth_trigger
    threshold = math.ceil(share * 14_000)
    assert not retrain_decision(_with(new_labelled_rows=threshold - 1)).retrain
    decision = retrain_decision(_with(new_labelled_rows=threshold))
    assert decision.triggers == [DATA_GROWTH]
    assert "14000 training rows" in decision.reasons[0]


def test_growth_needs_known_champion_rows_and_can_be_off():
    assert not retrain_decision(_with(new_labelled_rows=10**6, champion_train_rows=None)).retrain
    off = PolicySettings(growth_trigger=None)
    assert not retrain_decision(_with(new_labelled_rows=10**6), off).retrain


def test_data_drift_alone_is_reported_not_acted_on_by_default():
    assert not retrain_decision(_with(data_drift=True)).retrain
    decision = retrain_decision(_with(data_drift=True), PolicySettings(use_data_drift=True))
    assert decision.triggers == [DATA_DRIFT]


def test_every_trigger_gets_its_own_reason_in_a_fixed_order():
    decision = retrain_decision(
        _with(realised_drop=0.1, estimated_drop=0.1, new_labelled_rows=50_000, data_drift=True),
        PolicySettings(use_data_drift=True),
    )
    assert decision.triggers == [REALISED, ESTIMATED, DATA_GROWTH, DATA_DRIFT]
    assert len(decision.reasons) == 4
