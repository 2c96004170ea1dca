import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_train_notebook_end_to_end(data_dir, hp_env):
    import mlflow
    from mlflow import MlflowClient

    from healthpredict.data.schema import FEATURE_COLUMNS
    from healthpredict.data.split import load_split
    from healthpredict.mlops import registry, tracking
    from healthpredict.runs import run

    result = run(
        "02_train_hpo",
        {"data_dir": data_dir, "n_trials": 3, "families": ["logreg", "hgb"], "seed": 3},
        run_dir=str(hp_env / "rendered" / "train"),
        force=True,
        progress=False,
    )
    scraps = result.scraps
    assert result.status == "succeeded"
    assert scraps["data_source"] == "synthetic"
    assert scraps["best_family"] in ("logreg", "hgb") and scraps["promoted"] is True
    assert 0.0 < scraps["threshold"] < 1.0 and 0.5 < scraps["test_roc_auc"] <= 1.0
    assert scraps["model_version"] == "1"
    low, high = scraps["test_roc_auc_ci95"]
    assert low < scraps["test_roc_auc"] < high

    tracking.setup_mlflow()
    client = MlflowClient()
    exp = client.get_experiment_by_name("HealthPredict_Training")
    assert exp.artifact_location == (hp_env / "var" / "mlartifacts" / exp.name).as_uri()
    parent = client.get_run(scraps["mlflow_run_id"])
    assert parent.data.tags["data_source"] == "synthetic"
    assert parent.data.tags["data_sha256"] and parent.data.tags["git_commit"]
    assert parent.data.metrics["test_roc_auc"] == pytest.approx(scraps["test_roc_auc"])
    assert parent.data.metrics["test_roc_auc_ci95_low"] == pytest.approx(low)
    children = client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 3
    assert all("family" in c.data.params for c in children)

    info = registry.get_model_info(registry.champion_uri())
    assert info.version == "1" and info.run_id == parent.info.run_id
    assert info.threshold == pytest.approx(scraps["threshold"])
    test = load_split("test", data_dir)
    raw = test[list(FEATURE_COLUMNS)]
    pyfunc_proba = np.asarray(mlflow.pyfunc.load_model(registry.champion_uri()).predict(raw))
    pipeline, _ = registry.load_pipeline(registry.champion_uri())
    assert pyfunc_proba.shape == (len(test), 2)
    np.testing.assert_allclose(pyfunc_proba, pipeline.predict_proba(raw), rtol=0, atol=1e-12)

    # Calibrated risks inside the registered model, compiled by the serving fast path.
    from healthpredict.modeling.runtime.predictor import compile_pipeline
    from healthpredict.modeling.runtime.records import records_from_frame

    method = parent.data.params["calibration"]
    assert info.calibration == method and method in ("none", "sigmoid", "isotonic")
    assert set(parent.data.metrics) >= {
        f"val_cv_brier.{m}" for m in ("none", "sigmoid", "isotonic")
    }
    chosen = parent.data.metrics[f"val_cv_brier.{method}"]
    assert chosen == min(
        parent.data.metrics[f"val_cv_brier.{m}"] for m in ("none", "sigmoid", "isotonic")
    )
    assert parent.data.metrics["test_uncalibrated_brier"] > 0 and "test_ece" in parent.data.metrics
    predictor = compile_pipeline(pipeline)
    assert predictor.path == "fast", predictor.reason
    got = predictor.predict_proba(records_from_frame(raw.head(50)))
    np.testing.assert_allclose(got, pipeline.predict_proba(raw.head(50))[:, 1], rtol=0, atol=1e-9)

    # The model card: next to the notebook (linked by the gallery), with the run, on the version.
    card_html = hp_env / "rendered" / "train" / "model_card.html"
    assert scraps["report_paths"] == {"model card": str(card_html)}
    page = card_html.read_text()
    assert f"v{info.version}" in page and "Subgroups" in page and "Decision curve" in page
    assert info.model_card.endswith("model_card/model_card.html")
    logged = mlflow.artifacts.load_text(info.model_card)
    assert logged == page
    card = mlflow.artifacts.load_dict(info.model_card.replace(".html", ".json"))
    assert card["overall"]["n"] == len(test)  # every test encounter (the split excluded deaths)
    assert card["operating_point"]["threshold"] == pytest.approx(info.threshold)
