"""Provenance of a run: code, inputs and environment, enough to tell two runs apart.

Everything here is cheap and side-effect free: git is asked read-only (without taking the
index lock), package versions come from installed metadata (no heavy imports), and inputs
are hashed only when a parameter names them (``*_path``, ``*_paths``, ``*_dir``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from healthpredict.core import layout, storage
from healthpredict.core.constants import REFERENCE_SPLIT, champion_uri
from healthpredict.core.portable import portable_tree
from healthpredict.core.settings import get_settings
from healthpredict.core.stages import RUN_DIR_PARAMETER
from healthpredict.mlops import tracking
from healthpredict.mlops.registry import get_model_info

KEY_PACKAGES = (
    "pandas", "numpy", "scikit-learn", "mlflow", "evidently", "optuna", "papermill",
    "jupytext", "healthpredict",
)  # fmt: skip
INPUT_SUFFIXES = ("_path", "_paths", "_dir")


def package_versions(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` (None when a package is not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment() -> dict[str, Any]:
    """Python version, platform and key package versions of this process."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "packages": package_versions(),
    }


def is_input_parameter(name: str) -> bool:
    """Whether a parameter names input data to hash (``*_path``, ``*_paths``, ``*_dir``)."""
    return name != RUN_DIR_PARAMETER and name.endswith(INPUT_SUFFIXES)


def _resolve(value: str, base_dir: Path) -> str:
    if storage.is_s3(value):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base_dir / path).resolve())


def _hash_location(uri: str) -> dict[str, str]:
    """sha256 of a file/object, or of each file directly inside a folder/prefix; {} if absent."""
    if storage.is_s3(uri):
        if uri.endswith("/"):
            exists = False
        else:
            try:
                exists = storage.exists(uri)
            except storage.StorageError:
                exists = False
        if exists:
            return {uri: storage.sha256(uri)}
        prefix = uri.rstrip("/") + "/"
        try:
            children = storage.list_uris(uri.rstrip("/"))
        except Exception:  # an unreachable bucket is not an input we can vouch for
            return {}
        direct = [u for u in children if "/" not in u[len(prefix) :]]
        return {u: storage.sha256(u) for u in direct}
    path = Path(uri)
    if path.is_file():
        return {uri: storage.sha256(uri)}
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        return {str(p): storage.sha256(p) for p in files}
    return {}


# Where notebooks read from when an input parameter is left at None.
_DEFAULT_INPUTS = {
    "data_dir": layout.processed_data,
    "reference_data_path": lambda: layout.split_csv(REFERENCE_SPLIT),
}
# The model a notebook loads when its model parameter is left at None.
_DEFAULT_MODELS = {"mlflow_model_uri": lambda: champion_uri(get_settings().model_name)}


def _resolve_model(uri: str) -> dict[str, str]:
    """Pin a registry URI (``models:/Name@champion``) to the version it points at right now.

    An alias moves; without this, a re-used run could describe a model that is no longer served.
    """
    try:
        # The runner's process may not have touched MLflow yet: without this it would look in a
        # fresh ./mlflow.db rather than the configured store.
        tracking.setup_mlflow()
        info = get_model_info(uri)
    except Exception as exc:  # the notebook itself reports a missing model; key on the error
        return {uri: f"unresolved: {type(exc).__name__}"}
    return {uri: f"models:/{info.name}/{info.version} run {info.run_id}"}


def input_hashes(parameters: Mapping[str, Any], base_dir: str | os.PathLike) -> dict[str, Any]:
    """Hash the input data named by ``*_path``/``*_paths``/``*_dir`` parameters.

    Args:
        parameters: Effective parameters of the run.
        base_dir: Folder relative local paths are resolved against (the kernel's working folder).

    Returns:
        ``{parameter: {uri: sha256}}`` for the parameters whose values exist; a folder maps each
        file directly inside it. Missing locations (e.g. outputs to be) are left out.
    """
    base = Path(base_dir)
    hashes: dict[str, Any] = {}
    for name, value in parameters.items():
        if value is None and name in _DEFAULT_MODELS:
            value = _DEFAULT_MODELS[name]()
        if name.endswith("model_uri") and isinstance(value, str) and value.startswith("models:/"):
            hashes[name] = _resolve_model(value)
            continue
        if not is_input_parameter(name):
            continue
        if value is None:  # the notebook falls back to the prepared data: hash what it will read
            value = _DEFAULT_INPUTS.get(name, lambda: None)()
        values = value if isinstance(value, list | tuple) else [value]
        found: dict[str, str] = {}
        for item in values:
            if isinstance(item, str | os.PathLike) and str(item):
                found.update(_hash_location(_resolve(str(item), base)))
        if found:
            hashes[name] = found
    return hashes


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal data gives equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def cache_key(
    notebook_sha256: str, parameters: Mapping[str, Any], inputs: Mapping[str, Mapping[str, str]]
) -> str:
    """Content address of a run: notebook bytes, effective parameters and input data bytes.

    Inputs count by content only (file name and sha256, not the absolute location), and
    parameters by their portable form (``<storage>/...``, as ``run.json`` shows them), so the
    same data in another checkout gives the same key.
    """
    params = portable_tree({k: v for k, v in parameters.items() if k != RUN_DIR_PARAMETER})
    content = {
        name: sorted((uri.rstrip("/").rsplit("/", 1)[-1], sha) for uri, sha in found.items())
        for name, found in inputs.items()
    }
    text = canonical_json({"notebook": notebook_sha256, "parameters": params, "inputs": content})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
