"""Helpers of the serving tests: register a small model, run uvicorn, wait for it, call it.

Every :class:`Server` has one API client, ``CLIENT_ID`` with ``CLIENT_TOKEN``, unless its env
configures authentication itself; :func:`predict` sends that client's token.

``register`` runs in a subprocess (``python serving_helpers.py register ...``) so that the test
process never points MLflow's global tracking URI at a temporary store.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "HealthPredict"
TOKEN = "test-reload-token"
CLIENT_ID = "test-client"  # the API client every Server knows (see Server)
CLIENT_TOKEN = "hp_test-client-token"
CLIENT_AUTH = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
AUTH_ENV = ("HP_SERVE_AUTH", "HP_SERVE_TOKENS", "HP_SERVE_TOKENS_FILE")
ALIAS = "live"  # the alias the session's live server serves
FAMILY_PARAMS = {
    "rf": {"n_estimators": 30, "max_depth": 10, "min_samples_leaf": 5},
    "logreg": {"C": 0.5},
    "hgb": {"max_iter": 40, "max_leaf_nodes": 15},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def register(tracking_uri: str, family: str, seed: int, n_rows: int = 2000) -> str:
    """Fit ``family`` on synthetic rows, log and register it; champion only if none yet."""
    import mlflow

    from healthpredict.data.schema import make_target
    from healthpredict.data.synthetic import generate
    from healthpredict.mlops import registry
    from healthpredict.mlops.tracking import setup_mlflow, use_experiment
    from healthpredict.modeling.models import make_pipeline

    setup_mlflow(tracking_uri)
    use_experiment("serving-tests")
    frame = generate(n_rows, seed=seed)
    y = make_target(frame)
    X = frame.drop(columns=["readmitted"])
    params = FAMILY_PARAMS[family]
    with mlflow.start_run():
        pipe = make_pipeline(family, params, seed=seed).fit(X, y)
        info = registry.log_model(
            pipe,
            threshold=0.3,
            target="<30",
            test_metrics={"roc_auc": 0.61, "pr_auc": 0.2},
            input_example=X.head(20),
            data_source="synthetic",
            params={"family": family, **params},
            name=MODEL_NAME,
        )
    return info.version


_REGISTER = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from serving_helpers import MODEL_NAME, register
from healthpredict.mlops.tracking import setup_mlflow
from mlflow import MlflowClient
from healthpredict.mlops.tracking import use_experiment
uri, family, seed, alias, go = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6]
setup_mlflow(uri)
use_experiment("serving-tests")  # creates the database: nobody else must migrate it meanwhile
Path(sys.argv[7]).touch()
version = register(uri, family, seed)
if go:  # hold the alias back until the test says so
    deadline = time.monotonic() + 300
    while not Path(go).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
if alias:
    setup_mlflow(uri)
    MlflowClient().set_registered_model_alias(MODEL_NAME, alias, version)
print(json.dumps({"version": version}))
"""


def start_register(
    tmp: Path,
    tracking_uri: str,
    family: str,
    seed: int,
    alias: str = "",
    go_file: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Register a model in a fresh interpreter; point ``alias`` at it once ``go_file`` exists.

    Artifacts go under ``tmp/var`` (never the checkout's ``var/``) unless ``env`` sets another
    ``HP_STORAGE`` (an ``s3://`` one, say); ``tmp/db-ready`` appears once the MLflow database
    exists (two processes creating one sqlite store at once collide).
    """
    return subprocess.Popen(
        [sys.executable, "-c", _REGISTER, str(Path(__file__).parent), tracking_uri, family,
         str(seed), alias, str(go_file or ""), str(tmp / "db-ready")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**_clean_env(), "HP_STORAGE": str(tmp / "var"), **(env or {})},
    )  # fmt: skip


def finish_register(proc: subprocess.Popen, timeout: float = 240) -> str:
    """Wait for :func:`start_register`; return the registered version."""
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"registration failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])["version"]


def write_model_dir(
    path: Path, pipeline: Any, version: str, threshold: float = 0.4, alias: str = "champion"
) -> Path:
    """The layout export-model writes (MLmodel, the cloudpickle, model_info.json): a MODEL_DIR."""
    import cloudpickle
    import yaml

    path.mkdir(parents=True, exist_ok=True)
    flavor = {"pickled_model": "model.pkl", "serialization_format": "cloudpickle"}
    (path / "MLmodel").write_text(yaml.safe_dump({"flavors": {"sklearn": flavor}}))
    (path / "model.pkl").write_bytes(cloudpickle.dumps(pipeline))
    info = {"name": MODEL_NAME, "version": version, "threshold": threshold, "alias": alias}
    (path / "model_info.json").write_text(json.dumps(info))
    return path


def baked_model(path: Path, family: str = "logreg", seed: int = 4, version: str = "1") -> Path:
    """Fit ``family`` on synthetic rows and write it as a MODEL_DIR (no MLflow involved)."""
    from healthpredict.data.schema import make_target
    from healthpredict.data.synthetic import generate
    from healthpredict.modeling.models import make_pipeline

    frame = generate(1500, seed=seed)
    X, y = frame.drop(columns=["readmitted"]), make_target(frame)
    pipeline = make_pipeline(family, FAMILY_PARAMS[family], seed=seed).fit(X, y)
    return write_model_dir(path, pipeline, version)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HP_", "MLFLOW_", "MODEL_"))}
    env.pop("RELOAD_TOKEN", None)
    return env


def client_tokens(*clients: tuple[str, str] | tuple[str, str, tuple[str, ...]]) -> str:
    """Token file text of ``(client id, token[, scopes])`` entries (the API's own format)."""
    from healthpredict.serving.auth import token_line

    return "".join(token_line(*client) + "\n" for client in clients)


class Server:
    """A uvicorn process serving ``serving/app.py`` on 127.0.0.1.

    Unless ``env`` sets one of :data:`AUTH_ENV`, the server knows one API client,
    :data:`CLIENT_ID` (token :data:`CLIENT_TOKEN`, scope ``predict``).
    """

    def __init__(
        self, tmp: Path, env: dict[str, str], workers: int = 1, args: tuple[str, ...] = ()
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"uvicorn-{self.port}.log"
        auth = (
            {}
            if set(AUTH_ENV) & set(env)
            else {"HP_SERVE_TOKENS": client_tokens((CLIENT_ID, CLIENT_TOKEN))}
        )
        full_env = {**_clean_env(), "HP_STORAGE": str(tmp / "var"), **auth, **env}
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(ROOT / "serving"),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers),
             "--no-access-log", *args],
            cwd=tmp, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def poll(self, path: str, predicate, timeout: float = 120) -> tuple[int, Any]:
        """Poll ``path`` until ``predicate(status, body)`` holds; return that answer."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                last = request(self.url + path)
                if predicate(*last):
                    return last
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{path}: condition never met (last: {last}):\n{self.log()[-3000:]}")

    def wait(self, path: str = "/health", status: int = 200, timeout: float = 120) -> Any:
        """Poll ``path`` until it answers ``status``; return the body."""
        return self.poll(path, lambda code, _: code == status, timeout)[1]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._log.close()


def request(
    url: str, body=None, headers: dict | None = None, method: str | None = None, timeout=30
):
    """(status, parsed JSON or text) of one HTTP request; bodies other than bytes go as JSON."""
    data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw, ctype = resp.status, resp.read(), resp.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        status, raw, ctype = exc.code, exc.read(), exc.headers.get("content-type", "")
    return status, (json.loads(raw) if "json" in ctype else raw.decode())


def predict(url: str, body, headers: dict | None = None, **kw):
    """(status, body) of ``POST <url>/predict`` as the test client (its token unless overridden)."""
    return request(url + "/predict", body, headers={**CLIENT_AUTH, **(headers or {})}, **kw)


if __name__ == "__main__":  # pragma: no cover - manual use
    print(register(sys.argv[1], sys.argv[2], int(sys.argv[3])))
