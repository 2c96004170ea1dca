"""Leakage-free split of the encounters, written with a manifest.

Encounters are ordered by ``encounter_id`` (it grows with time) and cut in two periods: the
first ``initial_fraction`` of them is the initial period, the rest, in order, is
``future_data``: the stream the monitor sees in batches. One exclusion rule applies to both
periods (encounters ending in death or hospice cannot be readmitted); the manifest records how
many rows it removed from each. Inside the initial period the split is not chronological:
``initial_train`` / ``validation`` / ``test`` are random groups of patients (``patient_nbr``),
so no patient is on two sides.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

from healthpredict.core import layout, storage
from healthpredict.core.portable import portable
from healthpredict.core.settings import get_settings
from healthpredict.data import synthetic
from healthpredict.data.schema import (
    EXCLUDED_DISPOSITIONS,
    TARGET,
    make_target,
    schema_hash,
    validate_raw,
)
from healthpredict.data.uci import LoadedData, load_auto, load_uci, read_raw_csv

SPLITS = ("initial_train", "validation", "test", "future_data")
MANIFEST = "manifest.json"
SYNTHETIC_BANNER = (
    "SYNTHETIC DATA (asked for with --source synthetic / HP_UCI_SOURCE=synthetic): every "
    "result of this run comes from the offline synthetic generator, not from real patients."
)


@dataclass(frozen=True)
class SplitParams:
    """How the encounters are split (recorded in the manifest)."""

    initial_fraction: float = 0.2
    validation_fraction: float = 0.15
    test_fraction: float = 0.15
    target: str = "<30"
    seed: int = 42

    def __post_init__(self) -> None:
        if not 0 < self.initial_fraction < 1:
            raise ValueError(f"initial_fraction must be in (0, 1), got {self.initial_fraction}")
        held_out = self.validation_fraction + self.test_fraction
        if not (0 < self.validation_fraction and 0 < self.test_fraction and held_out < 1):
            raise ValueError(
                "validation_fraction and test_fraction must be positive and sum below 1, "
                f"got {self.validation_fraction} + {self.test_fraction}"
            )


def unreadmittable(df: pd.DataFrame) -> np.ndarray:
    """Mask of the encounters ending in death or hospice (``EXCLUDED_DISPOSITIONS``).

    They cannot be readmitted, so their label is NO by construction: they are removed from every
    split, reference and stream alike.
    """
    return df["discharge_disposition_id"].isin(EXCLUDED_DISPOSITIONS).to_numpy()


def drop_unreadmittable(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` without the encounters :func:`unreadmittable` marks."""
    return df[~unreadmittable(df)]


def resolve_source(source: str | None = None, *, n_synthetic: int = 30_000) -> LoadedData:
    """Load the data named by ``source`` (default: the ``HP_UCI_SOURCE`` setting).

    ``auto`` takes the zip bundled in the repository, else the cached one, else downloads it,
    else raises (see :func:`~healthpredict.data.uci.load_auto`): the synthetic generator runs
    only when asked, with ``synthetic``. A path, ``s3://`` URI or URL is loaded as given.

    Raises:
        UCIDataError: The data cannot be found, fetched or verified.
    """
    source = source or get_settings().uci_source
    if source == "auto":
        return load_auto()
    if source == "synthetic":
        frame = synthetic.generate(n_synthetic, seed=0)
        digest = storage.sha256_bytes(frame.to_csv(index=False).encode())
        return LoadedData(frame, f"synthetic:{n_synthetic}", digest, data_source="synthetic")
    return load_uci(source)


def split_parts(raw: pd.DataFrame, params: SplitParams) -> tuple[dict[str, pd.DataFrame], dict]:
    """Split a validated raw frame into the four named parts (see the module docstring).

    The period boundary is counted on all encounters, before the exclusion, so the initial
    period covers the same time span whatever the exclusion removes.

    Returns:
        The parts by name, and the exclusion record of the manifest: the rule and the rows it
        removed from each period and by disposition.
    """
    ordered = raw.sort_values("encounter_id", kind="stable").reset_index(drop=True)
    n_initial = int(round(len(ordered) * params.initial_fraction))
    excluded = unreadmittable(ordered)
    in_initial = np.arange(len(ordered)) < n_initial
    initial = ordered[in_initial & ~excluded]
    future = ordered[~in_initial & ~excluded]
    held_out = params.validation_fraction + params.test_fraction
    outer = GroupShuffleSplit(n_splits=1, test_size=held_out, random_state=params.seed)
    train_idx, rest_idx = next(outer.split(initial, groups=initial["patient_nbr"]))
    rest = initial.iloc[rest_idx]
    inner = GroupShuffleSplit(
        n_splits=1, test_size=params.test_fraction / held_out, random_state=params.seed + 1
    )
    val_idx, test_idx = next(inner.split(rest, groups=rest["patient_nbr"]))
    parts = {
        "initial_train": initial.iloc[np.sort(train_idx)],
        "validation": rest.iloc[np.sort(val_idx)],
        "test": rest.iloc[np.sort(test_idx)],
        "future_data": future,
    }
    by_disposition = ordered.loc[excluded, "discharge_disposition_id"].value_counts().sort_index()
    record = {
        "rule": "discharge_disposition_id in EXCLUDED_DISPOSITIONS (expired or hospice: "
        "cannot be readmitted), removed from the initial period and the stream alike",
        "dispositions": sorted(int(d) for d in EXCLUDED_DISPOSITIONS),
        "rows_removed": {
            "initial_period": int((excluded & in_initial).sum()),
            "future_data": int((excluded & ~in_initial).sum()),
        },
        "rows_removed_by_disposition": {str(int(d)): int(n) for d, n in by_disposition.items()},
    }
    return parts, record


def split_frame(raw: pd.DataFrame, params: SplitParams) -> dict[str, pd.DataFrame]:
    """The four named parts of :func:`split_parts`, without the exclusion record."""
    return split_parts(raw, params)[0]


def summarize(df: pd.DataFrame, target: str) -> dict:
    """Row count, distinct patients, encounter id range and target rate of one split."""
    return {
        "rows": int(len(df)),
        "patients": int(df["patient_nbr"].nunique()),
        "first_encounter_id": int(df["encounter_id"].min()) if len(df) else None,
        "last_encounter_id": int(df["encounter_id"].max()) if len(df) else None,
        "target_rate": float(make_target(df, target).mean()) if len(df) and TARGET in df else None,
    }


def prepare(
    source: str | None = None,
    *,
    out_dir: str | None = None,
    params: SplitParams | None = None,
    n_synthetic: int = 30_000,
) -> dict:
    """Load, validate, split and write the four CSVs plus ``manifest.json``; return the manifest.

    Args:
        source: Data source (see :func:`resolve_source`); default from settings.
        out_dir: Destination folder or URI; default ``<storage>/processed_data``.
        params: Split parameters.
        n_synthetic: Rows generated when the source is synthetic.
    """
    params = params or SplitParams()
    out_dir = out_dir or layout.processed_data()
    loaded = resolve_source(source, n_synthetic=n_synthetic)
    validate_raw(loaded.frame, require_target=True, source=loaded.source)
    parts, excluded = split_parts(loaded.frame, params)
    files = {}
    for name in SPLITS:
        payload = parts[name].to_csv(index=False).encode("utf-8")
        uri = storage.write_bytes(storage.join(out_dir, f"{name}.csv"), payload)
        files[name] = {**summarize(parts[name], params.target), "file": f"{name}.csv",
                       "sha256": storage.sha256_bytes(payload), "uri": portable(uri)}  # fmt: skip
    manifest = {
        "data_source": loaded.data_source,
        "source": portable(loaded.source),  # <storage>/..., repository-relative or as given
        "source_csv_sha256": loaded.csv_sha256,
        "source_rows": int(len(loaded.frame)),
        "schema_hash": schema_hash(),
        "split_params": asdict(params),
        "excluded": excluded,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "splits": files,
    }
    if loaded.data_source == "synthetic":
        manifest["banner"] = SYNTHETIC_BANNER
    # The manifest is written last: its presence means the four files are complete.
    storage.write_json(storage.join(out_dir, MANIFEST), manifest)
    return manifest


def read_manifest(data_dir: str | None = None) -> dict:
    """The manifest of a prepared data folder (default ``<storage>/processed_data``)."""
    return storage.read_json(storage.join(data_dir or layout.processed_data(), MANIFEST))


def load_split(name: str, data_dir: str | None = None) -> pd.DataFrame:
    """Read one prepared split (``initial_train``, ``validation``, ``test``, ``future_data``)."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; choose one of {SPLITS}")
    uri = storage.join(data_dir or layout.processed_data(), f"{name}.csv")
    return read_raw_csv(uri)
