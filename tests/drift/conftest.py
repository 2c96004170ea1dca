"""Fixtures of the drift tests: one prepared synthetic data set and one registered model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

N_SYNTHETIC = 10_000
BATCH_ROWS = 500


@pytest.fixture(scope="module")
def drift_env(tmp_path_factory, synthetic_champion, settings_isolation):
    """Isolated settings, prepared synthetic splits and a logistic-regression champion.

    Module-scoped (training and registering once per module), so it sets the environment itself
    instead of using the function-scoped ``hp_env``.
    """
    from healthpredict.core import layout
    from healthpredict.core.settings import get_settings

    tmp = tmp_path_factory.mktemp("drift")
    patch = pytest.MonkeyPatch()
    settings_isolation(patch, tmp)
    try:
        # Half the encounters form the initial period: ~3,400 / 730 / 730 rows per split.
        made = synthetic_champion(N_SYNTHETIC)
        data_dir = Path(layout.processed_data())
        yield SimpleNamespace(
            tmp=tmp,
            data_dir=data_dir,
            info=made.info,
            pipeline=made.pipeline,
            # Rows of the reference period the model never saw: a batch without drift.
            clean_batch=made.test.iloc[:BATCH_ROWS].reset_index(drop=True),
            validation_uri=str(data_dir / "validation.csv"),
        )
    finally:
        patch.undo()
        get_settings.cache_clear()
