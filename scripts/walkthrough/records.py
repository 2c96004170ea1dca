"""The sample run's records (``run.json`` of each notebook run) and the facts the narration states.

Every number the narration says is read here from the records, never written into the text,
so a regenerated sample gives a correct narration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The families the training searches, as a listener hears them.
FAMILY_NAMES = {
    "logreg": "logistic regression",
    "rf": "random forest",
    "hgb": "histogram gradient boosting",
}
STATUS_WORDS = {"NO_DRIFT": "no drift", "DRIFT_DETECTED": "drift detected"}


@dataclass(frozen=True)
class Run:
    """One notebook run of the sample: its folder and its ``run.json``."""

    folder: Path
    record: dict[str, Any]

    @property
    def scraps(self) -> dict[str, Any]:
        """The figures the notebook recorded."""
        return self.record.get("scraps") or {}

    @property
    def html(self) -> Path:
        """The notebook's HTML rendering (named after the notebook, next to ``run.json``)."""
        return self.folder / f"{self.record['notebook']}.html"

    def report(self, name: str) -> Path:
        """A report the run lists in its ``report_paths`` scrap, inside this run's folder."""
        paths = self.scraps.get("report_paths") or {}
        if name not in paths:
            raise ValueError(f"{self.folder.name}: no report {name!r} in its report_paths {paths}")
        # Recorded repository-relative (rendered/samples/<run>/...): keep the part below the run.
        parts = Path(paths[name]).parts
        if self.folder.name not in parts:
            raise ValueError(f"{self.folder.name}: report path {paths[name]} is not in the run")
        return self.folder.joinpath(*parts[parts.index(self.folder.name) + 1 :])


@dataclass(frozen=True)
class SampleRun:
    """The runs of one sample, in the order the walkthrough tells them."""

    root: Path
    n_runs: int
    eda: Run
    train: Run
    held_out: Run  # the first drift check: held-out rows of the training period
    stream: Run  # the second: the first batch of the future stream
    retrain: Run


def load(root: Path) -> SampleRun:
    """The sample under ``root`` (a folder with the gallery's ``index.json`` and run folders).

    Raises:
        FileNotFoundError: ``root`` has no ``index.json`` or a run folder is missing.
        ValueError: The sample lacks a run the walkthrough tells (EDA, training, two drift
            checks, a retraining) or one did not succeed.
    """
    index = root / "index.json"
    if not index.is_file():
        raise FileNotFoundError(f"no gallery index at {index}: run `make samples` first")
    entries = sorted(json.loads(index.read_text())["entries"], key=lambda e: e["started_at"])
    by_notebook: dict[str, list[Run]] = {}
    for entry in entries:
        folder = root / Path(entry["run_dir"]).name
        record = json.loads((folder / "run.json").read_text())
        if record.get("status") != "succeeded":
            raise ValueError(f"{folder.name}: status {record.get('status')!r}, not succeeded")
        by_notebook.setdefault(record["notebook"], []).append(Run(folder, record))
    wanted = {"01_eda": 1, "02_train_hpo": 1, "03_drift_monitor": 2, "04_retrain": 1}
    counts = {nb: len(by_notebook.get(nb, [])) for nb in wanted}
    if any(counts[nb] < n for nb, n in wanted.items()):
        raise ValueError(f"{root}: the walkthrough needs runs {wanted}, the sample has {counts}")
    monitors = by_notebook["03_drift_monitor"]
    return SampleRun(
        root=root,
        n_runs=len(entries),
        eda=by_notebook["01_eda"][-1],
        train=by_notebook["02_train_hpo"][-1],
        held_out=monitors[0],
        stream=monitors[1],
        retrain=by_notebook["04_retrain"][-1],
    )


def _num(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}"


def _pct(share: float, digits: int = 1) -> str:
    return f"{100 * share:.{digits}f}%"


def _words(items: list[str]) -> str:
    """``a, b and c``; column names spoken as words (``payer_code`` -> ``payer code``)."""
    items = [str(i).replace("_", " ") for i in items]
    if len(items) <= 1:
        return "".join(items) or "none"
    return ", ".join(items[:-1]) + " and " + items[-1]


def facts(sample: SampleRun) -> dict[str, str]:
    """The figures and phrases the narration's templates name, formatted for speech.

    Raises:
        KeyError: A record lacks a scrap the narration states (its name is the key).
        ValueError: The records disagree (the retraining's champion is not the trained model).
    """
    eda, train, held, stream = (sample.eda.scraps, sample.train.scraps, sample.held_out.scraps,
                                sample.stream.scraps)  # fmt: skip
    retrain = sample.retrain.scraps
    gate = retrain["gate"]
    champion = retrain["champion_metrics"]
    if str(retrain["champion_version"]) != str(train["model_version"]):
        raise ValueError(
            f"the retraining's champion is v{retrain['champion_version']}, the training "
            f"registered v{train['model_version']}: the sample mixes runs"
        )
    families = sample.train.record["parameters"]["families"]
    n_columns = round(stream["n_drifted_columns"] / stream["drifted_share"]) if (
        stream["drifted_share"]) else None  # fmt: skip
    return {
        "data_source": sample.train.record["data_source"],
        "n_runs": str(sample.n_runs),
        "train_rows": f"{eda['n_rows']:,}",
        "target_rate": _pct(eda["target_rate"]),
        "n_trials": str(sample.train.record["parameters"]["n_trials"]),
        "families": _words([FAMILY_NAMES.get(f, f) for f in families]),
        "best_family": FAMILY_NAMES.get(train["best_family"], train["best_family"]),
        "val_roc_auc": _num(train["val_roc_auc"]),
        "test_roc_auc": _num(train["test_roc_auc"]),
        "test_ci_low": _num(train["test_roc_auc_ci95"][0]),
        "test_ci_high": _num(train["test_roc_auc_ci95"][1]),
        "test_pr_auc": _num(train["test_pr_auc"]),
        "threshold": _num(train["threshold"]),
        "model_version": str(train["model_version"]),
        "test_rows": f"{champion['test_n']:,}",
        "test_brier": _num(champion["test_brier"], 3),
        "ece_points": f"{100 * champion['test_ece']:.1f}",
        "test_positive_rate": _pct(champion["test_positive_rate"]),
        "held_status": held["drift_status"],
        "held_verdict": STATUS_WORDS.get(held["drift_status"], held["drift_status"]),
        "held_rows": f"{held['batch_rows']:,}",
        "held_drifted": str(held["n_drifted_columns"]),
        "held_share": _pct(held["drifted_share"]),
        "held_estimated": _num(held["estimated_roc_auc"]),
        "held_realised": _num(held["realised_roc_auc"])
        if held.get("realised_roc_auc") is not None
        else "not yet known",
        "stream_status": stream["drift_status"],
        "stream_verdict": STATUS_WORDS.get(stream["drift_status"], stream["drift_status"]),
        "stream_rows": f"{stream['batch_rows']:,}",
        "stream_drifted": str(stream["n_drifted_columns"]),
        "stream_verdict_cap": STATUS_WORDS.get(
            stream["drift_status"], stream["drift_status"]
        ).capitalize(),
        "stream_columns": str(n_columns) if n_columns else "the monitored",
        "stream_share": _pct(stream["drifted_share"]),
        "share_threshold": _pct(stream["share_threshold"]),
        "stream_drifted_columns": _words(stream["drifted_columns"]),
        "stream_estimated": _num(stream["estimated_roc_auc"]),
        "stream_prediction_drift": "drifted" if stream["prediction_drift"] else "did not drift",
        "decision": gate["decision"],
        "champion_version": str(retrain["champion_version"]),
        "challenger_version": str(retrain["challenger_version"]),
        "challenger_train_rows": f"{gate['challenger_train_rows']:,}",
        "champion_train_rows": f"{gate['champion_train_rows']:,}",
        "gate_rows": f"{gate['n_rows']:,}",
        "gate_patients": f"{gate['n_patients']:,}",
        "gain": _num(gate["gain"], 4),
        "gate_ci_low": _num(gate["ci_low"], 4),
        "gate_ci_high": _num(gate["ci_high"], 4),
        "gate_confidence": f"{100 * gate['confidence']:.0f}%",
        "gate_interval_verdict": (
            "lies above zero: the gain is beyond noise"
            if gate["ci_low"] > 0
            else "includes zero: the gain is within noise"
        ),
        "champion_stays": "stays in service" if not retrain["promoted"] else "is replaced",
    }
