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
# # 02 · Training and hyperparameter search
#
# An Optuna (TPE) search over logistic regression, random forest and histogram gradient
# boosting, each one sklearn pipeline from raw encounter fields to a 30-day readmission risk.
# Trials are scored by ROC AUC on the patient-grouped validation split (the search runs here, or,
# with `study_name`, ran before in separate worker tasks sharing that Optuna study, as the
# training DAG does with `search_tasks` >= 1); the best model is refit
# on `initial_train`, its decision threshold chosen on validation, and it is judged once on the
# held-out test split. Every trial is a nested MLflow run; the model is registered (alias
# `challenger`, and `champion` when the model had none). The logic lives in
# `healthpredict.mlops.train` (search, evaluation and fitting in `healthpredict.modeling`);
# this notebook shows it.

# %% tags=["parameters"]
data_dir = None  # prepared data folder or s3:// URI (None: <storage>/processed_data)
families = ["logreg", "rf", "hgb"]  # model families to search: logreg, rf, hgb
n_trials = 30  # Optuna trials in all (split over the workers)
timeout_s = None  # stop starting new trials after this many seconds (None: no limit)
n_workers = 1  # worker processes sharing one Optuna study (1 is reproducible)
study_storage = None  # Optuna storage: None (journal file), a path, sqlite:/// or postgresql URL
study_name = None  # a study searched by separate workers in study_storage (None: here)
seed = 42  # seed of the sampler and of every estimator
cv_folds = 0  # from 2: judge trials by patient-grouped CV over train + validation (0: validation)
target = "<30"  # readmission target: "<30" (within 30 days) or "any"
target_recall = None  # choose the threshold reaching this validation recall (None: max F1)
mlflow_experiment_name = "HealthPredict_Training"  # MLflow experiment of the search
model_name = None  # registered model name (None: the HP_MODEL_NAME setting)
run_dir = None  # set by the runner: the folder this run writes into

# %%
import pandas as pd
from IPython.display import Markdown, display

from healthpredict.core.stages import TrainParams
from healthpredict.mlops.model_card import write_next_to_run
from healthpredict.mlops.train import train
from healthpredict.modeling import plots
from healthpredict.modeling.card_report import show_card
from healthpredict.runs.scraps import record

result = train(TrainParams.from_namespace(globals()))
record("data_source", result.data_source)
if result.data_source == "synthetic":
    display(Markdown(f"## ⚠ SYNTHETIC DATA\n{result.banner or ''}"))
else:
    display(Markdown(f"**Data: {result.data_source}** ({result.manifest.get('source', '')})"))

# %% [markdown]
# ## The search
# One row per trial. `PRUNED` trials were stopped early by the median rule: their validation
# AUC after some trees or boosting rounds was below the median of earlier trials at that point.

# %%
trials = result.trials
states = ", ".join(f"{n} {s.lower()}" for s, n in trials["state"].value_counts().items())
if study_name:
    workers = trials["worker"].nunique()
    print(
        f"{len(trials)} trials ({states}) searched before this run by {workers} worker task(s) "
        f"sharing study {study_name!r}; loaded, refit and tested here in {result.wall_s:.0f} s"
    )
else:
    print(f"{len(trials)} trials in {result.wall_s:.0f} s: {states}")
display(
    trials.style.format({"val_roc_auc": "{:.4f}", "seconds": "{:.1f}"}, na_rep="-").highlight_max(
        subset=["val_roc_auc"], color="#d4edda"
    )
)
best = trials.dropna(subset=["val_roc_auc"]).groupby("family")["val_roc_auc"].max()
display(best.rename("best validation ROC AUC").to_frame().style.format("{:.4f}"))

# %% [markdown]
# ## The chosen model

# %%
display(
    Markdown(
        f"**{result.best_family}** (search validation ROC AUC "
        f"{result.search_val_roc_auc:.4f}); refit on `initial_train`, validation ROC AUC "
        f"{result.val_roc_auc:.4f}, threshold {result.threshold:.4f} "
        f"({'recall ≥ ' + str(target_recall) if target_recall else 'max F1'} on validation)"
    )
)
display(pd.Series(result.best_params, name="value", dtype=object).to_frame())

# %% [markdown]
# ## Held-out test split
# Seen once, after every choice was made on validation. The interval is a percentile bootstrap
# over the test encounters: a few thousand rows with ~11 % positives pin ROC AUC down to only
# about ±0.03, so smaller differences between models are noise.

# %%
test = result.test_metrics
display(
    Markdown(
        f"**Test ROC AUC {test['roc_auc']:.4f}** (95 % bootstrap interval "
        f"{test['roc_auc_ci95_low']:.4f}–{test['roc_auc_ci95_high']:.4f}, "
        f"{test['n']:,} encounters, {test['positive_rate']:.1%} positive)"
    )
)
metrics = pd.DataFrame({"validation": result.val_metrics, "test": test})
display(metrics.style.format("{:.4f}", na_rep="-"))
plots.show(plots.roc_pr_curves(result.y_test, result.p_test))
plots.show(plots.calibration(result.y_test, result.p_test))
plots.show(plots.confusion(result.y_test, result.p_test, result.threshold))

# %% [markdown]
# ## Calibration
# The served risk is calibrated: the refit model's scores were mapped to probabilities on the
# validation split (Platt scaling, isotonic regression or none, whichever had the lowest Brier
# score out of fold), so "0.30" means about 30 in 100 such patients are readmitted. Test split,
# before and after the map: the ranking (ROC AUC) barely moves, the Brier score and the expected
# calibration error (ECE) show what the raw scores got wrong.

# %%
display(Markdown(f"**Calibration: {result.card.card.facts['calibration_method']}**"))
display(
    pd.DataFrame(
        {
            "raw scores": [test[f"uncalibrated_{k}"] for k in ("roc_auc", "brier", "ece")],
            "calibrated (served)": [test[k] for k in ("roc_auc", "brier", "ece")],
        },
        index=["ROC AUC", "Brier score", "ECE"],
    ).style.format("{:.4f}")
)

# %% [markdown]
# ## Model card
# What a clinical reviewer asks of a readmission model: are the risks right, for whom does it
# work less well, and what does acting on it buy. Every interval is a 95 % bootstrap over the
# test encounters; a subgroup is flagged when its interval excludes the overall figure (or zero
# for calibration-in-the-large). The same card is a standalone HTML file next to this notebook
# (`model_card.html`, linked from the gallery) and an artifact of the MLflow run, which the
# registry version's `model_card` tag and the API's `/model-info` point to.

# %%
show_card(result.card.card)
card_path = write_next_to_run(result.card, run_dir)
if card_path:
    record("report_paths", {"model card": card_path})

# %% [markdown]
# ## What the model relies on
# Permutation importance on raw encounter columns: how much test ROC AUC drops when one
# column is shuffled (mean over a few shuffles of a test subsample).

# %%
if len(result.importance):
    plots.show(plots.importance_bar(result.importance))
    display(result.importance.head(15).style.format({"importance": "{:.4f}", "std": "{:.4f}"}))

# %% [markdown]
# ## Registry

# %%
info = result.model_info
record("best_family", result.best_family)
record("best_params", result.best_params)
record("val_roc_auc", result.val_roc_auc)
record("test_roc_auc", result.test_metrics["roc_auc"])
record("test_roc_auc_ci95", [test["roc_auc_ci95_low"], test["roc_auc_ci95_high"]])
record("test_pr_auc", result.test_metrics["pr_auc"])
record("threshold", result.threshold)
record("model_version", info.version)
record("mlflow_run_id", result.mlflow_run_id)
record("promoted", result.promoted)
display(
    Markdown(
        f"Registered **{info.name} v{info.version}** (aliases: {', '.join(info.aliases) or 'none'}) "
        f"from MLflow run `{result.mlflow_run_id}`. "
        + (
            "It is the **champion** (the first model of this name)."
            if result.promoted
            else "It is the **challenger**; the champion changes only through 04_retrain's gate."
        )
    )
)
