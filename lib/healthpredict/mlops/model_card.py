"""The model card of a registered version: its numbers on the test rows, logged with its run.

Training and retraining build the card's numbers (:func:`~healthpredict.modeling.card.build_card`)
before the version is registered, so a split that cannot support them stops the run before any
alias moves; once the version exists, the card names it, is logged as the run's artifacts
``model_card/model_card.html`` and ``.json``, and the version's ``model_card`` tag points at
the HTML (``/model-info`` reports it). Notebooks also write the HTML next to their run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import mlflow
import pandas as pd

from healthpredict.core import storage
from healthpredict.data.schema import make_target
from healthpredict.mlops import registry
from healthpredict.modeling.card import ModelCard, build_card
from healthpredict.modeling.card_report import render_card_html
from healthpredict.modeling.fitting import FittedModel
from healthpredict.modeling.models import single_threaded
from healthpredict.modeling.runtime.model_meta import ModelInfo

CARD_DIR = "model_card"
CARD_HTML = "model_card.html"


def threshold_rule(target_recall: float | None) -> str:
    """How the operating threshold was chosen, as the card says it."""
    if target_recall is None:
        return "the maximum F1 score on the validation split's calibrated risks"
    return (
        f"the highest threshold that still reaches a recall of {target_recall:g} on the "
        "validation split's calibrated risks"
    )


@dataclass
class LoggedCard:
    """A model card and its HTML, as logged with the version's run."""

    card: ModelCard
    html: str
    uri: str


def card_numbers(
    fitted: FittedModel,
    test: pd.DataFrame,
    *,
    target: str,
    target_recall: float | None,
    data_source: str,
    train_rows: int,
    uncalibrated_brier: float,
    seed: int,
) -> ModelCard:
    """The card's numbers for a refit, calibrated model on its test rows (before registering).

    Raises:
        ValueError: The test rows cannot support a card (e.g. fewer than ten of a class).
    """
    y_test = make_target(test, target)
    with single_threaded():
        p_test = fitted.pipeline.predict_proba(test)[:, 1]
    facts: dict[str, Any] = {
        "family": fitted.family,
        "params": fitted.params,
        "target": target,
        "training_rows": train_rows,
        "test_rows": len(test),
        "data_source": data_source,
        "calibration_method": f"{fitted.calibration.method} ({fitted.calibration.reason})",
        "brier_before_calibration": round(float(uncalibrated_brier), 4),
    }
    card = build_card(
        test,
        y_test,
        p_test,
        threshold=fitted.threshold,
        threshold_rule=threshold_rule(target_recall),
        facts=facts,
        seed=seed,
    )
    card.facts["brier_after_calibration"] = round(card.overall["brier"]["value"], 4)
    return card


def log_card(card: ModelCard, info: ModelInfo, run_id: str) -> LoggedCard:
    """Name the version in ``card``, log it with the active run and tag the version with it."""
    card.facts = {
        "model_name": info.name,
        "model_version": info.version,
        "trained_at": info.trained_at,
        "run_id": run_id,
        **card.facts,
    }
    html = render_card_html(card, title=f"Model card: {info.name} v{info.version}")
    mlflow.log_text(html, f"{CARD_DIR}/{CARD_HTML}")
    mlflow.log_text(json.dumps(card.to_dict(), indent=2), f"{CARD_DIR}/model_card.json")
    uri = mlflow.get_artifact_uri(f"{CARD_DIR}/{CARD_HTML}")
    registry.set_version_tag(info.name, info.version, "model_card", uri)
    info.model_card = uri
    return LoggedCard(card, html, uri)


def write_next_to_run(card: LoggedCard, run_dir: str | None) -> str | None:
    """Write the card's HTML into a notebook's run folder; its path, or None without a folder."""
    if not run_dir:
        return None
    return storage.write_text(storage.join(run_dir, CARD_HTML), card.html)
