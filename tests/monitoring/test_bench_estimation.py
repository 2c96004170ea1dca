"""The estimation benchmark's own arithmetic on a hand-made stream (no model, no real data)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_estimation as bench  # noqa: E402


def _stream(n_batches: int = 6, rows: int = 400, second_model_at: int | None = 3) -> bench.Stream:
    rng = np.random.default_rng(0)
    p = [np.round(rng.beta(1.2, 8.0, rows), 2) for _ in range(n_batches)]
    y = [(rng.random(rows) < pi).astype(int) for pi in p]
    ref_p = np.round(rng.beta(1.2, 8.0, 2 * rows), 2)
    ref_y = (rng.random(len(ref_p)) < ref_p).astype(int)
    segments = [bench.Segment("initial", 0, 1000, ref_y, ref_p)]
    owner = [0] * n_batches
    if second_model_at is not None:
        segments.append(bench.Segment("retrain", second_model_at, 2000, ref_y[:rows], ref_p[:rows]))
        owner[second_model_at:] = [1] * (n_batches - second_model_at)
    return bench.Stream("test", segments, owner, y, p)


def test_estimates_respect_the_label_delay_and_reset_at_a_retraining():
    stream = _stream()
    realised, expected = bench.realised_and_expected(stream)
    est = bench.label_free_estimates(stream, realised, expected, delay=2)
    ref0, ref1 = stream.segments[0].reference_roc_auc, stream.segments[1].reference_roc_auc
    # Batches 0-1: no labels yet (delay 2); batch 2: batch 0's labels.
    assert est["previous_batch"][:3].tolist() == pytest.approx([ref0, ref0, realised[0]])
    # Batch 3 is the new model's first, batch 4 has none of its labels yet, batch 5 has batch 3's.
    assert est["previous_batch"][3:].tolist() == pytest.approx([ref1, ref1, realised[3]])
    assert est["constant_reference"].tolist() == pytest.approx([ref0] * 3 + [ref1] * 3)
    assert est["cbpe"].tolist() == pytest.approx(expected.tolist())
    assert est["ours"][4] == pytest.approx(
        ref1 + expected[4] - stream.segments[1].reference_expected
    )


def test_batch_spread_is_the_bootstrap_sd_of_sklearn_auc():
    stream = _stream(n_batches=1, rows=1500, second_model_at=None)
    patients = [np.arange(1500) // 2]  # two encounters per patient move together
    sd = bench.batch_auc_spread(stream, patients, n_boot=300, seed=1)
    # Reference: the same patient bootstrap through sklearn.
    rng = np.random.default_rng(2)
    y, p = stream.y[0], stream.p[0]
    aucs = []
    for _ in range(300):
        picked = rng.integers(0, 750, 750)
        rows = (2 * picked[:, None] + np.array([0, 1])).ravel()
        aucs.append(roc_auc_score(y[rows], p[rows]))
    assert sd == pytest.approx(np.std(aucs, ddof=1), rel=0.2)


def test_scores_mae_and_bias_and_missing_estimators():
    realised = np.array([0.60, 0.62, 0.64])
    out = bench.scores(realised, {"a": np.array([0.61, 0.60, 0.64]), "b": None}, np.arange(1, 3))
    assert out["a"] == {"mae": 0.01, "bias": -0.01}
    assert out["b"] is None


def test_nannyml_missing_is_reported_with_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "NANNYML_PYTHON", tmp_path / ".venv-nannyml" / "bin" / "python")
    values, status = bench.nannyml_estimates(_stream(), batch_size=400)
    assert values is None
    assert status.startswith("missing") and "make nannyml-venv" in status
