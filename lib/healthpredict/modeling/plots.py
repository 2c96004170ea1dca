"""Figures for notebooks and MLflow (evaluation and drift monitoring); each returns a Figure."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from healthpredict.core.constants import PROBA_COLUMN

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(ncols: int = 1, width: float = 5.0, height: float = 4.0):
    # Figure() rather than pyplot: no global state, safe in worker threads and headless runs.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def roc_pr_curves(y_true: np.ndarray, proba: np.ndarray, title: str = "Test split") -> Figure:
    """ROC curve (left) and precision-recall curve (right) with their areas."""
    fig, (roc_ax, pr_ax) = _figure(2)
    fpr, tpr, _ = skm.roc_curve(y_true, proba)
    roc_ax.plot(fpr, tpr, label=f"ROC AUC = {skm.roc_auc_score(y_true, proba):.3f}")
    roc_ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance")
    roc_ax.set(xlabel="False positive rate", ylabel="True positive rate", title=f"{title}: ROC")
    precision, recall, _ = skm.precision_recall_curve(y_true, proba)
    ap = skm.average_precision_score(y_true, proba)
    pr_ax.plot(recall, precision, label=f"PR AUC (AP) = {ap:.3f}")
    pr_ax.axhline(np.mean(y_true), ls="--", c="grey", lw=1, label="prevalence")
    pr_ax.set(xlabel="Recall", ylabel="Precision", title=f"{title}: precision-recall")
    for ax in (roc_ax, pr_ax):
        ax.legend(loc="best")
    return fig


def calibration(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> Figure:
    """Reliability diagram (quantile bins) with the predicted-risk histogram below it."""
    # sklearn.calibration costs ~3 s to import (measured): only for this figure
    from sklearn.calibration import calibration_curve

    fig, ax = _figure(1, 5.5, 4.5)
    frac, mean_pred = calibration_curve(y_true, proba, n_bins=n_bins, strategy="quantile")
    ax.plot(mean_pred, frac, marker="o", label="model")
    top = max(float(np.max(proba)), float(np.max(frac)) if len(frac) else 0.0)
    ax.plot([0, top], [0, top], ls="--", c="grey", lw=1, label="perfectly calibrated")
    ax.set(
        xlabel="Mean predicted risk",
        ylabel="Observed readmission rate",
        title=f"Calibration (Brier = {skm.brier_score_loss(y_true, proba):.4f})",
    )
    hist = ax.twinx()
    hist.hist(proba, bins=30, alpha=0.2, color="grey")
    hist.set_ylabel("Encounters")
    ax.legend(loc="upper left")
    return fig


def confusion(y_true: np.ndarray, proba: np.ndarray, threshold: float) -> Figure:
    """Confusion matrix at ``threshold`` with counts and row shares."""
    fig, ax = _figure(1, 4.5, 4.0)
    pred = (np.asarray(proba) >= threshold).astype(int)
    cm = skm.confusion_matrix(y_true, pred, labels=[0, 1])
    ax.imshow(cm, cmap="Blues")
    shares = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    for i in range(2):
        for j in range(2):
            color = "white" if cm[i, j] > cm.max() / 2 else "black"
            ax.text(
                j, i, f"{cm[i, j]:,}\n({shares[i, j]:.0%})", ha="center", va="center", color=color
            )
    ax.set_xticks([0, 1], ["not readmitted", "readmitted"])
    ax.set_yticks([0, 1], ["not readmitted", "readmitted"])
    ax.set(xlabel="Predicted", ylabel="Actual", title=f"Confusion matrix at {threshold:.3f}")
    return fig


def importance_bar(importance: pd.DataFrame, top: int = 15) -> Figure:
    """Horizontal bars of permutation importance (mean ROC AUC drop, with std)."""
    data = importance.head(top).iloc[::-1]
    fig, ax = _figure(1, 6.0, 0.3 * len(data) + 1.2)
    ax.barh(data["feature"], data["importance"], xerr=data.get("std"), color="tab:blue")
    ax.axvline(0, c="grey", lw=1)
    ax.set(xlabel="Drop in ROC AUC when shuffled", title="Permutation importance (raw columns)")
    return fig


def compare_metrics(metrics: pd.DataFrame, columns: tuple[str, ...] = ("roc_auc",)) -> Figure:
    """Grouped bars of metric columns per model (rows = models/splits), e.g. for the gate."""
    fig, ax = _figure(1, 6.0, 3.5)
    metrics[list(columns)].plot.bar(ax=ax, rot=0)
    ax.set(ylabel="value", title="Challenger vs champion")
    lo = float(np.nanmin(metrics[list(columns)].to_numpy()))
    ax.set_ylim(max(0.0, lo - 0.1), None)
    return fig


def show(fig: Figure, dpi: int = 100) -> None:
    """Display a figure in a notebook as a PNG.

    The figures here are not pyplot-managed (no global state), so Jupyter's inline backend does
    not pick them up by itself and ``display(fig)`` alone may fall back to text.
    """
    # IPython costs ~0.3 s to import (measured): only inside a notebook kernel
    from IPython.display import Image, display

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    display(Image(data=buf.getvalue(), format="png"))


def plot_column_scores(table: pd.DataFrame, top: int = 20) -> Figure:
    """Bar chart of score / calibrated threshold per column (>= 1 is drift), top ``top`` columns.

    Args:
        table: The drift monitor's per-column table (``column``, ``score``, ``threshold``,
            ``drifted``), most drifted first.
        top: How many columns to show.
    """
    shown = table.head(top).iloc[::-1]
    ratio = shown["score"] / shown["threshold"]
    fig, ax = _figure(width=8, height=0.28 * len(shown) + 1.2)
    colors = np.where(shown["drifted"], "#c44e52", "#4c72b0")
    ax.barh(shown["column"], ratio, color=colors)
    ax.axvline(1.0, color="black", lw=1, ls="--", label="calibrated threshold")
    ax.set_xlabel("drift score / calibrated threshold (red: drifted)")
    ax.legend(loc="lower right")
    return fig


def plot_predictions(predictions: pd.DataFrame, threshold: float) -> Figure:
    """Histograms of the predicted probabilities, reference vs batch, with the model threshold.

    Args:
        predictions: ``set`` (``reference`` or ``batch``) and ``prediction_proba`` of each row.
        threshold: The model's decision threshold on the probability.
    """
    fig, ax = _figure(width=8, height=3.5)
    bins = np.linspace(0, max(float(predictions[PROBA_COLUMN].max()), threshold) * 1.02, 40)
    for name, color in (("reference", "#4c72b0"), ("batch", "#dd8452")):
        values = predictions.loc[predictions["set"] == name, PROBA_COLUMN]
        ax.hist(values, bins=bins, density=True, alpha=0.55, color=color, label=name)
    ax.axvline(threshold, color="black", lw=1, ls="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="predicted probability of readmission", ylabel="density")
    ax.legend()
    return fig
