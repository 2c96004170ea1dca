"""Fixtures of the model tests: small synthetic data prepared once, copied per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

N_SYNTHETIC = 4000
# Half the encounters form the initial period, so train/validation/test have ~1,400/300/300 rows.
INITIAL_FRACTION = 0.5


@pytest.fixture(scope="session")
def synthetic_prepared(tmp_path_factory) -> Path:
    """Synthetic encounters prepared (split + manifest) once per session, read-only by convention."""
    from healthpredict.data.split import SplitParams, prepare

    out = tmp_path_factory.mktemp("synthetic") / "processed_data"
    prepare(
        source="synthetic",
        out_dir=str(out),
        params=SplitParams(initial_fraction=INITIAL_FRACTION),
        n_synthetic=N_SYNTHETIC,
    )
    return out


@pytest.fixture
def data_dir(hp_env, synthetic_prepared) -> str:
    """A private copy of the prepared data at <storage>/processed_data (the default location)."""
    target = hp_env / "var" / "processed_data"
    shutil.copytree(synthetic_prepared, target)
    return str(target)


@pytest.fixture
def shuffled_labels():
    """Function copying a prepared data folder with ``readmitted`` permuted in some splits."""
    return _shuffled_labels


def _shuffled_labels(src: str, dst: Path, splits: tuple[str, ...], seed: int = 0) -> str:
    import numpy as np

    from healthpredict.core import storage
    from healthpredict.data.split import load_split

    shutil.copytree(src, dst)
    rng = np.random.default_rng(seed)
    for name in splits:
        frame = load_split(name, str(dst))
        frame["readmitted"] = frame["readmitted"].to_numpy()[rng.permutation(len(frame))]
        storage.write_csv(str(dst / f"{name}.csv"), frame)
    return str(dst)
