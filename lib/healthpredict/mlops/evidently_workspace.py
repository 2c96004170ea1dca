"""Monitoring over time: every monitored batch in one Evidently workspace project and dashboard.

Each monitoring run adds its Evidently snapshots (data drift, prediction drift and, for a
labelled batch, performance) and a one-row *summary* snapshot to the project
:data:`PROJECT_NAME` of the workspace ``HP_EVIDENTLY_WORKSPACE`` (default
``<storage>/evidently``). The summary carries, as Evidently ``MeanValue`` metrics, the values the
decision used (drifted share, prediction-drift score and their calibrated thresholds, the
estimated, realised and reference ROC AUC), so that the project's dashboard plots one point per
batch; ``evidently ui --workspace <folder>`` (``make monitoring-ui``) shows it.

Ids are stable (UUID 5 of the project name, and of the batch and report name): any process
finds the same project, creating it is idempotent, and a batch monitored again replaces its
snapshots instead of adding a second point. A stream batch (``batch_<start row>.csv``) is
stamped at its place in the stream (:data:`STREAM_ORIGIN` plus one second per row), so the
points of a batch line up and the order is the stream's whatever the wall clock did; any other
batch is stamped with the time it was monitored.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from healthpredict.core import storage
from healthpredict.core.portable import portable
from healthpredict.core.settings import Settings, get_settings

if TYPE_CHECKING:
    from healthpredict.monitoring.decision import MonitorResult

log = logging.getLogger(__name__)

PROJECT_NAME = "Health Predict monitoring"
PROJECT_DESCRIPTION = (
    "One point per monitored batch of the Health Predict stream: data drift, prediction drift, "
    "estimated and realised ROC AUC. Written by the drift monitor (03_drift_monitor)."
)
# A fixed namespace: the same ids in every process and on every machine.
_NAMESPACE = uuid.UUID("6f1d3c2a-8b4e-5c7d-9e0f-1a2b3c4d5e6f")
PROJECT_ID = uuid.uuid5(_NAMESPACE, PROJECT_NAME)
SUMMARY = "summary"
"""Report name of the one-row snapshot of the values the dashboard plots."""
STREAM_ORIGIN = dt.datetime(2000, 1, 1)
"""Time of row 0 of the stream; row ``k`` is ``k`` seconds later (naive UTC, as Evidently's)."""
_STREAM_BATCH = re.compile(r"^batch_(\d+)$")
OFF = "off"

# Summary column -> label, per dashboard panel: (title, subtitle, columns).
PANELS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    (
        "Data drift: share of drifted columns",
        "Columns whose drift score reached their calibrated threshold, and the share that "
        "means data drift.",
        (("drifted_share", "drifted share"), ("share_threshold", "threshold")),
    ),
    (
        "Prediction drift",
        "Normed Wasserstein distance of the predicted probabilities to held-out reference "
        "rows, and its calibrated threshold.",
        (
            ("prediction_drift_score", "distance"),
            ("prediction_drift_threshold", "threshold"),
        ),
    ),
    (
        "ROC AUC: estimated and realised",
        "Estimated (label-free, from calibrated probabilities) for the batch; realised on the "
        "batches whose labels arrived; the model's reference.",
        (
            ("estimated_roc_auc", "estimated"),
            ("realised_roc_auc", "realised"),
            ("reference_roc_auc", "reference"),
        ),
    ),
)
SUMMARY_COLUMNS = tuple(column for *_, series in PANELS for column, _ in series)


class WorkspaceError(RuntimeError):
    """The Evidently workspace could not be written; the message names the folder and cause."""


def workspace_path(settings: Settings | None = None) -> str | None:
    """The workspace folder (``HP_EVIDENTLY_WORKSPACE``, resolved), or None when it is off."""
    value = (settings or get_settings()).evidently_workspace
    return None if value is None or value == OFF else value


def batch_id(batch_uri: str) -> str:
    """The batch's name: its file name without the extension (``batch_0002000``)."""
    return Path(batch_uri.rstrip("/")).stem


def batch_timestamp(batch_uri: str, now: dt.datetime | None = None) -> dt.datetime:
    """Where the batch sits on the dashboard's time axis.

    A stream batch ``batch_<start>.csv`` sits at :data:`STREAM_ORIGIN` plus ``start`` seconds,
    so re-runs and the loop's and the DAG's runs of a batch land on the same point; any other
    batch at ``now`` (default: the current UTC time).
    """
    match = _STREAM_BATCH.match(batch_id(batch_uri))
    if match:
        return STREAM_ORIGIN + dt.timedelta(seconds=int(match.group(1)))
    return (now or dt.datetime.now(dt.UTC)).replace(tzinfo=None)


@dataclass(frozen=True)
class BatchRecord:
    """One monitored batch as the workspace keeps it.

    Attributes:
        batch_uri: The batch CSV (its name is the batch id; the full URI keys its snapshots).
        run_id: The monitoring run (MLflow run id).
        values: Summary column -> value; None or NaN values are left out (no point).
        metadata: Extra snapshot metadata (e.g. ``drift_status``, ``model_version``).
        timestamp: None: :func:`batch_timestamp`.
    """

    batch_uri: str
    run_id: str | None
    values: Mapping[str, float | None]
    metadata: Mapping[str, str] = field(default_factory=dict)
    timestamp: dt.datetime | None = None

    @property
    def batch_id(self) -> str:
        """The batch's name (:func:`batch_id`)."""
        return batch_id(self.batch_uri)

    def plotted(self) -> dict[str, float]:
        """The values that make a point: finite numbers only."""
        return {
            k: float(v) for k, v in self.values.items() if v is not None and math.isfinite(float(v))
        }


def batch_record(result: MonitorResult, batch_uri: str, run_id: str | None) -> BatchRecord:
    """The workspace record of a monitoring result."""
    t = result.thresholds
    signals = result.performance_signals.as_dict() if result.performance_signals else {}
    values = {
        "drifted_share": result.drifted_share,
        "share_threshold": t.share_threshold,
        "prediction_drift_score": result.prediction_drift_score,
        "prediction_drift_threshold": t.prediction_drift_threshold,
        **{
            k: signals.get(k)
            for k in ("estimated_roc_auc", "realised_roc_auc", "reference_roc_auc")
        },
    }
    metadata = {
        "drift_status": result.status,
        "retrain": str(result.retrain.retrain).lower(),
        "model_version": str(result.model_version),
        "data_source": result.data_source,
    }
    return BatchRecord(batch_uri, run_id, values, metadata)


def open_workspace(path: str) -> Any:
    """The Evidently workspace at ``path`` (a local folder, created when missing)."""
    # evidently costs ~9 s to import: only when the workspace is used
    from evidently.ui.workspace import Workspace

    if storage.is_s3(path):
        raise WorkspaceError(
            f"HP_EVIDENTLY_WORKSPACE={path}: the Evidently workspace must be a local folder "
            "(Evidently reads it through fsspec, and s3fs is not installed)"
        )
    Path(path).mkdir(parents=True, exist_ok=True)
    return Workspace(path)


def dashboard_model() -> Any:
    """The project's dashboard: one tab, one line plot per panel of :data:`PANELS`."""
    from evidently.sdk.models import DashboardModel, DashboardTabModel, PanelMetric
    from evidently.sdk.panels import line_plot_panel

    panels = []
    for title, subtitle, series in PANELS:
        panel = line_plot_panel(
            title,
            [
                PanelMetric(
                    legend=legend,
                    tags=[SUMMARY],
                    metric="MeanValue",
                    metric_labels={"column": column},
                )
                for column, legend in series
            ],
            description=subtitle,
        )
        panel.id = uuid.uuid5(PROJECT_ID, f"panel/{title}")
        panels.append(panel)
    tab = DashboardTabModel(
        id=uuid.uuid5(PROJECT_ID, "tab/Monitoring"),
        title="Monitoring",
        panels=[p.id for p in panels],
    )
    return DashboardModel(tabs=[tab], panels=panels)


def ensure_project(workspace: Any) -> Any:
    """The project :data:`PROJECT_NAME` (id :data:`PROJECT_ID`) with its dashboard; idempotent.

    The id is the same in every process, so two processes creating it at once write the same
    project; the dashboard is written only when it differs from :func:`dashboard_model`.
    """
    from evidently.sdk.models import ProjectModel

    project = workspace.get_project(PROJECT_ID)
    if project is None:
        project = workspace.add_project(
            ProjectModel(id=PROJECT_ID, name=PROJECT_NAME, description=PROJECT_DESCRIPTION)
        )
    wanted = dashboard_model()
    if workspace.get_dashboard(PROJECT_ID) != wanted:
        workspace.save_dashboard(PROJECT_ID, wanted)
    return project


def summary_snapshot(record: BatchRecord) -> Any:
    """A one-row Evidently report of the record's values: one ``MeanValue`` per value."""
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import MeanValue

    values = record.plotted()
    if not values:
        raise ValueError(f"batch {record.batch_id}: no finite value to record")
    frame = pd.DataFrame({k: [v] for k, v in values.items()})
    data = Dataset.from_pandas(frame, DataDefinition(numerical_columns=list(values)))
    # No tests: a single number has no reference to be tested against here.
    return Report([MeanValue(column=c, tests=[]) for c in values]).run(data, None)


def snapshot_id(batch_uri: str, report: str) -> uuid.UUID:
    """Stable id of a batch's report: monitoring the batch again replaces it."""
    return uuid.uuid5(PROJECT_ID, f"{batch_uri}/{report}")


def _write_snapshot(path: str, sid: uuid.UUID, model: Any) -> None:
    """Write a snapshot where Evidently's local workspace keeps it, under our stable id.

    ``Workspace.add_run`` draws a random id, so a re-monitored batch would add a second point;
    and its writer encodes in pure Python, ~400,000 small writes for a data-drift snapshot,
    straight into the final file, which ``evidently ui``'s folder watcher can read half-written.
    Here: one C-encoded string and an atomic rename (the same file; its write ~2.7x faster).
    """
    from evidently.legacy.utils import NumpyEncoder
    from evidently.ui.storage.local.base import SNAPSHOTS_DIR_NAME

    folder = Path(path, str(PROJECT_ID), SNAPSHOTS_DIR_NAME)
    folder.mkdir(parents=True, exist_ok=True)
    # A temporary name not ending in .json: Evidently lists only <uuid>.json files.
    tmp = folder / f".{sid}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(model.dict(), cls=NumpyEncoder), encoding="utf-8")
    os.replace(tmp, folder / f"{sid}.json")


def add_batch(path: str, snapshots: Mapping[str, Any], record: BatchRecord) -> list[str]:
    """Add a batch's snapshots and its summary to the project; returns the snapshot ids.

    Each snapshot is stamped with the batch's time (:func:`batch_timestamp`), tagged with the
    batch id, ``run:<run id>`` and its report name, and written under its stable id.

    Raises:
        WorkspaceError: The workspace could not be opened or written.
    """
    try:
        workspace = open_workspace(path)
        ensure_project(workspace)
        stamp = record.timestamp or batch_timestamp(record.batch_uri)
        reports = {**snapshots, SUMMARY: summary_snapshot(record)}
        ids = []
        for report, snapshot in reports.items():
            model = snapshot.to_snapshot_model()
            model.name = f"{record.batch_id} · {report}"
            model.timestamp = stamp
            model.tags = [record.batch_id, f"run:{record.run_id}", report]
            model.metadata = {
                **{k: str(v) for k, v in record.metadata.items()},
                "batch_id": record.batch_id,
                "batch_uri": record.batch_uri,
                "run_id": str(record.run_id),
                "report": report,
            }
            sid = snapshot_id(record.batch_uri, report)
            _write_snapshot(path, sid, model)
            ids.append(str(sid))
    except WorkspaceError:
        raise
    except Exception as exc:
        raise WorkspaceError(
            f"could not add batch {record.batch_id} to the Evidently workspace {path}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return ids


@dataclass(frozen=True)
class WorkspaceOutcome:
    """What :func:`record_monitoring` did: the snapshot ids, or why nothing was written."""

    path: str | None
    snapshot_ids: list[str] = field(default_factory=list)
    error: str | None = None

    def tag(self) -> str:
        """One line for the monitoring run's ``evidently_workspace`` tag."""
        # portable: the tag and the notebook's scrap read right on another machine
        if self.error:
            return portable(f"failed: {self.error}")[:5000]
        if self.path is None:
            return "off"
        return f"{len(self.snapshot_ids)} snapshots in {portable(str(self.path))}"


def record_monitoring(
    result: MonitorResult,
    snapshots: Mapping[str, Any],
    batch_uri: str,
    run_id: str | None,
    settings: Settings | None = None,
) -> WorkspaceOutcome:
    """Add a monitoring run to the workspace; a failure is logged and returned, never raised.

    The workspace is a view over time; the decision, its HTML reports and its MLflow run are
    complete without it, so a failed write must not fail the batch (the loop would redo it
    forever for a dashboard). It is not silent either: a WARNING names the batch and cause,
    and the caller records the outcome on the run (``evidently_workspace`` tag).
    """
    path = workspace_path(settings)
    if path is None:
        return WorkspaceOutcome(None)
    try:
        ids = add_batch(path, snapshots, batch_record(result, batch_uri, run_id))
    except WorkspaceError as exc:
        log.warning("%s; the monitoring result is kept, the dashboard misses this batch", exc)
        return WorkspaceOutcome(path, error=str(exc))
    return WorkspaceOutcome(path, ids)


def dashboard_url(
    settings: Settings | None = None, host: str = "127.0.0.1", port: int = 8000
) -> str | None:
    """URL of the project's dashboard under ``evidently ui`` at ``host:port``.

    None when the workspace is off or holds no monitoring project yet (nothing to link).
    """
    path = workspace_path(settings)
    if path is None or storage.is_s3(path):
        return None
    if not (Path(path) / str(PROJECT_ID) / "metadata.json").is_file():
        return None
    return f"http://{host}:{port}/projects/{PROJECT_ID}"


def prepare_ui(settings: Settings | None = None, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Create the workspace and project when missing; returns the dashboard's URL.

    Raises:
        WorkspaceError: The workspace is off (``HP_EVIDENTLY_WORKSPACE=off``) or unusable.
    """
    path = workspace_path(settings)
    if path is None:
        raise WorkspaceError("HP_EVIDENTLY_WORKSPACE=off: there is no Evidently workspace to show")
    try:
        ensure_project(open_workspace(path))
    except WorkspaceError:
        raise
    except Exception as exc:
        raise WorkspaceError(f"cannot prepare the Evidently workspace {path}: {exc}") from exc
    url = dashboard_url(settings, host, port)
    assert url is not None  # the project was just ensured
    return url


def main(argv: list[str] | None = None) -> int:
    """``python -m healthpredict.mlops.evidently_workspace [PORT]``: workspace folder and URL.

    Prints two tab-separated fields, the workspace folder and the dashboard URL on 127.0.0.1,
    for ``make monitoring-ui``; exits 1 with the reason when there is no usable workspace.
    """
    import sys

    args = sys.argv[1:] if argv is None else argv
    port = int(args[0]) if args else 8000
    try:
        url = prepare_ui(port=port)
    except WorkspaceError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{workspace_path()}\t{url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
