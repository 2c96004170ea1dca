"""The split (chronological periods, patient-grouped inside the initial one) and its manifest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from healthpredict.core import storage
from healthpredict.data import synthetic
from healthpredict.data.schema import EXCLUDED_DISPOSITIONS
from healthpredict.data.split import (
    SPLITS,
    SplitParams,
    load_split,
    prepare,
    read_manifest,
    split_parts,
)
from healthpredict.data.uci import CSV_SHA256


def _check_split_invariants(data_dir: str, manifest: dict) -> dict[str, pd.DataFrame]:
    parts = {name: load_split(name, data_dir) for name in SPLITS}
    initial = ("initial_train", "validation", "test")
    patients = [set(parts[n]["patient_nbr"]) for n in initial]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    for name in SPLITS:  # the stream too: one exclusion rule for every split
        assert not parts[name]["discharge_disposition_id"].isin(EXCLUDED_DISPOSITIONS).any()
    removed = manifest["excluded"]["rows_removed"]
    assert sum(len(p) for p in parts.values()) + sum(removed.values()) == manifest["source_rows"]
    assert sum(manifest["excluded"]["rows_removed_by_disposition"].values()) == sum(
        removed.values()
    )
    future = parts["future_data"]["encounter_id"]
    assert future.is_monotonic_increasing and future.is_unique
    last_initial = max(parts[n]["encounter_id"].max() for n in initial)
    assert future.min() > last_initial  # the stream comes strictly after the initial period
    for name in SPLITS:
        info = manifest["splits"][name]
        assert info["rows"] == len(parts[name])
        assert info["sha256"] == storage.sha256(storage.join(data_dir, f"{name}.csv"))
    return parts


def test_prepare_synthetic(tmp_path):
    out = str(tmp_path / "processed")
    manifest = prepare("synthetic", out_dir=out, n_synthetic=5000)
    assert manifest == read_manifest(out)
    assert manifest["data_source"] == "synthetic" and "SYNTHETIC" in manifest["banner"]
    parts = _check_split_invariants(out, manifest)
    removed = manifest["excluded"]["rows_removed"]
    assert removed["future_data"] > 0  # the generator writes deaths/hospice into the stream too
    assert len(parts["future_data"]) == 4000 - removed["future_data"]
    assert 0.05 < manifest["splits"]["initial_train"]["target_rate"] < 0.25


def test_exclusion_applies_to_both_periods_and_keeps_the_boundary():
    raw = synthetic.generate(3000, seed=3).sample(frac=1.0, random_state=0)  # any row order
    ordered = raw.sort_values("encounter_id")
    # Known exclusions: 40 deaths among the first 600 encounters, 90 hospice among the rest.
    disposition = ordered["discharge_disposition_id"].where(
        ~ordered["discharge_disposition_id"].isin(EXCLUDED_DISPOSITIONS), 1
    )
    rng = np.random.default_rng(0)
    disposition.iloc[rng.choice(600, 40, replace=False)] = 11
    disposition.iloc[600 + rng.choice(2400, 90, replace=False)] = 14
    raw["discharge_disposition_id"] = disposition.reindex(raw.index)
    parts, excluded = split_parts(raw, SplitParams(initial_fraction=0.2))
    assert excluded["rows_removed"] == {"initial_period": 40, "future_data": 90}
    assert excluded["rows_removed_by_disposition"] == {"11": 40, "14": 90}
    assert len(parts["future_data"]) == 2400 - 90
    assert sum(len(parts[n]) for n in ("initial_train", "validation", "test")) == 600 - 40
    # The boundary is counted on all encounters: the stream starts right after the 600th.
    kept = ordered[~disposition.isin(EXCLUDED_DISPOSITIONS)]
    first_stream = kept["encounter_id"][kept["encounter_id"] > ordered["encounter_id"].iloc[599]]
    assert parts["future_data"]["encounter_id"].iloc[0] == first_stream.iloc[0]


def test_any_target_and_params_recorded(tmp_path):
    out = str(tmp_path / "p")
    m = prepare("synthetic", out_dir=out, n_synthetic=3000, params=SplitParams(target="any"))
    assert m["split_params"]["target"] == "any"
    assert m["splits"]["initial_train"]["target_rate"] > 0.3


def test_bad_split_params_are_clear():
    with pytest.raises(ValueError, match="initial_fraction"):
        SplitParams(initial_fraction=1.5)
    with pytest.raises(ValueError, match="sum below 1"):
        SplitParams(validation_fraction=0.6, test_fraction=0.5)


def test_prepare_to_s3(s3_bucket):
    out = f"{s3_bucket}/processed_data"
    manifest = prepare("synthetic", out_dir=out, n_synthetic=2000)
    assert read_manifest(out)["splits"]["test"]["rows"] == manifest["splits"]["test"]["rows"]
    removed = manifest["excluded"]["rows_removed"]["future_data"]
    assert len(load_split("future_data", out)) == 1600 - removed


@pytest.mark.realdata
def test_prepare_real_data(real_zip, tmp_path):
    out = str(tmp_path / "real")
    manifest = prepare(str(real_zip), out_dir=out)
    assert manifest["data_source"] == "real"
    assert manifest["source_csv_sha256"] == CSV_SHA256 and manifest["source_rows"] == 101_766
    parts = _check_split_invariants(out, manifest)
    n_initial = sum(len(parts[n]) for n in ("initial_train", "validation", "test"))
    # Expired/hospice encounters removed from both periods: 381 of the first 20,353 encounters
    # and 2,042 (2.5 %) of the 81,413 of the stream.
    assert manifest["excluded"]["rows_removed"] == {"initial_period": 381, "future_data": 2042}
    assert n_initial == 20_353 - 381
    assert len(parts["future_data"]) == 101_766 - 20_353 - 2042
    for name in SPLITS:  # the <30 rate is ~11% everywhere
        assert 0.09 < manifest["splits"][name]["target_rate"] < 0.14
