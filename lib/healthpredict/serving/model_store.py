"""Where the served model comes from, and how it is swapped without downtime.

Two sources:

- ``MODEL_URI`` (default ``models:/<name>@champion``): resolved once to a version in the MLflow
  registry, its artifacts downloaded to a temporary folder and unpickled;
- ``MODEL_DIR``: an MLflow model folder baked into the image plus ``model_info.json``, both
  written by :func:`export_model` (``healthpredict export-model``); loading it needs no MLflow.

Either way the pickled sklearn pipeline is read directly (cloudpickle, as logged) and compiled by
:func:`healthpredict.modeling.runtime.predictor.compile_pipeline`. :class:`ModelHolder` keeps the model in
service: it loads in a background thread, retrying with exponential backoff while the store is
unreachable, and :meth:`ModelHolder.reload` builds the new model completely before swapping one
reference, so requests in flight finish on the old model and a failed reload changes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import pickle
import re
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import cloudpickle
import yaml

from healthpredict.core import mlflow_env
from healthpredict.core.constants import champion_uri
from healthpredict.core.settings import get_settings
from healthpredict.data.schema import schema_hash
from healthpredict.modeling.runtime.model_meta import read_model_info
from healthpredict.modeling.runtime.predictor import Predictor, compile_pipeline
from healthpredict.serving.load_errors import ModelLoadError, describe_error
from healthpredict.serving.settings import ServingSettings

log = logging.getLogger("healthpredict.serving")
INFO_FILE = "model_info.json"
# Fail fast on an unreachable tracking server: our own loop retries with backoff, whereas
# MLflow's default (7 retries, doubling waits) would keep one attempt busy for minutes.
_MLFLOW_ENV_DEFAULTS = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # a progress bar per load floods the logs
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}


class ReloadBusyError(RuntimeError):
    """Another load is running."""


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to score: the predictor plus what ``/model-info`` reports."""

    predictor: Predictor
    info: dict[str, Any]
    loaded_at: str
    load_seconds: float

    @property
    def version(self) -> str:
        """Registry version of the model."""
        return str(self.info.get("version", ""))

    @property
    def threshold(self) -> float:
        """Decision threshold on the readmission probability."""
        return float(self.info.get("threshold", 0.5))

    def describe(self) -> dict[str, Any]:
        """The ``/model-info`` document (NaN metrics become null, JSON has no NaN)."""
        info = self.info
        metrics = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in (info.get("test_metrics") or {}).items()
        }
        return {
            "name": info.get("name", ""),
            "version": self.version,
            "alias": info.get("alias"),
            "aliases": info.get("aliases", []),
            "run_id": info.get("run_id", ""),
            "model_uri": info.get("model_uri", ""),
            "trained_at": info.get("trained_at", ""),
            "test_metrics": metrics,
            "threshold": self.threshold,
            "target": info.get("target", ""),
            "data_source": info.get("data_source", ""),
            "params": info.get("params", {}),
            "calibration": info.get("calibration", ""),
            "model_card": info.get("model_card", ""),
            "feature_schema_hash": info.get("schema_hash", ""),
            "serving_schema_hash": schema_hash(),
            "schema_matches": info.get("schema_hash", "") == schema_hash(),
            "source": info.get("source", ""),
            "loaded_at": self.loaded_at,
            "load_seconds": round(self.load_seconds, 3),
            "inference": self.predictor.describe(),
        }


def _alias_of(uri: str) -> str | None:
    match = re.search(r"@([^/@]+)$", uri.strip())
    return match.group(1) if match else None


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- loading


def load_pipeline_dir(path: str | Path) -> Any:
    """Unpickle the sklearn pipeline of an MLflow model folder without importing MLflow.

    Raises:
        ModelLoadError: No ``MLmodel``, no sklearn flavour, or an unreadable pickle.
    """
    path = Path(path)
    mlmodel = path / "MLmodel"
    if not mlmodel.is_file():
        raise ModelLoadError(f"{path} is not an MLflow model folder (no MLmodel file)")
    flavor = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}).get("sklearn")
    if not flavor or "pickled_model" not in flavor:
        raise ModelLoadError(f"{mlmodel} has no sklearn flavour")
    fmt = flavor.get("serialization_format", "cloudpickle")
    if fmt == "skops":  # not what registry.log_model writes; MLflow knows how
        # mlflow costs seconds to import: only for this format, which we never write.
        import mlflow.sklearn

        return mlflow.sklearn.load_model(str(path))
    trained_with, installed = flavor.get("sklearn_version"), installed_version("scikit-learn")
    if trained_with and trained_with != installed:
        log.warning("model pickled with scikit-learn %s, serving with %s", trained_with, installed)
    with open(path / flavor["pickled_model"], "rb") as fh:
        if fmt == "cloudpickle":
            return cloudpickle.load(fh)
        return pickle.load(fh)  # our own registry's artifact, as MLflow would load it


def _registry_info(uri: str) -> dict[str, Any]:
    """The registry's metadata of the version behind ``uri`` (call :func:`_setup_mlflow` first)."""
    # mlflow costs seconds to import: only when the model comes from a registry (not MODEL_DIR).
    from mlflow import MlflowClient

    info = asdict(read_model_info(MlflowClient(), uri))
    info.update(alias=_alias_of(uri), source=uri)
    return info


def _setup_mlflow() -> None:
    """Point MLflow at the registry; a sqlite registry must exist (serving never creates one).

    Raises:
        ModelLoadError: The sqlite file of ``MLFLOW_TRACKING_URI`` does not exist (MLflow would
            create an empty registry there and report the model as missing).
    """
    uri = get_settings().mlflow_tracking_uri
    if uri.startswith("sqlite:///") and not uri.endswith(":memory:"):
        path = Path(uri[len("sqlite:///") :])
        if not path.is_file():
            raise ModelLoadError(
                f"model store unreachable: MLflow registry {uri} (MLFLOW_TRACKING_URI): the "
                f"database file {path} does not exist (serving never creates a registry)"
            )
    mlflow_env.point_mlflow(_MLFLOW_ENV_DEFAULTS)


def _download(info: dict[str, Any], dst: Path) -> Path:
    # mlflow costs seconds to import: only when the model comes from a registry (not MODEL_DIR).
    import mlflow.artifacts

    return Path(
        mlflow.artifacts.download_artifacts(artifact_uri=info["model_uri"], dst_path=str(dst))
    )


def read_model_dir(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """Pipeline and info of an exported model folder (``MODEL_DIR``).

    Raises:
        ModelLoadError: The folder, its ``model_info.json`` or its pickle is missing or broken.
    """
    path = Path(path)
    info_file = path / INFO_FILE
    if not info_file.is_file():
        raise ModelLoadError(
            f"MODEL_DIR {path} has no {INFO_FILE} (write the folder with healthpredict export-model)"
        )
    info = json.loads(info_file.read_text())
    info["source"] = str(path)
    return load_pipeline_dir(path), info


def read_model_uri(uri: str) -> tuple[Any, dict[str, Any]]:
    """Pipeline and info of a registry URI, resolved to one version first.

    Resolving once means the info and the artifacts belong to the same version even when the
    alias moves meanwhile.
    """
    _setup_mlflow()
    info = _registry_info(uri)
    with tempfile.TemporaryDirectory(prefix="hp-model-") as tmp:
        return load_pipeline_dir(_download(info, Path(tmp))), info


def load_model(settings: ServingSettings) -> LoadedModel:
    """Load, compile and self-check the configured model (``MODEL_DIR`` wins over the URI).

    Raises:
        ModelLoadError: With a one-line reason (store unreachable, model not found, ...).
    """
    start = time.perf_counter()
    try:
        if settings.model_dir is not None:
            pipeline, info = read_model_dir(settings.model_dir)
        else:
            pipeline, info = read_model_uri(source_uri(settings))
        predictor = compile_pipeline(pipeline)
    except Exception as exc:  # every failure becomes a reason for /ready
        raise ModelLoadError(describe_error(exc)) from exc
    if info.get("schema_hash") and info["schema_hash"] != schema_hash():
        log.warning(
            "model %s/%s was trained on raw schema %s, the API validates schema %s",
            info.get("name"),
            info.get("version"),
            info["schema_hash"],
            schema_hash(),
        )
    if predictor.path != "fast":
        log.warning("model %s: %s path (%s)", info.get("version"), predictor.path, predictor.reason)
    return LoadedModel(predictor, info, _now(), time.perf_counter() - start)


def source_uri(settings: ServingSettings) -> str:
    """The registry URI to serve: ``MODEL_URI`` or the champion of the configured model."""
    return settings.model_uri or champion_uri(get_settings().model_name)


def source_description(settings: ServingSettings) -> str:
    """Where the model comes from, for logs and ``/ready``."""
    return f"MODEL_DIR={settings.model_dir}" if settings.model_dir else source_uri(settings)


def export_model(model_uri: str, out_dir: str | Path) -> Path:
    """Write a registry model version to a folder the image can serve with ``MODEL_DIR``.

    The folder holds the MLflow model (``MLmodel``, the pickle, requirements) and
    ``model_info.json`` (name, version, alias, run id, threshold, metrics, schema hash). The
    folder is checked by loading it back and compiling it.

    Args:
        model_uri: ``models:/Name@alias`` or ``models:/Name/3``.
        out_dir: Destination; must not exist or be empty.

    Returns:
        The destination folder.

    Raises:
        FileExistsError: ``out_dir`` holds files.
        ModelLoadError: The model cannot be resolved, downloaded or read back.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; export into a new folder")
    try:
        _setup_mlflow()
        info = _registry_info(model_uri)
        with tempfile.TemporaryDirectory(prefix="hp-export-") as tmp:
            local = _download(info, Path(tmp))
            out.mkdir(parents=True, exist_ok=True)
            for item in local.iterdir():
                shutil.move(str(item), out / item.name)
    except (ModelLoadError, FileExistsError):
        raise
    except Exception as exc:  # reported as a one-line reason
        raise ModelLoadError(describe_error(exc)) from exc
    info.update(exported_at=_now(), exported_from=model_uri)
    info.pop("source", None)
    (out / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
    pipeline, _ = read_model_dir(out)
    compile_pipeline(pipeline)
    return out


# --------------------------------------------------------------------------- the holder


class ModelHolder:
    """The model in service, its background loader and the atomic reload."""

    def __init__(self, settings: ServingSettings, on_change: Any = None) -> None:
        self.settings = settings
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self.attempts = 0
        self.next_attempt_at: float | None = None
        self._on_change = on_change or (lambda old, new: None)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- state
    def status(self) -> dict[str, Any]:
        """Readiness document: ready or not, and why not."""
        model = self.current
        if model is not None:
            return {
                "ready": True,
                "model_version": model.version,
                "source": source_description(self.settings),
            }
        reason = self.last_error or "loading the model (first attempt in progress)"
        wait = (
            None
            if self.next_attempt_at is None
            else max(0.0, self.next_attempt_at - time.monotonic())
        )
        return {
            "ready": False,
            "reason": reason,
            "source": source_description(self.settings),
            "attempts": self.attempts,
            "next_attempt_in_s": None if wait is None else round(wait, 1),
        }

    # -- loading
    def _swap(self, new: LoadedModel) -> LoadedModel | None:
        old, self.current = self.current, new  # one reference: requests see old or new, whole
        self.last_error = None
        self._on_change(old, new)
        return old

    def _attempt(self) -> bool:
        with self._lock:
            self.attempts += 1
            try:
                new = load_model(self.settings)
            except ModelLoadError as exc:
                self.last_error = exc.reason
                return False
            self._swap(new)
        log.info(
            "serving model %s version %s (%s path, loaded in %.1f s)",
            new.info.get("name"),
            new.version,
            new.predictor.path,
            new.load_seconds,
        )
        return True

    def _run(self) -> None:
        delay = self.settings.retry_initial_s
        while not self._stop.is_set() and self.current is None:
            if self._attempt():
                break
            self.next_attempt_at = time.monotonic() + delay
            log.error(
                "model not loaded from %s (attempt %d, next in %.1f s): %s",
                source_description(self.settings),
                self.attempts,
                delay,
                self.last_error,
            )
            self._stop.wait(delay)
            delay = min(delay * 2, self.settings.retry_max_s)
        self.next_attempt_at = None
        poll = self.settings.poll_s
        while poll > 0 and not self._stop.wait(poll):
            try:
                result = self.reload(block=True)
                if result["status"] == "reloaded":
                    log.info("poll picked up version %s", result["version"])
            except ModelLoadError as exc:
                log.warning("poll: %s; still serving version %s", exc.reason, self.current.version)

    def start(self) -> None:
        """Start loading in the background (the API answers /health at once)."""
        log.info("loading model from %s", source_description(self.settings))
        self._thread = threading.Thread(target=self._run, name="model-loader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background loader (it finishes its current attempt)."""
        self._stop.set()

    def _wanted_version(self) -> str | None:
        """Version the source points at now (one cheap registry call), None for MODEL_DIR."""
        if self.settings.model_dir is not None:
            path = Path(self.settings.model_dir) / INFO_FILE
            return str(json.loads(path.read_text()).get("version")) if path.is_file() else None
        _setup_mlflow()
        return _registry_info(source_uri(self.settings))["version"]

    def reload(self, force: bool = False, block: bool = False) -> dict[str, Any]:
        """Load the source again and swap atomically if it changed (or ``force``).

        The old model keeps serving while the new one loads, and stays when loading fails.

        Returns:
            ``{"status": "reloaded" | "unchanged", "version", "previous_version"}``.

        Raises:
            ReloadBusyError: Another load is running.
            ModelLoadError: The new model could not be loaded (nothing changed).
        """
        if not self._lock.acquire(blocking=block):
            raise ReloadBusyError("another model load is in progress")
        try:
            old = self.current
            if old is not None and not force:
                try:
                    wanted = self._wanted_version()
                except Exception as exc:  # reported as a one-line reason
                    raise ModelLoadError(describe_error(exc)) from exc
                if wanted == old.version:
                    return {
                        "status": "unchanged",
                        "version": old.version,
                        "previous_version": old.version,
                    }
            new = load_model(self.settings)
            self._swap(new)
        finally:
            self._lock.release()
        previous = old.version if old else None
        log.info("reloaded: version %s -> %s (%s path)", previous, new.version, new.predictor.path)
        return {"status": "reloaded", "version": new.version, "previous_version": previous}
