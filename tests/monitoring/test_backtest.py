"""Smoke test of the prequential backtest's core (benchmarks/bench_loop.py) on a small stream."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from bench_loop import PRODUCT, Stream, gate_study, run_backtest, tables  # noqa: E402

from healthpredict.data import synthetic  # noqa: E402
from healthpredict.data.split import SplitParams, split_frame  # noqa: E402
from healthpredict.modeling.gate import GateRule  # noqa: E402
from healthpredict.monitoring.policy import PolicySettings  # noqa: E402

# A small, fast configuration: the test checks the replay, not the model.
SMALL_HGB = {"learning_rate": 0.2, "max_iter": 15, "max_leaf_nodes": 8, "min_samples_leaf": 40}
BATCH = 500


@pytest.fixture(scope="module")
def parts():
    raw = synthetic.generate(6_000, seed=3)
    return split_frame(raw, SplitParams(initial_fraction=0.45, seed=1))


@pytest.fixture(scope="module")
def result(parts):
    stream = Stream.from_parts(parts, BATCH)
    return stream, run_backtest(
        stream,
        label_delay=1,
        settings=PolicySettings(growth_trigger=0.3),
        rule=GateRule(n_resamples=200),
        stride=100,
        window_rows=2_000,
        every=(1, 3),
        params=SMALL_HGB,
        log=lambda _: None,
    )


def test_every_policy_scores_every_batch_and_schedules_hold(result):
    stream, res = result
    n = stream.n_batches
    assert set(res["policies"]) == {"frozen", "every_1", "every_3", "window_2k", PRODUCT}
    for p in res["policies"].values():
        assert len(p["batch_roc_auc"]) == n
        assert 0.0 < p["brier"] < 0.25 and 0.5 < p["pooled_roc_auc"] <= 1
    assert res["policies"]["frozen"]["retrains"] == 0
    # Labels of batch t arrive at step t + 1; the last step retrains nothing (nothing to serve).
    assert res["policies"]["every_1"]["retrain_batches"] == list(range(1, n - 1))
    assert res["policies"]["every_3"]["retrain_batches"] == [
        t for t in range(1, n - 1) if t % 3 == 0
    ]


def test_product_decisions_come_from_the_policy_and_the_gate(result):
    stream, res = result
    events = res["product_events"]
    assert [e["batch"] for e in events] == list(range(1, stream.n_batches - 1))
    retrained = [e for e in events if e["retrain"]]
    assert retrained, "growth trigger 0.3 must fire on this stream"
    for e in retrained:
        assert e["triggers"] and "gate" in e
        g = e["gate"]
        assert g["ci_low"] <= g["gain"] <= g["ci_high"]
        # The gate rows are labelled rows the champion never learned from.
        assert g["n_rows"] <= e["signals"]["new_labelled_rows"]
    product = res["policies"][PRODUCT]
    assert product["retrains"] == len(retrained)
    assert product["promotions"] == sum(e["gate"]["promote"] for e in retrained)
    assert "| product |" in tables(res)


def test_label_delay_zero_uses_the_batch_just_scored(parts):
    stream = Stream.from_parts(parts, BATCH)
    res = run_backtest(  # a window holding every row is every_1's model: no extra fits
        stream, label_delay=0, every=(1,), window_rows=10**6, params=SMALL_HGB, stride=200,
        log=lambda _: None,
    )  # fmt: skip
    assert res["policies"]["every_1"]["retrain_batches"] == list(range(stream.n_batches - 1))
    assert [e["labelled_batch"] for e in res["product_events"]] == list(range(stream.n_batches - 1))


def test_gate_study_reports_both_goals(parts):
    stream = Stream.from_parts(parts, BATCH)
    large = split_frame(synthetic.generate(5_000, seed=4), SplitParams(initial_fraction=0.8))
    out = gate_study(
        parts, large, stream, n_seeds=3, rule=GateRule(n_resamples=200), chunk=BATCH,
        params=SMALL_HGB, log=lambda _: None,
    )  # fmt: skip
    assert out["seed_only"]["pairs"] == 3
    assert 0 <= out["seed_only"]["promotion_rate"] <= 1
    four = out["four_times_data"]
    assert four["challenger_train_rows"] > 3 * four["champion_train_rows"]
    assert np.isfinite(four["whole_test"]["gain"])
