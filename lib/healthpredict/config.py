"""Settings of the whole project, read once from ``HP_*`` environment variables.

Embedded defaults run everything on a laptop (local storage under ``./var``, sqlite MLflow);
setting a variable switches to a real service (``HP_STORAGE=s3://bucket/prefix``,
``MLFLOW_TRACKING_URI=http://...``).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
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
            "Where the UCI data comes from: 'auto' (cache, else download, else synthetic), "
            "'synthetic', a local .zip/.csv path, an s3:// URI or an http(s) URL."
        ),
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "healthpredict",
        description="Where the downloaded UCI zip is kept between runs.",
    )
    rendered_dir: str = Field("./rendered", description="Where notebook runs are written.")
    kernel_name: str = Field("healthpredict", description="Jupyter kernel that runs notebooks.")
    target: str = Field("<30", description="Prediction target: '<30' (default) or 'any'.")

    @property
    def processed_data(self) -> str:
        """URI of the folder holding the prepared splits and their manifest."""
        from healthpredict.storage import join

        return join(self.storage, "processed_data")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the settings, read once per process (call ``get_settings.cache_clear()`` to re-read)."""
    return Settings()


def project_root() -> Path:
    """Folder of the checkout (holding ``notebooks/``), or the working directory when installed."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "notebooks").is_dir() else Path(os.getcwd())
