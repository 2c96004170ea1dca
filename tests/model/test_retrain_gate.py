import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def batch(data_dir, hp_env):
    """First 1,500 future encounters as a labelled batch CSV."""
    from healthpredict.core import storage
    from healthpredict.data.split import load_split

    uri = str(hp_env / "batches" / "batch_001.csv")
    storage.write_csv(uri, load_split("future_data", data_dir).iloc[:1500])
    return uri


def _aliases():
    from healthpredict.mlops import registry

    return {
        a: registry.alias_version("HealthPredict", a)
        for a in ("champion", "challenger", "previous")
    }


def _train(data_dir):
    from healthpredict.core.stages import TrainParams
    from healthpredict.mlops.train import TrainOptions, train

    return train(
        TrainParams(data_dir=str(data_dir), families=["logreg"], n_trials=2),
        TrainOptions(importance_repeats=0, progress=False),
    )


def test_worse_challenger_is_not_promoted(data_dir, batch, hp_env, shuffled_labels):
    from healthpredict.core import storage
    from healthpredict.core.stages import RetrainParams
    from healthpredict.data.split import load_split
    from healthpredict.mlops.retrain import RetrainOptions, retrain

    champion = _train(data_dir)
    assert champion.promoted
    # The challenger learns from shuffled labels only: old training rows and new batch alike.
    bad_dir = shuffled_labels(data_dir, hp_env / "bad", ("initial_train",))
    bad_batch = str(hp_env / "batches" / "shuffled.csv")
    frame = load_split("future_data", data_dir).iloc[:1500].reset_index(drop=True)
    frame["readmitted"] = frame["readmitted"].sample(frac=1, random_state=0).to_numpy()
    storage.write_csv(bad_batch, frame)

    result = retrain(
        RetrainParams(retraining_data_path=[bad_batch], data_dir=str(bad_dir), n_trials=2),
        RetrainOptions(progress=False),
    )
    assert result.decision == "REJECTED" and not result.promoted
    assert result.challenger_version == "2" and result.champion_version == "1"
    assert result.challenger_metrics["test_roc_auc"] < result.champion_metrics["test_roc_auc"]
    assert _aliases() == {"champion": "1", "challenger": "2", "previous": None}
    _check_logged(result, "false")


def test_better_challenger_is_promoted(data_dir, batch, hp_env, shuffled_labels):
    from healthpredict.core import storage
    from healthpredict.core.stages import RetrainParams
    from healthpredict.data.split import load_split
    from healthpredict.mlops.retrain import RetrainOptions, retrain

    # A champion trained on shuffled labels is easy to beat.
    bad_dir = shuffled_labels(data_dir, hp_env / "bad", ("initial_train",))
    champion = _train(bad_dir)
    assert champion.promoted
    # An earlier labelled batch the champion is taken to have learned from: the challenger
    # learns from it too (cumulative), the gate holdout comes from the later batch only.
    earlier = str(hp_env / "batches" / "earlier.csv")
    storage.write_csv(earlier, load_split("future_data", data_dir).iloc[1500:2500])

    result = retrain(
        RetrainParams(
            retraining_data_path=[earlier, batch],
            gate_data_path=batch,
            data_dir=str(data_dir),
            n_trials=2,
        ),
        RetrainOptions(progress=False),
    )
    assert result.decision == "PROMOTED" and result.promoted, result.reason
    assert result.gate["rule"] == "superior" and result.gate["ci_low"] > 0, result.gate
    assert result.gate["n_rows"] == result.rows["new_holdout"] > 0
    initial = len(load_split("initial_train", data_dir))
    assert result.gate["champion_train_rows"] == initial
    assert result.rows["learned_rows"] > 0
    assert (
        result.rows["train_total"]
        == initial + result.rows["learned_rows"] + result.rows["new_train"]
    )
    assert result.gate["challenger_train_rows"] == result.rows["train_total"]
    assert _aliases() == {"champion": "2", "challenger": None, "previous": "1"}
    _check_logged(result, "true")


def test_gate_batches_must_be_among_the_training_batches(data_dir, batch, hp_env):
    from healthpredict.core.stages import RetrainParams
    from healthpredict.mlops.retrain import RetrainOptions, retrain
    from healthpredict.modeling.retrain_data import RetrainDataError

    _train(data_dir)
    with pytest.raises(RetrainDataError, match="gate_data_path must name batches"):
        retrain(
            RetrainParams(
                retraining_data_path=batch, gate_data_path=str(hp_env / "other.csv"), n_trials=1
            ),
            RetrainOptions(progress=False),
        )


def _check_logged(result, promoted):
    from mlflow import MlflowClient

    run = MlflowClient().get_run(result.mlflow_run_id)
    assert run.data.tags["decision"] == result.decision
    assert run.data.tags["promoted"] == promoted
    assert run.data.tags["reason"] == result.reason
    assert run.data.metrics["gate.ci_low"] == pytest.approx(result.gate["ci_low"])
    assert run.data.metrics["gate.n_rows"] == result.gate["n_rows"]
    assert run.data.metrics["challenger.holdout_roc_auc"] == pytest.approx(
        result.challenger_metrics["holdout_roc_auc"]
    )
    assert run.data.metrics["champion.test_roc_auc"] == pytest.approx(
        result.champion_metrics["test_roc_auc"]
    )
