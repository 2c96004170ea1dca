"""monitor(): decisions, cached calibration, reports and the MLflow run, on a real sqlite store."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from drift_helpers import write_batch

from healthpredict.core import constants
from healthpredict.core.stages import MonitorParams
from healthpredict.data.schema import RawSchemaError
from healthpredict.mlops import registry, tracking
from healthpredict.mlops.monitor import ModelSchemaError, monitor
from healthpredict.modeling.runtime.model_meta import ModelNotFoundError
from healthpredict.monitoring import evidence, reference
from healthpredict.monitoring.calibration import CALIBRATION_VERSION
from tests.support import drift_scenarios


def _runs(experiment: str = constants.MONITORING_EXPERIMENT):
    from mlflow import MlflowClient

    tracking.setup_mlflow()
    exp = MlflowClient().get_experiment_by_name(experiment)
    return [] if exp is None else MlflowClient().search_runs([exp.experiment_id])


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)


def _assert_html(path: str) -> None:
    text = Path(path).read_text(encoding="utf-8")
    assert text.lstrip().lower().startswith("<!doctype html") or text.lstrip().startswith("<html")
    assert text.rstrip().endswith("</html>") and len(text) > 50_000
    parser = _Tags()
    parser.feed(text)
    assert {"html", "head", "body", "script"} <= parser.tags


@pytest.fixture(scope="module")
def clean_result(drift_env):
    """The no-drift batch, monitored once (its held-out rows: the validation split only)."""
    uri = write_batch(drift_env, "clean", drift_env.clean_batch)
    reports = drift_env.tmp / "reports" / "clean"
    result = monitor(
        MonitorParams(
            new_data_path=uri,
            evidently_reports_path=str(reports),
            model_reference_path=drift_env.validation_uri,
        )
    )
    return uri, reports, result


def test_no_drift_batch(clean_result, drift_env):
    _, reports, result = clean_result
    assert result.status == constants.NO_DRIFT and result.reasons == []
    assert result.n_columns == 33 and len(result.drift_table) == 33
    assert result.n_drifted_columns == 0 and result.drifted_columns == []
    assert not result.prediction_drift
    assert result.performance is not None and result.performance_drop < (
        result.thresholds.performance_tolerance
    )
    # Evidently's uncalibrated 0.1 threshold is not what decides.
    assert set(result.drift_table.columns) >= {"method", "score", "threshold", "drifted_at_0.1"}
    th = result.thresholds
    assert result.drift_table.set_index("column")["threshold"].to_dict() == pytest.approx(
        th.per_column
    )
    assert th.expected_false_alarm_rate <= th.false_alarm_rate == 0.05
    assert result.model_version == drift_env.info.version and result.data_source == "synthetic"
    assert result.banner and "SYNTHETIC" in result.banner
    assert result.model_reference_rows == len(pd.read_csv(drift_env.validation_uri))
    assert not result.model_reference_in_sample
    assert set(result.report_paths) == {"data_drift", "prediction_drift", "performance"}
    for path in result.report_paths.values():
        assert Path(path).parent == reports
        _assert_html(path)
    scraps = result.scraps()
    from healthpredict.runs.contracts import check_scraps

    assert check_scraps("03_drift_monitor", scraps) == []
    assert scraps["performance"]["batch_roc_auc"] == pytest.approx(
        result.performance.loc["roc_auc", "batch"]
    )


def test_mlflow_run_holds_params_metrics_reports_and_status(clean_result):
    from mlflow import MlflowClient

    uri, _, result = clean_result
    run = MlflowClient().get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == tracking.experiment_id(constants.MONITORING_EXPERIMENT)
    params = run.data.params
    assert params["new_data_path"] == str(Path(uri).resolve())
    assert params["reference_data_path"].endswith("initial_train.csv")
    assert params["model_uri"] == "models:/HealthPredict@champion"
    assert params["model_version"] == result.model_version and params["batch_size"] == "500"
    assert float(params["share_threshold"]) == pytest.approx(1 / 33)
    assert float(params["false_alarm_rate"]) == 0.05 and params["labelled"] == "True"
    metrics = run.data.metrics
    assert metrics["data_drift_detected"] == 0.0 and metrics["n_drifted_columns"] == 0.0
    assert metrics["drifted_share"] == 0.0
    assert metrics["prediction_drift_score"] == pytest.approx(result.prediction_drift_score)
    assert metrics["batch_roc_auc"] == pytest.approx(result.performance.loc["roc_auc", "batch"])
    assert "roc_auc_drop" in metrics and "expected_false_alarm_rate" in metrics
    assert run.data.tags["drift_status"] == "NO_DRIFT"
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "drift_reports")}
    assert artifacts == {
        f"drift_reports/{n}"
        for n in (
            "data_drift.html",
            "prediction_drift.html",
            "performance.html",
            "drift_table.csv",
            "monitor_summary.json",
        )
    }


def test_calibration_is_cached_and_reused(clean_result, drift_env, monkeypatch):
    uri, _, first = clean_result
    assert not first.calibration_from_cache

    def fail(*args, **kwargs):
        raise AssertionError("the calibration was computed again")

    monkeypatch.setattr(reference, "calibrate", fail)
    prepared = reference.prepare_reference(
        str(drift_env.data_dir / "initial_train.csv"),
        [drift_env.validation_uri],
        drift_env.pipeline,
        drift_env.info,
        500,
    )
    assert prepared.from_cache == {"features": True, "predictions": True, "calibration": True}
    cache = Path(prepared.cache_dir)
    names = {p.name for p in cache.iterdir()}
    assert {
        "predictions.parquet",
        f"calibration-n500-b1000-s0-v{CALIBRATION_VERSION}.npz",
        f"calibration-n500-b1000-s0-v{CALIBRATION_VERSION}.json",
    } <= names
    assert (cache.parents[1] / "features.parquet").exists()
    again = monitor(
        MonitorParams(
            new_data_path=uri,
            evidently_reports_path=str(drift_env.tmp / "reports" / "again"),
            model_reference_path=drift_env.validation_uri,
        )
    )
    assert again.calibration_from_cache and again.status == first.status
    assert again.drift_table.equals(first.drift_table)


def test_covariate_shift_is_detected(drift_env):
    shifted = drift_scenarios.apply("more_prior_inpatient", drift_env.clean_batch, strength=1.0)
    uri = write_batch(drift_env, "shifted", shifted)
    # Default held-out rows: validation + test next to the reference.
    result = monitor(
        MonitorParams(
            new_data_path=uri, evidently_reports_path=str(drift_env.tmp / "reports" / "shifted")
        )
    )
    assert result.status == constants.DRIFT_DETECTED
    assert "number_inpatient" in result.drifted_columns
    assert result.reasons[0].startswith("data drift")
    assert result.model_reference_rows > 1000 and not result.model_reference_in_sample


def test_concept_drift_shows_as_a_performance_drop(drift_env):
    flipped = drift_scenarios.apply("concept_drift", drift_env.clean_batch, strength=1.0, seed=1)
    uri = write_batch(drift_env, "concept", flipped)
    result = monitor(
        MonitorParams(
            new_data_path=uri,
            evidently_reports_path=str(drift_env.tmp / "reports" / "concept"),
            model_reference_path=drift_env.validation_uri,
        )
    )
    assert result.status == constants.DRIFT_DETECTED
    assert result.performance_drop > result.thresholds.performance_tolerance > 0
    assert any(r.startswith("performance: ROC AUC dropped") for r in result.reasons)
    # The features did not move: the drop is what gives it away.
    assert result.n_drifted_columns == 0 and not result.prediction_drift
    _assert_html(result.report_paths["performance"])


def test_unlabelled_batch_uses_the_prediction_path(drift_env):
    shifted = drift_scenarios.apply("more_prior_inpatient", drift_env.clean_batch, strength=1.0)
    uri = write_batch(drift_env, "unlabelled", shifted.drop(columns=["readmitted"]))
    result = monitor(
        MonitorParams(
            new_data_path=uri,
            evidently_reports_path=str(drift_env.tmp / "reports" / "unlabelled"),
            model_reference_path=drift_env.validation_uri,
        )
    )
    assert result.performance is None and result.performance_drop is None
    assert result.thresholds.performance_tolerance is None
    assert result.thresholds.alpha == pytest.approx(0.05 / 3)  # data, predictions, estimate
    assert result.prediction_drift and result.prediction_drift_score > 0
    assert any(r.startswith("prediction drift") for r in result.reasons)
    assert set(result.report_paths) == {"data_drift", "prediction_drift"}
    assert "performance" not in result.scraps()
    table = result.prediction_table
    assert table.loc["predicted_positive_rate", "change"] > 0  # more frequent visitors: riskier


def test_bad_schema_raises_before_any_run(drift_env):
    before = {r.info.run_id for r in _runs()}
    broken = drift_scenarios.apply("drop_column", drift_env.clean_batch)
    broken = drift_scenarios.apply("new_category", broken, strength=0.1)
    uri = write_batch(drift_env, "broken", broken)
    with pytest.raises(RawSchemaError) as info:
        monitor(
            MonitorParams(
                new_data_path=uri, evidently_reports_path=str(drift_env.tmp / "reports" / "broken")
            )
        )
    problems = "\n".join(info.value.problems)
    assert "A1Cresult" in problems and "Martian" in problems and len(info.value.problems) == 2
    assert {r.info.run_id for r in _runs()} == before
    assert not (drift_env.tmp / "reports" / "broken").exists()


def test_missing_model_and_foreign_schema_fail_clearly(drift_env):
    import mlflow

    uri = write_batch(drift_env, "for_models", drift_env.clean_batch)
    before = {r.info.run_id for r in _runs()}
    with pytest.raises(ModelNotFoundError, match="'HealthPredict'.*'nope'"):
        monitor(MonitorParams(new_data_path=uri, mlflow_model_uri="models:/HealthPredict@nope"))
    tracking.use_experiment("HealthPredict_Training")
    with mlflow.start_run():
        other = registry.log_model(
            drift_env.pipeline,
            threshold=0.2,
            target="<30",
            test_metrics={},
            input_example=drift_env.clean_batch,
            data_source="synthetic",
            params={},
        )
    registry._client().set_model_version_tag(other.name, other.version, "schema_hash", "0" * 16)
    with pytest.raises(ModelSchemaError, match="0000000000000000"):
        monitor(MonitorParams(new_data_path=uri, mlflow_model_uri=other.model_uri))
    assert {r.info.run_id for r in _runs()} == before


def test_failure_inside_the_run_marks_it_failed(drift_env, monkeypatch):
    uri = write_batch(drift_env, "boom", drift_env.clean_batch)

    def boom(*args, **kwargs):
        raise RuntimeError("report failed")

    monkeypatch.setattr(evidence, "data_drift_report", boom)
    before = {r.info.run_id for r in _runs()}
    with pytest.raises(RuntimeError, match="report failed"):
        monitor(
            MonitorParams(
                new_data_path=uri,
                evidently_reports_path=str(drift_env.tmp / "reports" / "boom"),
                model_reference_path=drift_env.validation_uri,
            )
        )
    new = [r for r in _runs() if r.info.run_id not in before]
    assert [r.info.status for r in new] == ["FAILED"]


def test_batch_and_reports_on_s3(drift_env, s3_bucket):
    from mlflow import MlflowClient

    from healthpredict.core import storage

    uri = storage.write_csv(f"{s3_bucket}/batches/clean.csv", drift_env.clean_batch)
    result = monitor(
        MonitorParams(
            new_data_path=uri,
            evidently_reports_path=f"{s3_bucket}/reports",
            model_reference_path=drift_env.validation_uri,
        )
    )
    assert result.report_paths == {
        n: f"{s3_bucket}/reports/{n}.html"
        for n in ("data_drift", "prediction_drift", "performance")
    }
    assert storage.read_bytes(result.report_paths["data_drift"]).rstrip().endswith(b"</html>")
    run = MlflowClient().get_run(result.mlflow_run_id)
    assert run.data.params["new_data_path"] == uri and run.info.status == "FINISHED"
    listed = MlflowClient().list_artifacts(run.info.run_id, "drift_reports")
    assert "drift_reports/data_drift.html" in {a.path for a in listed}


def test_labels_that_arrived_late_decide_the_retraining(drift_env):
    """An unlabelled batch is estimated; the batch labelled since is what the labels showed."""
    batch = drift_env.clean_batch.drop(columns=["readmitted"])
    unlabelled = write_batch(drift_env, "unlabelled", batch)
    arrived = drift_env.clean_batch.copy()
    # Labels the model cannot rank: the realised ROC AUC falls to chance.
    arrived["readmitted"] = arrived["readmitted"].sample(frac=1, random_state=3).to_numpy()
    labelled = write_batch(drift_env, "labelled_late", arrived)
    result = monitor(
        MonitorParams(
            new_data_path=unlabelled,
            model_reference_path=drift_env.validation_uri,
            evidently_reports_path=str(drift_env.tmp / "reports" / "late"),
            labelled_data_path=[labelled],
            new_labelled_rows=len(arrived),
        )
    )
    assert result.performance is None  # the batch itself has no labels
    perf = result.performance_signals
    assert perf.realised_rows == len(arrived) and perf.realised_roc_auc < 0.6
    assert perf.realised_drop > result.thresholds.performance_tolerance
    assert result.retrain.retrain and "realised_performance" in result.retrain.triggers
    scraps = result.scraps()
    assert scraps["retrain"] is True and scraps["retrain_reasons"][0].startswith("realised ROC AUC")
    assert scraps["realised_roc_auc"] == pytest.approx(perf.realised_roc_auc)
    assert scraps["estimated_roc_auc"] == pytest.approx(perf.estimated_roc_auc)
    assert scraps["new_labelled_rows"] == len(arrived)
    run = next(r for r in _runs() if r.info.run_id == result.mlflow_run_id)
    assert run.data.tags["retrain"] == "true" and run.data.metrics["retrain_recommended"] == 1.0
    assert run.data.metrics["realised_roc_auc"] == pytest.approx(perf.realised_roc_auc)


def test_a_labelled_batch_without_its_labels_is_refused(drift_env):
    batch = write_batch(drift_env, "plain", drift_env.clean_batch)
    no_labels = write_batch(
        drift_env, "no_labels", drift_env.clean_batch.drop(columns=["readmitted"])
    )
    with pytest.raises(RawSchemaError, match="readmitted"):
        monitor(MonitorParams(new_data_path=batch, labelled_data_path=no_labels))
