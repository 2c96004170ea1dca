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
# The monitor recommended a retraining (see its reasons). The labelled encounters the champion
# never learned from are split by patient into *new-train* and a *gate holdout* that no model
# trains on. A challenger is refit on `initial_train` + every other labelled encounter
# (cumulative: on this stream more labelled data beats recency, see `docs/loop_backtest.md`)
# with a small search that starts from the champion's parameters. Both models are scored on the
# same holdout rows; a paired bootstrap over patients gives an interval for the challenger's ROC
# AUC gain, and the challenger is promoted only when the gain is beyond noise, or, when it
# learned from clearly more data, when it is not worse by more than `non_inferiority_margin`.
# The logic lives in `healthpredict.mlops.retrain` (the gate in `healthpredict.modeling.gate`);
# this notebook shows it.

# %% tags=["parameters"]
retraining_data_path = None  # every labelled raw batch CSV to learn from
gate_data_path = None  # those the champion never learned from (the gate's rows); None: all
data_dir = None  # prepared data folder with the fixed splits (None: <storage>/processed_data)
holdout_fraction = 0.3  # share of the gate data's patients held out of training, for the gate
n_trials = 8  # search trials; the first re-evaluates the champion's parameters
non_inferiority_margin = 0.01  # promote with clearly more data unless worse by more than this
gate_confidence = 0.95  # level of the paired bootstrap interval of the ROC AUC gain
seed = 42  # seed of the holdout split, the sampler and the estimators
mlflow_experiment_name = "HealthPredict_Retraining"  # MLflow experiment of the retraining run
model_name = None  # registered model name (None: the HP_MODEL_NAME setting)
holdout_output_path = None  # raw CSV for the new holdout; None: <storage>/monitoring/reference/
promote = True  # move the champion alias on promotion (false: the loop moves it, write-ahead)
run_dir = None  # set by the runner: the folder this run writes into

# %%
from IPython.display import Markdown, display

from healthpredict.core.stages import RetrainParams
from healthpredict.mlops.model_card import write_next_to_run
from healthpredict.mlops.retrain import retrain
from healthpredict.modeling import plots
from healthpredict.modeling.card_report import show_card
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
# Each model at its own registered decision threshold. The gate judges the holdout (rows the
# champion never saw and the challenger was not fitted on); the fixed test split is shown for
# the record (the champion may have learned from later encounters of its patients' peers).

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
record("gate", result.gate)
record("alias_moved", result.alias_moved)
record("model_name", result.model_name)
g = result.gate
display(
    Markdown(
        f"## {result.decision}\n{result.reason}.\n\n"
        f"ROC AUC on the {g['n_rows']:,} holdout rows ({g['n_positives']} readmitted, "
        f"{g['n_patients']:,} patients): champion {g['champion_roc_auc']:.4f}, challenger "
        f"{g['challenger_roc_auc']:.4f}; gain {g['gain']:+.4f}, {g['confidence']:.0%} paired "
        f"interval {g['ci_low']:+.4f} to {g['ci_high']:+.4f}; rule: {g['rule']}.\n\n"
        f"Challenger **v{result.challenger_version}** ({result.challenger_family}) vs champion "
        f"**v{result.champion_version}**; MLflow run `{result.mlflow_run_id}`."
        + (
            "\n\nThe champion alias is moved by the monitoring loop, which records the "
            "promotion in its state first."
            if result.promoted and not result.alias_moved
            else ""
        )
    )
)

# %% [markdown]
# ## The challenger's model card
# Its risks are calibrated on its own validation rows, like every trained model's; the card
# judges them on the fixed test split: intervals are 95 % bootstraps over its encounters, and a
# subgroup is flagged when its interval excludes the overall figure. The same card is
# `model_card.html` next to this notebook and an artifact of the MLflow run (the version's
# `model_card` tag).

# %%
show_card(result.card.card)
card_path = write_next_to_run(result.card, run_dir)
if card_path:
    record("report_paths", {"model card": card_path})
