"""Fast scoring of raw encounter records with a fitted HealthPredict pipeline.

A logged model is ``Pipeline([("preprocess", Pipeline([("features",
FunctionTransformer(prepare_features)), ("encode", ColumnTransformer(...))])), ("model", est)])``.
Scoring one record through it costs ~10 ms, nearly all of it pandas and per-tree Python
overhead. :func:`compile_pipeline` compiles the preprocessing
(:func:`~healthpredict.modeling.runtime.encoder.compile_encoder`) and the estimator
(:func:`~healthpredict.modeling.runtime.scorers.compile_estimator`) and returns a
:class:`Predictor` that scores plain dicts with numpy only, giving the positive-class
probabilities of ``pipeline.predict_proba`` to within 1e-9.

What it does not know it does not guess: an unknown estimator is called on the encoded numpy
matrix (``path == "fast-encoder"``); an unknown preprocessor, or a failed self-check against the
pipeline at compile time, means the whole pipeline on a DataFrame (``path == "pipeline"``).
``Predictor.reason`` says why.

Records are mappings keyed by Python field names (``glyburide_metformin``), missing values as
``None``, as produced by the API's validation (see :mod:`healthpredict.modeling.runtime.records`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from healthpredict.modeling.runtime.encoder import (
    FeatureEncoder,
    UnsupportedModelError,
    compile_encoder,
)
from healthpredict.modeling.runtime.records import Record, frame_from_records, self_check_records
from healthpredict.modeling.runtime.scorers import SMALL_BATCH, EstimatorScorer, compile_estimator

TOLERANCE = 1e-9


class Predictor:
    """Scores records: ``predict_proba(records)`` -> positive-class probabilities.

    Attributes:
        path: ``fast`` (compiled encoder and estimator), ``fast-encoder`` (compiled encoder,
            the estimator's own ``predict_proba``) or ``pipeline`` (the sklearn pipeline).
        reason: Why a slower path is used (empty for ``fast``).
        estimator: Name of the scoring component.
    """

    path = "pipeline"
    reason = ""
    estimator = ""

    def predict_proba(self, records: Sequence[Record]) -> np.ndarray:
        """Positive-class probability of each record (1-D float64)."""
        raise NotImplementedError

    def describe(self) -> dict[str, str]:
        """Path, reason and estimator, for ``/model-info``."""
        return {"path": self.path, "reason": self.reason, "estimator": self.estimator}


class FastPredictor(Predictor):
    """Compiled encoder plus compiled (or the estimator's own) scoring."""

    def __init__(self, encoder: FeatureEncoder, scorer: Any, reason: str = "") -> None:
        self.encoder = encoder
        self.scorer = scorer
        self.path = "fast-encoder" if isinstance(scorer, EstimatorScorer) else "fast"
        self.reason = reason
        self.estimator = scorer.name

    def predict_proba(self, records: Sequence[Record]) -> np.ndarray:
        """Positive-class probability of each record (1-D float64)."""
        if not len(records):
            return np.zeros(0, dtype=np.float64)
        return np.asarray(self.scorer(self.encoder.encode(records)), dtype=np.float64)


class PipelinePredictor(Predictor):
    """The sklearn pipeline itself on a DataFrame (the reference, ~10 ms per call)."""

    def __init__(self, pipeline: Pipeline, reason: str) -> None:
        self.pipeline = pipeline
        self.reason = reason
        self.estimator = type(pipeline.steps[-1][1]).__name__

    def predict_proba(self, records: Sequence[Record]) -> np.ndarray:
        """Positive-class probability of each record (1-D float64)."""
        if not len(records):
            return np.zeros(0, dtype=np.float64)
        return self.pipeline.predict_proba(frame_from_records(records))[:, 1]


def _flatten(pipeline: Pipeline) -> list[Any]:
    steps: list[Any] = []
    for _, step in pipeline.steps:
        steps.extend(_flatten(step) if isinstance(step, Pipeline) else [step])
    return steps


def compile_pipeline(
    pipeline: Pipeline, check_records: Sequence[Record] | None = None
) -> Predictor:
    """Compile a fitted pipeline into the fastest :class:`Predictor` that matches it.

    The compiled predictor is checked against ``pipeline.predict_proba`` on ``check_records``
    (default: :func:`self_check_records`); any difference above 1e-9 means the pipeline path.

    Args:
        pipeline: Fitted ``Pipeline([preprocess..., ("model", estimator)])``.
        check_records: Records for the self-check, keyed by Python field names.

    Returns:
        A predictor; ``predictor.path`` and ``predictor.reason`` tell which and why.
    """
    steps = _flatten(pipeline)
    try:
        encoder = compile_encoder(steps[:-1])
    except (UnsupportedModelError, AttributeError) as exc:
        return PipelinePredictor(pipeline, f"preprocessing not compiled: {exc}")
    try:
        scorer: Any = compile_estimator(steps[-1])
        reason = ""
    except (UnsupportedModelError, AttributeError) as exc:
        scorer, reason = EstimatorScorer(steps[-1]), f"estimator not compiled: {exc}"
    fast = FastPredictor(encoder, scorer, reason)
    records = list(check_records) if check_records is not None else self_check_records()
    with threadpool_limits(limits=1, user_api="openmp"):
        # Gradient boosting starts OpenMP threads per iteration; on busy cores that is slow.
        expected = PipelinePredictor(pipeline, "").predict_proba(records)
    # Both sides of the size switch of the tree scorers are checked.
    for chunk in (records[:1], records[:SMALL_BATCH], records):
        try:
            got = fast.predict_proba(chunk)
        except Exception as exc:  # any failure: do not use the fast path
            return PipelinePredictor(pipeline, f"self-check failed: {type(exc).__name__}: {exc}")
        diff = float(np.max(np.abs(got - expected[: len(chunk)]))) if len(chunk) else 0.0
        if not diff <= TOLERANCE:
            return PipelinePredictor(
                pipeline, f"self-check failed: compiled path differs by {diff:.3g} (> {TOLERANCE})"
            )
    return fast
