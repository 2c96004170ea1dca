"""Shared fixtures: isolated settings, real data location, synthetic data."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_ZIP = SHARED_DATA / "dataset_diabetes.zip"
REAL_ZIP_UCI_LAYOUT = SHARED_DATA / "uci-296-diabetes-130-us-hospitals.zip"


@pytest.fixture
def real_zip() -> Path:
    """Path of the real UCI zip; skips the test when ../shared/data is absent."""
    if not REAL_ZIP.exists():
        pytest.skip(f"real data not found at {REAL_ZIP}")
    return REAL_ZIP


@pytest.fixture
def hp_env(tmp_path, monkeypatch):
    """Point every setting at a fresh temporary folder (storage, MLflow, rendered runs)."""
    from healthpredict.config import get_settings

    monkeypatch.setenv("HP_STORAGE", str(tmp_path / "var"))
    monkeypatch.setenv("HP_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HP_RENDERED_DIR", str(tmp_path / "rendered"))
    monkeypatch.setenv("HP_UCI_SOURCE", "synthetic")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


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

    from healthpredict.config import get_settings

    monkeypatch.setenv("HP_S3_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    get_settings.cache_clear()
    name = f"hp-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket=name)
    yield f"s3://{name}"
    get_settings.cache_clear()
