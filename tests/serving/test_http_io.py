"""A bug inside the API: answered 500 with its type, logged with where it happened, not what.

In-process (FastAPI's TestClient): the real app from create_app, plus one route with a bug,
since no request of the real routes reaches one.
"""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from healthpredict.serving import metrics

SECRET_VALUE = "Zyxwvut-Sentinel-918273645"  # a request value an exception message quotes


def broken_scoring(record: dict) -> float:
    return float(record["age"])  # raises, quoting the value


@pytest.fixture
def client(tmp_path):
    """The API as create_app builds it, plus one route with a bug (no lifespan: no model)."""
    from healthpredict.serving.api import create_app
    from healthpredict.serving.settings import ServingSettings

    app = create_app(ServingSettings(auth=False, model_dir=tmp_path / "no-model"))

    @app.post("/boom")
    async def boom(record: dict) -> dict:
        return {"p": broken_scoring(record)}

    return TestClient(app, raise_server_exceptions=True)


@pytest.mark.faults
def test_a_bug_is_contained_and_its_message_is_not_logged(client, caplog):
    caplog.set_level(logging.DEBUG)
    before = metrics.ERRORS.labels("other", "internal")._value.get()
    answer = client.post("/boom", json={"age": SECRET_VALUE})
    assert answer.status_code == 500
    assert answer.json() == {"detail": "internal error: ValueError"}
    assert metrics.ERRORS.labels("other", "internal")._value.get() == before + 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "unhandled error on /boom: ValueError (its message is not logged" in logged
    assert "in broken_scoring" in logged and "Traceback (most recent call last)" in logged
    assert SECRET_VALUE not in logged
    assert all(r.exc_info is None for r in caplog.records)  # no handler prints the message
