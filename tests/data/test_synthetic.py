"""Data tests of the synthetic generator: exact raw schema, realism and the known risk model."""

from __future__ import annotations

import zipfile

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from healthpredict.data.schema import (
    AGE_BRACKETS,
    EXCLUDED_DISPOSITIONS,
    ICD9_PATTERN,
    MEDICATIONS,
    RAW_COLUMNS,
    coerce_raw,
    validate_raw,
)
from healthpredict.data.synthetic import SYNTHETIC_MARKER, generate, risk_probability

EXPIRED = sorted(EXCLUDED_DISPOSITIONS - {13, 14})


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate(20_000, seed=7)


def test_passes_validate_raw_with_columns_in_schema_order(frame):
    validate_raw(frame, require_target=True, source="synthetic")
    assert list(frame.columns) == [c.name for c in RAW_COLUMNS]
    assert frame.attrs["data_source"] == SYNTHETIC_MARKER == "synthetic"


def test_types_are_those_of_the_loader(frame):
    # coerce_raw is the canonical dtype step; a synthetic frame must already be in that form.
    pd.testing.assert_frame_equal(coerce_raw(frame), frame)
    for col in RAW_COLUMNS:
        s = frame[col.name]
        if col.kind in ("id", "int"):
            assert s.dtype == np.int64, col.name
        else:
            assert s.dtype == object, col.name
            assert {type(v) for v in s} <= {str, type(None)}, col.name
    assert (frame["max_glu_serum"] == "None").mean() > 0.9
    assert (frame["A1Cresult"] == "None").mean() > 0.75


def test_same_seed_same_frame_other_seed_other_frame():
    pd.testing.assert_frame_equal(generate(500, seed=3), generate(500, seed=3))
    assert not generate(500, seed=3).equals(generate(500, seed=4))


def test_encounter_ids_are_unique_increasing_and_start_where_asked():
    df = generate(2000, seed=1, start_encounter_id=5_000_000)
    ids = df["encounter_id"]
    assert ids.iloc[0] == 5_000_000
    assert ids.is_unique
    assert (ids.diff().iloc[1:] > 0).all()


def test_patients_have_several_encounters_with_stable_demographics(frame):
    visits = frame["patient_nbr"].map(frame["patient_nbr"].value_counts())
    assert 0.2 < (visits > 1).mean() < 0.45
    per_patient = frame.groupby("patient_nbr")[["gender", "age"]].nunique()
    assert (per_patient <= 1).all().all()
    # Later visits of a patient count the earlier ones as prior inpatient stays.
    repeat = frame.groupby("patient_nbr").cumcount() > 0
    assert frame.loc[repeat, "number_inpatient"].mean() > frame["number_inpatient"].mean()


def test_target_rates_are_close_to_the_real_file(frame):
    rates = frame["readmitted"].value_counts(normalize=True)
    assert 0.09 < rates["<30"] < 0.14
    assert 0.30 < rates[">30"] < 0.40
    assert 0.48 < rates["NO"] < 0.60
    expired = frame["discharge_disposition_id"].isin(EXPIRED)
    assert expired.any()
    assert (frame.loc[expired, "readmitted"] == "NO").all()


def test_missing_values_only_where_the_schema_allows(frame):
    nullable = {c.name for c in RAW_COLUMNS if c.nullable}
    missing = frame.isna().mean()
    assert set(missing[missing > 0].index) <= nullable
    assert 0.95 < missing["weight"] < 0.99
    assert 0.3 < missing["payer_code"] < 0.5
    assert 0.4 < missing["medical_specialty"] < 0.6
    assert 0.005 < missing["race"] < 0.05
    assert missing["diag_1"] < missing["diag_3"] < 0.03


def test_marginals_are_realistic(frame):
    share = {c: frame[c].value_counts(normalize=True) for c in frame.columns}
    assert share["age"][list(AGE_BRACKETS[5:9])].sum() > 0.7
    assert abs(share["admission_type_id"][1] - 0.53) < 0.03
    assert abs(share["discharge_disposition_id"][1] - 0.59) < 0.03
    assert abs(share["admission_source_id"][7] - 0.56) < 0.03
    assert 0.01 < share["discharge_disposition_id"][sorted(EXCLUDED_DISPOSITIONS)].sum() < 0.06
    stay = frame["time_in_hospital"]
    assert stay.between(1, 14).all() and stay.median() <= 4 and stay.max() == 14
    assert abs(frame["num_lab_procedures"].mean() - 43) < 3
    assert frame["num_lab_procedures"].between(1, 132).all()
    assert abs(frame["num_medications"].mean() - 16) < 2
    inpatient = frame["number_inpatient"]
    assert 0.5 < (inpatient == 0).mean() < 0.75 and inpatient.max() >= 8
    assert (frame["number_emergency"] == 0).mean() > 0.8
    for med in MEDICATIONS:
        assert share[med].get("No", 0) > 0.45, med
    changed = frame[list(MEDICATIONS)].isin(["Up", "Down"]).any(axis=1)
    assert (frame.loc[changed, "change"] == "Ch").all()
    assert ((frame[list(MEDICATIONS)] != "No").any(axis=1) == (frame["diabetesMed"] == "Yes")).all()


def test_icd9_codes_come_in_the_real_spellings(frame):
    codes = pd.concat([frame["diag_1"], frame["diag_2"], frame["diag_3"]]).dropna()
    assert codes.str.match(ICD9_PATTERN).all()
    for form in (r"^\d{3}$", r"^250\.\d{1,2}$", r"^V\d{2}$", r"^E\d{3}$", r"^\d{1,2}$"):
        assert codes.str.match(form).any(), form
    assert frame["diag_1"].value_counts().index[0] in {"428", "414"}


def test_risk_probability_is_a_probability_and_matches_the_labels(frame):
    p = risk_probability(frame)
    assert p.shape == (len(frame),)
    expired = frame["discharge_disposition_id"].isin(EXPIRED).to_numpy()
    assert ((p[~expired] > 0) & (p[~expired] < 1)).all()
    assert (p[expired] == 0).all()
    assert abs(p.mean() - (frame["readmitted"] == "<30").mean()) < 0.01
    assert roc_auc_score(frame["readmitted"] == "<30", p) > 0.7


def test_risk_probability_accepts_missing_values(frame):
    df = frame.head(50).copy()
    df.loc[:5, ["diag_1", "race"]] = np.nan
    assert np.isfinite(risk_probability(df)).all()


def _signal(df: pd.DataFrame) -> pd.DataFrame:
    diag = pd.to_numeric(df["diag_1"], errors="coerce")
    return pd.DataFrame(
        {
            "number_inpatient": df["number_inpatient"],
            "number_emergency": df["number_emergency"],
            "time_in_hospital": df["time_in_hospital"],
            "age": df["age"].map({a: i for i, a in enumerate(AGE_BRACKETS)}),
            "discharge": df["discharge_disposition_id"],
            "circulatory": diag.between(390, 459.99).astype(int),
            "diabetes": df["diag_1"].fillna("").str.startswith("250").astype(int),
            "insulin_changed": df["insulin"].isin(["Up", "Down"]).astype(int),
            "a1c_measured": (df["A1Cresult"] != "None").astype(int),
        }
    )


def test_a_model_learns_a_meaningful_but_imperfect_signal():
    df = generate(8000)
    x, y = _signal(df), (df["readmitted"] == "<30").astype(int)
    model = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.05, random_state=0)
    model.fit(x.iloc[:5000], y.iloc[:5000])
    auc = roc_auc_score(y.iloc[5000:], model.predict_proba(x.iloc[5000:])[:, 1])
    assert 0.62 < auc < 0.9


def test_100k_rows():
    # Its speed is not asserted here: a timed test fails on a loaded machine, not on slow code.
    df = generate(100_000, seed=2)
    assert len(df) == 100_000 and df["encounter_id"].is_unique


@pytest.mark.parametrize("bad", [0, -3])
def test_rejects_an_empty_request(bad):
    with pytest.raises(ValueError, match="n_rows"):
        generate(bad)


@pytest.mark.realdata
def test_marginals_are_close_to_the_real_file(real_zip, frame):
    with zipfile.ZipFile(real_zip) as z:
        real = pd.read_csv(
            z.open("dataset_diabetes/diabetic_data.csv"),
            keep_default_na=False,
            na_values=["?"],
            low_memory=False,
        )
    for col in ("race", "gender", "age", "admission_type_id", "discharge_disposition_id",
                "admission_source_id", "time_in_hospital", "A1Cresult", "insulin",
                "readmitted"):  # fmt: skip
        a = real[col].value_counts(normalize=True, dropna=False)
        b = frame[col].value_counts(normalize=True, dropna=False)
        a.index, b.index = a.index.map(str), b.index.map(str)
        total_variation = a.sub(b, fill_value=0).abs().sum() / 2
        assert total_variation < 0.05, col
