"""The model card as display tables and as one self-contained HTML file.

The HTML needs no network and no JavaScript: inline CSS, figures as inline base64 PNG. A
notebook shows the same pieces with :func:`card_tables` and ``card_plots.card_figures``.
"""

from __future__ import annotations

import base64
import html
import io
import math
import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

from healthpredict.modeling.card import SUBGROUP_SOURCES, TOO_FEW, ModelCard
from healthpredict.modeling.card_plots import card_figures

if TYPE_CHECKING:
    from matplotlib.figure import Figure

INTENDED_USE = (
    "Decision support for care-management follow-up of diabetic inpatients at discharge: the "
    "model estimates each encounter's risk of readmission within 30 days so that a team can "
    "choose whom to call or see first. It is not for diagnosis, and not for denying or "
    "rationing care. It was trained on the UCI Diabetes 130-US hospitals data (1999–2008, "
    "licensed CC BY 4.0). Known limits: the data come from US hospitals in 1999–2008, so coding, "
    "practice and populations have changed since; several subgroups are small, and their "
    "figures carry wide intervals (see the subgroup sizes); the risks are only as good as their "
    "calibration on the population where the model is used, which should be checked there."
)
FACT_LABELS = {
    "model_name": "Model",
    "model_version": "Version",
    "family": "Model family",
    "params": "Hyper-parameters",
    "target": "Target",
    "training_rows": "Training rows",
    "test_rows": "Test rows",
    "data_source": "Data source",
    "trained_at": "Trained at",
    "calibration_method": "Calibration",
    "brier_before_calibration": "Brier score before calibration",
    "brier_after_calibration": "Brier score after calibration",
    "run_id": "MLflow run",
}
SECTIONS = (
    ("use", "Intended use and data"),
    ("performance", "Performance"),
    ("calibration", "Calibration"),
    ("subgroups", "Subgroups"),
    ("capture", "Capture"),
    ("decision", "Decision curve"),
    ("threshold", "Operating threshold"),
)
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;margin:0;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:1.5rem 2rem;background:#fff}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:2px solid #4c72b0;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.6rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.3rem .6rem;text-align:left;vertical-align:top}
td:not(:last-child){white-space:nowrap}td:last-child{min-width:13rem}
th{background:#f0f3f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.flagged td{background:#fdecea}tr.few td{color:#888}
.note{color:#555;font-size:.9rem}img{max-width:100%;height:auto}
nav a{margin-right:.8rem}
"""


def _ci(estimate: Mapping[str, float], fmt: str = ".3f") -> str:
    value, low, high = estimate["value"], estimate["low"], estimate["high"]
    if not math.isfinite(value):
        return "—"
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{value:{fmt}}"
    return f"{value:{fmt}} ({low:{fmt}} to {high:{fmt}})"


def _row_ci(row: Mapping[str, Any], name: str, fmt: str) -> str:
    est = {"value": row[name], "low": row[f"{name}_low"], "high": row[f"{name}_high"]}
    return _ci(est, fmt)


def _fact(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_fact(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def card_tables(card: ModelCard) -> dict[str, pd.DataFrame]:
    """Display tables of the card (formatted text, intervals in brackets) by section."""
    o, cal = card.overall, card.calibration
    performance = pd.DataFrame(
        [
            ("ROC AUC", _ci(o["roc_auc"]), "0.5 = chance"),
            ("PR AUC (average precision)", _ci(o["pr_auc"]), f"prevalence {o['prevalence']:.3f}"),
            ("Brier score", _ci(o["brier"], ".4f"), f"base rate {o['brier_base_rate']:.4f}"),
            ("Expected calibration error", _ci(cal["ece"], ".4f"), "0 = calibrated"),
            ("Calibration-in-the-large", _ci(cal["citl"], "+.4f"), "observed − predicted"),
            ("Encounters / readmissions", f"{o['n']:,} / {o['positives']:,}", ""),
        ],
        columns=["metric", "value (95 % interval)", "reference"],
    )
    reliability = cal["table"].assign(
        observed_rate=[
            f"{r.observed_rate:.3f} ({r.low:.3f} to {r.high:.3f})"
            for r in cal["table"].itertuples()
        ],
        mean_predicted=cal["table"]["mean_predicted"].map("{:.3f}".format),
    )[["bin", "n", "mean_predicted", "observed_rate"]]
    subgroups = pd.DataFrame(
        {
            "attribute": card.subgroups["attribute"],
            "group": card.subgroups["group"],
            "n": card.subgroups["n"],
            "readmissions": card.subgroups["positives"],
            "rate": (card.subgroups["positives"] / card.subgroups["n"]).map("{:.1%}".format),
            "ROC AUC": [_row_ci(r, "roc_auc", ".3f") for _, r in card.subgroups.iterrows()],
            "observed − predicted": [
                _row_ci(r, "citl", "+.3f") for _, r in card.subgroups.iterrows()
            ],
            "flagged at threshold": [
                _row_ci(r, "flagged_rate", ".1%") for _, r in card.subgroups.iterrows()
            ],
            "flag": card.subgroups["flag"],
        }
    )
    capture = pd.DataFrame(
        {
            "flagged (highest risk first)": [
                f"{s:.0%} ({k:,})"
                for s, k in zip(
                    card.capture["share_flagged"], card.capture["n_flagged"], strict=True
                )
            ],
            "risk cut-off": card.capture["risk_cutoff"].map("{:.3f}".format),
            "readmissions reached": card.capture["readmissions_reached"].map("{:.1%}".format),
            "precision": card.capture["precision"].map("{:.1%}".format),
            "lift": card.capture["lift"].map("{:.2f}×".format),
        }
    )
    op = card.operating_point
    operating = pd.DataFrame(
        [
            ("threshold", f"{op['threshold']:.3f}"),
            ("chosen by", op["rule"]),
            ("share flagged", f"{op['share_flagged']:.1%}"),
            ("sensitivity", f"{op['sensitivity']:.1%}"),
            ("PPV", f"{op['ppv']:.1%}"),
            ("specificity", f"{op['specificity']:.1%}"),
            ("net benefit", f"{op['net_benefit']:.4f}"),
            ("beats treat-all and treat-none here", "yes" if op["pays"] else "NO"),
            ("beats both over 0.02–0.50", _useful(op)),
        ],
        columns=["", "value"],
    )
    return {
        "performance": performance,
        "calibration": reliability,
        "subgroups": subgroups,
        "capture": capture,
        "operating_point": operating,
    }


def _useful(op: Mapping[str, Any]) -> str:
    if not math.isfinite(op["useful_low"]):
        return "at no threshold of 0.02–0.50"
    more = f" (+{op['useful_elsewhere']} elsewhere)" if op["useful_elsewhere"] else ""
    return f"thresholds {op['useful_low']:.2f}–{op['useful_high']:.2f}{more}"


def _table(frame: pd.DataFrame, row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for i, row in enumerate(frame.itertuples(index=False)):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(
            f'<td class="num">{v:,}</td>'
            if isinstance(v, numbers.Integral)
            else f"<td>{html.escape(str(v))}</td>"
            for v in row
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _png(fig: Figure, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _facts(facts: Mapping[str, Any]) -> str:
    rows = [
        (FACT_LABELS.get(k, k.replace("_", " ").capitalize()), _fact(v)) for k, v in facts.items()
    ]
    return _table(pd.DataFrame(rows, columns=["fact", "value"])) if rows else ""


def render_card_html(card: ModelCard, title: str = "Model card: 30-day readmission risk") -> str:
    """The whole card as one self-contained HTML page (inline CSS and PNG figures)."""
    tables, figures = card_tables(card), card_figures(card)
    s, o = card.settings, card.overall
    boot = (
        f"Intervals: {s['level']:.0%} percentile bootstrap over the {o['n']:,} test encounters "
        f"({s['n_resamples']:,} paired resamples, seed {s['seed']})."
    )
    subgroup_rows = card.subgroups
    classes = [
        "flagged" if d else ("few" if f == TOO_FEW else "")
        for d, f in zip(subgroup_rows["differs"], subgroup_rows["flag"], strict=True)
    ]
    sub_html = []
    for attribute in SUBGROUP_SOURCES:
        mask = (subgroup_rows["attribute"] == attribute).to_numpy()
        part = tables["subgroups"][mask].drop(columns="attribute")
        sub_html.append(f"<h3>{html.escape(attribute.capitalize())}</h3>")
        sub_html.append(_table(part, [c for c, m in zip(classes, mask, strict=True) if m]))
    n_flagged = int(subgroup_rows["differs"].sum())
    body = {
        "use": f"<p>{html.escape(INTENDED_USE)}</p>{_facts(card.facts)}",
        "performance": f"{_table(tables['performance'])}<p class='note'>{html.escape(boot)}</p>",
        "calibration": (
            f"{_png(figures['calibration'], 'Calibration plot')}{_table(tables['calibration'])}"
            "<p class='note'>Ten equal-count bins of predicted risk; ECE is the row-weighted "
            "mean gap between observed rate and mean predicted risk.</p>"
        ),
        "subgroups": (
            f"<p>{n_flagged} of {len(subgroup_rows)} subgroups differ beyond their interval "
            "(highlighted, with the reason): ROC AUC interval excluding the overall ROC AUC, "
            "observed − predicted interval excluding 0, or flagged-share interval excluding the "
            "overall share. A group with more readmissions is rightly flagged more often: read the "
            "flagged share next to the group's rate. Each comparison is at 95 %, so about one in "
            f"twenty differs by chance alone. Groups with fewer than 10 readmissions or non-readmissions: "
            f"“{TOO_FEW}”.</p>{_png(figures['subgroups'], 'ROC AUC by subgroup')}"
            + "".join(sub_html)
        ),
        "capture": (
            f"{_table(tables['capture'])}<p class='note'>Encounters ranked by risk; lift = "
            "precision ÷ prevalence.</p>"
        ),
        "decision": (
            f"{_png(figures['decision_curve'], 'Decision curve')}<p class='note'>Net benefit = "
            "TP/n − FP/n · t/(1−t): readmissions reached per encounter, net of unnecessary "
            "follow-ups weighted by the threshold's odds.</p>"
        ),
        "threshold": (
            f"<p>{html.escape(card.operating_point['why'])}</p>{_table(tables['operating_point'])}"
        ),
    }
    for fig in figures.values():
        fig.clear()  # Figure objects hold their canvas until dropped; release it now
    nav = "".join(f'<a href="#{key}">{html.escape(name)}</a>' for key, name in SECTIONS)
    sections = "".join(
        f'<section id="{key}"><h2>{html.escape(name)}</h2>{body[key]}</section>'
        for key, name in SECTIONS
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>{html.escape(title)}</h1><nav>{nav}</nav>{sections}</main></body></html>\n"
    )


def show_card(card: ModelCard) -> None:
    """Display the card's sections in a notebook: each table, then the figures."""
    # IPython costs ~0.3 s to import (measured): only inside a notebook kernel
    from IPython.display import Markdown, display

    from healthpredict.modeling.plots import show

    titles = dict(SECTIONS) | {"operating_point": "Operating threshold"}
    for name, table in card_tables(card).items():
        display(Markdown(f"**{titles.get(name, name.replace('_', ' ').capitalize())}**"))
        display(table.style.hide(axis="index"))
    for fig in card_figures(card).values():
        show(fig)
    display(Markdown(f"**Why this threshold.** {card.operating_point['why']}"))
