import pytest

from healthpredict.mlops import registry, tracking
from healthpredict.modeling.runtime.model_meta import ModelNotFoundError


@pytest.fixture
def fitted(data_dir):
    from healthpredict.data.schema import make_target
    from healthpredict.data.split import load_split
    from healthpredict.modeling.models import make_pipeline

    train = load_split("initial_train", data_dir)
    return make_pipeline("logreg", {"C": 1.0}, seed=0).fit(train, make_target(train)), train


def _log(pipeline, frame, auc):
    import mlflow

    with mlflow.start_run():
        return registry.log_model(
            pipeline,
            threshold=0.25,
            target="<30",
            test_metrics={"roc_auc": auc},
            input_example=frame,
            data_source="synthetic",
            params={"family": "logreg", "C": 1.0},
        )


def test_aliases_through_log_and_promote(fitted):
    pipeline, frame = fitted
    tracking.setup_mlflow()
    tracking.use_experiment("registry-test")
    first = _log(pipeline, frame, 0.61)
    assert first.aliases == ["champion"]  # the first model ever trained becomes champion
    assert first.threshold == 0.25 and first.test_metrics == {"roc_auc": 0.61}
    assert first.params == {"family": "logreg", "C": 1.0} and first.data_source == "synthetic"
    second = _log(pipeline, frame, 0.62)
    assert second.aliases == ["challenger"]
    assert registry.get_model_info(registry.champion_uri()).version == first.version

    registry.promote(second.name, second.version)
    assert registry.get_model_info("models:/HealthPredict@champion").version == second.version
    assert registry.get_model_info("models:/HealthPredict@previous").version == first.version
    with pytest.raises(ModelNotFoundError, match="challenger"):
        registry.get_model_info("models:/HealthPredict@challenger")

    loaded, info = registry.load_pipeline(registry.champion_uri())
    assert info.version == second.version
    assert loaded.steps[0][0] == "preprocess"
    assert loaded.predict_proba(frame.head(20)) == pytest.approx(
        pipeline.predict_proba(frame.head(20))
    )


def test_missing_alias_names_model_and_alias(hp_env):
    tracking.setup_mlflow()
    with pytest.raises(ModelNotFoundError, match=r"'HealthPredict'.*'champion'"):
        registry.get_model_info(registry.champion_uri())
    with pytest.raises(ModelNotFoundError, match="version 7"):
        registry.get_model_info("models:/HealthPredict/7")
    with pytest.raises(ValueError, match="registry model URI"):
        registry.get_model_info("runs:/abc/model")


def test_log_model_needs_an_active_run(fitted):
    pipeline, frame = fitted
    tracking.setup_mlflow()
    with pytest.raises(RuntimeError, match="active MLflow run"):
        registry.log_model(
            pipeline,
            threshold=0.5,
            target="<30",
            test_metrics={},
            input_example=frame,
            data_source="synthetic",
            params={},
        )


def test_a_fresh_process_whose_first_mlflow_call_is_the_registry_uses_the_configured_store(
    fitted, hp_env
):
    """`healthpredict demo` promoted through MLflow's default ./mlflow.db before this fix."""
    import os
    import subprocess
    import sys

    pipeline, frame = fitted
    tracking.setup_mlflow()
    tracking.use_experiment("registry-test")
    _log(pipeline, frame, 0.61)
    _log(pipeline, frame, 0.62)
    elsewhere = hp_env / "elsewhere"
    elsewhere.mkdir()
    code = (
        "from healthpredict.mlops import registry; registry.promote('HealthPredict', '2'); "
        "print(registry.alias_version('HealthPredict', 'champion'))"
    )
    # As from a shell: only the HP_* settings (set_tracking_uri exported MLFLOW_* in this process).
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"
    assert registry.alias_version("HealthPredict", "champion") == "2"
    assert not (elsewhere / "mlflow.db").exists()
