"""Tables behind the EDA notebook: missingness, rates by group, the chronological view.

Pure functions of data frames, so the notebook stays narrative and the numbers are tested.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
import pandas as pd

# Markers the UCI file and ``clean_data`` use for "unknown"; "None" in the lab columns means
# "not measured", which is information, so it is not counted as missing.
MISSING_MARKERS = ("?", "Missing")
ADMISSION_TYPES = {
    1: "Emergency", 2: "Urgent", 3: "Elective", 4: "Newborn", 5: "Not available",
    6: "NULL", 7: "Trauma center", 8: "Not mapped",
}  # fmt: skip
# Shares tracked over the stream: clinical practice and coding changed over 1999-2008.
DEFAULT_STREAM_SHARES: dict[str, tuple[str, tuple[str, ...]]] = {
    "emergency admission": ("admission_type_id", ("1",)),
    "A1C tested": ("A1Cresult", ("Norm", ">7", ">8")),
    "insulin prescribed": ("insulin", ("Up", "Down", "Steady")),
    "medication changed": ("change", ("Ch",)),
    "age 70+": ("age", ("[70-80)", "[80-90)", "[90-100)")),
}
DEFAULT_STREAM_MEANS = (
    "time_in_hospital",
    "num_medications",
    "number_inpatient",
    "number_diagnoses",
)


def data_source_banner(manifest: Mapping) -> tuple[str, str]:
    """Data source (``"real"``/``"synthetic"``) and a banner sentence for the notebook.

    Args:
        manifest: ``manifest.json`` of the prepared data.

    Returns:
        ``(data_source, banner)``; the banner shouts when the data is synthetic.
    """
    source = str(manifest.get("data_source") or "unknown")
    if source == "synthetic":
        text = manifest.get("banner") or "SYNTHETIC DATA: not real patients."
        return source, f"⚠️ {text}"
    origin = manifest.get("source") or "unknown origin"
    return source, f"Data source: {source} ({origin}), {manifest.get('source_rows', '?')} raw rows."


def missingness(df: pd.DataFrame, markers: Collection[str] = MISSING_MARKERS) -> pd.DataFrame:
    """Missing values per column (NaN or a missing marker), most missing first.

    Returns:
        Frame indexed by column with ``n_missing`` and ``share`` (0-1); columns without
        missing values are left out.
    """
    counts = {}
    for col in df.columns:
        values = df[col]
        missing = values.isna()
        if values.dtype == object or isinstance(values.dtype, pd.StringDtype):
            missing |= values.isin(list(markers))
        counts[col] = int(missing.sum())
    table = pd.DataFrame({"n_missing": pd.Series(counts, dtype="int64")})
    table["share"] = table["n_missing"] / max(len(df), 1)
    return table[table["n_missing"] > 0].sort_values("n_missing", ascending=False)


def _wilson(successes: np.ndarray, n: np.ndarray, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    # The Wilson interval stays inside [0, 1] and behaves for small groups, unlike p ± z*se.
    n = np.maximum(n, 1)
    p = successes / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return centre - half, centre + half


def rate_by_group(
    groups: pd.Series | Sequence, y: Sequence[int] | np.ndarray, min_count: int = 1
) -> pd.DataFrame:
    """Target rate per group with counts and a 95% Wilson interval.

    Args:
        groups: Group of each row (e.g. the age bracket).
        y: Binary target of each row (0/1), same length.
        min_count: Groups with fewer rows are left out.

    Returns:
        Frame indexed by group with ``n``, ``share`` of rows, ``rate``, ``ci_low``, ``ci_high``,
        sorted by group.

    Raises:
        ValueError: ``groups`` and ``y`` differ in length.
    """
    groups = pd.Series(groups).reset_index(drop=True)
    y = np.asarray(y, dtype=float)
    if len(groups) != len(y):
        raise ValueError(f"groups has {len(groups)} rows but y has {len(y)}")
    frame = pd.DataFrame({"group": groups.fillna("Missing").astype(str), "y": y})
    table = frame.groupby("group", sort=True)["y"].agg(n="count", positives="sum")
    table = table[table["n"] >= min_count]
    low, high = _wilson(table["positives"].to_numpy(), table["n"].to_numpy())
    table["share"] = table["n"] / max(len(frame), 1)
    table["rate"] = table["positives"] / table["n"]
    table["ci_low"], table["ci_high"] = low, high
    table.index.name = groups.name or "group"
    return table[["n", "share", "rate", "ci_low", "ci_high"]]


def chronological_bins(
    df: pd.DataFrame,
    y: Sequence[int] | np.ndarray,
    n_bins: int = 10,
    order_column: str = "encounter_id",
    means: Sequence[str] = DEFAULT_STREAM_MEANS,
    shares: Mapping[str, tuple[str, Collection[str]]] | None = None,
) -> pd.DataFrame:
    """Target rate and case mix in equal-size bins of encounter order.

    Args:
        df: Raw or cleaned encounters (ids and raw columns).
        y: Binary target per row.
        n_bins: Number of bins (fewer when there are fewer rows).
        order_column: Column giving the chronological order (encounter ids grow with time).
        means: Numeric columns averaged per bin.
        shares: ``label -> (column, values)``: share of rows whose value (as text) is one of
            ``values``; default :data:`DEFAULT_STREAM_SHARES`.

    Returns:
        One row per bin (``bin`` 1..n): ``first_id``, ``last_id``, ``n``, ``rate``, then one
        column per mean and share present in ``df``.

    Raises:
        ValueError: ``df`` and ``y`` differ in length, or ``df`` is empty.
    """
    y = np.asarray(y, dtype=float)
    if len(df) != len(y):
        raise ValueError(f"df has {len(df)} rows but y has {len(y)}")
    if len(df) == 0:
        raise ValueError("no rows to bin")
    shares = DEFAULT_STREAM_SHARES if shares is None else shares
    order = np.argsort(df[order_column].to_numpy(), kind="stable")
    data = df.iloc[order].reset_index(drop=True)
    y = y[order]
    n_bins = max(1, min(n_bins, len(data)))
    bins = np.arange(len(data)) * n_bins // len(data)
    rows = []
    for b in range(n_bins):
        mask = bins == b
        part = data[mask]
        row = {
            "bin": b + 1,
            "first_id": part[order_column].iloc[0],
            "last_id": part[order_column].iloc[-1],
            "n": int(mask.sum()),
            "rate": float(y[mask].mean()),
        }
        for col in means:
            if col in part.columns:
                row[f"mean {col}"] = float(pd.to_numeric(part[col], errors="coerce").mean())
        for label, (col, values) in shares.items():
            if col in part.columns:
                row[label] = float(part[col].astype(str).isin({str(v) for v in values}).mean())
        rows.append(row)
    return pd.DataFrame(rows).set_index("bin")


def target_correlations(features: pd.DataFrame, y: Sequence[int] | np.ndarray) -> pd.Series:
    """Pearson correlation of each numeric feature with the target, strongest first."""
    numeric = features.select_dtypes("number")
    target = pd.Series(np.asarray(y, dtype=float), index=numeric.index)
    corr = numeric.apply(lambda col: col.corr(target) if col.std() > 0 else np.nan)
    return corr.dropna().reindex(corr.dropna().abs().sort_values(ascending=False).index)


def admission_type_labels(ids: pd.Series) -> pd.Series:
    """Readable admission types (IDs_mapping.csv) for ``admission_type_id`` values."""
    numbers = pd.to_numeric(ids, errors="coerce")
    return numbers.map(ADMISSION_TYPES).fillna(ids.astype(str)).rename("admission_type")


def plot_rates(ax, table: pd.DataFrame, title: str, overall: float | None = None) -> None:
    """Bar chart of a :func:`rate_by_group` table with its 95% intervals on a matplotlib axis."""
    labels = [str(i) for i in table.index]
    err = np.vstack([table["rate"] - table["ci_low"], table["ci_high"] - table["rate"]])
    ax.bar(labels, table["rate"], yerr=err, color="#4c72b0", capsize=3)
    if overall is not None:
        ax.axhline(overall, color="#c44e52", linestyle="--", linewidth=1, label="overall")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title)
    ax.set_ylabel("readmission rate")
    ax.tick_params(axis="x", rotation=45, labelsize=8)
