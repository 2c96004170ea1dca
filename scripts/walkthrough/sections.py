"""The narration: one section per point, each with its page, where to scroll and what to say.

Texts are templates over :func:`records.facts`: a ``{name}`` is a figure read from the run, so
nothing the narration states about the run is written here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .records import SampleRun


@dataclass(frozen=True)
class Target:
    """Where the screenshot scrolls.

    The first element matching ``selector`` whose text starts with ``text`` (any text when
    None) is brought to the top and outlined.
    """

    selector: str
    text: str | None = None


@dataclass(frozen=True)
class Section:
    """One narrated point.

    Its page (None: the closing card the script draws), scroll target (None: the top of the
    page) and narration template.
    """

    key: str
    title: str
    page: Callable[[SampleRun], Path] | None
    target: Target | None
    text: str


HEADING = "h1,h2,h3"

SECTIONS: tuple[Section, ...] = (
    Section(
        "product",
        "What Health Predict is",
        lambda s: s.root / "index.html",
        None,
        "Health Predict estimates each diabetic inpatient's risk of readmission within 30 "
        "days, and watches the model as new patients arrive. Every step is a notebook that "
        "leaves an audit trail. Here is one run on {data_source} data.",
    ),
    Section(
        "gallery",
        "The gallery: the audit index",
        lambda s: s.root / "index.html",
        Target("#runs"),
        "The gallery lists all {n_runs} runs: status, parameters, key results, and links to "
        "each notebook, record and report.",
    ),
    Section(
        "eda",
        "Exploratory data analysis",
        lambda s: s.eda.html,
        Target(HEADING, "The split at a glance"),
        "The training period holds {train_rows} encounters of the UCI Diabetes 130-US "
        "hospitals data; {target_rate} were readmitted within 30 days. The split is "
        "chronological and keeps each patient on one side.",
    ),
    Section(
        "search",
        "Training and hyper-parameter search",
        lambda s: s.train.html,
        Target(HEADING, "The search"),
        "Optuna searches {families}: {n_trials} trials, each logged to MLflow. The best is a "
        "{best_family}, validation ROC AUC {val_roc_auc}.",
    ),
    Section(
        "test",
        "The held-out test split",
        lambda s: s.train.html,
        Target(HEADING, "Held-out test split"),
        "On the held-out test split, version {model_version} reaches a ROC AUC of "
        "{test_roc_auc}, 95% interval {test_ci_low} to {test_ci_high}, and a PR AUC of "
        "{test_pr_auc}. It flags risks above {threshold}.",
    ),
    Section(
        "card",
        "The model card: a clinician's view",
        lambda s: s.train.report("model card"),
        None,
        "The model card speaks to clinicians: the model supports care-management follow-up; "
        "it is not for diagnosis or for denying care. It states the data, its limits, and "
        "figures on {test_rows} test encounters.",
    ),
    Section(
        "calibration",
        "Calibration and subgroups",
        lambda s: s.train.report("model card"),
        Target(HEADING, "Calibration"),
        "Are the risks right? Predicted and observed rates differ by {ece_points} percentage "
        "points on average; the Brier score is {test_brier}. Subgroups by age, sex, race, "
        "admission and payer follow.",
    ),
    Section(
        "no_drift",
        "Drift monitor: held-out rows",
        lambda s: s.held_out.html,
        Target(HEADING, "Drift status"),
        "The drift monitor compares new rows with the reference, against thresholds "
        "calibrated on the reference period. On {held_rows} held-out rows, {held_drifted} "
        "columns drifted: {held_verdict}. Estimated ROC AUC {held_estimated}, realised "
        "{held_realised}.",
    ),
    Section(
        "drift",
        "Drift monitor: the first stream batch",
        lambda s: s.stream.html,
        Target(HEADING, "Drift status"),
        "The first stream batch: {stream_rows} later encounters. {stream_drifted} of "
        "{stream_columns} columns drifted, {stream_share}, above the {share_threshold} "
        "threshold: {stream_drifted_columns}. {stream_verdict_cap}. Until its labels arrive, "
        "the estimated ROC AUC is {stream_estimated}.",
    ),
    Section(
        "evidently",
        "The Evidently report",
        lambda s: s.stream.report("data_drift"),
        None,
        "Each check keeps its Evidently report: the summary, then each column's distributions "
        "and drift score. The same {stream_drifted} columns stand out.",
    ),
    Section(
        "retrain",
        "Retraining: champion against challenger",
        lambda s: s.retrain.html,
        Target(HEADING, "Champion vs challenger"),
        "Retraining adds the labelled batch: challenger version {challenger_version} learns "
        "from {challenger_train_rows} rows, the champion from {champion_train_rows}. Both are "
        "scored on the same {gate_rows} held-out rows.",
    ),
    Section(
        "gate",
        "The gate's decision",
        lambda s: s.retrain.html,
        Target(HEADING, "Decision"),
        "The challenger gains {gain} in ROC AUC, but the {gate_confidence} paired interval, "
        "{gate_ci_low} to {gate_ci_high}, {gate_interval_verdict}. The gate's decision: "
        "{decision}. Champion version {champion_version} {champion_stays}.",
    ),
    Section(
        "run_it",
        "How to run it",
        None,
        None,
        "To run it yourself: make demo sets up, prepares the data, runs the notebooks and the "
        "monitoring loop, and builds the gallery. make airflow runs the same steps as Airflow "
        "DAGs. make walkthrough renders this video again.",
    ),
)

# The closing card's commands (section "run_it"), drawn by capture.closing_card.
COMMANDS = (
    ("make demo", "set up, prepare the data, run the notebooks and the loop, build the gallery"),
    ("make airflow", "a local Airflow on 127.0.0.1:8080 with the same steps as DAGs"),
    ("make samples", "regenerate the committed real-data run in rendered/samples/"),
    ("make walkthrough", "render this video again from rendered/samples/"),
)


def narration(sample: SampleRun, facts: dict[str, str]) -> list[tuple[Section, str]]:
    """Each section with its text filled from ``facts``.

    Raises:
        KeyError: A template names a fact the records do not give (section and name in it).
    """
    filled = []
    for section in SECTIONS:
        try:
            filled.append((section, section.text.format(**facts)))
        except KeyError as missing:
            raise KeyError(f"section {section.key!r} needs fact {missing}") from None
    return filled
