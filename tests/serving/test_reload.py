"""Model changes without downtime: /reload with its token, a store that goes away, MODEL_DIR."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import (
    ALIAS,
    TOKEN,
    Server,
    finish_register,
    predict,
    request,
    start_register,
)

from healthpredict.data.synthetic import generate
from healthpredict.modeling.runtime.records import frame_from_records, records_from_frame

AUTH = {"Authorization": f"Bearer {TOKEN}"}
USERINFO = "svc:" + "hunter2"  # credentials in a store URL, which reasons must not show


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return records_from_frame(generate(20, seed=33))


def _reload(live, headers=None, force=False):
    return request(
        live.url + "/reload" + ("?force=true" if force else ""), b"", headers=headers, method="POST"
    )


@pytest.mark.faults
def test_reload_needs_the_token(live):
    status, body = _reload(live)
    assert status == 401 and body["detail"] == "missing bearer token"
    assert _reload(live, {"Authorization": "Basic dXNlcjpwYXNz"})[0] == 401
    status, body = _reload(live, {"Authorization": "Bearer wrong"})
    assert status == 403 and body["detail"] == "wrong reload token"


def test_reload_of_the_same_version_changes_nothing(live):
    status, body = _reload(live, AUTH)
    assert status == 200 and body["status"] == "unchanged"


def test_new_champion_is_picked_up_without_downtime(live, records):
    before = request(live.url + "/model-info")[1]["version"]
    new = finish_register(
        start_register(live.tmp, live.tracking_uri, "logreg", seed=5, alias=ALIAS)
    )
    assert new != before
    # Moving the alias alone changes nothing: the loaded model keeps serving.
    assert predict(live.url, records[0])[1]["model_version"] == before

    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            status, body = predict(live.url, records[:3])
            answers.append((status, body["model_version"] if status == 200 else body))

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        status, body = _reload(live, AUTH)
    finally:
        stop.set()
        thread.join()
    assert status == 200, body
    assert body == {"status": "reloaded", "version": new, "previous_version": before}
    assert answers and all(s == 200 for s, _ in answers), answers[:3]
    assert {v for _, v in answers} <= {before, new}
    assert predict(live.url, records[0])[1]["model_version"] == new
    info = request(live.url + "/model-info")[1]
    assert info["version"] == new and info["params"]["family"] == "logreg"
    metrics = request(live.url + "/metrics")[1]
    assert (
        f'healthpredict_model_info{{inference_path="fast",model_name="HealthPredict",model_version="{new}"}} 1.0'
        in metrics
    )
    assert f'model_version="{before}"}} 0.0' in metrics


@pytest.mark.faults
def test_store_gone_keeps_serving(live, records):
    """A broken registry fails the reload (503, reason) but not the model in service."""
    serving = request(live.url + "/model-info")[1]["version"]
    original = live.db.read_bytes()
    try:
        with open(live.db, "r+b") as fh:  # same file, garbage header: the store is unusable
            fh.write(b"\0" * 100)
        status, body = _reload(live, AUTH, force=True)
        assert status == 503
        assert f"still serving version {serving}" in body["detail"]
        assert "model store unreachable" in body["detail"]
        assert request(live.url + "/ready")[0] == 200
        status, answer = predict(live.url, records[:5])
        assert status == 200 and answer["model_version"] == serving
    finally:
        live.db.write_bytes(original)
    assert "reload failed (still serving version" in live.server.log()


@pytest.fixture
def store_settings(monkeypatch):
    """Settings naming a registry with credentials and an S3 endpoint (read afresh)."""
    from healthpredict.core.settings import get_settings

    monkeypatch.setenv("HP_MLFLOW_TRACKING_URI", f"http://{USERINFO}@127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.faults
def test_unreachable_store_is_named_as_such(store_settings):
    """The reason names the store and its setting, gives the root cause, hides credentials."""
    import botocore.exceptions
    import requests

    from healthpredict.serving.load_errors import describe_error

    with pytest.raises(requests.ConnectionError) as caught:
        requests.get("http://127.0.0.1:9/api/2.0/mlflow/registered-models/alias", timeout=2)
    reason = describe_error(caught.value)
    assert reason.startswith(
        "model store unreachable: MLflow registry http://***@127.0.0.1:9 (MLFLOW_TRACKING_URI): "
        "ConnectionRefusedError: [Errno 111] Connection refused [ConnectionError: "
    ), reason
    assert "hunter2" not in reason
    s3 = botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bucket")
    assert describe_error(s3) == (
        "model store unreachable: artifact store http://127.0.0.1:9 (MLFLOW_S3_ENDPOINT_URL): "
        'EndpointConnectionError: Could not connect to the endpoint URL: "http://127.0.0.1:9/bucket"'
    )


def test_baked_model_dir_serves_without_mlflow(live, records, tmp_path):
    """export-model writes MODEL_DIR; the API serves it with no store and no mlflow at all."""
    out = tmp_path / "model"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": live.tracking_uri,
        "HP_STORAGE": str(live.tmp / "var"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "healthpredict.cli", "export-model", "--out", str(out),
         "--model-uri", f"models:/HealthPredict@{ALIAS}"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (out / "MLmodel").is_file() and (out / "model_info.json").is_file()
    blocker = tmp_path / "no-mlflow" / "mlflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(
        "raise ImportError('mlflow is not installed in this image')\n"
    )
    baked = Server(
        tmp_path,
        {
            "MODEL_DIR": str(out),
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",  # nothing listens there
            # First on the path (the caller's path stays: a checkout's lib/ may be on it).
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(blocker.parent), os.environ.get("PYTHONPATH")])
            ),
        },
    )
    try:
        baked.wait("/ready", 200)
        info = request(baked.url + "/model-info")[1]
        live_info = request(live.url + "/model-info")[1]
        assert info["source"] == str(out) and info["version"] == live_info["version"]
        assert info["alias"] == ALIAS and info["run_id"] == live_info["run_id"]
        got = predict(baked.url, records)[1]["predictions"]
        want = predict(live.url, records)[1]["predictions"]
        assert got == want
        # ... and both equal the exported pipeline's own predict_proba.
        from healthpredict.serving.model_store import load_pipeline_dir

        expected = load_pipeline_dir(out).predict_proba(frame_from_records(records))[:, 1]
        np.testing.assert_allclose(
            [p["readmission_probability"] for p in got], expected, rtol=0, atol=1e-9
        )
        assert _reload_status(baked) == 403  # no token configured: reloads are disabled
    finally:
        baked.stop()
    assert "Traceback" not in baked.log()


def _reload_status(server: Server) -> int:
    return request(server.url + "/reload", b"", headers=AUTH, method="POST")[0]


def test_export_refuses_a_non_empty_folder(tmp_path):
    from healthpredict.serving.model_store import export_model

    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        export_model("models:/HealthPredict@champion", tmp_path)


@pytest.mark.faults
def test_model_dir_without_info_is_explained(tmp_path):
    from healthpredict.serving.load_errors import ModelLoadError
    from healthpredict.serving.model_store import read_model_dir

    with pytest.raises(ModelLoadError, match="no model_info.json"):
        read_model_dir(Path(tmp_path))
