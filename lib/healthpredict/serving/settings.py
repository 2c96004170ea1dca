"""Settings of the serving process, read once from the environment.

``MODEL_URI``, ``MODEL_DIR`` and ``RELOAD_TOKEN`` keep the plain names a deployment expects;
the API clients (``HP_SERVE_AUTH``, ``HP_SERVE_TOKENS_FILE``, ``HP_SERVE_TOKENS``) and the tuning
knobs are ``HP_SERVE_*``. The MLflow store comes from the project settings
(``MLFLOW_TRACKING_URI`` or ``HP_MLFLOW_TRACKING_URI``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServingSettings(BaseSettings):
    """How the API finds its model, knows its clients, protects reloads and limits requests."""

    model_config = SettingsConfigDict(env_prefix="HP_SERVE_", extra="ignore")

    model_uri: str | None = Field(
        None,
        validation_alias=AliasChoices("MODEL_URI", "HP_SERVE_MODEL_URI"),
        description="Registry URI of the model (default: models:/<HP_MODEL_NAME>@champion).",
    )
    model_dir: Path | None = Field(
        None,
        validation_alias=AliasChoices("MODEL_DIR", "HP_SERVE_MODEL_DIR"),
        description="MLflow model folder with model_info.json (baked image); wins over MODEL_URI.",
    )
    reload_token: str | None = Field(
        None,
        validation_alias=AliasChoices("RELOAD_TOKEN", "HP_SERVE_RELOAD_TOKEN"),
        description="Bearer token of POST /reload; unset (and no token file) disables reloads.",
    )
    reload_token_file: Path | None = Field(
        None,
        validation_alias=AliasChoices("RELOAD_TOKEN_FILE", "HP_SERVE_RELOAD_TOKEN_FILE"),
        description="File holding the reload token (a mounted Kubernetes secret).",
    )
    auth: bool = Field(
        True,
        description="Require a client's bearer token on /predict; HP_SERVE_AUTH=off serves it "
        "to anyone (local demo only; logged as a warning).",
    )
    tokens_file: Path | None = Field(
        None,
        description="Token file of the API clients (a mounted Secret; `healthpredict api-token "
        "new` writes it); re-read when it changes.",
    )
    tokens: str | None = Field(
        None, description="The token file's text itself (lines, or entries separated by ';')."
    )
    tokens_check_s: float = Field(
        1.0, gt=0, description="Least time between two checks (one stat) of the token file."
    )
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0, description="Largest accepted body.")
    max_records: int = Field(5000, gt=0, description="Most records in one /predict request.")
    retry_initial_s: float = Field(1.0, gt=0, description="First wait after a failed load.")
    retry_max_s: float = Field(60.0, gt=0, description="Longest wait between load attempts.")
    poll_s: float = Field(
        0.0, ge=0, description="Check the registry alias this often and reload on change (0: off)."
    )
    threadpool_rows: int = Field(
        64, ge=1, description="Batches from this many records are scored off the event loop."
    )

    def token(self) -> str | None:
        """The reload token from ``RELOAD_TOKEN`` or the token file; None when neither is set."""
        if self.reload_token:
            return self.reload_token
        if self.reload_token_file and self.reload_token_file.is_file():
            return self.reload_token_file.read_text().strip() or None
        return None
