"""ModelHolder on a MODEL_DIR folder: background load, atomic reload, failed reload, polling."""

from __future__ import annotations

import json
import time

import pytest
from serving_helpers import write_model_dir

from healthpredict.data.schema import make_target
from healthpredict.data.synthetic import generate
from healthpredict.modeling.models import make_pipeline
from healthpredict.modeling.runtime.records import records_from_frame
from healthpredict.serving.load_errors import ModelLoadError
from healthpredict.serving.model_store import ModelHolder
from healthpredict.serving.settings import ServingSettings


@pytest.fixture(scope="module")
def pipelines():
    frame = generate(1500, seed=4)
    X, y = frame.drop(columns=["readmitted"]), make_target(frame)
    return {
        "1": make_pipeline("logreg", {"C": 1.0}).fit(X, y),
        "2": make_pipeline("rf", {"n_estimators": 10, "max_depth": 6}).fit(X, y),
    }


def wait_until(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.mark.faults
def test_reload_swaps_whole_models_and_survives_failures(tmp_path, pipelines):
    model_dir = tmp_path / "model"
    holder = ModelHolder(
        ServingSettings(model_dir=model_dir, retry_initial_s=0.05, retry_max_s=0.1)
    )
    holder.start()
    try:
        wait_until(lambda: holder.attempts >= 2)
        assert holder.current is None and "no model_info.json" in holder.status()["reason"]
        write_model_dir(model_dir, pipelines["1"], "1")
        wait_until(lambda: holder.current is not None)
        first = holder.current
        assert first.version == "1" and first.threshold == 0.4 and holder.status()["ready"]
        assert holder.reload() == {"status": "unchanged", "version": "1", "previous_version": "1"}

        (model_dir / "model.pkl").write_bytes(b"not a pickle")
        (model_dir / "model_info.json").write_text(json.dumps({"version": "2"}))
        with pytest.raises(ModelLoadError, match="model load failed"):
            holder.reload()
        assert holder.current is first  # the failed reload changed nothing

        write_model_dir(model_dir, pipelines["2"], "2")
        result = holder.reload()
        assert result == {"status": "reloaded", "version": "2", "previous_version": "1"}
        records = records_from_frame(generate(5, seed=9))
        assert holder.current.predictor.estimator == "random_forest"
        assert first.predictor.predict_proba(records).shape == (5,)  # old object still whole
    finally:
        holder.stop()


def test_poll_follows_the_source(tmp_path, pipelines):
    model_dir = tmp_path / "model"
    write_model_dir(model_dir, pipelines["1"], "1")
    changes = []
    holder = ModelHolder(
        ServingSettings(model_dir=model_dir, poll_s=0.1),
        on_change=lambda old, new: changes.append((old and old.version, new.version)),
    )
    holder.start()
    try:
        wait_until(lambda: holder.current is not None)
        write_model_dir(model_dir, pipelines["2"], "2")
        wait_until(lambda: holder.current.version == "2")
        assert changes == [(None, "1"), ("1", "2")]
    finally:
        holder.stop()
