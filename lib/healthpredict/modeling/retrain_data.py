"""The new labelled data of a retraining: read, validated, split by patient for the gate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

from healthpredict.data.schema import make_target, validate_raw
from healthpredict.data.uci import read_raw_csv


class RetrainDataError(ValueError):
    """The new batches cannot support a fair comparison; the message says why."""


def load_batches(uris: Sequence[str] | str | None) -> pd.DataFrame:
    """Read, validate (target required) and concatenate labelled raw batches.

    Raises:
        RawSchemaError: A batch does not match the raw schema (named by its URI).
        RetrainDataError: No URI was given, or the batches share encounter ids.
    """
    uris = [uris] if isinstance(uris, str) else list(uris or [])
    if not uris:
        raise RetrainDataError("no new data given: pass at least one batch URI")
    frames = []
    for uri in uris:
        frame = read_raw_csv(str(uri), source=str(uri))
        validate_raw(frame, require_target=True, source=str(uri))
        frames.append(frame)
    combined = pd.concat(frames, ignore_index=True)
    validate_raw(combined, require_target=True, source=f"{len(uris)} batch(es) together")
    return combined


def split_new_data(
    new: pd.DataFrame, *, holdout_fraction: float, seed: int, exclude_patients: set | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Split new encounters by patient into (new-train, new-holdout).

    Patients of ``exclude_patients`` (those of the fixed validation/test splits) are dropped
    from new-train: training on their later encounters would flatter the challenger on test.

    Returns:
        New-train, new-holdout and the number of rows dropped from new-train.
    """
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    if new["patient_nbr"].nunique() < 2:
        raise RetrainDataError(
            f"the new data has {new['patient_nbr'].nunique()} patient(s); a patient-grouped "
            "holdout needs at least 2"
        )
    splitter = GroupShuffleSplit(n_splits=1, test_size=holdout_fraction, random_state=seed)
    train_idx, hold_idx = next(splitter.split(new, groups=new["patient_nbr"]))
    new_train, holdout = new.iloc[np.sort(train_idx)], new.iloc[np.sort(hold_idx)]
    dropped = 0
    if exclude_patients:
        keep = ~new_train["patient_nbr"].isin(exclude_patients)
        dropped = int((~keep).sum())
        new_train = new_train[keep]
    return new_train.reset_index(drop=True), holdout.reset_index(drop=True), dropped


@dataclass
class RetrainData:
    """The rows of one retraining: what the challenger learns from and what both are judged on.

    Attributes:
        train: ``initial_train`` + every labelled batch row except the gate holdout (the
            challenger's training rows: cumulative, as the backtest recommends).
        val: The fixed validation split (threshold and search).
        test: The fixed test split (reported for both models).
        holdout: The gate holdout: patients of the rows the champion never learned from, kept
            out of the challenger's fit; both models are judged on it.
        rows: Row counts for the record.
    """

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    holdout: pd.DataFrame
    rows: dict[str, int]


def retrain_data(
    frames: dict[str, pd.DataFrame],
    fresh: pd.DataFrame,
    *,
    target: str,
    holdout_fraction: float,
    seed: int,
    learned: pd.DataFrame | None = None,
) -> RetrainData:
    """Combine the fixed splits with the labelled batches into the rows of a fair comparison.

    Args:
        frames: The fixed ``initial_train``, ``validation`` and ``test`` frames.
        fresh: Labelled encounters the champion never learned from (readmittable only); the
            gate holdout is drawn from their patients.
        target: Label definition.
        holdout_fraction: Share of the fresh patients kept out of training for the gate.
        seed: Seed of the patient split.
        learned: Labelled stream encounters the champion already learned from (None: none);
            the challenger learns from them too.

    Raises:
        RetrainDataError: The holdout has one class only (the gate could not compare).
    """
    fixed_patients = set(frames["validation"]["patient_nbr"]) | set(frames["test"]["patient_nbr"])
    fresh_train, holdout, dropped = split_new_data(
        fresh, holdout_fraction=holdout_fraction, seed=seed, exclude_patients=fixed_patients
    )
    if len(np.unique(make_target(holdout, target))) < 2:
        raise RetrainDataError(
            f"the gate holdout ({len(holdout)} rows) has only one class for target {target!r}; "
            "the gate could not compare ROC AUC: give more new data"
        )
    learned = learned if learned is not None else fresh.iloc[:0]
    keep = ~learned["patient_nbr"].isin(fixed_patients)
    train = pd.concat([frames["initial_train"], learned[keep], fresh_train], ignore_index=True)
    val, test = frames["validation"], frames["test"]
    rows = {
        "initial_train": len(frames["initial_train"]),
        "learned_rows": int(keep.sum()),
        "new_rows": len(fresh),
        "new_train": len(fresh_train),
        "new_holdout": len(holdout),
        "new_train_dropped_fixed_patients": dropped + int((~keep).sum()),
        "train_total": len(train),
        "validation": len(val),
        "test": len(test),
    }
    return RetrainData(train, val, test, holdout, rows)
