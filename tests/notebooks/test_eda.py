"""EDA tables (healthpredict.data.eda) and the 01_eda notebook on small synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from healthpredict.core import layout
from healthpredict.data import eda


def test_missingness_counts_nan_and_markers():
    df = pd.DataFrame({"a": [1, None, 3, 4], "b": ["x", "?", "Missing", "y"], "c": [1, 2, 3, 4]})
    table = eda.missingness(df)
    assert list(table.index) == ["b", "a"]
    assert table.loc["b", "n_missing"] == 2 and table.loc["a", "share"] == 0.25


def test_rate_by_group_with_wilson_interval():
    groups = pd.Series(["A"] * 10 + ["B"] * 4 + ["C"], name="g")
    y = [1] * 3 + [0] * 7 + [1] * 4 + [0]
    table = eda.rate_by_group(groups, y, min_count=2)
    assert list(table.index) == ["A", "B"] and table.index.name == "g"
    assert table.loc["A", "rate"] == pytest.approx(0.3)
    assert table.loc["B", "rate"] == 1.0
    assert table.loc["A", "n"] == 10 and table.loc["A", "share"] == pytest.approx(10 / 15)
    assert 0 < table.loc["A", "ci_low"] < 0.3 < table.loc["A", "ci_high"] < 1
    assert table.loc["B", "ci_high"] == pytest.approx(1.0) and table.loc["B", "ci_low"] < 1
    with pytest.raises(ValueError, match="rows"):
        eda.rate_by_group(groups, y[:3])


def test_chronological_bins_follow_encounter_order():
    n = 100
    df = pd.DataFrame(
        {
            "encounter_id": np.arange(n)[::-1] * 10,  # reversed on purpose
            "time_in_hospital": np.arange(n)[::-1],
            "A1Cresult": ["None"] * 50 + [">8"] * 50,
        }
    )
    y = (np.arange(n)[::-1] >= 50).astype(int)  # late encounters are readmitted
    bins = eda.chronological_bins(df, y, n_bins=4, means=("time_in_hospital",))
    assert list(bins.index) == [1, 2, 3, 4] and bins["n"].tolist() == [25] * 4
    assert bins["first_id"].tolist() == [0, 250, 500, 750]
    assert bins["rate"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert bins["mean time_in_hospital"].iloc[0] == pytest.approx(12.0)
    assert bins["A1C tested"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert "insulin prescribed" not in bins.columns  # absent column: no share
    with pytest.raises(ValueError, match="no rows"):
        eda.chronological_bins(df.iloc[:0], [], n_bins=3)


def test_target_correlations_and_banner():
    x = pd.DataFrame({"up": [1.0, 2, 3, 4], "down": [4.0, 3, 2, 1], "flat": [1.0] * 4})
    corr = eda.target_correlations(x, [0, 0, 1, 1])
    assert set(corr.index) == {"up", "down"} and corr["up"] > 0 > corr["down"]
    source, banner = eda.data_source_banner({"data_source": "synthetic", "banner": "SYNTH!"})
    assert source == "synthetic" and "SYNTH!" in banner
    source, banner = eda.data_source_banner({"data_source": "real", "source": "uci.zip"})
    assert source == "real" and "uci.zip" in banner
    labels = eda.admission_type_labels(pd.Series(["1", "3", "99"]))
    assert labels.tolist() == ["Emergency", "Elective", "99"]


@pytest.mark.slow
def test_eda_notebook_runs_on_synthetic_data(hp_env):
    from healthpredict.data.split import prepare
    from healthpredict.runs import run

    data_dir = layout.processed_data()
    manifest = prepare("synthetic", out_dir=data_dir, n_synthetic=2500)
    result = run("01_eda", {"data_dir": data_dir}, progress=False)

    rows = manifest["splits"]["initial_train"]["rows"]
    assert result.scraps["data_source"] == "synthetic"
    assert result.scraps["n_rows"] == rows
    assert 0 < result.scraps["target_rate"] < 1
    prov = json.loads(Path(result.run_json).read_text())
    assert set(prov["inputs"]["data_dir"]) >= {"<storage>/processed_data/initial_train.csv"}
    assert prov["notebook_relpath"] == "notebooks/01_eda.py"
    page = Path(result.html).read_text()
    assert "SYNTHETIC DATA" in page
    assert page.count("data:image/png;base64") >= 5  # the plots are embedded
    assert "Chronological view" in page
