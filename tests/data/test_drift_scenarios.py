"""Data tests of the drift scenarios: ground truth moves the way each scenario promises."""

from __future__ import annotations

import zipfile

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from healthpredict.data.schema import AGE_BRACKETS, RawSchemaError, validate_raw
from healthpredict.data.synthetic import generate, risk_probability
from tests.support import drift_scenarios as ds

VALID = [name for name, s in ds.SCENARIOS.items() if s.kind != "schema"]
FAULTS = {
    "drop_column": "A1Cresult",
    "rename_column": "glyburide-metformin",
    "wrong_type": "num_medications",
    "new_category": "race",
}


@pytest.fixture(scope="module")
def batch() -> pd.DataFrame:
    return generate(3000, seed=11, start_encounter_id=700_000)


def _age(df: pd.DataFrame) -> float:
    return df["age"].map({a: i for i, a in enumerate(AGE_BRACKETS)}).mean()


def _rows(df: pd.DataFrame) -> set[tuple]:
    return set(df.drop(columns="encounter_id").itertuples(index=False, name=None))


def test_registry_is_complete_and_well_formed():
    assert set(VALID) == {
        "older_patients", "more_emergency", "more_prior_inpatient", "label_shift", "concept_drift"
    }  # fmt: skip
    assert {n for n, s in ds.SCENARIOS.items() if s.kind == "schema"} == set(FAULTS)
    for name, s in ds.SCENARIOS.items():
        assert s.name == name
        assert s.kind in {"covariate", "label", "concept", "schema"}
        assert len(s.strengths) == 2 and 0 < s.strengths[0] <= s.strengths[1]
        assert s.function.__doc__ and "strength" in s.function.__doc__


@pytest.mark.parametrize("name", VALID)
@pytest.mark.parametrize("level", [0, 1])
def test_valid_scenarios_keep_the_schema_and_leave_the_input_alone(batch, name, level):
    before = batch.copy(deep=True)
    strength = ds.SCENARIOS[name].strengths[level]
    out = ds.apply(name, batch, strength, seed=3)
    pd.testing.assert_frame_equal(batch, before)
    assert out is not batch
    validate_raw(out, require_target=True, source=name)
    assert len(out) == len(batch)
    ids = out["encounter_id"]
    assert ids.is_unique and ids.is_monotonic_increasing
    assert ids.iloc[0] == batch["encounter_id"].iloc[0]
    assert ids.iloc[-1] <= batch["encounter_id"].iloc[-1]
    assert out.attrs["drift_scenario"] == {
        "name": name,
        "kind": ds.SCENARIOS[name].kind,
        "strength": strength,
        "seed": 3,
    }
    assert out.attrs["data_source"] == "synthetic"


@pytest.mark.parametrize("name", VALID)
def test_strength_zero_changes_nothing(batch, name):
    pd.testing.assert_frame_equal(ds.apply(name, batch, 0.0), batch)


@pytest.mark.parametrize("name", VALID)
def test_scenarios_are_seeded(batch, name):
    pd.testing.assert_frame_equal(ds.apply(name, batch, seed=5), ds.apply(name, batch, seed=5))
    assert not ds.apply(name, batch, seed=5).equals(ds.apply(name, batch, seed=6))


@pytest.mark.parametrize("name", ["older_patients", "more_emergency", "more_prior_inpatient"])
def test_resampling_invents_no_rows(batch, name):
    out = ds.apply(name, batch, ds.SCENARIOS[name].strengths[1])
    assert _rows(out) <= _rows(batch)


@pytest.mark.parametrize(
    ("name", "statistic"),
    [
        ("older_patients", _age),
        ("more_emergency", lambda d: d["number_emergency"].mean()),
        ("more_emergency", lambda d: (d["admission_type_id"] == 1).mean()),
        ("more_emergency", lambda d: (d["admission_source_id"] == 7).mean()),
        ("more_prior_inpatient", lambda d: d["number_inpatient"].mean()),
    ],
)
def test_covariate_shift_moves_its_statistic_more_when_stronger(batch, name, statistic):
    moderate, strong = ds.SCENARIOS[name].strengths
    base = statistic(batch)
    at_zero = statistic(ds.apply(name, batch, 0.0))
    at_moderate = statistic(ds.apply(name, batch, moderate))
    at_strong = statistic(ds.apply(name, batch, strong))
    assert at_zero == base
    assert base < at_moderate < at_strong


def test_older_patients_leaves_unrelated_features_roughly_alone(batch):
    out = ds.apply("older_patients", batch, 1.0)
    assert _age(out) > _age(batch) + 0.5
    assert abs(out["num_lab_procedures"].mean() - batch["num_lab_procedures"].mean()) < 3


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_label_shift_raises_the_early_readmission_rate(batch, strength):
    out = ds.apply("label_shift", batch, strength)
    rate, new_rate = (batch["readmitted"] == "<30").mean(), (out["readmitted"] == "<30").mean()
    assert new_rate == pytest.approx(rate * (1 + strength), abs=0.002)
    # Prior shift: features given the class keep their distribution.
    early = out["readmitted"] == "<30"
    base_early = batch["readmitted"] == "<30"
    assert set(out.loc[early, "patient_nbr"]) <= set(batch.loc[base_early, "patient_nbr"])
    assert _rows(out) <= _rows(batch)


def test_label_shift_needs_early_readmissions(batch):
    none_early = batch[batch["readmitted"] != "<30"]
    with pytest.raises(ValueError, match="<30"):
        ds.apply("label_shift", none_early, 1.0)


def test_concept_drift_changes_labels_given_features_not_the_features(batch):
    truth = risk_probability(batch)
    y = batch["readmitted"] == "<30"
    aucs = {0.0: roc_auc_score(y, truth)}
    for strength in ds.SCENARIOS["concept_drift"].strengths:
        out = ds.apply("concept_drift", batch, strength, seed=1)
        features = out.drop(columns="readmitted")
        pd.testing.assert_frame_equal(features, batch.drop(columns="readmitted"))
        assert abs(_age(out) - _age(batch)) < 0.05
        assert abs(out["number_inpatient"].mean() - batch["number_inpatient"].mean()) < 0.05
        new_y = out["readmitted"] == "<30"
        assert abs(new_y.mean() - y.mean()) < 0.02
        aucs[strength] = roc_auc_score(new_y, truth)
        expired = out["discharge_disposition_id"].isin([11, 19, 20, 21])
        assert (out.loc[expired, "readmitted"] == "NO").all()
    assert aucs[0.0] > 0.7
    assert aucs[0.0] - aucs[0.5] > 0.1
    assert aucs[1.0] < 0.45


def test_concept_drift_flips_the_prior_visit_relation(batch):
    out = ds.apply("concept_drift", batch, 1.0)

    def early_rate(df, mask):
        return (df.loc[mask, "readmitted"] == "<30").mean()

    none, many = batch["number_inpatient"] == 0, batch["number_inpatient"] >= 2
    assert early_rate(batch, none) < early_rate(batch, many)
    assert early_rate(out, none) > early_rate(out, many)


def test_concept_drift_rejects_a_share_above_one(batch):
    with pytest.raises(ValueError, match="strength"):
        ds.apply("concept_drift", batch, 1.5)


@pytest.mark.parametrize(("name", "column"), sorted(FAULTS.items()))
def test_schema_faults_fail_validation_naming_the_column(batch, name, column):
    before = batch.copy(deep=True)
    out = ds.apply(name, batch, seed=2)
    pd.testing.assert_frame_equal(batch, before)
    with pytest.raises(RawSchemaError) as err:
        validate_raw(out, require_target=True)
    assert column in str(err.value)
    validate_raw(batch, require_target=True)


def test_schema_fault_details(batch):
    assert "glyburide_metformin" in ds.apply("rename_column", batch).columns
    assert "A1Cresult" not in ds.apply("drop_column", batch).columns
    words = ds.apply("wrong_type", batch, 0.1)["num_medications"]
    is_word = words.map(lambda v: isinstance(v, str))
    assert is_word.sum() == 300 and words[is_word].str.fullmatch(r"[a-z\- ]+").all()
    assert (ds.apply("new_category", batch, 0.1)["race"] == "Martian").sum() == 300


def test_apply_uses_the_moderate_strength_and_names_unknown_scenarios(batch):
    default = ds.apply("older_patients", batch)
    assert (
        default.attrs["drift_scenario"]["strength"] == ds.SCENARIOS["older_patients"].strengths[0]
    )
    with pytest.raises(KeyError, match="older_patients"):
        ds.apply("no_such_scenario", batch)
    with pytest.raises(ValueError, match="strength"):
        ds.apply("older_patients", batch, -1.0)


@pytest.mark.realdata
def test_scenarios_work_on_a_real_batch(real_zip):
    with zipfile.ZipFile(real_zip) as z:
        real = pd.read_csv(
            z.open("dataset_diabetes/diabetic_data.csv"),
            keep_default_na=False,
            na_values=["?"],
            nrows=25_000,
            low_memory=False,
        )
    real_batch = real.sort_values("encounter_id").iloc[20_000:23_000]
    for name in VALID:
        out = ds.apply(name, real_batch, ds.SCENARIOS[name].strengths[1], seed=4)
        validate_raw(out, require_target=True, source=f"real+{name}")
        assert out["encounter_id"].is_unique and out["encounter_id"].is_monotonic_increasing
    for name, column in FAULTS.items():
        with pytest.raises(RawSchemaError, match=column):
            validate_raw(ds.apply(name, real_batch), require_target=True)
    assert np.isfinite(risk_probability(real_batch)).all()
