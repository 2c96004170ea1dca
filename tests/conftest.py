"""Shared fixtures: isolated settings, real data location, synthetic data."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest


@pytest.fixture(scope="session")
def real_zip() -> Path:
    """The real UCI zip committed in the repository (``data/uci``), its sha256 checked.

    Never skips: the zip is part of the repository, so a missing one fails the test.
    """
    from healthpredict.data.uci import BUNDLED_ZIP, bundled_zip

    path = bundled_zip()
    if path is None:
        pytest.fail(f"the bundled UCI zip is missing: {BUNDLED_ZIP} (see data/uci/README.md)")
    return path


def isolate_settings(patch: pytest.MonkeyPatch, base: Path) -> None:
    """Point every setting at ``base`` (storage, MLflow, rendered runs), synthetic data."""
    from healthpredict.core.settings import get_settings
    from healthpredict.mlops import tracking

    patch.setenv("HP_STORAGE", str(base / "var"))
    patch.setenv("HP_MLFLOW_TRACKING_URI", f"sqlite:///{base / 'mlflow.db'}")
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)
    patch.setenv("HP_RENDERED_DIR", str(base / "rendered"))
    patch.setenv("HP_UCI_SOURCE", "synthetic")
    patch.delenv("HP_EVIDENTLY_WORKSPACE", raising=False)  # default: under the storage above
    # The next MLflow use sets up this store, not the one an earlier test configured.
    patch.setattr(tracking, "_configured_uri", None)
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def settings_isolation():
    """:func:`isolate_settings`, for module- and session-scoped fixtures of other folders."""
    return isolate_settings


@pytest.fixture
def hp_env(tmp_path, monkeypatch):
    """Point every setting at a fresh temporary folder (storage, MLflow, rendered runs)."""
    from healthpredict.core.settings import get_settings

    isolate_settings(monkeypatch, tmp_path)
    yield tmp_path
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def synthetic_champion():
    """A function that, under the current settings, prepares synthetic splits (half of the
    encounters as the initial period) and registers a logistic-regression champion.

    Returns a namespace with ``pipeline``, ``info`` and the ``train``/``validation``/``test``
    frames. A session fixture returning a function, so module- and session-scoped fixtures of
    other folders can share it (conftest modules cannot import each other).
    """

    def make(n_synthetic: int):
        import mlflow

        from healthpredict.data.schema import make_target
        from healthpredict.data.split import SplitParams, load_split, prepare
        from healthpredict.mlops import registry, tracking
        from healthpredict.modeling.evaluation import choose_threshold
        from healthpredict.modeling.models import make_pipeline

        prepare("synthetic", params=SplitParams(initial_fraction=0.5), n_synthetic=n_synthetic)
        train, validation, test = (load_split(s) for s in ("initial_train", "validation", "test"))
        pipeline = make_pipeline("logreg", {"C": 1.0}, seed=0).fit(train, make_target(train))
        threshold = choose_threshold(
            make_target(validation), pipeline.predict_proba(validation)[:, 1]
        )
        tracking.setup_mlflow()
        tracking.use_experiment("HealthPredict_Training")
        with mlflow.start_run():
            info = registry.log_model(
                pipeline,
                threshold=threshold,
                target="<30",
                test_metrics={"roc_auc": 0.65},
                input_example=train,
                data_source="synthetic",
                params={"family": "logreg", "C": 1.0},
                train_rows=len(train),
            )
        return SimpleNamespace(
            pipeline=pipeline, info=info, train=train, validation=validation, test=test
        )

    return make


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server():
    """A real S3 HTTP endpoint: moto's server mode in a subprocess on 127.0.0.1."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.2)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(moto_server, monkeypatch):
    """A fresh bucket on the moto server, with settings pointing S3 at it; yields ``s3://name``."""
    import uuid

    import boto3

    from healthpredict.core.settings import get_settings

    monkeypatch.setenv("HP_S3_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    get_settings.cache_clear()
    name = f"hp-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket=name)
    yield f"s3://{name}"
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL cluster on 127.0.0.1 for the session (see tests/support/postgres.py).

    Skipped, with the reason, only when the server binaries are not installed; under
    ``HP_TESTS_STRICT=1`` (set by .ci/run, which installs them) that fails instead, so CI never
    passes by skipping. Each user creates its own database with ``postgres.create_database``.
    """
    import os

    from tests.support.postgres import PostgresCluster, PostgresUnavailable

    try:
        cluster = PostgresCluster.start_new()
    except PostgresUnavailable as exc:
        if os.environ.get("HP_TESTS_STRICT") == "1":
            pytest.fail(f"HP_TESTS_STRICT=1 and PostgreSQL is missing: {exc}")
        pytest.skip(str(exc))
    yield cluster
    cluster.stop()
