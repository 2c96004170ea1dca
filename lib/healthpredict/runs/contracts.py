"""What each pipeline notebook must leave behind: required scraps and allowed values.

The loop and the DAGs branch on these scraps, so a notebook that ends without them has not
done its job: the runner marks such a run failed even though no cell raised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

REQUIRED_SCRAPS: dict[str, list[str]] = {
    "01_eda": ["data_source", "n_rows", "target_rate"],
    "02_train_hpo": [
        "data_source", "best_family", "best_params", "val_roc_auc", "test_roc_auc",
        "test_pr_auc", "threshold", "model_version", "mlflow_run_id", "promoted",
    ],
    "03_drift_monitor": [
        "data_source", "drift_status", "drifted_share", "n_drifted_columns", "drifted_columns",
        "prediction_drift", "report_paths", "model_version", "mlflow_run_id",
        "retrain", "retrain_triggers", "retrain_reasons", "estimated_roc_auc",
    ],
    "04_retrain": [
        "data_source", "decision", "promoted", "reason", "challenger_version",
        "champion_version", "challenger_metrics", "champion_metrics", "mlflow_run_id",
        "holdout_path", "gate", "alias_moved",
    ],
}  # fmt: skip

# Scraps whose value other steps switch on: anything else is a bug in the notebook.
ALLOWED_VALUES: dict[str, dict[str, tuple[Any, ...]]] = {
    "03_drift_monitor": {"drift_status": ("DRIFT_DETECTED", "NO_DRIFT"), "retrain": (True, False)},
    "04_retrain": {"promoted": (True, False), "alias_moved": (True, False)},
}


def required_scraps(notebook: str) -> list[str]:
    """Scraps the named notebook (e.g. ``"03_drift_monitor"``) must record; [] without contract."""
    return list(REQUIRED_SCRAPS.get(notebook, []))


def check_scraps(
    notebook: str,
    scraps: Mapping[str, Any],
    required: Sequence[str] | None = None,
    allowed: Mapping[str, Sequence[Any]] | None = None,
) -> list[str]:
    """Check the scraps of a finished run against its contract.

    Args:
        notebook: Notebook name, used to look up the contract.
        scraps: Scraps the run recorded.
        required: Override of the required names (None: :data:`REQUIRED_SCRAPS`).
        allowed: Override of the allowed values (None: :data:`ALLOWED_VALUES`).

    Returns:
        Problems found, as sentences; empty when the contract holds.
    """
    need = required_scraps(notebook) if required is None else list(required)
    rules = ALLOWED_VALUES.get(notebook, {}) if allowed is None else allowed
    problems: list[str] = []
    missing = [name for name in need if name not in scraps]
    if missing:
        problems.append("required scraps missing: " + ", ".join(missing))
    for name, values in rules.items():
        if name in scraps and scraps[name] not in values:
            problems.append(
                f"scrap {name!r} is {scraps[name]!r}; expected one of "
                + ", ".join(repr(v) for v in values)
            )
    return problems
