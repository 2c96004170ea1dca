"""Fixtures of the serving tests: one live API (real uvicorn, real sqlite MLflow) per session.

The server starts before any model exists, with ``MODEL_URI=models:/HealthPredict@live``; the
fixture records the 503 answers of that moment, then points the alias at a registered random
forest and waits until ``/ready`` turns 200.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

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
from healthpredict.modeling.runtime.records import records_from_frame


@pytest.fixture(scope="session")
def live(tmp_path_factory):
    """The running API: ``url``, ``server``, ``tracking_uri``, ``db`` and the early answers."""
    tmp = tmp_path_factory.mktemp("serving")
    db = tmp / "mlflow.db"
    uri = f"sqlite:///{db}"
    go = tmp / "go"
    registering = start_register(tmp, uri, "rf", seed=1, alias=ALIAS, go_file=go)
    deadline = time.monotonic() + 120
    while not (tmp / "db-ready").exists():
        if registering.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"registration did not start: {registering.communicate()}")
        time.sleep(0.1)
    server = Server(
        tmp,
        {
            "MLFLOW_TRACKING_URI": uri,
            "MODEL_URI": f"models:/HealthPredict@{ALIAS}",
            "RELOAD_TOKEN": TOKEN,
            "HP_SERVE_RETRY_INITIAL_S": "0.3",
            "HP_SERVE_RETRY_MAX_S": "1",
            "HP_SERVE_MAX_BODY_BYTES": "200000",
            "HP_SERVE_MAX_RECORDS": "100",
        },
    )
    try:
        server.wait("/health")
        # A finished attempt, so that the reason is the missing alias rather than "loading".
        server.poll(
            "/ready", lambda code, body: code == 503 and "alias" in (body.get("reason") or "")
        )
        early = SimpleNamespace(
            ready=request(server.url + "/ready"),
            model_info=request(server.url + "/model-info"),
            predict=predict(server.url, records_from_frame(generate(1, seed=2))),
        )
        go.touch()
        version = finish_register(registering)
        server.wait("/ready", 200)
        yield SimpleNamespace(
            url=server.url,
            server=server,
            tracking_uri=uri,
            db=db,
            tmp=tmp,
            early=early,
            version=version,
        )
    finally:
        registering.kill() if registering.poll() is None else None
        server.stop()
