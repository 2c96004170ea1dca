"""validate_raw reports every problem at once, and only ever raises RawSchemaError."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healthpredict.data import synthetic
from healthpredict.data.schema import (
    FEATURE_COLUMNS,
    RAW_COLUMNS,
    TARGET,
    RawSchemaError,
    schema_hash,
    validate_raw,
)


@pytest.fixture(scope="module")
def good() -> pd.DataFrame:
    return synthetic.generate(200, seed=3)


def test_good_frame_passes(good):
    validate_raw(good, require_target=True)
    validate_raw(good.drop(columns=[TARGET]))


def test_all_problems_reported_at_once(good):
    bad = good.drop(columns=["insulin"]).copy()
    bad["extra"] = 1
    bad.loc[bad.index[3], "age"] = "[100-110)"
    bad.loc[bad.index[4], "age"] = "[100-110)"
    bad.loc[bad.index[5], "num_procedures"] = -1
    bad.loc[bad.index[6], "encounter_id"] = bad.loc[bad.index[7], "encounter_id"]
    bad["time_in_hospital"] = bad["time_in_hospital"].astype(object)
    bad.loc[bad.index[8], "time_in_hospital"] = "abc"
    bad.loc[bad.index[9], "gender"] = None
    with pytest.raises(RawSchemaError) as info:
        validate_raw(bad, source="batch_0042.csv")
    message = str(info.value)
    assert message.startswith("batch_0042.csv does not match")
    for needle in (
        "missing columns: 'insulin'",
        "unexpected columns: 'extra'",
        "age: 2 value(s) in 1 unknown category: '[100-110)' (2x)",
        "num_procedures: 1 value(s) below the allowed range",
        "encounter_id: 1 value(s) appear more than once",
        "time_in_hospital: 1 value(s) are not integers, e.g. 'abc'",
        "gender: 1 missing value(s) but it is required",
    ):
        assert needle in message, needle
    assert len(info.value.problems) == 7


def test_empty_and_target_required(good):
    with pytest.raises(RawSchemaError, match="empty"):
        validate_raw(good.iloc[:0])
    with pytest.raises(RawSchemaError, match="missing columns: 'readmitted'"):
        validate_raw(good.drop(columns=[TARGET]), require_target=True)


def test_schema_hash_is_stable():
    assert schema_hash() == schema_hash() and len(schema_hash()) == 16
    assert len(RAW_COLUMNS) == 50 and len(FEATURE_COLUMNS) == 49


_values = st.one_of(
    st.none(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.booleans(),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_malformed_frames_raise_only_schema_errors(good, data):
    frame = good.head(data.draw(st.integers(0, 20))).copy()
    for _ in range(data.draw(st.integers(1, 6))):
        action = data.draw(st.sampled_from(["set", "drop", "rename", "add", "dtype"]))
        cols = list(frame.columns)
        if not cols:
            break
        col = data.draw(st.sampled_from(cols))
        if frame.columns.tolist().count(col) > 1:  # duplicate names are checked on their own
            break
        if action == "set" and len(frame):
            frame[col] = frame[col].astype(object)
            row = data.draw(st.integers(0, len(frame) - 1))
            frame.iloc[row, frame.columns.get_loc(col)] = data.draw(_values)
        elif action == "drop":
            frame = frame.drop(columns=[col])
        elif action == "rename":
            frame = frame.rename(columns={col: data.draw(st.text(min_size=1, max_size=8))})
        elif action == "add":
            frame[data.draw(st.text(min_size=1, max_size=8))] = data.draw(_values)
        else:
            frame[col] = np.asarray(frame[col].astype(str), dtype=object)
    try:
        validate_raw(frame)
    except RawSchemaError as exc:
        assert exc.problems and str(exc)
    else:  # accepted: then it has every raw column, once, and integer columns cast cleanly
        assert {c.name for c in RAW_COLUMNS} - {TARGET} <= set(frame.columns)
        for col in RAW_COLUMNS:
            if col.kind in ("id", "int") and col.name in frame:
                pd.to_numeric(frame[col.name].dropna()).astype("int64")


@pytest.mark.parametrize("bad", [np.inf, -np.inf, "inf"])
def test_non_finite_integer_codes_are_schema_errors(good, bad):
    frame = good.copy()
    frame["admission_type_id"] = frame["admission_type_id"].astype(object)
    frame.iloc[0, frame.columns.get_loc("admission_type_id")] = bad
    with pytest.raises(RawSchemaError, match="admission_type_id"):
        validate_raw(frame)


def test_duplicate_column_names_are_reported(good):
    frame = good.rename(columns={"race": "gender"})
    with pytest.raises(RawSchemaError, match="duplicate column names: 'gender'"):
        validate_raw(frame)
