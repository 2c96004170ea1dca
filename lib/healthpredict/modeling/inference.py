"""Fast scoring of raw encounter records with a fitted HealthPredict pipeline.

A logged model is ``Pipeline([("preprocess", Pipeline([("features",
FunctionTransformer(prepare_features)), ("encode", ColumnTransformer(...))])), ("model", est)])``.
Scoring one record through it costs ~10 ms, nearly all of it pandas and per-tree Python
overhead. :func:`compile_pipeline` reads the fitted parameters once (scaler means and scales,
one-hot categories including the infrequent bucket, output column order, tree nodes) and
returns a :class:`Predictor` that scores plain dicts with numpy only, giving the positive-class
probabilities of ``pipeline.predict_proba`` to within 1e-9.

What it does not know it does not guess: an unknown estimator is called on the encoded numpy
matrix (``path == "fast-encoder"``); an unknown preprocessor, or a failed self-check against the
pipeline at compile time, means the whole pipeline on a DataFrame (``path == "pipeline"``).
``Predictor.reason`` says why.

Records are mappings keyed by Python field names (``glyburide_metformin``), missing values as
``None``, as produced by the API's validation; :func:`records_from_frame` converts a raw frame.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler, TargetEncoder
from threadpoolctl import threadpool_limits

from healthpredict.data.schema import (
    AGE_BRACKETS,
    COLUMNS,
    FEATURE_COLUMNS,
    ID_COLUMNS,
    MEDICATIONS,
)
from healthpredict.modeling import features

Record = Mapping[str, Any]

# Up to this many rows, all trees are walked at once with vectorised numpy (few large calls);
# above it, sklearn's compiled per-tree code is cheaper per row.
SMALL_BATCH = 16
TOLERANCE = 1e-9
_AGE_INDEX = {b: float(i) for i, b in enumerate(AGE_BRACKETS)}
_MED_KEYS = tuple(m.replace("-", "_") for m in MEDICATIONS)
_VISIT_KEYS = ("number_outpatient", "number_emergency", "number_inpatient")
_ID_CATEGORIES = ("admission_type_id", "discharge_disposition_id", "admission_source_id")
_MODEL_INPUTS = tuple(c for c in FEATURE_COLUMNS if c not in ID_COLUMNS)
# code -> (clinical group, 3-digit category). Bounded by the ICD-9 pattern of the raw schema
# (~150k codes); the cap guards other inputs.
_DIAG_CACHE: dict[Any, tuple[str, str]] = {}
_DIAG_CACHE_MAX = 200_000


class UnsupportedModelError(ValueError):
    """The fitted object has a structure the fast path does not compile; the message says what."""


# --------------------------------------------------------------------------- features


def _diag_features(codes: list[Any], which: int) -> list[str]:
    """ICD-9 group (``which=0``) or 3-digit category (1) of ``codes``, memoised.

    The rules stay in one place (:func:`healthpredict.modeling.features.diag_group` and
    :func:`~healthpredict.modeling.features.diag_category`); only new codes pay the pandas calls, once
    per batch.
    """
    cache = _DIAG_CACHE
    new = [c for c in set(codes) if c not in cache]
    fresh: dict[Any, tuple[str, str]] = {}
    if new:
        series = pd.Series(new, dtype=object)
        derived = zip(features.diag_group(series), features.diag_category(series), strict=True)
        fresh = dict(zip(new, derived, strict=True))
        if len(cache) + len(fresh) <= _DIAG_CACHE_MAX:
            cache.update(fresh)
    return [(fresh[c] if c in fresh else cache[c])[which] for c in codes]


def _text(value: Any) -> str:
    # clean_data: missing text becomes "Missing", everything else its str().
    return features.MISSING if value is None else value if type(value) is str else str(value)


def _numeric_column(records: Sequence[Record], name: str) -> list[float]:
    """One numeric model feature over all records, as ``clean_data`` + ``engineer_features``."""
    if name == "age_ordinal":
        return [_AGE_INDEX.get(r.get("age"), math.nan) for r in records]
    if name == "prior_visits_total":
        a, b, c = _VISIT_KEYS
        return [float(int(r[a]) + int(r[b]) + int(r[c])) for r in records]
    if name in ("n_med_changes", "n_meds_prescribed"):
        meds = [[r.get(m) for m in _MED_KEYS] for r in records]
        if name == "n_med_changes":
            return [float(m.count("Up") + m.count("Down")) for m in meds]
        # A missing medication is "Missing" after clean_data, which counts as prescribed.
        return [float(len(m) - m.count("No")) for m in meds]
    return [float(int(r[name])) for r in records]


def _category_column(records: Sequence[Record], name: str) -> list[str]:
    """One categorical model feature over all records, as ``engineer_features`` computes it."""
    if name.endswith("_group"):
        return _diag_features([r.get(name.removesuffix("_group")) for r in records], 0)
    if name in features.CODE_FEATURES:  # not any "_code": payer_code is a plain category
        return _diag_features([r.get(name.removesuffix("_code")) for r in records], 1)
    if name in _ID_CATEGORIES:
        return [str(int(r[name])) for r in records]
    return [_text(r.get(name)) for r in records]


KNOWN_FEATURES = frozenset(features.MODEL_FEATURES)


# --------------------------------------------------------------------------- encoder


@dataclass(frozen=True)
class _OneHot:
    name: str
    lookup: dict[str, int]  # category -> absolute output column (-1: all zeros)
    unknown: int  # output column of unseen categories (-1: all zeros)


@dataclass(frozen=True)
class _Encoded:
    name: str
    column: int  # absolute output column
    values: dict[str, float]  # category -> encoded value
    unknown: float  # value of unseen categories


class FeatureEncoder:
    """The fitted ``ColumnTransformer`` (after ``prepare_features``) as plain numpy."""

    def __init__(
        self,
        n_out: int,
        numeric: Sequence[str],
        numeric_cols: np.ndarray,
        mean: np.ndarray,
        scale: np.ndarray,
        onehots: Sequence[_OneHot],
        encoded: Sequence[_Encoded] = (),
    ) -> None:
        self.n_out = n_out
        self.numeric = tuple(numeric)
        self.numeric_cols = numeric_cols
        self.mean = mean
        self.scale = scale
        self.onehots = tuple(onehots)
        self.encoded = tuple(encoded)

    def encode(self, records: Sequence[Record]) -> np.ndarray:
        """Encode records into the matrix the estimator was fitted on (float64, C order)."""
        n = len(records)
        out = np.zeros((n, self.n_out), dtype=np.float64)
        if self.numeric:
            num = np.array([_numeric_column(records, f) for f in self.numeric], dtype=np.float64).T
            # Same operations in the same order as StandardScaler.transform: bitwise equal.
            num -= self.mean
            num /= self.scale
            out[:, self.numeric_cols] = num
        if self.onehots:
            cols = np.array(
                [
                    [oh.lookup.get(v, oh.unknown) for v in _category_column(records, oh.name)]
                    for oh in self.onehots
                ],
                dtype=np.intp,
            )
            hot = cols >= 0
            rows = np.broadcast_to(np.arange(n, dtype=np.intp), cols.shape)
            out[rows[hot], cols[hot]] = 1.0
        for enc in self.encoded:
            values = _category_column(records, enc.name)
            out[:, enc.column] = [enc.values.get(v, enc.unknown) for v in values]
        return out


def _flatten(pipeline: Pipeline) -> list[Any]:
    steps: list[Any] = []
    for _, step in pipeline.steps:
        steps.extend(_flatten(step) if isinstance(step, Pipeline) else [step])
    return steps


def _probe_frame(cols: list[str], cats: list[list[str]]) -> pd.DataFrame:
    """Probe rows for a fitted encoder: every category of each column, then one unseen value.

    Row ``i`` holds category ``i`` of each column (cycled for shorter columns); the last row an
    unseen value in every column.
    """
    unseen = "\x00healthpredict-unseen\x00"
    rows = max(len(c) for c in cats) + 1
    return pd.DataFrame(
        {
            col: [c[i % len(c)] for i in range(rows - 1)] + [unseen]
            for col, c in zip(cols, cats, strict=True)
        }
    )


def _probe_onehot(enc: OneHotEncoder, cols: list[str], offset: int) -> list[_OneHot]:
    """Category -> output column of a fitted encoder, read from its own ``transform``."""
    if enc.drop is not None or enc.handle_unknown not in ("ignore", "infrequent_if_exist", "warn"):
        raise UnsupportedModelError(
            f"OneHotEncoder with drop={enc.drop!r}, handle_unknown={enc.handle_unknown!r}"
        )
    cats = [list(c) for c in enc.categories_]
    if not all(isinstance(v, str) for c in cats for v in c):
        raise UnsupportedModelError("OneHotEncoder categories that are not strings")
    probe = _probe_frame(cols, cats)
    rows = len(probe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "unknown categories" is the point of the last row
        matrix = enc.transform(probe)
    matrix = matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)
    widths = [
        len(c) - (len(inf) - 1 if inf is not None and len(inf) else 0)
        for c, inf in zip(cats, enc.infrequent_categories_, strict=True)
    ]
    if sum(widths) != matrix.shape[1]:
        raise UnsupportedModelError("OneHotEncoder output width does not match its categories")
    out, start = [], 0
    for col, c, width in zip(cols, cats, widths, strict=True):
        block = matrix[:, start : start + width]

        def column(row: int, block=block, start=start) -> int:
            hits = np.flatnonzero(block[row])
            if len(hits) > 1 or (len(hits) == 1 and block[row, hits[0]] != 1.0):
                raise UnsupportedModelError("OneHotEncoder output is not one-hot")
            return offset + start + int(hits[0]) if len(hits) else -1

        lookup = {c[i]: column(i) for i in range(len(c))}
        out.append(_OneHot(col, lookup, column(rows - 1)))
        start += width
    return out


def _probe_target_encoder(enc: TargetEncoder, cols: list[str], offset: int) -> list[_Encoded]:
    """Category -> encoded value of a fitted binary target encoder, read from its ``transform``."""
    if getattr(enc, "target_type_", None) != "binary":
        raise UnsupportedModelError(f"TargetEncoder of a {enc.target_type_!r} target")
    cats = [list(c) for c in enc.categories_]
    if not all(isinstance(v, str) for c in cats for v in c):
        raise UnsupportedModelError("TargetEncoder categories that are not strings")
    probe = _probe_frame(cols, cats)
    matrix = np.asarray(enc.transform(probe), dtype=np.float64)
    if matrix.shape != (len(probe), len(cols)):
        raise UnsupportedModelError(f"TargetEncoder output of shape {matrix.shape}")
    return [
        _Encoded(
            col,
            offset + j,
            {c[i]: float(matrix[i, j]) for i in range(len(c))},
            float(matrix[-1, j]),
        )
        for j, (col, c) in enumerate(zip(cols, cats, strict=True))
    ]


def _is_identity(trans: Any) -> bool:
    # A fitted ColumnTransformer stores "passthrough" as a FunctionTransformer without func.
    return trans == "passthrough" or (
        type(trans) is FunctionTransformer and trans.func is None and not trans.kw_args
    )


def compile_encoder(steps: Sequence[Any]) -> FeatureEncoder:
    """Compile ``[FunctionTransformer(prepare_features), ColumnTransformer]`` into an encoder.

    Raises:
        UnsupportedModelError: Any other preprocessing structure.
    """
    if len(steps) != 2:
        raise UnsupportedModelError(f"expected 2 preprocessing steps, found {len(steps)}")
    ft, ct = steps
    if not (isinstance(ft, FunctionTransformer) and ft.func is features.prepare_features):
        raise UnsupportedModelError(
            f"first step is {ft!r}, not FunctionTransformer(prepare_features)"
        )
    if ft.kw_args:
        raise UnsupportedModelError("prepare_features with keyword arguments")
    if not isinstance(ct, ColumnTransformer):
        raise UnsupportedModelError(f"second step is {type(ct).__name__}, not ColumnTransformer")
    n_out = sum(s.stop - s.start for s in ct.output_indices_.values())
    numeric: list[str] = []
    numeric_cols: list[int] = []
    means: list[float] = []
    scales: list[float] = []
    onehots: list[_OneHot] = []
    encoded: list[_Encoded] = []
    for name, trans, cols in ct.transformers_:
        cols = list(cols) if not isinstance(cols, str) else [cols]
        if trans == "drop" or not cols:
            continue
        if not all(isinstance(c, str) and c in KNOWN_FEATURES for c in cols):
            raise UnsupportedModelError(f"transformer {name!r} uses unknown columns {cols}")
        start = ct.output_indices_[name].start
        if _is_identity(trans) or isinstance(trans, StandardScaler):
            numeric.extend(cols)
            numeric_cols.extend(range(start, start + len(cols)))
            is_scaler = isinstance(trans, StandardScaler)
            means.extend(trans.mean_ if is_scaler and trans.with_mean else [0.0] * len(cols))
            scales.extend(trans.scale_ if is_scaler and trans.with_std else [1.0] * len(cols))
        elif isinstance(trans, OneHotEncoder):
            onehots.extend(_probe_onehot(trans, cols, start))
        elif isinstance(trans, TargetEncoder):
            encoded.extend(_probe_target_encoder(trans, cols, start))
        else:
            raise UnsupportedModelError(f"transformer {name!r} is {type(trans).__name__}")
    return FeatureEncoder(
        n_out,
        numeric,
        np.array(numeric_cols, dtype=np.intp),
        np.array(means, dtype=np.float64),
        np.array(scales, dtype=np.float64),
        onehots,
        encoded,
    )


# --------------------------------------------------------------------------- estimators


class _Forest:
    """All trees of an ensemble in flat arrays, walked in lock step for small batches."""

    def __init__(self, trees: list[dict[str, np.ndarray]]) -> None:
        sizes = [len(t["feature"]) for t in trees]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        children = []
        for t, off in zip(trees, offsets, strict=True):
            own = np.arange(len(t["feature"]), dtype=np.intp)
            leaf = t["leaf"]
            # A leaf points at itself, so extra steps of the walk leave it where it is.
            children.append(
                np.stack([np.where(leaf, own, t["left"]), np.where(leaf, own, t["right"])], 1) + off
            )
        self.children = np.concatenate(children).reshape(-1)
        self.feature = np.concatenate([np.where(t["leaf"], 0, t["feature"]) for t in trees]).astype(
            np.intp
        )
        self.threshold = np.concatenate([t["threshold"] for t in trees]).astype(np.float64)
        self.missing_left = np.concatenate([t["missing_left"] for t in trees]).astype(bool)
        self.value = np.concatenate([t["value"] for t in trees]).astype(np.float64)
        self.offsets = offsets
        self.roots = offsets.copy()
        self.depth = max(int(t["depth"]) for t in trees)

    def leaf_values(self, X: np.ndarray) -> np.ndarray:
        """Leaf value of every (row, tree): shape (n_rows, n_trees)."""
        n, n_features = X.shape
        flat = X.reshape(-1)
        base = (np.arange(n, dtype=np.intp) * n_features)[:, None]
        idx = np.broadcast_to(self.roots, (n, len(self.roots)))
        for _ in range(self.depth):
            x = flat[base + self.feature[idx]]
            go_right = ~((x <= self.threshold[idx]) | (np.isnan(x) & self.missing_left[idx]))
            idx = self.children[2 * idx + go_right]
        return self.value[idx]


class _RandomForestScorer:
    name = "random_forest"

    def __init__(self, est: RandomForestClassifier) -> None:
        if est.n_outputs_ != 1 or len(est.classes_) != 2:
            raise UnsupportedModelError("random forest that is not binary single-output")
        trees = []
        self.leaf_proba = []
        for tree in (e.tree_ for e in est.estimators_):
            value = tree.value[:, 0, :]
            # DecisionTreeClassifier.predict_proba: divide by the row sum (0 -> 1).
            norm = value.sum(axis=1)
            norm[norm == 0.0] = 1.0
            proba = value[:, 1] / norm
            self.leaf_proba.append(proba)
            trees.append(
                {
                    "feature": tree.feature,
                    "threshold": tree.threshold,
                    "left": tree.children_left,
                    "right": tree.children_right,
                    "leaf": tree.children_left < 0,
                    "missing_left": getattr(tree, "missing_go_to_left", np.zeros(tree.node_count)),
                    "value": proba,
                    "depth": tree.max_depth,
                }
            )
        self.forest = _Forest(trees)
        self.trees = [e.tree_ for e in est.estimators_]

    def __call__(self, X: np.ndarray) -> np.ndarray:
        # The forest compares float32 features (it casts its input) with float64 thresholds.
        X32 = np.ascontiguousarray(X, dtype=np.float32)
        if len(X) <= SMALL_BATCH:
            return self.forest.leaf_values(X32.astype(np.float64)).sum(axis=1) / len(self.trees)
        total = np.zeros(len(X), dtype=np.float64)
        for tree, proba in zip(self.trees, self.leaf_proba, strict=True):
            total += proba[tree.apply(X32)]  # compiled traversal, no per-tree validation
        return total / len(self.trees)


class _HistGradientBoostingScorer:
    name = "hist_gradient_boosting"

    def __init__(self, est: HistGradientBoostingClassifier) -> None:
        if len(est.classes_) != 2 or est.n_trees_per_iteration_ != 1:
            raise UnsupportedModelError("gradient boosting that is not binary")
        if getattr(est, "is_categorical_", None) is not None and np.any(est.is_categorical_):
            raise UnsupportedModelError("gradient boosting with categorical splits")
        trees = []
        for (predictor,) in est._predictors:
            nodes = predictor.nodes
            if nodes["is_categorical"].any():
                raise UnsupportedModelError("gradient boosting with categorical splits")
            leaf = nodes["is_leaf"].astype(bool)
            trees.append(
                {
                    "feature": nodes["feature_idx"],
                    "threshold": nodes["num_threshold"],
                    "left": nodes["left"].astype(np.intp),
                    "right": nodes["right"].astype(np.intp),
                    "leaf": leaf,
                    "missing_left": nodes["missing_go_to_left"],
                    "value": np.where(leaf, nodes["value"], 0.0),
                    "depth": nodes["depth"].max(),
                }
            )
        self.forest = _Forest(trees)
        self.baseline = float(np.ravel(est._baseline_prediction)[0])
        self.est = est

    def __call__(self, X: np.ndarray) -> np.ndarray:
        if len(X) <= SMALL_BATCH:
            return expit(self.baseline + self.forest.leaf_values(X).sum(axis=1))
        # One thread: OpenMP start-up per boosting iteration costs more than it saves for a
        # request-sized batch, and it fights the other workers for the same cores.
        return expit(self.est._raw_predict(X, n_threads=1)[:, 0])


class _LogisticScorer:
    name = "logistic_regression"

    def __init__(self, est: LogisticRegression) -> None:
        if est.coef_.shape[0] != 1 or len(est.classes_) != 2:
            raise UnsupportedModelError("logistic regression that is not binary")
        self.coef = np.ascontiguousarray(est.coef_[0], dtype=np.float64)
        self.intercept = float(est.intercept_[0])

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return expit(X @ self.coef + self.intercept)


class _EstimatorScorer:
    """Any binary classifier's own ``predict_proba`` on the encoded matrix."""

    def __init__(self, est: Any) -> None:
        self.est = est
        self.name = type(est).__name__

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return self.est.predict_proba(X)[:, 1]


def compile_estimator(est: Any) -> Any:
    """Compiled scorer of a fitted estimator (random forest, gradient boosting, logistic).

    Raises:
        UnsupportedModelError: Another estimator, or an unsupported variant of these.
    """
    if type(est) is RandomForestClassifier:
        return _RandomForestScorer(est)
    if type(est) is HistGradientBoostingClassifier:
        return _HistGradientBoostingScorer(est)
    if type(est) is LogisticRegression:
        return _LogisticScorer(est)
    raise UnsupportedModelError(f"estimator {type(est).__name__}")


# --------------------------------------------------------------------------- predictors


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
        self.path = "fast-encoder" if isinstance(scorer, _EstimatorScorer) else "fast"
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


def frame_from_records(records: Sequence[Record]) -> pd.DataFrame:
    """Raw frame (original column names, no ids) of records keyed by Python field names."""
    data = {c: [r.get(COLUMNS[c].python_name) for r in records] for c in _MODEL_INPUTS}
    return pd.DataFrame(data)


def records_from_frame(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Records keyed by Python field names (missing as None) from a raw frame; target dropped."""
    cols = [c for c in FEATURE_COLUMNS if c in df.columns]
    out = []
    for row in df[cols].itertuples(index=False, name=None):
        out.append(
            {
                COLUMNS[c].python_name: None
                if _is_missing(v)
                else (v.item() if hasattr(v, "item") else v)
                for c, v in zip(cols, row, strict=True)
            }
        )
    return out


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def self_check_records(n: int = 200, seed: int = 20240917) -> list[dict[str, Any]]:
    """Synthetic records plus edge cases (missing, unseen and rare values) for the self-check."""
    from healthpredict.data.synthetic import generate

    records = records_from_frame(generate(n, seed=seed))
    edge = [dict(records[i]) for i in range(6)]
    for rec in edge[:2]:  # every nullable field missing
        rec.update({c.python_name: None for c in COLUMNS.values() if c.nullable})
    edge[2].update(
        medical_specialty="Zz-never-seen", payer_code="ZZ", diag_1="V57.1", diag_2="E888.9"
    )
    edge[3].update(diag_1="250.83", diag_2="0.5", diag_3="999", weight=">200", race="Asian")
    edge[4].update(admission_source_id=26, discharge_disposition_id=30, admission_type_id=8)
    edge[5].update({m: "Down" for m in _MED_KEYS}, gender="Unknown/Invalid", age="[0-10)")
    return records + edge


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
        scorer, reason = _EstimatorScorer(steps[-1]), f"estimator not compiled: {exc}"
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
