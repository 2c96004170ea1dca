"""The compiled inference path gives the logged pipeline's probabilities (to 1e-9).

Real rows (the zip committed under data/uci) and synthetic rows; single records, small
and large batches (both sides of the tree scorers' size switch); all three families; unseen
and infrequent categories (a model trained on synthetic data scoring real rows, min_frequency)
and missing values in every nullable field.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import Pipeline

from healthpredict.data.schema import COLUMNS, make_target
from healthpredict.data.synthetic import generate
from healthpredict.modeling import features
from healthpredict.modeling.features import build_preprocessor
from healthpredict.modeling.models import make_pipeline
from healthpredict.modeling.runtime import encoder
from healthpredict.modeling.runtime.predictor import Predictor, compile_pipeline
from healthpredict.modeling.runtime.records import records_from_frame
from healthpredict.modeling.runtime.scorers import SMALL_BATCH

TOL = 1e-9
FAMILIES = {
    "logreg": {"C": 0.3, "class_weight": "balanced"},
    # Unbounded depth and tiny leaves: deep, ragged trees for the lock-step walk.
    "rf": {"n_estimators": 25, "max_depth": None, "min_samples_leaf": 1, "max_features": "sqrt"},
    "hgb": {"max_iter": 40, "max_leaf_nodes": 31, "learning_rate": 0.2},
}


def _xy(frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    return frame.drop(columns=["readmitted"]), make_target(frame)


@pytest.fixture(scope="module")
def synthetic() -> dict[str, pd.DataFrame]:
    return {"train": generate(2500, seed=11), "score": generate(400, seed=12)}


@pytest.fixture(scope="module")
def real(real_zip) -> dict[str, pd.DataFrame]:
    from healthpredict.data.uci import load_uci

    frame = load_uci(real_zip).frame
    sample = frame.sample(4000, random_state=3)
    return {"train": sample.iloc[:3000], "score": sample.iloc[3000:]}


@pytest.fixture(scope="module")
def synthetic_models(synthetic) -> dict[str, Pipeline]:
    X, y = _xy(synthetic["train"])
    return {fam: make_pipeline(fam, params).fit(X, y) for fam, params in FAMILIES.items()}


def _edge_frame(base: pd.DataFrame) -> pd.DataFrame:
    """Rows with every nullable field missing, unseen categories and odd-but-valid codes."""
    edge = base.head(6).copy().reset_index(drop=True)
    nullable = [c.name for c in COLUMNS.values() if c.nullable]
    edge.loc[0, nullable] = None
    edge.loc[1, ["medical_specialty", "payer_code", "diag_1"]] = ["Never-Seen", "ZZ", "V57.1"]
    edge.loc[2, ["diag_1", "diag_2", "diag_3"]] = ["250.83", "E888.9", "0.5"]
    edge.loc[3, ["admission_source_id", "discharge_disposition_id"]] = [26, 30]
    edge.loc[4, ["weight", "race", "gender"]] = [">200", None, "Unknown/Invalid"]
    edge.loc[5, ["glyburide-metformin", "metformin-pioglitazone", "insulin"]] = [
        "Up",
        "Down",
        "Down",
    ]
    return edge


def assert_identical(pipe: Pipeline, frame: pd.DataFrame) -> Predictor:
    """Compiled and pipeline probabilities agree for one record, small and large batches."""
    predictor = compile_pipeline(pipe)
    assert predictor.path == "fast", predictor.reason
    X = frame.drop(columns=["readmitted"], errors="ignore").reset_index(drop=True)
    expected = pipe.predict_proba(X)[:, 1]
    records = records_from_frame(X)
    batch = predictor.predict_proba(records)
    assert batch.shape == expected.shape
    np.testing.assert_allclose(batch, expected, rtol=0, atol=TOL)
    small = predictor.predict_proba(records[:SMALL_BATCH])
    np.testing.assert_allclose(small, expected[:SMALL_BATCH], rtol=0, atol=TOL)
    singles = np.array([predictor.predict_proba([r])[0] for r in records[:40]])
    np.testing.assert_allclose(singles, expected[:40], rtol=0, atol=TOL)
    return predictor


@pytest.mark.parametrize("family", FAMILIES)
def test_synthetic_rows_identical(family, synthetic, synthetic_models):
    frame = pd.concat([_edge_frame(synthetic["score"]), synthetic["score"]], ignore_index=True)
    predictor = assert_identical(synthetic_models[family], frame)
    assert predictor.estimator in ("logistic_regression", "random_forest", "hist_gradient_boosting")


@pytest.mark.realdata
@pytest.mark.parametrize("family", FAMILIES)
def test_real_rows_identical(family, real):
    X, y = _xy(real["train"])
    pipe = make_pipeline(family, FAMILIES[family]).fit(X, y)
    assert_identical(
        pipe, pd.concat([_edge_frame(real["score"]), real["score"]], ignore_index=True)
    )


@pytest.mark.realdata
@pytest.mark.parametrize("family", FAMILIES)
def test_unseen_categories_of_real_rows(family, real, synthetic_models):
    """A model that never saw most real specialties, payers and codes scores real rows."""
    unseen = set(real["score"]["medical_specialty"].dropna()) - set(
        generate(2500, seed=11)["medical_specialty"].dropna()
    )
    assert unseen, "the real rows should hold specialties the synthetic training never had"
    assert_identical(synthetic_models[family], real["score"])


def test_infrequent_categories_pooled(synthetic):
    """min_frequency pools rare categories; the compiled lookup sends them to that column."""
    X, y = _xy(synthetic["train"])
    pipe = Pipeline(
        [
            ("preprocess", build_preprocessor(min_frequency=400)),
            ("model", make_pipeline("logreg", {}).steps[-1][1]),
        ]
    ).fit(X, y)
    encoder = pipe.named_steps["preprocess"].named_steps["encode"].named_transformers_["cat"]
    assert any(inf is not None and len(inf) for inf in encoder.infrequent_categories_)
    assert_identical(pipe, synthetic["score"])


def test_unknown_estimator_keeps_fast_encoder(synthetic):
    X, y = _xy(synthetic["train"])
    pipe = Pipeline([("preprocess", build_preprocessor()), ("model", GaussianNB())]).fit(X, y)
    predictor = compile_pipeline(pipe)
    assert predictor.path == "fast-encoder"
    assert "GaussianNB" in predictor.reason
    expected = pipe.predict_proba(synthetic["score"].drop(columns=["readmitted"]))[:, 1]
    got = predictor.predict_proba(records_from_frame(synthetic["score"]))
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)


def test_unknown_preprocessing_falls_back_to_pipeline(synthetic):
    from sklearn.preprocessing import FunctionTransformer

    X, y = _xy(synthetic["train"])
    pipe = make_pipeline("logreg", {})
    # A different feature function: the compiled encoder must not pretend to know it.
    pipe.steps[0][1].steps[0] = (
        "features",
        FunctionTransformer(lambda df: features.prepare_features(df)),
    )
    pipe.fit(X, y)
    predictor = compile_pipeline(pipe)
    assert predictor.path == "pipeline"
    assert "prepare_features" in predictor.reason
    got = predictor.predict_proba(records_from_frame(synthetic["score"]))
    np.testing.assert_allclose(
        got, pipe.predict_proba(synthetic["score"].drop(columns=["readmitted"]))[:, 1]
    )


def test_self_check_rejects_a_divergent_compilation(synthetic_models, monkeypatch):
    """If the compiled encoder drifted from features.py, the self-check picks the pipeline."""
    monkeypatch.setitem(encoder._AGE_INDEX, "[70-80)", 0.0)
    predictor = compile_pipeline(synthetic_models["logreg"])
    assert predictor.path == "pipeline"
    assert predictor.reason.startswith("self-check failed")


def test_icd9_target_encoding_is_compiled(synthetic_models):
    from healthpredict.modeling.features import CODE_FEATURES

    for pipe in synthetic_models.values():
        predictor = compile_pipeline(pipe)
        assert [e.name for e in predictor.encoder.encoded] == list(CODE_FEATURES)


def test_pipeline_without_the_icd9_encoding_compiles(synthetic):
    """Models registered before the ICD-9 categories existed had no ``codes`` transformer."""
    X, y = _xy(synthetic["train"])
    pipe = make_pipeline("hgb", FAMILIES["hgb"]).set_params(preprocess__encode__codes="drop")
    predictor = assert_identical(pipe.fit(X, y), synthetic["score"])
    assert predictor.encoder.encoded == ()


@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
@pytest.mark.parametrize("family", FAMILIES)
def test_calibrated_models_identical(family, method, synthetic, synthetic_models):
    """The calibrated model that is logged and served compiles to the same risks."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    pipe = synthetic_models[family]
    cal_frame = generate(800, seed=13)
    X_cal, y_cal = _xy(cal_frame)
    calibrated = CalibratedClassifierCV(FrozenEstimator(pipe.steps[-1][1]), method=method)
    calibrated.fit(pipe.steps[0][1].transform(X_cal), y_cal)
    model = Pipeline([pipe.steps[0], ("model", calibrated)])
    frame = pd.concat([_edge_frame(synthetic["score"]), synthetic["score"]], ignore_index=True)
    predictor = assert_identical(model, frame)
    assert predictor.estimator.endswith(f"+{method}")
    # The map changes the risks: the test would catch a scorer that skipped it.
    raw = pipe.predict_proba(frame.drop(columns=["readmitted"]))[:, 1]
    assert (
        np.max(np.abs(raw - model.predict_proba(frame.drop(columns=["readmitted"]))[:, 1])) > 1e-3
    )
