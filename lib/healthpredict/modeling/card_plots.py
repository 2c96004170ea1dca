"""Figures of the model card: calibration, decision curve and subgroup ROC AUC (Figure objects)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from healthpredict.modeling.plots import _figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from healthpredict.modeling.card import ModelCard

FLAG_COLOR, OK_COLOR = "#c44e52", "#4c72b0"


def reliability(card: ModelCard) -> Figure:
    """Observed rate against mean predicted risk per equal-count bin, ECE in the title."""
    table, ece = card.calibration["table"], card.calibration["ece"]
    fig, ax = _figure(1, 5.5, 4.5)
    obs = table["observed_rate"]
    ax.errorbar(
        table["mean_predicted"],
        obs,
        yerr=[obs - table["low"], table["high"] - obs],
        marker="o",
        capsize=3,
        color=OK_COLOR,
        label=f"model ({len(table)} equal-count bins, 95 % interval)",
    )
    top = 1.05 * float(max(table["mean_predicted"].max(), table["high"].max()))
    ax.plot([0, top], [0, top], ls="--", c="grey", lw=1, label="perfectly calibrated")
    ax.set(
        xlim=(0, top),
        ylim=(0, top),
        xlabel="Mean predicted risk",
        ylabel="Observed readmission rate",
        title=f"Calibration: ECE = {ece['value']:.3f} ({ece['low']:.3f}–{ece['high']:.3f})",
    )
    ax.legend(loc="upper left")
    return fig


def decision_curve(card: ModelCard) -> Figure:
    """Net benefit of the model, treat-all and treat-none, with the operating threshold."""
    curve, t = card.decision_curve, card.operating_point["threshold"]
    fig, ax = _figure(1, 6.0, 4.0)
    ax.plot(curve["threshold"], curve["model"], color=OK_COLOR, lw=2, label="model")
    ax.plot(curve["threshold"], curve["treat_all"], color="#dd8452", ls="--", label="treat all")
    ax.plot(curve["threshold"], curve["treat_none"], color="grey", lw=1, label="treat none")
    ax.axvline(t, color="black", ls=":", lw=1, label=f"operating threshold {t:.3f}")
    prevalence = card.overall["prevalence"]
    # treat-all falls steeply past the prevalence: keep the region where the choice is made
    ax.set_ylim(-0.3 * prevalence, 1.1 * prevalence)
    ax.set(xlabel="Threshold risk", ylabel="Net benefit (readmissions per encounter)")
    ax.set_title("Decision curve")
    ax.legend(loc="upper right")
    return fig


def subgroup_auc(card: ModelCard) -> Figure:
    """ROC AUC of each judged subgroup with its interval; red where its ROC AUC differs."""
    data = card.subgroups.dropna(subset=["roc_auc"]).iloc[::-1]
    fig, ax = _figure(1, 6.5, 0.28 * len(data) + 1.3)
    pos = np.arange(len(data))
    overall = card.overall["roc_auc"]["value"]
    # Only the ROC AUC flag: a group flagged for its calibration or flagged share is not red here.
    differs = (data["roc_auc_low"] > overall) | (data["roc_auc_high"] < overall)
    colors = np.where(differs, FLAG_COLOR, OK_COLOR)
    ax.hlines(pos, data["roc_auc_low"], data["roc_auc_high"], colors=colors)
    ax.scatter(data["roc_auc"], pos, color=colors, zorder=3)
    ax.axvline(overall, color="black", ls="--", lw=1, label=f"overall {overall:.3f}")
    ax.set_yticks(
        pos, [f"{a}: {g} (n={n:,})" for a, g, n in data[["attribute", "group", "n"]].values]
    )
    ax.set(
        xlabel="ROC AUC (95 % interval)",
        title="ROC AUC by subgroup (red: interval excludes overall)",
    )
    ax.legend(loc="lower right")
    return fig


def card_figures(card: ModelCard) -> dict[str, Figure]:
    """The card's figures by name, for a notebook or the HTML."""
    return {
        "calibration": reliability(card),
        "decision_curve": decision_curve(card),
        "subgroups": subgroup_auc(card),
    }
