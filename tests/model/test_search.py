import pytest

from healthpredict.core.stages import TrainParams
from healthpredict.mlops.train import TrainOptions, train
from healthpredict.modeling.fitting import load_training_splits
from healthpredict.modeling.models import make_pipeline, trial_params_for
from healthpredict.modeling.search import search, search_folds
from healthpredict.modeling.studies import SearchSettings


@pytest.fixture
def splits(data_dir):
    _, frames = load_training_splits(data_dir)
    return frames["initial_train"], frames["validation"]


def logreg_search(train, val, *, study_name, **settings):
    """A quiet search over logistic regression only (the fastest family)."""
    return search(
        train,
        val,
        study_name=study_name,
        settings=SearchSettings(families=["logreg"], progress=False, **settings),
    )


def test_two_workers_on_one_study_complete_all_trials(splits, hp_env):
    train, val = splits
    seen = []
    study = search(
        train,
        val,
        study_name="two-workers",
        settings=SearchSettings(
            families=["logreg", "hgb"],
            n_trials=4,
            n_workers=2,
            study_storage=str(hp_env / "optuna" / "journal.log"),
            seed=1,
            progress=False,
        ),
        on_trial=lambda t: seen.append(t.number),
    )
    states = [t.state.name for t in study.trials]
    assert len(states) == 4 and set(states) <= {"COMPLETE", "PRUNED"}
    assert sorted(seen) == [0, 1, 2, 3]  # the parent saw (and would log) every trial once


def test_enqueued_trial_runs_first(splits, hp_env):
    train, val = splits
    warm = trial_params_for("logreg", {"C": 0.05, "class_weight": "balanced"})
    study = logreg_search(train, val, n_trials=2, study_name="warm", enqueue=[warm])
    assert study.trials[0].params == warm


def test_same_seed_same_result(data_dir):
    def run():
        r = train(
            TrainParams(data_dir=data_dir, families=["logreg", "rf", "hgb"], n_trials=3, seed=7),
            TrainOptions(importance_repeats=0, progress=False),
        )
        return r

    first, second = run(), run()
    assert first.mlflow_run_id != second.mlflow_run_id and first.study_name != second.study_name
    assert (first.best_family, first.best_params) == (second.best_family, second.best_params)
    assert list(first.trials["params"]) == list(second.trials["params"])
    assert first.trials["val_roc_auc"].tolist() == pytest.approx(
        second.trials["val_roc_auc"].tolist(), abs=1e-9
    )
    for key, value in first.test_metrics.items():
        assert second.test_metrics[key] == pytest.approx(value, abs=1e-9), key
    assert second.threshold == pytest.approx(first.threshold, abs=1e-9)
    # The second model of the name is a challenger; the first stays champion.
    assert first.promoted and not second.promoted


def test_grouped_cross_validation_folds_score_every_row_once(splits):
    train, val = splits
    pairs = search_folds(train, val, target="<30", cv_folds=3, seed=5)
    assert len(pairs) == 3
    scored_ids = [eid for _, scored in pairs for eid in scored["encounter_id"]]
    all_ids = set(train["encounter_id"]) | set(val["encounter_id"])
    assert sorted(scored_ids) == sorted(all_ids)  # each row scored exactly once
    for fit, scored in pairs:
        assert set(fit["encounter_id"]) | set(scored["encounter_id"]) == all_ids
        assert not set(fit["patient_nbr"]) & set(scored["patient_nbr"])
    assert [len(p[1]) for p in pairs] == [
        len(p[1]) for p in search_folds(train, val, target="<30", cv_folds=3, seed=5)
    ]
    ((fit, scored),) = search_folds(train, val, target="<30", cv_folds=0)
    assert fit is train and scored is val


def test_cross_validated_trial_scores_the_mean_of_its_folds(splits):
    from sklearn.metrics import roc_auc_score

    from healthpredict.data.schema import make_target

    train, val = splits
    params = {"C": 0.1, "class_weight": None}
    warm = trial_params_for("logreg", params)
    study = logreg_search(
        train, val, n_trials=1, study_name="cv", cv_folds=3, seed=2, enqueue=[warm]
    )
    expected = []
    for fit, scored in search_folds(train, val, target="<30", cv_folds=3, seed=2):
        model = make_pipeline("logreg", params, seed=2).fit(fit, make_target(fit))
        expected.append(roc_auc_score(make_target(scored), model.predict_proba(scored)[:, 1]))
    assert study.user_attrs["cv_folds"] == 3
    assert study.best_value == pytest.approx(sum(expected) / 3, abs=1e-9)


def test_a_fold_without_positives_is_refused_before_the_search(splits):
    train, val = splits
    no_positives = val.assign(readmitted="NO")
    with pytest.raises(ValueError, match="validation split has only one class"):
        logreg_search(train, no_positives, n_trials=1, study_name="x")
