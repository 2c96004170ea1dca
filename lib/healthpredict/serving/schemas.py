"""Documented shapes of the API's responses (OpenAPI); the handlers write the JSON themselves."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Prediction(BaseModel):
    """Score of one record."""

    readmission_probability: float = Field(description="Probability of readmission within 30 days.")
    label: int = Field(description="1 when the probability reaches the model's threshold, else 0.")
    model_version: str = Field(description="Registry version of the model that scored it.")
    encounter_id: int | None = Field(
        None, description="Echo of the record's encounter_id, if given."
    )


class PredictResponse(BaseModel):
    """Scores in the order of the records sent (a single record gives a list of one)."""

    model_name: str
    model_version: str
    threshold: float
    predictions: list[Prediction]


class Problem(BaseModel):
    """One offending field: which record, which field, the value given and what was expected."""

    record: int | None = Field(description="Index in the list sent; null for a single record.")
    field: str | None = Field(description="Field name as in the raw schema; null for the body.")
    value: Any = Field(description="The value given (null when missing).")
    expected: str
    message: str
    type: str


class ErrorResponse(BaseModel):
    """A refused request; ``errors`` lists every problem of a 422."""

    detail: str
    errors: list[Problem] = Field(default_factory=list)


class Ready(BaseModel):
    """Readiness: a model is loaded (200) or not, and why (503)."""

    ready: bool
    model_version: str | None = None
    source: str
    reason: str | None = None
    attempts: int | None = None
    next_attempt_in_s: float | None = None


class Inference(BaseModel):
    """How the model is scored: ``fast``, ``fast-encoder`` or ``pipeline``, and why not faster."""

    path: str
    reason: str
    estimator: str


class ModelInfoResponse(BaseModel):
    """The model in service and what it was trained for.

    The registry's :class:`~healthpredict.modeling.runtime.model_meta.ModelInfo` of the version
    (``schema_hash`` as ``feature_schema_hash``) plus how and when this API loaded it.
    """

    name: str
    version: str
    alias: str | None
    aliases: list[str]
    run_id: str
    model_uri: str
    trained_at: str
    test_metrics: dict[str, float | None]
    threshold: float
    target: str
    data_source: str
    params: dict[str, Any]
    calibration: str = Field(
        "", description="Map from model scores to the served risks: none, sigmoid or isotonic."
    )
    model_card: str = Field(
        "", description="Artifact URI of the version's model card (HTML), empty when none."
    )
    feature_schema_hash: str = Field(description="Raw schema hash the model was trained on.")
    serving_schema_hash: str = Field(description="Raw schema hash this API validates with.")
    schema_matches: bool
    source: str = Field(description="MODEL_URI or MODEL_DIR it was loaded from.")
    loaded_at: str
    load_seconds: float
    inference: Inference


class ReloadResult(BaseModel):
    """Outcome of a reload."""

    status: str = Field(description="reloaded or unchanged")
    version: str
    previous_version: str | None
