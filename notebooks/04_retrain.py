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
# # 04 · Retraining with a promotion gate
#
# New labelled encounters arrived (usually because 03_drift_monitor found drift). They are
# split by patient into *new-train* and a *new holdout* that no model trains on. A challenger is
# refit on `initial_train` + new-train with a small search that starts from the champion's
# parameters. Champion and challenger are then scored on the same rows (the fixed test split and
# the new holdout), and the challenger is promoted only if it is better on the new holdout and
# not worse than `tolerance` on the fixed test split. The logic lives in
# `healthpredict.mlops.retrain` (the gate in `healthpredict.modeling.gate`); this notebook
# shows it.

# %% tags=["parameters"]
retraining_data_path = None  # labelled raw batch CSV(s): list of paths/s3:// URIs, or one string
data_dir = None  # prepared data folder with the fixed splits (None: <storage>/processed_data)
holdout_fraction = 0.3  # share of the new patients held out of training, for the gate
n_trials = 8  # search trials; the first re-evaluates the champion's parameters
tolerance = 0.01  # allowed ROC AUC drop of the challenger on the fixed test split
seed = 42  # seed of the holdout split, the sampler and the estimators
mlflow_experiment_name = "HealthPredict_Retraining"  # MLflow experiment of the retraining run
model_name = None  # registered model name (None: the HP_MODEL_NAME setting)
holdout_output_path = None  # raw CSV for the new holdout; None: <storage>/monitoring/reference/

# %%
from IPython.display import Markdown, display

from healthpredict.core.stages import RetrainParams
from healthpredict.mlops.retrain import retrain
from healthpredict.modeling import plots
from healthpredict.runs.scraps import record

result = retrain(RetrainParams.from_namespace(globals()))
record("data_source", result.data_source)
if result.data_source == "synthetic":
    display(Markdown(f"## ⚠ SYNTHETIC DATA\n{result.banner or ''}"))
else:
    display(Markdown(f"**Data: {result.data_source}**"))

# %% [markdown]
# ## The data of the comparison

# %%
display(Markdown("\n".join(f"- {k.replace('_', ' ')}: {v:,}" for k, v in result.rows.items())))
display(result.trials.style.format({"val_roc_auc": "{:.4f}", "seconds": "{:.1f}"}, na_rep="-"))

# %% [markdown]
# ## Champion vs challenger, on the same rows
# Each model at its own registered decision threshold.

# %%
table = result.comparison()
display(table.style.format("{:.4f}"))
auc = table.loc[["test_roc_auc", "holdout_roc_auc"], ["champion", "challenger"]].T
plots.show(plots.compare_metrics(auc, columns=("test_roc_auc", "holdout_roc_auc")))

# %% [markdown]
# ## Decision

# %%
record("decision", result.decision)
record("promoted", result.promoted)
record("reason", result.reason)
record("challenger_version", result.challenger_version)
record("champion_version", result.champion_version)
record("challenger_metrics", result.challenger_metrics)
record("champion_metrics", result.champion_metrics)
record("mlflow_run_id", result.mlflow_run_id)
record("holdout_path", result.holdout_path)
display(
    Markdown(
        f"## {result.decision}\n{result.reason}.\n\n"
        f"Challenger **v{result.challenger_version}** ({result.challenger_family}) vs champion "
        f"**v{result.champion_version}**; MLflow run `{result.mlflow_run_id}`."
    )
)
