"""Names shared across layers: experiments, registry aliases, decisions and limits.

One definition each; every module, notebook, DAG and test imports them from here.
"""

from __future__ import annotations

# MLflow experiments, one per kind of recorded run.
TRAINING_EXPERIMENT = "HealthPredict_Training"
RETRAINING_EXPERIMENT = "HealthPredict_Retraining"
MONITORING_EXPERIMENT = "HealthPredict_Monitoring"

# Registry aliases of the model versions.
CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"

# The monitor's verdict on a batch (a notebook scrap the loop and the DAG branch on).
DRIFT_DETECTED = "DRIFT_DETECTED"
NO_DRIFT = "NO_DRIFT"

# The promotion gate's verdict on a challenger.
PROMOTED = "PROMOTED"
REJECTED = "REJECTED"

# The model families the search knows.
FAMILIES = ("logreg", "rf", "hgb")

# Fewest rows a batch may have to be monitored: below it, drift distances are noise.
MIN_BATCH_ROWS = 30

# Column of a model's predicted probability in prediction frames (monitoring, its figures).
PROBA_COLUMN = "prediction_proba"

# The prepared splits, in time order, and the files they are stored in.
SPLITS = ("initial_train", "validation", "test", "future_data")
REFERENCE_SPLIT = "initial_train"
STREAM_SPLIT = "future_data"


def champion_uri(model_name: str) -> str:
    """Registry URI of the champion of ``model_name`` (``models:/<name>@champion``)."""
    return f"models:/{model_name}@{CHAMPION}"


# The loop refreshes a model once labelled rows it never learned from reach this share of its
# training rows: on the real stream more labelled data beats recency (docs/loop_backtest.md).
GROWTH_TRIGGER = 0.5
# The estimated ROC AUC of a batch takes its level from this many of the model's latest
# labelled batches (chosen on the first half of the real stream: benchmarks/bench_estimation.py).
ESTIMATE_WINDOW_BATCHES = 12
