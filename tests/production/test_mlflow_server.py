"""MLflow as in production: a tracking server on PostgreSQL with its artifacts in S3.

One ``mlflow server`` per module (:mod:`tests.support.mlflow_server`, shaped like the compose
file's ``mlflow`` service) on the private PostgreSQL cluster, proxying artifacts to a bucket of
moto's S3 server. The project talks to it through ``HP_MLFLOW_TRACKING_URI=http://...`` only:
this process and the serving app hold no S3 endpoint or credentials, so every artifact they
write or read goes through the server. The tests run in order on one registry: a training run,
a retraining through the promotion gate, then the serving app loading ``@champion``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.slow

MODEL_NAME = "HealthPredict"
N_SYNTHETIC = 4000  # ~1,400 training rows with half of the encounters as the initial period
BATCH_ROWS = 1500
AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# What would let this process reach S3 on its own (set by other fixtures, or the developer's
# shell): removed, so that an artifact that bypassed the server fails instead of landing.
_S3_VARIABLES = (*AWS, "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL")


def _s3(endpoint: str):
    """A boto3 client of ``endpoint`` with its credentials given, not read from the environment."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"],
        region_name=AWS["AWS_DEFAULT_REGION"],
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory, postgres, moto_server, settings_isolation):
    """The server, its bucket, and this process's settings pointing at it (undone at the end).

    Yields a namespace: ``server``, ``bucket``, ``s3`` (a boto3 client of the bucket's endpoint),
    ``base`` (the project's storage root and everything else local) and ``data_dir``.
    """
    from healthpredict.core import layout
    from healthpredict.core.settings import get_settings
    from healthpredict.data.split import SplitParams, prepare
    from healthpredict.mlops import tracking
    from tests.support.mlflow_server import MlflowServer

    bucket = f"hp-{uuid.uuid4().hex[:12]}"
    s3 = _s3(moto_server)
    s3.create_bucket(Bucket=bucket)
    db_url = postgres.create_database(f"mlflow_{uuid.uuid4().hex[:8]}")
    server = MlflowServer.start(
        db_url, f"s3://{bucket}/mlartifacts", s3_endpoint_url=moto_server, env=AWS
    )
    base = tmp_path_factory.mktemp("mlflow-production")
    patch = pytest.MonkeyPatch()
    try:
        settings_isolation(patch, base)
        patch.setenv("HP_MLFLOW_TRACKING_URI", server.url)
        patch.delenv("HP_S3_ENDPOINT_URL", raising=False)
        for name in _S3_VARIABLES:
            patch.delenv(name, raising=False)
        get_settings.cache_clear()
        prepare("synthetic", params=SplitParams(initial_fraction=0.5), n_synthetic=N_SYNTHETIC)
        yield SimpleNamespace(
            server=server, bucket=bucket, s3=s3, base=base, data_dir=layout.processed_data()
        )
    finally:
        patch.undo()
        tracking._configured_uri = None  # MLflow's global URI points at the stopped server
        get_settings.cache_clear()
        server.stop()


def _client(stack):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.server.url, registry_uri=stack.server.url)


def _keys(stack, prefix: str = "") -> list[str]:
    """Every object key of the bucket under ``prefix``."""
    pages = stack.s3.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def _s3_prefix(stack, artifact_uri: str) -> str:
    """The bucket prefix the server stores ``mlflow-artifacts:/<path>`` under."""
    assert artifact_uri.startswith("mlflow-artifacts:/"), (
        f"{artifact_uri}: not proxied through the server"
    )
    path = artifact_uri[len("mlflow-artifacts:/") :].strip("/")
    return f"mlartifacts/{path}/"


def _aliases(stack) -> dict[str, str | None]:
    aliases = _client(stack).get_registered_model(MODEL_NAME).aliases
    return {a: aliases.get(a) for a in ("champion", "challenger", "previous")}


def _no_local_artifacts(stack) -> None:
    """No artifact store fell back to a folder: not the project's, not the server's."""
    for root in (stack.base, stack.server.base):
        local = [
            str(p)
            for p in Path(root).rglob("*")
            if p.name in ("mlruns", "mlartifacts", "MLmodel", "model.pkl")
        ]
        assert not local, f"artifacts written locally instead of S3: {local}"


def test_training_run_is_on_the_server_and_its_model_in_s3(stack):
    from healthpredict.core.stages import TrainParams
    from healthpredict.mlops.train import TrainOptions, train

    result = train(
        TrainParams(families=["logreg"], n_trials=3),
        TrainOptions(importance_repeats=0, progress=False),
    )
    assert os.environ["HP_MLFLOW_TRACKING_URI"] == stack.server.url
    client = _client(stack)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["n_trials"] == "3" and run.data.params["families"] == "logreg"
    assert run.data.params["best_family"] == "logreg"
    assert run.data.metrics["test_roc_auc"] == pytest.approx(result.test_metrics["roc_auc"])
    assert run.data.metrics["n_trials_complete"] == 3
    trials = client.search_runs(
        [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"
    )
    assert len(trials) == 3  # the nested trial runs

    version = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert version.version == result.model_version == "1" and result.promoted
    # The run's own artifacts and the logged model are both objects of the bucket.
    run_prefix = _s3_prefix(stack, run.info.artifact_uri)
    run_keys = _keys(stack, run_prefix)
    assert f"{run_prefix}trials.json" in run_keys, (
        f"no trials.json under s3://{stack.bucket}/{run_prefix}: {run_keys}"
    )
    model_uri = client.get_model_version_download_uri(MODEL_NAME, version.version)
    model_prefix = _s3_prefix(stack, model_uri)
    model_keys = _keys(stack, model_prefix)
    expected = {f"{model_prefix}{n}" for n in ("MLmodel", "model.pkl", "requirements.txt")}
    assert expected <= set(model_keys), (
        f"model files missing under s3://{stack.bucket}/{model_prefix}: {model_keys}"
    )
    _no_local_artifacts(stack)


def test_retraining_moves_the_aliases_as_the_gate_decides(stack):
    from healthpredict.core import storage
    from healthpredict.core.stages import RetrainParams
    from healthpredict.data.split import load_split
    from healthpredict.mlops.retrain import RetrainOptions, retrain

    assert _aliases(stack)["champion"] == "1", "needs the training test's champion"
    batch = str(stack.base / "batches" / "batch_001.csv")
    storage.write_csv(batch, load_split("future_data", stack.data_dir).iloc[:BATCH_ROWS])

    result = retrain(
        RetrainParams(retraining_data_path=[batch], n_trials=2), RetrainOptions(progress=False)
    )
    assert result.champion_version == "1" and result.challenger_version == "2"
    client = _client(stack)
    run = client.get_run(result.mlflow_run_id)
    assert run.data.tags["decision"] == result.decision
    assert run.data.tags["promoted"] == str(result.promoted).lower()
    assert run.data.metrics["gate.n_rows"] == result.gate["n_rows"] > 0
    version = client.get_model_version(MODEL_NAME, "2")
    assert version.tags["gate.decision"] == result.decision
    assert version.tags["gate.retrain_run_id"] == result.mlflow_run_id
    assert f"{_s3_prefix(stack, run.info.artifact_uri)}gate.json" in _keys(stack)
    # On this seeded data the challenger, trained on more rows, passes the gate.
    assert result.decision == "PROMOTED" and result.alias_moved, result.reason
    assert _aliases(stack) == {"champion": "2", "challenger": None, "previous": "1"}
    _no_local_artifacts(stack)


def test_serving_app_loads_the_champion_from_the_server(stack):
    import mlflow.artifacts
    import mlflow.sklearn

    from healthpredict.data.split import load_split
    from healthpredict.modeling.runtime.records import records_from_frame
    from tests.serving.serving_helpers import Server, predict, request

    champion = _client(stack).get_model_version_by_alias(MODEL_NAME, "champion")
    row = load_split("test", stack.data_dir).head(1).drop(columns=["readmitted"])
    pipeline = mlflow.sklearn.load_model(f"models:/{MODEL_NAME}@champion")  # via the server
    expected = float(pipeline.predict_proba(row)[0, 1])

    folder = stack.base / "serving"
    folder.mkdir()
    # Only the tracking URI: no S3 endpoint or credentials (Server drops HP_/MLFLOW_ variables).
    server = Server(
        folder,
        {"MLFLOW_TRACKING_URI": stack.server.url, "MODEL_URI": f"models:/{MODEL_NAME}@champion"},
    )
    try:
        server.wait("/ready", 200)
        status, info = request(server.url + "/model-info")
        assert status == 200 and info["version"] == champion.version == "2", info
        assert info["alias"] == "champion" and info["run_id"] == champion.run_id
        # The retraining's model card, logged through the server into S3, is what /model-info
        # links, and the served risk is the calibrated one the card judged.
        assert info["model_card"] == champion.tags["model_card"]
        assert info["model_card"].startswith("mlflow-artifacts:/"), info["model_card"]
        assert "Subgroups" in mlflow.artifacts.load_text(info["model_card"])
        assert info["calibration"] == champion.tags["calibration"] != ""
        assert info["inference"]["path"] == "fast", info["inference"]
        status, answer = predict(server.url, records_from_frame(row))
        assert status == 200, answer
        [prediction] = answer["predictions"]
        assert prediction["model_version"] == "2"
        assert prediction["readmission_probability"] == pytest.approx(expected, abs=1e-9)
    finally:
        server.stop()
