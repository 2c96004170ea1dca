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
# # 01 · Exploratory data analysis
#
# What the prepared encounters look like before any model sees them: who is readmitted within
# 30 days, what is missing, how the risk differs between groups, and how the stream of future
# encounters changes over time (the real data spans 1999–2008, and practice changed).
# The tables come from `healthpredict.data.eda`; this notebook only shows them.

# %% tags=["parameters"]
data_dir = None  # folder or s3:// URI of the prepared splits (None: <storage>/processed_data)
split = "initial_train"  # split to describe: initial_train, validation, test or future_data
stream_split = "future_data"  # chronological stream for the drift view ("" to skip it)
target = "<30"  # readmission target: "<30" (within 30 days) or "any"
n_bins = 10  # number of equal-size bins of encounter order in the chronological view

# %%
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from healthpredict.data import eda
from healthpredict.data.schema import make_target
from healthpredict.data.split import load_split, read_manifest
from healthpredict.modeling.features import NUMERIC_FEATURES, clean_data, engineer_features
from healthpredict.runs.scraps import record

manifest = read_manifest(data_dir)
data_source, banner = eda.data_source_banner(manifest)
record("data_source", data_source)
display(Markdown(f"## {banner}" if data_source == "synthetic" else f"**{banner}**"))

# %% [markdown]
# ## The split at a glance

# %%
raw = load_split(split, data_dir)
df = clean_data(raw)
y = make_target(df, target)
n_rows, target_rate = len(df), float(y.mean())
record("n_rows", n_rows)
record("target_rate", target_rate)
print(f"{split}: {n_rows:,} encounters of {df['patient_nbr'].nunique():,} patients")
print(f"target {target!r}: {y.sum():,} positives, rate {target_rate:.3%}")

# %% [markdown]
# ## Missing values
# `weight`, `payer_code` and `medical_specialty` are mostly unknown in the UCI file; "None" in
# the lab results means "not measured" and is kept as a category, not counted here.

# %%
missing = eda.missingness(raw)
display(missing.style.format({"share": "{:.1%}"}))
if len(missing):
    ax = missing["share"].plot.barh(figsize=(7, 0.3 * len(missing) + 1), color="#8172b2")
    ax.set_xlabel("share missing")
    ax.invert_yaxis()
    plt.show()

# %% [markdown]
# ## Distributions of the numeric features

# %%
numeric = [c for c in NUMERIC_FEATURES if c in df.columns]
fig, axes = plt.subplots(2, (len(numeric) + 1) // 2, figsize=(14, 5.5))
for ax, col in zip(axes.flat, numeric, strict=False):
    ax.hist([df.loc[y == 0, col], df.loc[y == 1, col]], bins=20, density=True,
            label=["not readmitted", "readmitted"], color=["#4c72b0", "#c44e52"])  # fmt: skip
    ax.set_title(col, fontsize=9)
axes.flat[0].legend(fontsize=8)
fig.tight_layout()
plt.show()
display(df[numeric].describe().T)

# %% [markdown]
# ## Readmission rate by group (95% Wilson intervals; dashed line: overall rate)

# %%
groups = {
    "age": df["age"],
    "admission type": eda.admission_type_labels(df["admission_type_id"]),
    "A1C result": df["A1Cresult"],
    "primary diagnosis group": engineer_features(df)["diag_1_group"],
}
fig, axes = plt.subplots(2, 2, figsize=(13, 8))
for ax, (title, values) in zip(axes.flat, groups.items(), strict=True):
    eda.plot_rates(ax, eda.rate_by_group(values, y, min_count=20), title, overall=target_rate)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Chronological view of the stream
# Encounter ids grow with time, so equal-size bins of the future stream show how the case mix
# and the readmission rate move. Drift here is what the monitor (03) has to notice.

# %%
if stream_split:
    stream = clean_data(load_split(stream_split, data_dir))
    bins = eda.chronological_bins(stream, make_target(stream, target), n_bins=n_bins)
    display(bins.style.format(precision=3))
    share_cols = [c for c in eda.DEFAULT_STREAM_SHARES if c in bins.columns]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4))
    left.plot(bins.index, bins["rate"], marker="o", color="#c44e52")
    left.set(title=f"readmission rate ({target}) by encounter-order bin", xlabel="bin")
    bins[share_cols].plot(ax=right, marker=".", title="case mix by bin", xlabel="bin")
    right.legend(fontsize=8)
    fig.tight_layout()
    plt.show()

# %% [markdown]
# ## Correlations
# Pearson correlation of each engineered numeric feature with the target, and between features.

# %%
features = engineer_features(df).select_dtypes("number")
corr_target = eda.target_correlations(features, y)
fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5))
corr_target.iloc[::-1].plot.barh(ax=left, color="#55a868", title="correlation with target")
matrix = features.corr()
image = right.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
right.set_xticks(range(len(matrix)), matrix.columns, rotation=90, fontsize=7)
right.set_yticks(range(len(matrix)), matrix.columns, fontsize=7)
fig.colorbar(image, ax=right, shrink=0.8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Summary

# %%
print(f"data source: {data_source}; {n_rows:,} rows in {split}; target rate {target_rate:.3%}")
print(
    "strongest numeric signals:",
    ", ".join(f"{k} ({v:+.3f})" for k, v in corr_target.head(3).items()),
)
