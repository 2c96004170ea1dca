# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     notebook_metadata_filter: kernelspec,jupytext,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Health Predict
#     language: python
#     name: healthpredict
# ---

# %% [markdown]
# # 03 · Drift monitor
#
# Is the production model getting worse, or about to? Labels of 30-day readmission arrive a
# month or more after discharge, so a new batch is monitored without them: its performance is
# *estimated* from the model's calibrated probabilities (confidence-based estimation, as
# NannyML's CBPE), and the *realised* ROC AUC is measured on the earlier batches whose labels
# have arrived. The retraining decision (first screen) weighs realised performance first, the
# estimate for what it can see, and how much labelled data the model never learned from; each
# band is calibrated on time-ordered batches of held-out patients of the reference period. The
# drift status below is reported as evidence of *what* moved. Three signals are checked, each
# against the reference:
#
# 1. **data drift** of every engineered model input (normed Wasserstein distance for numbers,
#    Jensen–Shannon distance for categories, computed by Evidently);
# 2. **prediction drift**: the model's predicted probabilities on the batch against those on
#    held-out reference rows, and the share predicted positive at the model's threshold;
# 3. **performance**, when the batch carries labels: ROC AUC, precision, recall and F1.
#
# Thresholds are *calibrated*: a distance between two samples is never zero, and how large it
# gets without any drift depends on the batch size. The reference's own batch-to-batch variation
# (1,000 random no-drift batches of this size) sets every threshold so that the decision raises a
# false alarm on at most `false_alarm_rate` of no-drift batches. The work happens in
# `healthpredict.mlops.monitor.monitor`; this notebook shows its evidence.

# %% tags=["parameters"]
new_data_path = ""  # raw batch CSV to monitor (path or s3:// URI); labels optional
reference_data_path = None  # raw reference CSV; None: <processed_data>/initial_train.csv
model_reference_path = None  # held-out CSV(s) for predictions; None: validation+test near it
mlflow_model_uri = None  # registry URI of the production model; None: champion of HP_MODEL_NAME
evidently_reports_path = None  # folder/s3:// URI of the HTML reports; None: <run dir>/reports
mlflow_experiment_name = "HealthPredict_Monitoring"  # MLflow experiment of the monitoring runs
drift_share_threshold = None  # share of drifted columns meaning data drift; None: one column
prediction_drift_threshold = None  # threshold on the probabilities' distance; None: calibrated
performance_tolerance = None  # largest ROC AUC drop that is no drift; None: calibrated
false_alarm_rate = 0.05  # target share of no-drift batches reported as drift (calibration)
n_null_batches = 1000  # no-drift batches to calibrate on: at most this many time-ordered windows (plus random batches)
labelled_data_path = None  # labelled batch CSV(s) whose labels arrived since the last batch
new_labelled_rows = 0  # labelled rows the model never learned from (the growth trigger)
growth_trigger = 0.5  # retrain when new labelled rows reach this share of the training rows
run_dir = None  # set by the runner: the folder this run writes into

# %%
import gc
import warnings

import pandas as pd
from IPython.display import Markdown, display

# tqdm (imported by a dependency) complains that this headless kernel has no widgets.
warnings.filterwarnings("ignore", message="IProgress not found")

from healthpredict.core.stages import MonitorParams
from healthpredict.mlops.monitor import monitor
from healthpredict.modeling import plots
from healthpredict.modeling.plots import plot_column_scores, plot_predictions
from healthpredict.runs.scraps import record

# Evidently, MLflow and scikit-learn bring ~3,000 modules; keeping their objects out of the
# cyclic garbage collector saves seconds of collections, mostly at kernel exit.
gc.freeze()
result = monitor(MonitorParams.from_namespace(globals()))
for name, value in result.scraps().items():
    record(name, value)

# %%
if result.data_source == "synthetic":
    display(Markdown(f"## ⚠️ {result.banner or 'SYNTHETIC DATA: not real patients.'}"))
else:
    display(Markdown(f"**Data source: {result.data_source}**"))
t = result.thresholds
perf = result.performance_signals
in_sample = ", the reference itself: in-sample" if result.model_reference_in_sample else ""
verdict = "RETRAIN" if result.retrain.retrain else "KEEP THE MODEL"
lines = [
    f"# {verdict} · {result.status}",
    *(f"- **{reason}**" for reason in result.retrain.reasons),
    "" if result.retrain.retrain else "No retraining trigger fired.",
    "",
    (
        f"ROC AUC: reference {perf.reference_roc_auc:.3f}; estimated for this batch "
        f"**{perf.estimated_roc_auc:.3f}** (label-free expected change "
        f"{-perf.expected_drop:+.3f}); realised on the batches just labelled "
        + (
            f"**{perf.realised_roc_auc:.3f}** ({perf.realised_rows:,} rows)."
            if perf.realised_roc_auc is not None
            else "- (no labels arrived yet)."
        )
    )
    if perf
    else "The held-out rows have no labels: performance is neither estimated nor measured.",
    "",
    f"## Drift status: {result.status}",
    *(
        f"- moved: `{row.column}`: {row.effect}"
        for row in result.drift_table[result.drift_table["drifted"]].head(8).itertuples()
    ),
    f"Batch `{new_data_path}` ({result.batch_rows:,} rows) against model "
    f"**{result.model_name} v{result.model_version}** and a reference of "
    f"{result.reference_rows:,} rows ({result.model_reference_rows:,} held-out rows for the "
    f"predictions{in_sample}).",
    "",
    *(f"- {reason}" for reason in result.reasons),
    "" if result.reasons else "No signal reached its threshold.",
    f"Expected false-alarm rate of this decision on no-drift batches: "
    f"**{t.expected_false_alarm_rate:.1%}** (target {t.false_alarm_rate:.0%}; calibration "
    f"{'read from cache' if result.calibration_from_cache else 'computed for this batch size'}).",
]
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## Data drift per column
# `score` is Evidently's distance, `threshold` the calibrated one (a column drifted when its
# score reaches it). `drifted_at_0.1` shows what Evidently's fixed default threshold would have
# said: on small batches it flags columns that did not move. Numeric columns are compared with
# their tails capped at the reference's 0.1% and 99.9% quantiles, so that one extreme patient
# cannot make a column drift on his own.

# %%
print(
    f"{result.n_drifted_columns} of {result.n_columns} columns drifted "
    f"({result.drifted_share:.1%}); data drift needs {t.min_drifted_columns} "
    f"({t.share_threshold:.1%})."
)
display(
    result.drift_table.style.format(
        {"score": "{:.4f}", "threshold": "{:.4f}", "effect_size": "{:+.3f}"}
    )
)
plots.show(plot_column_scores(result.drift_table))

# %% [markdown]
# ## Prediction drift
# Predicted probabilities of the production model on the batch against held-out reference rows.

# %%
print(
    f"normed Wasserstein distance {result.prediction_drift_score:.4f}, calibrated threshold "
    f"{t.prediction_drift_threshold:.4f}: {'DRIFT' if result.prediction_drift else 'no drift'}"
)
display(result.prediction_table.style.format("{:.4f}"))
plots.show(plot_predictions(result.predictions, result.decision_threshold))

# %% [markdown]
# ## Performance: estimated now, realised when labels arrive
# The estimate uses probabilities calibrated (isotonic) on the held-out rows; it sees changes of
# case mix, not concept drift, which only labels show.

# %%
if perf is not None:
    display(pd.DataFrame(perf.arrived) if perf.arrived else Markdown("No labels arrived."))
    print(
        f"realised drop tolerance {t.performance_tolerance}, estimated drop tolerance "
        f"{t.estimated_tolerance}; labelled rows the model never learned from: "
        f"{result.new_labelled_rows:,} (growth trigger {growth_trigger})"
    )

# %% [markdown]
# ## Performance of this batch
# Only when the batch itself carries labels (`readmitted`); the reference is the held-out rows.

# %%
if result.performance is None:
    print("The batch has no labels: performance is not measured.")
else:
    print(
        f"ROC AUC drop {result.performance_drop:.4f}, tolerance {t.performance_tolerance:.4f}"
        if result.performance_drop is not None
        else "ROC AUC undefined on this batch (a single class)."
    )
    display(result.performance.style.format("{:.4f}"))

# %% [markdown]
# ## Where the evidence is

# %%
display(
    Markdown(
        "\n".join(
            [f"- Evidently report **{name}**: `{uri}`" for name, uri in result.report_paths.items()]
            + [f"- MLflow run `{result.mlflow_run_id}` in experiment `{mlflow_experiment_name}`"]
        )
    )
)
