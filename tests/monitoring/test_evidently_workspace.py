"""The Evidently workspace: one project, one point per monitored batch, `evidently ui` shows them.

Unit tests add hand-made records (real Evidently snapshots of one-row reports) to a workspace;
the slow tests run the real monitoring stage (:func:`healthpredict.mlops.monitor.monitor`) on
three synthetic stream batches, then check the workspace, the failure policy and the dashboard
that Evidently's own UI renders in headless Chromium.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from healthpredict.core.settings import Settings, get_settings
from healthpredict.mlops import evidently_workspace as ew
from tests.support.chromium import CHROMIUM, needs_chromium

BATCH_ROWS = 500
N_BATCHES = 3
SUMMARY_VALUES = dict.fromkeys(ew.SUMMARY_COLUMNS, 0.5)


def _record(start: int, **values) -> ew.BatchRecord:
    return ew.BatchRecord(
        f"/stream/batch_{start:07d}.csv", f"run{start}", {**SUMMARY_VALUES, **values}
    )


def _summaries(path: str) -> dict[str, object]:
    """Batch id -> its summary snapshot model, read back through Evidently's workspace."""
    workspace = ew.open_workspace(path)
    out = {}
    for sid in workspace.list_runs(ew.PROJECT_ID):
        model = workspace.get_run(ew.PROJECT_ID, sid)
        if model.metadata["report"] == ew.SUMMARY:
            out[model.metadata["batch_id"]] = model
    return out


def _values(model) -> dict[str, float]:
    """Column -> value of a summary snapshot's MeanValue metrics."""
    return {
        r.metric_value_location.metric.params["column"]: r.value
        for r in model.metric_results.values()
    }


def _series(path: str) -> dict[str, list]:
    """What the dashboard plots: Evidently's own data-series query for each panel series."""
    import asyncio

    from evidently.ui.service.base import SeriesFilter
    from evidently.ui.service.storage.local.base import InMemoryDataStorage, LocalState

    storage = InMemoryDataStorage(path, LocalState.load(path, None))
    dashboard = ew.open_workspace(path).get_dashboard(ew.PROJECT_ID)
    out = {}
    for panel in dashboard.panels:
        for value in panel.values:
            found = asyncio.run(
                storage.get_data_series(
                    ew.PROJECT_ID,
                    [SeriesFilter(metric=value.metric, metric_labels=value.metric_labels, tags=value.tags, metadata={})],
                    None,
                    None,
                )
            )  # fmt: skip
            values = [v for s in found.series for v in s.values]
            out[value.metric_labels["column"]] = values
    return out


# ---- unit: records -> snapshots ------------------------------------------------------------


def test_added_batches_are_one_summary_point_each_with_their_values(tmp_path):
    path = str(tmp_path / "ws")
    records = [
        _record(0, drifted_share=0.0, realised_roc_auc=None),
        _record(500, drifted_share=0.25, estimated_roc_auc=0.61, realised_roc_auc=float("nan")),
        _record(1000, drifted_share=0.5, estimated_roc_auc=0.64, realised_roc_auc=0.6),
    ]
    ids = [ew.add_batch(path, {}, r) for r in records]
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == 3

    workspace = ew.open_workspace(path)
    assert [p.name for p in workspace.list_projects()] == [ew.PROJECT_NAME]
    assert len(workspace.list_runs(ew.PROJECT_ID)) == 3
    summaries = _summaries(path)
    assert sorted(summaries) == ["batch_0000000", "batch_0000500", "batch_0001000"]
    last = summaries["batch_0001000"]
    assert _values(last) == pytest.approx(
        {**SUMMARY_VALUES, "drifted_share": 0.5, "estimated_roc_auc": 0.64, "realised_roc_auc": 0.6}
    )
    # No realised ROC AUC before labels arrived (None or NaN): no point, not a zero.
    assert "realised_roc_auc" not in _values(summaries["batch_0000000"])
    assert "realised_roc_auc" not in _values(summaries["batch_0000500"])
    # Stamped at their place in the stream, tagged with batch, run and report.
    assert last.timestamp == ew.STREAM_ORIGIN + dt.timedelta(seconds=1000)
    assert set(last.tags) == {"batch_0001000", "run:run1000", ew.SUMMARY}
    assert last.metadata["run_id"] == "run1000"

    series = _series(path)
    assert series["drifted_share"] == pytest.approx([0.0, 0.25, 0.5])  # in stream order
    assert series["estimated_roc_auc"] == pytest.approx([0.5, 0.61, 0.64])
    assert [v for v in series["realised_roc_auc"] if v is not None] == pytest.approx([0.6])


def test_monitoring_a_batch_again_replaces_its_point(tmp_path):
    path = str(tmp_path / "ws")
    first = ew.add_batch(path, {}, _record(0, drifted_share=0.1))
    ew.add_batch(path, {}, _record(500))
    again = ew.add_batch(path, {}, _record(0, drifted_share=0.3))
    assert again == first
    assert len(ew.open_workspace(path).list_runs(ew.PROJECT_ID)) == 2
    assert _values(_summaries(path)["batch_0000000"])["drifted_share"] == pytest.approx(0.3)


def test_project_creation_is_idempotent(tmp_path):
    path = str(tmp_path / "ws")
    first = ew.ensure_project(ew.open_workspace(path))
    dashboard = Path(path, str(ew.PROJECT_ID), "dashboard.json")
    written = dashboard.stat().st_mtime_ns
    # Another workspace object (as another process would open it): the same project, untouched.
    second = ew.ensure_project(ew.open_workspace(path))
    assert first.id == second.id == ew.PROJECT_ID
    assert [p.id for p in ew.open_workspace(path).list_projects()] == [ew.PROJECT_ID]
    assert dashboard.stat().st_mtime_ns == written
    panels = ew.open_workspace(path).get_dashboard(ew.PROJECT_ID).panels
    assert [p.title for p in panels] == [title for title, *_ in ew.PANELS]


def test_batch_timestamps():
    assert ew.batch_timestamp("s3://b/monitoring/batches/batch_0002000.csv") == (
        ew.STREAM_ORIGIN + dt.timedelta(seconds=2000)
    )
    now = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)
    assert ew.batch_timestamp("/data/march.csv", now=now) == dt.datetime(2026, 5, 1, 12, 0)


def test_workspace_setting_and_dashboard_url(tmp_path, monkeypatch):
    for name in ("HP_EVIDENTLY_WORKSPACE", "HP_STORAGE"):
        monkeypatch.delenv(name, raising=False)
    local = Settings(storage=str(tmp_path / "var"))
    assert ew.workspace_path(local) == str(tmp_path / "var" / "evidently")
    # Evidently reads a local folder: with an S3 storage the workspace stays on this machine.
    monkeypatch.chdir(tmp_path)
    on_s3 = Settings(storage="s3://bucket/prefix")
    assert ew.workspace_path(on_s3) == str(tmp_path / "var" / "evidently")
    assert on_s3.as_env()["HP_EVIDENTLY_WORKSPACE"] == str(tmp_path / "var" / "evidently")
    off = Settings(storage=str(tmp_path / "var"), evidently_workspace="off")
    assert ew.workspace_path(off) is None and ew.dashboard_url(off) is None

    assert ew.dashboard_url(local) is None  # no project yet: nothing to link
    ew.ensure_project(ew.open_workspace(ew.workspace_path(local)))
    assert ew.dashboard_url(local, port=8123) == f"http://127.0.0.1:8123/projects/{ew.PROJECT_ID}"


def test_an_unusable_workspace_raises_an_error_naming_it(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ew.WorkspaceError, match=re.escape(str(blocker / "ws"))):
        ew.add_batch(str(blocker / "ws"), {}, _record(0))


# ---- the real monitoring stage, then Evidently's UI -------------------------------------------


@pytest.fixture(scope="module")
def monitored(tmp_path_factory, synthetic_champion, settings_isolation):
    """Three stream batches through the real drift monitor; batch 2 drifted, batch 3 labelled.

    Batches carry no labels (they arrive late): the third run gets the first batch's labels
    (``labelled_data_path``), so only its summary has a realised ROC AUC.
    """
    from healthpredict.core import layout, storage
    from healthpredict.core.stages import MonitorParams
    from healthpredict.data.schema import TARGET
    from healthpredict.data.split import load_split
    from healthpredict.mlops.monitor import monitor
    from tests.support import drift_scenarios

    tmp = tmp_path_factory.mktemp("evws")
    patch = pytest.MonkeyPatch()
    settings_isolation(patch, tmp)
    try:
        synthetic_champion(6_000)
        future = load_split("future_data")
        validation = layout.split_csv("validation")
        runs = []
        for i in range(N_BATCHES):
            start = i * BATCH_ROWS
            rows = future.iloc[start : start + BATCH_ROWS].reset_index(drop=True)
            if i == 1:
                rows = drift_scenarios.apply("more_prior_inpatient", rows, strength=1.0)
            uri = storage.write_csv(
                layout.batch_csv(f"batch_{start:07d}.csv"), rows.drop(columns=TARGET)
            )
            labelled = None
            if i == 2:
                first = future.iloc[:BATCH_ROWS]
                labelled = storage.write_csv(layout.labelled_csv("batch_0000000.csv"), first)
            params = MonitorParams(
                new_data_path=uri,
                model_reference_path=validation,
                labelled_data_path=labelled,
                evidently_reports_path=str(tmp / "reports" / str(i)),
                n_null_batches=200,
            )  # fmt: skip
            runs.append((uri, monitor(params)))
        yield runs, ew.workspace_path()
    finally:
        patch.undo()
        get_settings.cache_clear()


@pytest.mark.slow
def test_the_monitoring_stage_adds_each_batch_to_the_workspace(monitored):
    runs, path = monitored
    assert path == str(
        Path(get_settings().storage) / "evidently"
    )  # the default: <storage>/evidently
    workspace = ew.open_workspace(path)
    reports = [set(r.report_paths) | {ew.SUMMARY} for _, r in runs]
    assert len(workspace.list_runs(ew.PROJECT_ID)) == sum(len(r) for r in reports)
    summaries = _summaries(path)
    for uri, result in runs:
        summary = summaries[ew.batch_id(uri)]
        values = _values(summary)
        assert values["drifted_share"] == pytest.approx(result.drifted_share)
        assert values["prediction_drift_score"] == pytest.approx(result.prediction_drift_score)
        signals = result.performance_signals
        assert values["estimated_roc_auc"] == pytest.approx(signals.estimated_roc_auc)
        assert summary.metadata["run_id"] == result.mlflow_run_id
        assert f"run:{result.mlflow_run_id}" in summary.tags
        assert summary.metadata["drift_status"] == result.status
    realised = [_values(summaries[ew.batch_id(u)]).get("realised_roc_auc") for u, _ in runs]
    assert realised[:2] == [None, None]
    assert realised[2] == pytest.approx(runs[2][1].performance_signals.realised_roc_auc)
    assert runs[1][1].drifted_share > runs[0][1].drifted_share  # the shifted batch
    # The monitoring run says where its snapshots went.
    from mlflow import MlflowClient

    tag = MlflowClient().get_run(runs[0][1].mlflow_run_id).data.tags["evidently_workspace"]
    assert tag == f"{len(reports[0])} snapshots in <storage>/evidently"  # portable
    assert runs[0][1].scraps()["evidently_workspace"] == tag


@pytest.mark.slow
def test_a_workspace_failure_keeps_the_result_and_is_reported(monitored, tmp_path, caplog):
    from mlflow import MlflowClient

    from healthpredict.core import layout
    from healthpredict.core.stages import MonitorParams
    from healthpredict.mlops.monitor import monitor

    runs, _ = monitored
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HP_EVIDENTLY_WORKSPACE", str(blocker / "ws"))
        get_settings.cache_clear()
        try:
            with caplog.at_level(logging.WARNING, logger=ew.__name__):
                result = monitor(
                    MonitorParams(
                        new_data_path=runs[0][0],
                        model_reference_path=layout.split_csv("validation"),
                        evidently_reports_path=str(tmp_path / "reports"),
                        n_null_batches=200,
                    )
                )
        finally:
            get_settings.cache_clear()
    # The decision, its reports and its MLflow run are all there...
    assert result.status == runs[0][1].status and result.mlflow_run_id
    assert all(Path(p).is_file() for p in result.report_paths.values())
    # ...and the missing dashboard point is said: a WARNING and a tag on the run.
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(blocker / "ws") in r.getMessage() for r in warned)
    tag = MlflowClient().get_run(result.mlflow_run_id).data.tags["evidently_workspace"]
    assert tag.startswith("failed: ") and str(blocker / "ws") in tag
    assert result.scraps()["evidently_workspace"] == tag  # the notebook records it too


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def evidently_ui(monitored, tmp_path):
    """``evidently ui`` on the monitored workspace, on 127.0.0.1, as ``make monitoring-ui`` runs it.

    The URL comes from the Makefile's helper (``python -m healthpredict.mlops.evidently_workspace``),
    run in its own process: it finds the project the monitoring runs created.
    """
    _, path = monitored
    port = _free_port()
    env = {**os.environ, "HP_EVIDENTLY_WORKSPACE": path, "DO_NOT_TRACK": "1"}
    helper = subprocess.run(
        [sys.executable, "-m", "healthpredict.mlops.evidently_workspace", str(port)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert helper.returncode == 0, helper.stderr[-2000:]
    folder, url = helper.stdout.strip().split("\t")
    assert folder == path and url == f"http://127.0.0.1:{port}/projects/{ew.PROJECT_ID}"
    # That other process found the project the monitoring runs made: still one.
    assert [p.id for p in ew.open_workspace(path).list_projects()] == [ew.PROJECT_ID]
    log = (tmp_path / "ui.log").open("w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("evidently")), "ui", "--workspace", path,
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"evidently ui did not start: {(tmp_path / 'ui.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        log.close()


def _panels(dom: str) -> dict[str, list[set[str]]]:
    """Panel title -> per series, the x positions of its plotted points (MUI chart marks)."""
    out = {}
    titles = list(re.finditer(r"<h5[^>]*>([^<]+)", dom))
    for i, title in enumerate(titles):
        end = titles[i + 1].start() if i + 1 < len(titles) else len(dom)
        series: dict[str, set[str]] = {}
        for mark in re.finditer(r"<circle[^>]*>", dom[title.end() : end]):
            tag = mark.group(0)
            kind = re.search(r"MuiMarkElement-series-(\S+)", tag)
            if kind:
                series.setdefault(kind.group(1), set()).add(re.search(r'cx="([^"]+)"', tag)[1])
        out[title.group(1).strip()] = list(series.values())
    return out


@pytest.mark.slow
@needs_chromium
def test_evidently_ui_shows_one_point_per_monitored_batch(evidently_ui, tmp_path):
    done = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
            "--run-all-compositor-stages-before-draw", "--virtual-time-budget=30000",
            "--dump-dom", evidently_ui,
        ],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    panels = _panels(done.stdout)
    assert set(panels) >= {title for title, *_ in ew.PANELS}, sorted(panels)
    for title, _, series in ew.PANELS:
        plotted = panels[title]
        assert len(set().union(*plotted)) == N_BATCHES, (title, plotted)  # one x per batch
        lengths = sorted(len(xs) for xs in plotted)
        if title.startswith("ROC AUC"):  # realised only where labels arrived: the third batch
            assert lengths == [1, N_BATCHES, N_BATCHES], (title, plotted)
        else:
            assert lengths == [N_BATCHES] * len(series), (title, plotted)
    (tmp_path / "dom.json").write_text(
        json.dumps({k: [sorted(s) for s in v] for k, v in panels.items()})
    )
