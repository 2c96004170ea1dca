"""End-to-end check of the serving image: build it with a model baked in, run it, probe it.

What ``make image-test`` runs (and ``tests/serving/test_image.py``): a small logistic regression
is trained on a sample of the real UCI data, registered in a temporary sqlite MLflow store and
exported with :func:`healthpredict.serving.model_store.export_model`; the image
``healthpredict-api:v<N>`` is built with podman from the checkout (the stand-in base is made
once per store), run on 127.0.0.1 on a free port (host network) with a token file mounted, and
checked: ``/health`` and ``/ready`` answer 200, ``/model-info`` reports version N (the tag's and
the image label's), one authenticated ``/predict`` returns the probability the pipeline computes
for the same record (within 1e-9), the server runs as uid 10001, the image has no C compiler, and
SIGTERM stops it with exit code 0 within 2 s. Cold start is timed from ``podman run`` to the
first 200 of ``/ready``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from healthpredict.core.settings import get_settings
from healthpredict.mlops.containers import (
    SERVING_IMAGE,
    SERVING_UID,
    STANDIN_BASE,
    VERSION_LABEL,
    ContainerError,
    Podman,
    build_serving_image,
    default_podman,
    model_dir_version,
    serving_tag,
)

# Where the API reads its token file in the cluster (the Secret healthpredict-api-tokens).
TOKENS_PATH = "/var/run/secrets/healthpredict/api-tokens/tokens"
CLIENT_ID = "image-test"
STOP_LIMIT_S = 2.0
PROBABILITY_TOLERANCE = 1e-9
TRAIN_ROWS = 5_000
READY_TIMEOUT_S = 120.0
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "tcc")


@dataclass
class ImageCheck:
    """What the check measured; ``failures`` names every check that did not pass."""

    image: str
    base_image: str
    model_version: str
    build_s: float = 0.0
    image_mb: float = 0.0
    cold_start_s: float | None = None
    stop_s: float | None = None
    stop_exit_code: int | None = None
    predict_matches: bool = False
    predict_abs_diff: float | None = None
    model_info_version: str | None = None
    label_version: str | None = None
    runs_as_uid: int | None = None
    has_compiler: bool | None = None
    auth_enforced: bool | None = None
    healthcheck_ok: bool | None = None
    train_rows: int = 0
    data_source: str = ""
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        """The ``var/bench/image.json`` document."""
        return {**asdict(self), "ok": self.ok}


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(
    url: str, body: bytes | None = None, token: str | None = None, timeout: float = 10
) -> tuple[int, Any]:
    """(status, parsed JSON or None) of a GET (or a POST of JSON ``body``); never raises on 4xx/5xx."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def start_serving(
    podman: Podman, tag: str, *, name: str, port: int, tokens: Path, workers: int = 1
) -> float:
    """Run the serving image on 127.0.0.1:``port`` with its token file mounted; cold start in s.

    The cold start runs from ``podman run`` to the first 200 of ``/ready``.

    Raises:
        ContainerError: The container exited or was not ready in time (with its log).
    """
    env = {
        "UVICORN_HOST": "127.0.0.1",
        "UVICORN_PORT": str(port),
        "WEB_CONCURRENCY": str(workers),
        "HP_SERVE_TOKENS_FILE": TOKENS_PATH,
    }
    started = time.perf_counter()
    podman.run_detached(tag, name=name, env=env, mounts=[(tokens, TOKENS_PATH)])
    podman.wait_ready(name, f"http://127.0.0.1:{port}/ready", READY_TIMEOUT_S)
    return time.perf_counter() - started


@contextlib.contextmanager
def _temporary_store(folder: Path) -> Iterator[str]:
    """Point the project settings at a throw-away storage and sqlite MLflow store; restore after."""
    keys = ("HP_STORAGE", "HP_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI")
    saved = {k: os.environ.get(k) for k in keys}
    tracking = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ.update(HP_STORAGE=str(folder / "var"), HP_MLFLOW_TRACKING_URI=tracking)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    get_settings.cache_clear()
    try:
        yield tracking
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()


def train_and_export(folder: Path, n_rows: int = TRAIN_ROWS) -> tuple[Path, Any, Any, str]:
    """Train a logistic regression on real rows, register it in a temporary store, export it.

    Args:
        folder: An empty working folder (MLflow store, artifacts, the exported model).
        n_rows: Training rows sampled from the UCI data.

    Returns:
        (exported model folder, fitted pipeline, held-out raw rows, data source).

    Raises:
        ContainerError: The real data is not there (no bundled zip, no HP_UCI_SOURCE).
    """
    # mlflow and the data stack cost seconds to import: only when a model is trained.
    import mlflow

    from healthpredict.data.schema import make_target
    from healthpredict.data.uci import load_uci, real_data_source
    from healthpredict.mlops import registry, tracking
    from healthpredict.modeling.models import make_pipeline
    from healthpredict.serving.model_store import export_model

    with _temporary_store(folder) as tracking_uri:
        source = real_data_source()
        if source is None:
            raise ContainerError("no real UCI data (bundled zip or HP_UCI_SOURCE) to train on")
        frame = load_uci(source).frame.sample(n_rows + 50, random_state=0)
        train, held_out = frame.iloc[:n_rows], frame.iloc[n_rows:]
        X = train.drop(columns=["readmitted"])
        pipeline = make_pipeline("logreg", {"C": 1.0}, seed=0).fit(X, make_target(train))
        tracking.setup_mlflow(tracking_uri)
        tracking.use_experiment("image-check")
        with mlflow.start_run():
            info = registry.log_model(
                pipeline,
                threshold=0.5,
                target="<30",
                test_metrics={},
                input_example=X.head(50),
                data_source="real",
                params={"family": "logreg", "C": 1.0},
                train_rows=len(train),
            )
        model_dir = export_model(f"models:/{info.name}/{info.version}", folder / "model")
    return model_dir, pipeline, held_out.drop(columns=["readmitted"]), "real"


def _record_and_probability(pipeline: Any, rows: Any) -> tuple[dict[str, Any], float]:
    """One record as a client sends it (original column names) and the pipeline's probability."""
    from healthpredict.data.schema import ALIASES
    from healthpredict.modeling.runtime.records import records_from_frame

    row = rows.iloc[[0]]
    record = {ALIASES.get(k, k): v for k, v in records_from_frame(row)[0].items()}
    return record, float(pipeline.predict_proba(row)[0, 1])


def run_image_check(
    work_dir: str | Path,
    *,
    podman: Podman | None = None,
    image: str = SERVING_IMAGE,
    base_image: str = STANDIN_BASE,
    remove_image: bool = True,
    log: Callable[[str], None] = print,
) -> ImageCheck:
    """Build the serving image with a freshly trained model and check it running.

    Every container it starts is removed, also on failure; the image too unless
    ``remove_image`` is False. Failed checks are listed in the result's ``failures``; a step that
    cannot go on (build failed, never ready) raises.

    Args:
        work_dir: An empty folder for the MLflow store, the model and the token file.
        podman: The store to build in (default: the project's, kept between runs).
        image: Image name; the tag is ``<image>:v<N>``.
        base_image: The Dockerfile's ``BASE_IMAGE``.
        remove_image: Remove the tag at the end (its cached layers stay in the store).
        log: Progress lines.

    Raises:
        ContainerError: podman, the build or the container failed (the message says which).
    """
    podman = podman or default_podman()
    work = Path(work_dir)
    started = time.perf_counter()
    model_dir, pipeline, rows, source = train_and_export(work)
    version = model_dir_version(model_dir)
    tag = serving_tag(version, image)
    log(f"trained and exported model version {version} ({time.perf_counter() - started:.0f} s)")
    result = ImageCheck(image=tag, base_image=base_image, model_version=str(version))
    result.train_rows, result.data_source = TRAIN_ROWS, source

    token = secrets.token_urlsafe(32)
    tokens = work / "tokens"
    from healthpredict.serving.auth import token_line

    tokens.write_text(token_line(CLIENT_ID, token) + "\n")
    tokens.chmod(0o644)  # read by uid 10001 in the container
    record, expected = _record_and_probability(pipeline, rows)

    built = time.perf_counter()
    try:
        build_serving_image(podman, model_dir, tag, base_image=base_image)
        result.build_s = round(time.perf_counter() - built, 1)
        result.image_mb = podman.image_mb(tag)
        result.label_version = podman.image_label(tag, VERSION_LABEL)
        log(f"built {tag}: {result.image_mb} MB in {result.build_s} s")
        _check_running(podman, tag, tokens, token, record, expected, result, log)
    finally:
        if remove_image:
            podman.remove_image(tag)
    return result


def _check_running(
    podman: Podman,
    tag: str,
    tokens: Path,
    token: str,
    record: dict[str, Any],
    expected: float,
    result: ImageCheck,
    log: Callable[[str], None],
) -> None:
    """Run the image once and fill ``result`` with what the running server shows."""
    fail = result.failures.append
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    name = f"hp-image-check-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        result.cold_start_s = round(
            start_serving(podman, tag, name=name, port=port, tokens=tokens), 2
        )
        log(f"ready on {base} {result.cold_start_s} s after podman run")

        if (status := _request(f"{base}/health")[0]) != 200:
            fail(f"/health answered {status}")
        # The image's own HEALTHCHECK, run once: it must probe the port the server listens on.
        result.healthcheck_ok = podman.healthcheck(name)
        if not result.healthcheck_ok:
            fail("the image's HEALTHCHECK fails on a serving container")
        status, info = _request(f"{base}/model-info", token=token)
        result.model_info_version = str((info or {}).get("version")) if status == 200 else None
        if result.model_info_version != result.model_version:
            fail(
                f"/model-info reports version {result.model_info_version} ({status}), baked {result.model_version}"
            )
        if (
            result.label_version != result.model_version
            or tag.rsplit(":v", 1)[-1] != result.model_version
        ):
            fail(
                f"tag {tag} / label {result.label_version} do not name version {result.model_version}"
            )

        body = json.dumps(record).encode()
        status, answer = _request(f"{base}/predict", body, token=token)
        if status != 200:
            fail(f"/predict with the token answered {status}: {answer}")
        else:
            got = float(answer["predictions"][0]["readmission_probability"])
            result.predict_abs_diff = abs(got - expected)
            result.predict_matches = result.predict_abs_diff <= PROBABILITY_TOLERANCE
            if not result.predict_matches:
                fail(
                    f"/predict {got!r} != pipeline {expected!r} (|diff| {result.predict_abs_diff:.3g})"
                )
        status = _request(f"{base}/predict", body)[0]
        result.auth_enforced = status == 401
        if not result.auth_enforced:
            fail(f"/predict without a token answered {status}, not 401")

        result.runs_as_uid = int(podman.exec_in(name, "id", "-u").strip())
        if result.runs_as_uid != SERVING_UID:
            fail(f"the server runs as uid {result.runs_as_uid}, not {SERVING_UID}")
        script = "for c in " + " ".join(COMPILERS) + "; do command -v $c; done; true"
        found = podman.exec_in(name, "sh", "-c", script).split()
        result.has_compiler = bool(found)
        if found:
            fail(f"the image has compilers: {found}")

        stopped = podman.stop_with_signal(name, "TERM", timeout=15)
        result.stop_s, result.stop_exit_code = round(stopped.seconds, 3), stopped.exit_code
        log(f"SIGTERM: stopped in {result.stop_s} s, exit code {stopped.exit_code}")
        if stopped.seconds > STOP_LIMIT_S or stopped.exit_code != 0:
            fail(
                f"SIGTERM: stopped in {stopped.seconds:.2f} s with exit code {stopped.exit_code} (want 0 within {STOP_LIMIT_S} s)"
            )
    finally:
        podman.remove(name)


def write_report(result: ImageCheck, out: str | Path) -> Path:
    """Write the check's figures as JSON (``var/bench/image.json``)."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return path


def summary(result: ImageCheck) -> str:
    """A few lines for the terminal."""
    lines = [
        f"image {result.image} on {result.base_image}: {result.image_mb} MB, built in {result.build_s} s",
        f"  cold start to /ready   {result.cold_start_s} s",
        f"  SIGTERM to exit        {result.stop_s} s (exit code {result.stop_exit_code})",
        f"  /model-info version    {result.model_info_version} (label {result.label_version})",
        f"  /predict matches       {result.predict_matches} (|diff| {result.predict_abs_diff})",
        f"  uid {result.runs_as_uid}, compiler {result.has_compiler}, auth enforced {result.auth_enforced}",
        f"  HEALTHCHECK passes     {result.healthcheck_ok}",
    ]
    lines += [f"  FAILED: {f}" for f in result.failures] or ["  all checks passed"]
    return "\n".join(lines)


def main(out: str | Path, **kwargs: Any) -> int:
    """Run the check in a temporary folder, write ``out``, print a summary; 0 when all pass."""
    try:
        with tempfile.TemporaryDirectory(prefix="hp-image-check-") as tmp:
            result = run_image_check(tmp, **kwargs)
    except ContainerError as exc:
        print(f"image-test FAILED: {exc}")
        return 1
    path = write_report(result, out)
    print(summary(result) + f"\n  written                {path}")
    return 0 if result.ok else 1
