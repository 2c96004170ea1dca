import pytest

from healthpredict import training


@pytest.fixture
def splits(data_dir):
    _, frames = training.load_training_splits(data_dir)
    return frames["initial_train"], frames["validation"]


def test_two_workers_on_one_study_complete_all_trials(splits, hp_env):
    train, val = splits
    seen = []
    study = training.search(
        train,
        val,
        families=["logreg", "hgb"],
        n_trials=4,
        n_workers=2,
        study_storage=str(hp_env / "optuna" / "journal.log"),
        study_name="two-workers",
        seed=1,
        on_trial=lambda t: seen.append(t.number),
        progress=False,
    )
    states = [t.state.name for t in study.trials]
    assert len(states) == 4 and set(states) <= {"COMPLETE", "PRUNED"}
    assert sorted(seen) == [0, 1, 2, 3]  # the parent saw (and would log) every trial once


def test_enqueued_trial_runs_first(splits, hp_env):
    train, val = splits
    warm = training.trial_params_for("logreg", {"C": 0.05, "class_weight": "balanced"})
    study = training.search(
        train,
        val,
        families=["logreg"],
        n_trials=2,
        study_name="warm",
        enqueue=[warm],
        progress=False,
    )
    assert study.trials[0].params == warm


def test_same_seed_same_result(data_dir):
    def run():
        r = training.train(
            data_dir,
            families=["logreg", "rf", "hgb"],
            n_trials=3,
            seed=7,
            importance_repeats=0,
            progress=False,
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
