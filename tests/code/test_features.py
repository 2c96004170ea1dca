"""Feature rules: one implementation for training, monitoring and serving."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from healthpredict.data import synthetic
from healthpredict.data.schema import TARGET
from healthpredict.features import (
    MODEL_FEATURES,
    build_preprocessor,
    clean_data,
    diag_group,
    engineer_features,
    make_target,
    prepare_features,
)


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return synthetic.generate(1500, seed=1)


def test_diag_groups_follow_icd9_ranges():
    codes = pd.Series(["428", "250.83", "250", "V57", "E885", "8", "486", "996", "715", "599",
                       "174", "535", None, "787"])  # fmt: skip
    assert diag_group(codes).tolist() == [
        "circulatory", "diabetes", "diabetes", "external", "external", "other", "respiratory",
        "injury", "musculoskeletal", "genitourinary", "neoplasms", "digestive", "Missing",
        "digestive",
    ]  # fmt: skip


def test_engineer_features_with_and_without_target(raw):
    with_target = engineer_features(clean_data(raw))
    assert list(with_target.columns) == [*MODEL_FEATURES, TARGET]
    without = engineer_features(clean_data(raw.drop(columns=[TARGET])))
    assert list(without.columns) == list(MODEL_FEATURES)
    pd.testing.assert_frame_equal(with_target[list(MODEL_FEATURES)], without)
    assert len(without) == len(raw)  # never drops rows


def test_engineered_values(raw):
    row = raw.iloc[[0]].copy()
    row["age"] = "[70-80)"
    row[["number_outpatient", "number_emergency", "number_inpatient"]] = [1, 2, 3]
    row["insulin"], row["metformin"] = "Up", "Steady"
    feats = prepare_features(row)
    assert feats["age_ordinal"].iloc[0] == 7
    assert feats["prior_visits_total"].iloc[0] == 6
    assert feats["n_med_changes"].iloc[0] >= 1
    assert feats["n_meds_prescribed"].iloc[0] >= 2


def test_clean_data_fills_missing_categories(raw):
    frame = raw.copy()
    frame.loc[frame.index[0], "race"] = np.nan
    assert clean_data(frame)["race"].iloc[0] == "Missing"


def test_targets(raw):
    lt30 = make_target(raw, "<30")
    anyr = make_target(raw, "any")
    assert set(np.unique(lt30)) <= {0, 1} and (anyr >= lt30).all()
    with pytest.raises(ValueError, match="unknown target"):
        make_target(raw, "<60")
    with pytest.raises(ValueError, match="no 'readmitted'"):
        make_target(raw.drop(columns=[TARGET]), "<30")


def test_preprocessor_handles_unseen_categories(raw):
    pre = build_preprocessor().fit(raw.iloc[:1000])
    test = raw.iloc[1000:].copy()
    test["medical_specialty"] = "BrandNewSpecialty"
    out = pre.transform(test)
    assert out.shape[0] == len(test) and np.isfinite(out).all()
