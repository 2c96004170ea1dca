"""The gallery's stream timeline and filters, on run records written through the record API.

The records are those a loop writes (``run.json`` with the notebooks' contract scraps, batch
files named as the loop names them): a loop of real notebook runs takes minutes per batch here,
and the gallery reads nothing but the records. Chromium then loads the page offline.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from healthpredict.core import layout
from healthpredict.core.settings import get_settings, project_root
from healthpredict.monitoring.state import BatchWindow
from healthpredict.runs import record
from healthpredict.runs.gallery import build_gallery, load_runs, render_gallery
from healthpredict.runs.gallery_timeline import batch_start, build_streams
from tests.support.chromium import (
    console_problems,
    dump_dom_with_requests,
    needs_chromium,
    screenshot,
)

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
BATCH = 500
MONITOR, RETRAIN = "03_drift_monitor", "04_retrain"


class _Loop:
    """Writes the run records of a loop, one minute apart, through the record API."""

    def __init__(self, rendered: Path) -> None:
        self.rendered = rendered
        self.minute = 0

    def write(
        self, notebook: str, given: dict, scraps: dict, error: dict | None = None, inputs=None
    ) -> str:
        started = T0 + timedelta(minutes=self.minute)
        self.minute += 1
        run_id = f"{started.strftime('%Y%m%dT%H%M%SZ')}-{notebook}-{self.minute:06x}"
        folder = str(self.rendered / run_id)
        path = project_root() / "notebooks" / f"{notebook}.py"
        spec = record.RunSpec(
            run_id=run_id, notebook=notebook, notebook_path=str(path), notebook_sha256="0" * 64,
            parameters=dict(given), given_parameters=dict(given), inputs=inputs or {},
            kernel_name="healthpredict", run_dir=folder, local_dir=folder,
        )  # fmt: skip
        if error is None:
            assert record.contract_error(notebook, scraps) is None, notebook
        ended = started + timedelta(seconds=30)
        done = record.build_record(spec, scraps, error, started, ended, 30.0)
        record.write_run(done, None, folder)
        return run_id

    def monitor(self, start: int, drift: bool, retrain: bool, version: str, **extra) -> str:
        batch = layout.batch_csv(BatchWindow(start, start + BATCH).name)
        new_rows = extra.pop("new_labelled_rows", 0)
        given = {"new_data_path": batch, "new_labelled_rows": new_rows}
        # As provenance pins the champion alias before the kernel starts (failed runs too).
        model = {"models:/HealthPredict@champion": f"models:/HealthPredict/{version} run x"}
        inputs = {"mlflow_model_uri": model}
        if extra.pop("failed", False):
            error = {"cell_number": 3, "ename": "ValueError", "evalue": "boom"}
            return self.write(MONITOR, given, {"data_source": "real"}, error, inputs)
        scraps = {
            "data_source": "real", "drift_status": "DRIFT_DETECTED" if drift else "NO_DRIFT",
            "drifted_share": 0.2 if drift else 0.0, "n_drifted_columns": 6 if drift else 0,
            "drifted_columns": [], "prediction_drift": False, "report_paths": {},
            "model_version": version, "mlflow_run_id": "m", "retrain": retrain,
            "retrain_triggers": ["performance"] if retrain else [], "retrain_reasons": [],
            "estimated_roc_auc": extra.pop("estimated", 0.68), "batch_rows": BATCH,
            "realised_roc_auc": extra.pop("realised", None), "new_labelled_rows": new_rows,
        }  # fmt: skip
        return self.write(MONITOR, given, scraps, inputs=inputs)

    def retrain(self, promoted: bool, challenger: str, champion: str) -> str:
        scraps = {
            "data_source": "real", "decision": "PROMOTED" if promoted else "REJECTED",
            "promoted": promoted, "reason": "gate", "challenger_version": challenger,
            "champion_version": champion, "challenger_metrics": {}, "champion_metrics": {},
            "mlflow_run_id": "r", "holdout_path": "h.csv", "gate": {}, "alias_moved": False,
        }  # fmt: skip
        return self.write(RETRAIN, {"promote": False}, scraps)


# (start, drift status or run status, decision, champion serving it) of each expected point.
FIRST_PASS = [
    (0, "NO_DRIFT", "keep", "1"),
    (500, "DRIFT_DETECTED", "retrain skipped: awaiting labels", "1"),
    (1000, "DRIFT_DETECTED", "promote v2", "1"),
    (1500, "NO_DRIFT", "keep", "2"),
    (2000, "DRIFT_DETECTED", "v3 rejected", "2"),
    (2500, "failed", "monitor failed", "2"),
]
SECOND_PASS = [(0, "NO_DRIFT", "keep", "4")]


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """A rendered folder holding the records of two passes of a loop and runs outside it."""
    root = tmp_path_factory.mktemp("timeline")
    rendered = root / "rendered"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HP_STORAGE", str(root / "var"))
        mp.setenv("HP_RENDERED_DIR", str(rendered))
        get_settings.cache_clear()
        loop = _Loop(rendered)
        loop.write("01_eda", {}, {"data_source": "real", "n_rows": 9, "target_rate": 0.1})
        validation = str(root / "var" / "processed_data" / "validation.csv")
        manual = loop.write(
            MONITOR, {"new_data_path": validation},
            {**_monitor_scraps(), "drift_status": "NO_DRIFT"},
        )  # fmt: skip
        loop.monitor(0, drift=False, retrain=False, version="1")
        apart_retrain = loop.retrain(promoted=False, challenger="9", champion="1")  # by hand
        loop.monitor(500, drift=True, retrain=True, version="1")  # no labels yet
        loop.monitor(1000, drift=True, retrain=True, version="1", failed=True)
        loop.monitor(1000, drift=True, retrain=True, version="1", new_labelled_rows=500)
        loop.retrain(promoted=True, challenger="2", champion="1")
        loop.monitor(1500, drift=False, retrain=False, version="2", realised=0.66)
        loop.monitor(2000, drift=True, retrain=True, version="2", new_labelled_rows=1000)
        loop.retrain(promoted=False, challenger="3", champion="2")
        loop.monitor(2500, drift=False, retrain=False, version="2", failed=True)
        loop.monitor(0, drift=False, retrain=False, version="4", realised=0.7)  # demo again
        index = Path(build_gallery(str(rendered)))
        yield rendered, index, {manual, apart_retrain}
    get_settings.cache_clear()


def _monitor_scraps() -> dict:
    return {
        "data_source": "real", "drifted_share": 0.0, "n_drifted_columns": 0,
        "drifted_columns": [], "prediction_drift": False, "report_paths": {},
        "model_version": "1", "mlflow_run_id": "m", "retrain": False, "retrain_triggers": [],
        "retrain_reasons": [], "estimated_roc_auc": 0.68,
    }  # fmt: skip


def _points(page: str, pass_number: int) -> list[tuple[int, str, str, str]]:
    stream = page.split(f'data-pass="{pass_number}"', 1)[1].split("</svg>", 1)[0]
    return [
        (int(start), status, decision, champion)
        for start, status, decision, champion in re.findall(
            r'<g class="batch" data-start="(\d+)" data-status="([^"]*)" '
            r'data-decision="([^"]*)" data-champion="([^"]*)"',
            stream,
        )
    ]


def test_batch_names_are_the_loops():
    """The timeline recognises the batch files the loop writes (BatchWindow.name)."""
    for start in (0, 500, 1234567):
        uri = layout.batch_csv(BatchWindow(start, start + 1).name)
        assert batch_start({"given_parameters": {"new_data_path": uri}}) == start
        on_s3 = "s3://bucket/monitoring/batches/" + uri.rsplit("/", 1)[-1]
        assert batch_start({"parameters": {"new_data_path": on_s3}}) == start
    assert batch_start({"given_parameters": {"new_data_path": "validation.csv"}}) is None


def test_streams_points_and_runs_apart(gallery):
    rendered, index, apart_ids = gallery
    streams, apart = build_streams(load_runs(str(rendered)))
    assert [len(s.batches) for s in streams] == [len(FIRST_PASS), len(SECOND_PASS)]
    assert {r["run_id"] for r in apart} == apart_ids
    page = index.read_text()
    assert _points(page, 1) == FIRST_PASS
    assert _points(page, 2) == SECOND_PASS
    # The newest pass comes first; the failed first attempt of batch 1000 is no extra point.
    assert page.index('data-pass="2"') < page.index('data-pass="1"')
    assert page.count('class="marker retrain"') == 2
    assert page.count('class="marker promotion"') == 1
    assert page.count('class="marker retrain-skipped"') == 1  # batch 500: awaiting labels
    assert page.count('class="marker champion-change"') == 0  # v1 to v2 was the loop's promotion
    assert "2 monitor or retrain runs outside the stream" in page
    assert "on validation.csv" in page


def test_dashboard_link_only_when_given(gallery):
    rendered, index, _ = gallery
    url = "http://127.0.0.1:8000/projects/0a1b"
    assert 'class="dashboard"' not in index.read_text()
    page = render_gallery(load_runs(str(rendered)), str(rendered), dashboard_url=url)
    assert f'<a class="dashboard" href="{url}">Evidently dashboard</a>' in page


@needs_chromium
def test_timeline_and_filters_in_chromium(gallery, tmp_path):
    """Offline, no console error; a link to a filtered view (both dimensions) applies on load."""
    rendered, index, _ = gallery
    url = index.as_uri() + "#notebook=03_drift_monitor&status=failed"
    dom, stderr, requests = dump_dom_with_requests(url, tmp_path / "profile")
    assert not console_problems(stderr), console_problems(stderr)
    assert requests == []
    assert len(re.findall(r'<g class="batch"', dom)) == len(FIRST_PASS) + len(SECOND_PASS)
    rows = re.findall(r"<tr [^>]*data-run-id[^>]*>", dom)
    shown = [r for r in rows if "hidden" not in r]
    assert len(rows) == 13 and len(shown) == 2
    assert all('data-notebook="03_drift_monitor"' in r for r in shown)
    assert all('data-status="failed"' in r for r in shown)
    assert re.search(r'id="shown">\s*2 of 13 runs shown', dom)

    picture = screenshot(index.as_uri(), tmp_path / "gallery.png", tmp_path / "profile")
    assert picture.stat().st_size > 10_000
    print(f"gallery screenshot: {picture}")
