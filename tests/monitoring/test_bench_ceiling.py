"""The ceiling benchmark's history features look only backwards; its keep rule (no model, no data)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_train_ceiling as bench  # noqa: E402

# Two patients, three encounters each, interleaved in time (encounter_id order).
STREAM = pd.DataFrame(
    {
        "encounter_id": [10, 20, 30, 40, 50, 60],
        "patient_nbr": [1, 2, 1, 2, 1, 2],
        "readmitted": ["NO", "<30", "<30", "NO", ">30", "<30"],
    }
)


def perturb_from(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """``frame`` (in encounter order) with every label from position ``k`` on changed and two
    later encounters of its patients appended: what happens at or after row ``k``."""
    out = frame.copy()
    flip = {"NO": "<30", "<30": ">30", ">30": "NO"}
    out.loc[out.index[k:], "readmitted"] = out["readmitted"].iloc[k:].map(flip)
    later = pd.DataFrame(
        {"encounter_id": [70, 80], "patient_nbr": [1, 2], "readmitted": ["<30", "<30"]},
        index=[100, 101],
    )
    return pd.concat([out, later])


def is_backwards_only(features) -> bool:
    """True when no row's features change with its own label or any later encounter."""
    full = pd.DataFrame(features(STREAM))
    for k in range(len(STREAM)):
        changed = pd.DataFrame(features(perturb_from(STREAM, k)))
        if not changed.loc[STREAM.index[: k + 1]].equals(full.loc[STREAM.index[: k + 1]]):
            return False
    return True


def test_history_counts_and_previous_label_come_from_earlier_encounters():
    got = bench.history_features(STREAM)
    assert got["earlier_encounters"].tolist() == [0, 0, 1, 1, 2, 2]
    # Patient 1: NO, <30, >30 -> the third follows a <30; patient 2: <30, NO, <30 -> the second.
    assert got["previous_readmitted_lt30"].tolist() == [0, 0, 0, 1, 1, 0]


def test_history_follows_encounter_order_not_row_order():
    shuffled = STREAM.sample(frac=1.0, random_state=3)
    got = bench.history_features(shuffled)
    assert got.index.equals(shuffled.index)
    assert got.sort_index().equals(bench.history_features(STREAM))


def test_a_later_encounter_never_changes_an_earlier_rows_history():
    assert is_backwards_only(bench.history_features)
    # The guard is not vacuous: the refused leak fails it.
    assert not is_backwards_only(bench.later_encounters)


def test_history_refuses_a_duplicated_index():
    with pytest.raises(ValueError, match="unique index"):
        bench.history_features(pd.concat([STREAM, STREAM]))


def test_keep_rule_is_mean_paired_gain_above_its_spread():
    table = pd.DataFrame(
        {
            "default": [0.66, 0.67, 0.68],
            "+earlier_encounters": [0.665, 0.675, 0.685],  # +0.005 every split: keep
            "lightgbm": [0.67, 0.66, 0.685],  # +0.0017 ± 0.0076: within its spread
            "+later_encounters_LEAK": [0.78, 0.79, 0.80],
            "initial_80%": [0.70, 0.70, 0.70],
            "initial_80%+history": [0.69, 0.70, 0.71],  # paired with initial_80%: 0 ± 0.01
        }
    )
    summary = bench.summarize(table)
    assert summary["+earlier_encounters"]["verdict"] == "keep"
    assert summary["+earlier_encounters"]["mean_gain"] == pytest.approx(0.005)
    assert summary["lightgbm"]["verdict"] == "within its spread"
    assert summary["+later_encounters_LEAK"]["verdict"].startswith("refused")
    assert summary["initial_80%+history"]["paired_with"] == "initial_80%"
    assert summary["initial_80%+history"]["mean_gain"] == pytest.approx(0.0)
    assert summary["initial_80%+history"]["verdict"] == "within its spread"
    assert "verdict" not in summary["default"]


def test_one_split_has_no_spread_so_no_verdict_and_no_nan_in_the_json():
    summary = bench.summarize(pd.DataFrame({"default": [0.66], "lightgbm": [0.67]}))
    assert summary["lightgbm"]["sd_gain"] is None
    assert summary["lightgbm"]["verdict"].startswith("undecided")
    assert "helps_beyond_spread" not in summary["lightgbm"]
    json.dumps(summary, allow_nan=False)  # raises on NaN
    assert "+0.0100 ± nan  vs default: undecided" in bench.table_lines(summary)[2]
