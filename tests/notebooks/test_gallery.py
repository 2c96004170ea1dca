"""The run gallery (rendered/index.html): content, escaping, links, and a real browser."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from typer.testing import CliRunner

from healthpredict.cli import app
from healthpredict.core import storage
from healthpredict.runs import NotebookRunError, run
from healthpredict.runs.gallery import build_gallery
from tests.support.chromium import console_problems, dump_dom, needs_chromium

FIXTURES = Path(__file__).parent / "fixtures"

pytestmark = pytest.mark.slow  # the module fixture executes two notebooks


def _fake_run(rendered: Path, stamp: str, notebook: str, scraps: dict, **extra) -> Path:
    """A run folder as the runner writes it (for notebooks other engineers own)."""
    run_id = f"{stamp}-{notebook}-abcdef"
    folder = rendered / run_id
    folder.mkdir(parents=True)
    (folder / f"{notebook}.html").write_text("<!DOCTYPE html><html><body>run</body></html>")
    (folder / f"{notebook}.ipynb").write_text("{}")
    prov = {
        "run_id": run_id,
        "notebook": notebook,
        "status": "succeeded",
        "error": None,
        "data_source": scraps.get("data_source"),
        "given_parameters": extra.pop("given_parameters", {}),
        "started_at": f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:00Z",
        "run_dir": str(folder),
        "local_dir": str(folder),
        "scraps": scraps,
        **extra,
    }
    storage.write_json(folder / "run.json", prov)
    return folder


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A rendered folder with two real runs (one failed) and a fabricated batch stream."""
    from healthpredict.core.settings import get_settings

    root = tmp_path_factory.mktemp("gallery")
    out = root / "rendered"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HP_STORAGE", str(root / "var"))
        mp.setenv("HP_RENDERED_DIR", str(out))
        get_settings.cache_clear()
        run(FIXTURES / "records.py", {"label": "a <b> & 'c'"}, progress=False)
        with pytest.raises(NotebookRunError):
            run(FIXTURES / "raises.py", progress=False)
        _fake_run(
            out, "20000101T000000Z", "02_train_hpo",
            {"data_source": "real", "test_roc_auc": 0.67, "model_version": "1", "promoted": True},
            given_parameters={"n_trials": 5},
        )  # fmt: skip
        for i, share in enumerate((0.05, 0.2, 0.45)):
            folder = _fake_run(
                out, f"20000101T00{i + 1}000Z", "03_drift_monitor",
                {"data_source": "real", "drifted_share": share, "model_version": "1",
                 "drift_status": "DRIFT_DETECTED" if share > 0.3 else "NO_DRIFT",
                 "report_paths": {"drift": "PLACEHOLDER", "outside": "/etc/passwd"}},
            )  # fmt: skip
            report = folder / "reports" / "drift.html"
            report.parent.mkdir()
            report.write_text("<!DOCTYPE html><html><body>drift</body></html>")
            prov = json.loads((folder / "run.json").read_text())
            prov["scraps"]["report_paths"]["drift"] = str(report)
            storage.write_json(folder / "run.json", prov)
        _fake_run(
            out, "20000101T005000Z", "04_retrain",
            {"data_source": "real", "decision": "promote", "promoted": True,
             "challenger_metrics": {"test_roc_auc": 0.7}, "champion_metrics": {"roc_auc": 0.6},
             "challenger_version": "2", "champion_version": "1"},
        )  # fmt: skip
        index = Path(build_gallery())
        yield out, index
    get_settings.cache_clear()


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs.append(dict(attrs)["href"])


def test_gallery_rows_and_content(rendered):
    out, index = rendered
    assert index == out / "index.html"
    page = index.read_text()
    rows = re.findall(r'<tr class="(run-ok|run-failed)" data-run-id="([^"]+)"', page)
    assert len(rows) == 7
    notebooks = [run_id.split("-", 1)[1].rsplit("-", 1)[0] for _, run_id in rows]
    assert notebooks[:2] == ["raises", "records"]  # newest first
    assert notebooks[-1] == "02_train_hpo"
    assert rows[0][0] == "run-failed" and "cell 4: ValueError: boom in the fixture" in page
    assert "SYNTHETIC" in page  # records.py says its data is synthetic
    assert "a &lt;b&gt; &amp; &#x27;c&#x27;" in page and "<b> &" not in page
    assert "test_roc_auc: <b>0.670</b>" in page
    assert "DRIFT_DETECTED" in page and "decision: <b>promote</b>" in page
    assert "fixture_report.html" in page and "drift.html" in page
    assert "passwd" not in page.split("<table")[1]  # reports outside the run folder: no link
    assert page.count("<script") == 1 and "<script>" in page  # one inline script, nothing fetched
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")


def test_monitor_runs_off_the_stream_are_listed_apart(rendered):
    """These monitor runs name no batch of the loop's stream: listed apart, no timeline point."""
    out, index = rendered
    page = index.read_text()
    assert '<g class="batch"' not in page and "No batch of the stream monitored yet" in page
    assert "4 monitor or retrain runs outside the stream" in page


def test_every_relative_link_resolves(rendered):
    out, index = rendered
    parser = _Links()
    parser.feed(index.read_text())
    assert len(parser.hrefs) >= 7 * 3
    for href in parser.hrefs:
        assert not re.match(r"^[a-z]+:", href), href  # relative only
        assert (index.parent / unquote(href)).is_file(), href


def test_cli_gallery_prints_path(rendered):
    out, index = rendered
    result = CliRunner().invoke(app, ["gallery", "--rendered-dir", str(out)])
    assert result.exit_code == 0
    assert result.stdout.strip() == str(index)


@needs_chromium
def test_gallery_renders_in_headlessdump_dom(rendered, tmp_path):
    out, index = rendered
    dom, stderr = dump_dom(index.as_uri(), tmp_path / "profile")
    assert len(re.findall(r'<tr class="run-(?:ok|failed)"', dom)) == 7
    assert '<section id="timeline">' in dom and "Health Predict: notebook runs" in dom
    assert not console_problems(stderr), console_problems(stderr)

    # The notebook HTML it links to opens offline too (no CDN scripts, no console errors).
    parser = _Links()
    parser.feed(dom)
    notebook_page = next(h for h in parser.hrefs if h.endswith("/records.html"))
    dom, stderr = dump_dom((out / unquote(notebook_page)).as_uri(), tmp_path / "profile")
    assert "VISIBLE-OUTPUT" in dom and "hp-provenance" in dom
    assert not console_problems(stderr), console_problems(stderr)
