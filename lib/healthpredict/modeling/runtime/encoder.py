"""The fitted preprocessing (``prepare_features`` + ``ColumnTransformer``) compiled to numpy.

:func:`compile_encoder` reads the fitted parameters once (scaler means and scales, one-hot
categories including the infrequent bucket, target-encoded values, output column order) and
returns a :class:`FeatureEncoder` that turns records into the estimator's input matrix. The
feature rules come from :mod:`healthpredict.modeling.features`; only their per-record form is
written here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler, TargetEncoder

from healthpredict.modeling import features
from healthpredict.modeling.runtime.records import MED_KEYS, Record

_AGE_INDEX = {bracket: float(i) for bracket, i in features.AGE_ORDINAL.items()}
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
        a, b, c = features.VISIT_COLUMNS
        return [float(int(r[a]) + int(r[b]) + int(r[c])) for r in records]
    if name in ("n_med_changes", "n_meds_prescribed"):
        meds = [[r.get(m) for m in MED_KEYS] for r in records]
        if name == "n_med_changes":
            up, down = features.DOSE_CHANGES
            return [float(m.count(up) + m.count(down)) for m in meds]
        # A missing medication is "Missing" after clean_data, which counts as prescribed.
        return [float(len(m) - m.count(features.NOT_PRESCRIBED)) for m in meds]
    return [float(int(r[name])) for r in records]


def _category_column(records: Sequence[Record], name: str) -> list[str]:
    """One categorical model feature over all records, as ``engineer_features`` computes it."""
    if name.endswith("_group"):
        return _diag_features([r.get(name.removesuffix("_group")) for r in records], 0)
    if name in features.CODE_FEATURES:  # not any "_code": payer_code is a plain category
        return _diag_features([r.get(name.removesuffix("_code")) for r in records], 1)
    if name in features.ID_CATEGORIES:
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
