"""Feature rules: one implementation for training, monitoring and serving."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from healthpredict.data import synthetic
from healthpredict.data.schema import TARGET, make_target
from healthpredict.modeling.features import (
    CODE_FEATURES,
    MODEL_FEATURES,
    PATIENT,
    PatientGroupedTargetEncoder,
    build_preprocessor,
    clean_data,
    diag_category,
    diag_group,
    engineer_features,
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
    pre = build_preprocessor().fit(raw.iloc[:1000], make_target(raw.iloc[:1000]))
    test = raw.iloc[1000:].copy()
    test["medical_specialty"] = "BrandNewSpecialty"
    out = pre.transform(test)
    assert out.shape[0] == len(test) and np.isfinite(out).all()


def test_diag_category_keeps_the_3_digit_icd9_category():
    codes = pd.Series(["250.83", "V57.1", "428", None, np.nan, "E888.9", " 41 ", ""], dtype=object)
    assert diag_category(codes).tolist() == [
        "250", "V57", "428", "Missing", "Missing", "E888", "41", "Missing",
    ]  # fmt: skip


def test_icd9_categories_are_target_encoded_with_cross_fitting(raw):
    fit, y = raw.iloc[:1000], make_target(raw.iloc[:1000])
    pre = build_preprocessor()
    cross_fitted = pre.fit_transform(fit, y)
    names = list(pre[-1].get_feature_names_out())
    cols = [names.index(c) for c in CODE_FEATURES]
    # Training rows get out-of-fold encodings; transform uses the encoding of all rows.
    assert not np.allclose(cross_fitted[:, cols], pre.transform(fit)[:, cols])
    encoder = pre[-1].named_transformers_["codes"]
    unseen = raw.iloc[1000:1001].assign(diag_1="Z99.9")
    assert pre.transform(unseen)[0, cols[0]] == pytest.approx(encoder.target_mean_)


def _code_column(pre) -> int:
    return list(pre[-1].get_feature_names_out()).index(CODE_FEATURES[0])


def test_icd9_cross_fitting_is_grouped_by_patient(raw):
    # Each patient has two encounters sharing a diagnosis code no other patient has, and one
    # outcome for both. Only the patient's other encounter knows the code's outcome: an
    # out-of-fold encoding that sees it (ungrouped folds) predicts the label; grouped, it can't.
    frame = raw.iloc[:1200].copy()
    patient = np.repeat(np.arange(600), 2)
    frame[PATIENT] = 10_000 + patient
    frame["diag_1"] = [f"P{p}" for p in patient]
    frame["readmitted"] = np.where(patient % 3 == 0, "<30", "NO")
    y = make_target(frame)
    pre = build_preprocessor()
    grouped = pre.fit_transform(frame, y)[:, _code_column(pre)]
    assert roc_auc_score(y, grouped) < 0.6
    # Without patient ids every row is its own patient: the leak the grouping removes.
    ungrouped_pre = build_preprocessor()
    ungrouped = ungrouped_pre.fit_transform(frame.drop(columns=[PATIENT]), y)
    assert roc_auc_score(y, ungrouped[:, _code_column(ungrouped_pre)]) > 0.8
    # Transform is the ordinary encoding fitted on all rows, whatever the folds were.
    np.testing.assert_array_equal(pre.transform(frame), ungrouped_pre.transform(frame))


def test_prepare_features_labels_rows_by_patient(raw):
    feats = prepare_features(raw)
    assert feats.index.name == PATIENT and list(feats.index) == list(raw[PATIENT])
    assert PATIENT not in feats.columns
    anonymous = prepare_features(raw.drop(columns=[PATIENT]))
    assert anonymous.index.equals(raw.index)


def test_grouped_encoder_refuses_routed_parameters(raw):
    codes = prepare_features(raw)[list(CODE_FEATURES)]
    with pytest.raises(TypeError, match="from X's index"):
        PatientGroupedTargetEncoder().fit_transform(codes, make_target(raw), groups=[1])
