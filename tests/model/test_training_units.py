import numpy as np
import pytest

from healthpredict.modeling import evaluation, models, studies


def test_trial_params_round_trip():
    params = {"C": 0.1, "class_weight": None}
    trial_params = models.trial_params_for("logreg", params)
    assert trial_params == {"family": "logreg", "logreg__C": 0.1, "logreg__class_weight": None}
    assert models.split_trial_params(trial_params) == ("logreg", params)


def test_unknown_family_is_named():
    with pytest.raises(ValueError, match="xgb"):
        models.make_pipeline("xgb", {})


@pytest.mark.parametrize("family", models.FAMILIES)
def test_pipeline_takes_raw_fields(family, synthetic_prepared):
    from healthpredict.data.schema import make_target
    from healthpredict.data.split import load_split

    train = load_split("initial_train", str(synthetic_prepared)).head(600)
    small = {"logreg": {"C": 1.0}, "rf": {"n_estimators": 10}, "hgb": {"max_iter": 10}}[family]
    pipe = models.make_pipeline(family, small, seed=0)
    assert [name for name, _ in pipe.steps] == ["preprocess", "model"]
    pipe.fit(train, make_target(train))
    proba = pipe.predict_proba(train.drop(columns=["readmitted"]))[:, 1]
    assert proba.shape == (len(train),) and np.all((proba >= 0) & (proba <= 1))


def test_threshold_max_f1_and_target_recall():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1)
    t_f1 = evaluation.choose_threshold(y, p)
    t_recall = evaluation.choose_threshold(y, p, target_recall=0.95)

    def recall(t):
        return ((p >= t) & (y == 1)).sum() / y.sum()

    assert recall(t_recall) >= 0.95
    assert recall(p[p > t_recall].min()) < 0.95  # the highest threshold that still reaches it
    f1 = [2 * ((p >= t) & (y == 1)).sum() / ((p >= t).sum() + y.sum()) for t in np.unique(p)]
    assert 2 * ((p >= t_f1) & (y == 1)).sum() / ((p >= t_f1).sum() + y.sum()) == max(f1)
    with pytest.raises(ValueError, match="target_recall"):
        evaluation.choose_threshold(y, p, target_recall=1.5)


def test_classification_metrics():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9])
    m = evaluation.classification_metrics(y, p, 0.5)
    assert m["roc_auc"] == pytest.approx(0.75)
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (1, 1, 1, 1)
    assert m["precision"] == m["recall"] == m["f1"] == pytest.approx(0.5)
    one_class = evaluation.classification_metrics(np.zeros(3), np.array([0.1, 0.2, 0.3]), 0.5)
    assert np.isnan(one_class["roc_auc"])


def test_roc_auc_interval_brackets_the_auc_and_narrows_with_more_rows():
    rng = np.random.default_rng(7)

    def scored(n):
        y = (rng.random(n) < 0.11).astype(int)
        return y, np.round(0.7 * rng.random(n) + 0.3 * y, 2)  # rounded: many ties

    y, p = scored(3000)
    auc = evaluation.classification_metrics(y, p, 0.5)["roc_auc"]
    resampled = rng.integers(0, len(y), size=(4, len(y)))
    assert evaluation._roc_auc_along(y[resampled], p[resampled]) == pytest.approx(
        [evaluation.classification_metrics(y[i], p[i], 0.5)["roc_auc"] for i in resampled]
    )
    low, high = evaluation.roc_auc_interval(y, p, seed=1)
    assert low < auc < high and 0.02 < high - low < 0.1
    assert evaluation.roc_auc_interval(y, p, seed=1) == (low, high)
    big_low, big_high = evaluation.roc_auc_interval(*scored(30_000), seed=1)
    assert big_high - big_low < (high - low) / 2
    few_positives = np.r_[np.ones(9, dtype=int), np.zeros(500, dtype=int)]
    assert np.isnan(evaluation.roc_auc_interval(few_positives, rng.random(509))).all()


def test_redact_hides_password():
    assert studies.redact("postgresql://hp:secret@db:5432/optuna") == (
        "postgresql://hp:***@db:5432/optuna"
    )
    assert studies.redact("sqlite:///var/optuna.db") == "sqlite:///var/optuna.db"


def test_artifact_location_follows_storage(hp_env, monkeypatch):
    from healthpredict.core.settings import get_settings
    from healthpredict.mlops import tracking

    local = tracking.artifact_location("HealthPredict_Training")
    assert local == (hp_env / "var" / "mlartifacts" / "HealthPredict_Training").as_uri()
    monkeypatch.setenv("HP_STORAGE", "s3://bucket/prefix")
    get_settings.cache_clear()
    assert tracking.artifact_location("X") == "s3://bucket/prefix/mlartifacts/X"
