"""The raw encounter schema of the UCI "Diabetes 130-US hospitals" data, in one place.

Every consumer (loader, drift monitor, API) validates with :func:`validate_raw`, which reports
all problems at once in a :class:`RawSchemaError` whose message a person can act on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

TARGET = "readmitted"
ID_COLUMNS = ("encounter_id", "patient_nbr")
# Dispositions after which a patient cannot be readmitted (expired / hospice).
EXCLUDED_DISPOSITIONS = frozenset({11, 13, 14, 19, 20, 21})

MED_STATUS = ("No", "Steady", "Up", "Down")
MEDICATIONS = (
    "metformin", "repaglinide", "nateglinide", "chlorpropamide", "glimepiride", "acetohexamide",
    "glipizide", "glyburide", "tolbutamide", "pioglitazone", "rosiglitazone", "acarbose",
    "miglitol", "troglitazone", "tolazamide", "examide", "citoglipton", "insulin",
    "glyburide-metformin", "glipizide-metformin", "glimepiride-pioglitazone",
    "metformin-rosiglitazone", "metformin-pioglitazone",
)  # fmt: skip
AGE_BRACKETS = tuple(f"[{i}-{i + 10})" for i in range(0, 100, 10))
WEIGHT_BRACKETS = tuple(f"[{i}-{i + 25})" for i in range(0, 200, 25)) + (">200",)
ICD9_PATTERN = r"^(\d{1,3}(\.\d{1,2})?|V\d{1,2}(\.\d{1,2})?|E\d{3}(\.\d)?)$"

Kind = Literal["id", "int", "category", "code", "text"]


@dataclass(frozen=True)
class Column:
    """One raw column: its kind, what values it may hold and whether it may be missing."""

    name: str
    kind: Kind
    description: str
    allowed: tuple | None = None  # closed set of values (categories or integer codes)
    low: int | None = None  # inclusive range for counts
    high: int | None = None
    nullable: bool = False
    pattern: str | None = None  # regex for codes

    @property
    def python_name(self) -> str:
        """The name as a Python identifier (hyphens become underscores)."""
        return self.name.replace("-", "_")


def _ids(n_max: int) -> tuple[int, ...]:
    return tuple(range(1, n_max + 1))


RAW_COLUMNS: tuple[Column, ...] = (
    Column("encounter_id", "id", "Unique encounter id; increases with time (1999-2008)."),
    Column("patient_nbr", "id", "Patient id; a patient may have several encounters."),
    Column("race", "category", "Race.", ("Caucasian", "AfricanAmerican", "Hispanic", "Other", "Asian"), nullable=True),
    Column("gender", "category", "Gender.", ("Female", "Male", "Unknown/Invalid")),
    Column("age", "category", "Age in 10-year brackets.", AGE_BRACKETS),
    Column("weight", "category", "Weight in pounds (mostly missing).", WEIGHT_BRACKETS, nullable=True),
    Column("admission_type_id", "int", "Admission type (IDs_mapping.csv).", _ids(8)),
    Column("discharge_disposition_id", "int", "Discharge disposition (IDs_mapping.csv).", _ids(30)),
    Column("admission_source_id", "int", "Admission source (IDs_mapping.csv).", _ids(26)),
    Column("time_in_hospital", "int", "Days between admission and discharge.", low=1, high=14),
    Column("payer_code", "text", "Payer code, e.g. MC (Medicare).", nullable=True, pattern=r"^[A-Z]{2}$"),
    Column("medical_specialty", "text", "Specialty of the admitting physician.", nullable=True, pattern=r"^[A-Za-z&/\-]{1,60}$"),
    Column("num_lab_procedures", "int", "Lab tests during the encounter.", low=0, high=200),
    Column("num_procedures", "int", "Procedures (other than lab tests).", low=0, high=20),
    Column("num_medications", "int", "Distinct generic drugs administered.", low=0, high=150),
    Column("number_outpatient", "int", "Outpatient visits in the year before.", low=0, high=100),
    Column("number_emergency", "int", "Emergency visits in the year before.", low=0, high=100),
    Column("number_inpatient", "int", "Inpatient visits in the year before.", low=0, high=100),
    Column("diag_1", "code", "Primary diagnosis (ICD-9, leading zeros dropped).", nullable=True, pattern=ICD9_PATTERN),
    Column("diag_2", "code", "Secondary diagnosis (ICD-9).", nullable=True, pattern=ICD9_PATTERN),
    Column("diag_3", "code", "Additional secondary diagnosis (ICD-9).", nullable=True, pattern=ICD9_PATTERN),
    Column("number_diagnoses", "int", "Diagnoses entered.", low=1, high=20),
    Column("max_glu_serum", "category", "Glucose serum test; 'None' = not measured.", ("None", "Norm", ">200", ">300")),
    Column("A1Cresult", "category", "HbA1c test; 'None' = not measured.", ("None", "Norm", ">7", ">8")),
    *(Column(m, "category", f"{m}: prescribed and dose change.", MED_STATUS) for m in MEDICATIONS),
    Column("change", "category", "Any change of diabetic medication.", ("No", "Ch")),
    Column("diabetesMed", "category", "Any diabetic medication prescribed.", ("Yes", "No")),
    Column(TARGET, "category", "Readmission: <30 days, >30 days or none.", ("NO", ">30", "<30")),
)  # fmt: skip

COLUMNS: dict[str, Column] = {c.name: c for c in RAW_COLUMNS}
FEATURE_COLUMNS: tuple[str, ...] = tuple(c.name for c in RAW_COLUMNS if c.name != TARGET)
ALIASES: dict[str, str] = {c.python_name: c.name for c in RAW_COLUMNS if c.python_name != c.name}


@dataclass
class RawSchemaError(ValueError):
    """Raised by :func:`validate_raw` with every problem found in a raw frame."""

    problems: list[str] = field(default_factory=list)
    source: str = "data"

    def __str__(self) -> str:
        head = f"{self.source} does not match the raw UCI schema ({len(self.problems)} problem(s)):"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])


def schema_hash() -> str:
    """Short sha256 of the raw schema; changes whenever a column or its allowed values change."""
    spec = [(c.name, c.kind, c.allowed, c.low, c.high, c.nullable, c.pattern) for c in RAW_COLUMNS]
    return hashlib.sha256(json.dumps(spec, default=str).encode()).hexdigest()[:16]


def _examples(values: Iterable, limit: int = 5) -> str:
    vals = [v.item() if hasattr(v, "item") else v for v in values]
    shown = ", ".join(repr(v) for v in vals[:limit])
    return shown + (f", ... ({len(vals)} in all)" if len(vals) > limit else "")


def _as_int(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Integer view of a column and a mask of the non-missing values that are not integers."""
    num = pd.to_numeric(series, errors="coerce")
    # inf is numeric but no integer: left in, a later integer cast would raise pandas' own error.
    finite = np.isfinite(num.astype(float))
    bad = series.notna() & (~finite | (num != np.floor(num.where(finite, 0))))
    return num.where(finite), bad


def validate_raw(
    df: pd.DataFrame,
    *,
    require_target: bool = False,
    allow_extra: bool = False,
    source: str = "data",
) -> None:
    """Check a raw encounter frame against the schema, reporting every problem at once.

    Args:
        df: Raw frame as read by :func:`healthpredict.data.uci.read_raw_csv` (``?`` already NaN).
        require_target: Whether ``readmitted`` must be present (training needs it, scoring not).
        allow_extra: Accept columns outside the schema instead of reporting them.
        source: Name of the data in the message (file name, batch URI).

    Raises:
        RawSchemaError: With one line per problem (column, offending values with counts, rows).
    """
    problems: list[str] = []
    if not isinstance(df, pd.DataFrame):
        raise RawSchemaError([f"expected a pandas DataFrame, got {type(df).__name__}"], source)
    if len(df) == 0:
        problems.append("the frame is empty (0 rows)")
    names = [str(c) for c in df.columns]
    dup_cols = sorted({c for c in names if names.count(c) > 1})
    if dup_cols:
        problems.append(f"duplicate column names: {_examples(dup_cols)}")
        raise RawSchemaError(problems, source)
    expected = [c for c in FEATURE_COLUMNS] + ([TARGET] if require_target else [])
    missing = [c for c in expected if c not in df.columns]
    if missing:
        problems.append(f"missing columns: {_examples(missing, 10)}")
    extra = [c for c in names if c not in COLUMNS]
    if extra and not allow_extra:
        problems.append(f"unexpected columns: {_examples(extra, 10)}")
    for col in RAW_COLUMNS:
        if col.name not in df.columns or len(df) == 0:
            continue
        problems.extend(_check_column(col, df[col.name]))
    if "encounter_id" in df.columns and len(df):
        dup = df["encounter_id"][df["encounter_id"].duplicated(keep=False)]
        if len(dup):
            problems.append(
                f"encounter_id: {dup.nunique()} value(s) appear more than once "
                f"({len(dup)} rows), e.g. {_examples(dup.unique())}"
            )
    if problems:
        raise RawSchemaError(problems, source)


def _check_column(col: Column, s: pd.Series) -> list[str]:
    problems: list[str] = []
    n_missing = int(s.isna().sum())
    if n_missing and not col.nullable:
        rows = s.index[s.isna()][:5].tolist()
        problems.append(
            f"{col.name}: {n_missing} missing value(s) but it is required (rows {rows})"
        )
    present = s.dropna()
    if col.kind in ("id", "int"):
        num, bad = _as_int(present)
        if bad.any():
            problems.append(
                f"{col.name}: {int(bad.sum())} value(s) are not integers, "
                f"e.g. {_examples(present[bad].astype(str).unique())}"
            )
            num = num[~bad]
        if col.kind == "id" and (num <= 0).any():
            problems.append(f"{col.name}: {int((num <= 0).sum())} id(s) are not positive")
        if col.allowed is not None:
            unknown = num[~num.isin(col.allowed)]
            if len(unknown):
                counts = unknown.astype(int).value_counts()
                problems.append(
                    f"{col.name}: {len(unknown)} value(s) outside the known codes "
                    f"{col.allowed[0]}..{col.allowed[-1]}: "
                    + ", ".join(f"{k} ({v}x)" for k, v in counts.head(10).items())
                )
        for bound, op, word in ((col.low, num.lt, "below"), (col.high, num.gt, "above")):
            if bound is not None and op(bound).any():
                out = num[op(bound)]
                problems.append(
                    f"{col.name}: {len(out)} value(s) {word} the allowed range "
                    f"[{col.low}, {col.high}], e.g. {_examples(out.astype(int).unique())}"
                )
    elif col.kind == "category":
        text = present.astype(str)
        unknown = text[~text.isin(col.allowed)]
        if len(unknown):
            counts = unknown.value_counts()
            problems.append(
                f"{col.name}: {len(unknown)} value(s) in {len(counts)} unknown categor"
                f"{'y' if len(counts) == 1 else 'ies'}: "
                + ", ".join(f"{k!r} ({v}x)" for k, v in counts.head(10).items())
                + f"; allowed: {', '.join(col.allowed)}"
            )
    else:
        text = present.astype(str)
        bad = ~text.str.match(col.pattern)
        if bad.any():
            counts = text[bad].value_counts()
            problems.append(
                f"{col.name}: {int(bad.sum())} value(s) do not look like a {col.kind} "
                f"({col.description}): "
                + ", ".join(f"{k!r} ({v}x)" for k, v in counts.head(5).items())
            )
    return problems


def coerce_raw(df: pd.DataFrame) -> pd.DataFrame:
    """Return a copy with schema dtypes: integers as int64, everything else as object strings.

    Call after :func:`validate_raw`; the column order follows the schema.
    """
    out = pd.DataFrame(index=df.index)
    for col in RAW_COLUMNS:
        if col.name not in df.columns:
            continue
        s = df[col.name]
        if col.kind in ("id", "int"):
            out[col.name] = pd.to_numeric(s).astype("int64")
        else:
            out[col.name] = s.astype(object).where(s.notna(), None)
            out[col.name] = out[col.name].map(lambda v: v if v is None else str(v))
    return out


# The two labels a model can learn from ``readmitted``.
TARGETS = ("<30", "any")


def make_target(df: pd.DataFrame, target: str = "<30") -> np.ndarray:
    """Binary label from ``readmitted``: ``<30`` (default) or ``any`` readmission.

    Raises:
        ValueError: For an unknown target name or a frame without ``readmitted``.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {TARGETS}")
    if TARGET not in df.columns:
        raise ValueError(f"the frame has no {TARGET!r} column, so it has no label")
    labels = df[TARGET]
    return (labels == "<30").to_numpy(int) if target == "<30" else (labels != "NO").to_numpy(int)
