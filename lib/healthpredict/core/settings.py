"""Settings of the whole project, read once from ``HP_*`` environment variables.

Embedded defaults run everything on a laptop (local storage under ``./var``, sqlite MLflow);
setting a variable switches to a real service (``HP_STORAGE=s3://bucket/prefix``,
``MLFLOW_TRACKING_URI=http://...``).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Project settings; every field can be set with ``HP_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="HP_", extra="ignore")

    storage: str = Field(
        "./var",
        description="Root for data, state and models: a local folder or s3://bucket/prefix.",
    )
    mlflow_tracking_uri: str = Field(
        "sqlite:///var/mlflow.db",
        validation_alias=AliasChoices("HP_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"),
        description="MLflow tracking store; sqlite by default, an http(s) server URL in production.",
    )
    model_name: str = Field("HealthPredict", description="Registered model name in MLflow.")
    s3_endpoint_url: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "HP_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"
        ),
        description="S3 endpoint override for MinIO, LocalStack or moto; None means AWS.",
    )
    uci_source: str = Field(
        "auto",
        description=(
            "Where the UCI data comes from: 'auto' (the zip bundled in data/uci, else the cache, "
            "else download, else an error), 'synthetic' (the offline generator, only when "
            "asked), a local .zip/.csv path, an s3:// URI or an http(s) URL."
        ),
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "healthpredict",
        description="Where the downloaded UCI zip is kept between runs.",
    )
    rendered_dir: str = Field("./rendered", description="Where notebook runs are written.")
    kernel_name: str = Field("healthpredict", description="Jupyter kernel that runs notebooks.")
    target: str = Field("<30", description="Prediction target: '<30' (default) or 'any'.")
    evidently_workspace: str | None = Field(
        None,
        validate_default=True,
        description=(
            "Evidently workspace folder that every monitoring run adds its snapshots to "
            "(`make monitoring-ui` shows it); None: <storage>/evidently, or ./var/evidently when "
            "the storage is on S3 (the workspace is a local folder); 'off': none."
        ),
    )
    loop_lease_seconds: int = Field(
        300,
        ge=2,
        description=(
            "Lifetime of the monitoring loop's lease on the storage. A live runner renews it "
            "every third of this time; a runner that died blocks the next one until it expires."
        ),
    )

    # Relative local paths are pinned to the working folder of the process that reads the
    # settings, and exported to notebook kernels (which run in notebooks/) by ``as_env``.
    @field_validator("storage", "rendered_dir")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        return value if "://" in value else str(Path(value).expanduser().resolve())

    @field_validator("evidently_workspace")
    @classmethod
    def _workspace_folder(cls, value: str | None, info: ValidationInfo) -> str:
        if value == "off":
            return value
        if value is None:
            storage = info.data.get("storage", "./var")
            # Evidently reads its workspace through fsspec without s3fs: a local folder.
            value = "./var/evidently" if "://" in storage else f"{storage}/evidently"
        return value if "://" in value else str(Path(value).expanduser().resolve())

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _absolute_sqlite(cls, value: str) -> str:
        prefix = "sqlite:///"
        if value.startswith(prefix) and not value.startswith(prefix + "/"):
            rest = value[len(prefix) :]
            if rest != ":memory:":
                return prefix + str(Path(rest).expanduser().resolve())
        return value

    def as_env(self) -> dict[str, str]:
        """The settings as ``HP_*`` variables, so a child process sees exactly these values."""
        env = {
            "HP_STORAGE": self.storage,
            "HP_MLFLOW_TRACKING_URI": self.mlflow_tracking_uri,
            "HP_MODEL_NAME": self.model_name,
            "HP_UCI_SOURCE": self.uci_source,
            "HP_CACHE_DIR": str(self.cache_dir),
            "HP_RENDERED_DIR": self.rendered_dir,
            "HP_KERNEL_NAME": self.kernel_name,
            "HP_TARGET": self.target,
        }
        if self.evidently_workspace:
            env["HP_EVIDENTLY_WORKSPACE"] = self.evidently_workspace
        if self.s3_endpoint_url:
            env["HP_S3_ENDPOINT_URL"] = self.s3_endpoint_url
        return env


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the settings, read once per process (call ``get_settings.cache_clear()`` to re-read)."""
    return Settings()


def project_root() -> Path:
    """Folder of the checkout (holding ``notebooks/``), or the working directory when installed."""
    here = Path(__file__).resolve().parents[3]
    return here if (here / "notebooks").is_dir() else Path(os.getcwd())
