"""The committed run samples: no absolute paths of the producer; the model card opens whole."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import matplotlib.image

from tests.support.chromium import console_problems, dump_dom, needs_chromium

SAMPLES = Path(__file__).resolve().parents[2] / "rendered" / "samples"
# Folders a producing machine's paths start with (a repository, a home, temporary files, CI
# workspaces, mounts), a Windows home, and a file:// URI of an absolute path.
MACHINE_PATH = re.compile(
    r"(?<![\w.:/])/(?:work|home|root|tmp|Users|check|var/folders|private|mnt|media|opt|srv|data"
    r"|scratch|builds|github|runner|Volumes|usr)/[\w.-]+"
    r"|\b[A-Za-z]:\\(?:Users|Documents and Settings)\\[^\\\s\"']+"
    r"|file:///(?!<)[\w.-]+"
)
# Fields of run.json that name files; with every input and parameter they must be portable.
RECORD_PATHS = ("notebook_path", "run_dir", "local_dir", "ipynb", "html", "run_json")


def _absolute(value: object) -> bool:
    return isinstance(value, str) and (
        value.startswith("/") or bool(re.match(r"[A-Za-z]:\\", value))
    )


def test_committed_samples_carry_no_machine_paths():
    files = [p for p in SAMPLES.rglob("*") if p.suffix in (".json", ".html", ".ipynb", ".md")]
    assert files, f"no samples under {SAMPLES}"
    found = {
        str(p.relative_to(SAMPLES)): sorted(set(MACHINE_PATH.findall(p.read_text())))[:3]
        for p in files
    }
    assert {k: v for k, v in found.items() if v} == {}


def test_the_regex_finds_machine_paths():  # a check that cannot fail is no check
    for text in (
        '"run_dir": "/home/ana/hp/rendered/x"', "at /tmp/pytest-of-ci/a.csv", "/mnt/data/x",
        r"C:\Users\ana\hp\var", "file:///builds/hp/var/mlartifacts",
    ):  # fmt: skip
        assert MACHINE_PATH.search(text), text
    for text in ("<storage>/processed_data/test.csv", "rendered/samples/x/run.json",
                 "https://archive.ics.uci.edu/static/public/296/data.zip", "file://<storage>/a"):  # fmt: skip
        assert not MACHINE_PATH.search(text), text


def test_committed_run_records_name_files_portably():
    """Whatever the folder names: no absolute path in a record's files, inputs or parameters."""
    records = sorted(SAMPLES.glob("*/run.json"))
    assert records, f"no run records under {SAMPLES}"
    absolute = {}
    for path in records:
        prov = json.loads(path.read_text())
        values = [prov.get(k) for k in RECORD_PATHS]
        values += [uri for found in (prov.get("inputs") or {}).values() for uri in found]
        values += list((prov.get("parameters") or {}).values())
        values += list(((prov.get("scraps") or {}).get("report_paths") or {}).values())
        values += [prov.get("environment", {}).get("executable")]
        bad = [
            v for v in values if _absolute(v) or (isinstance(v, list) and any(map(_absolute, v)))
        ]
        if bad:
            absolute[path.parent.name] = bad
    assert absolute == {}


CARD_SECTIONS = (
    "Intended use and data", "Performance", "Calibration", "Subgroups", "Capture",
    "Decision curve", "Operating threshold",
)  # fmt: skip


def _committed_cards() -> list[Path]:
    cards = sorted(SAMPLES.glob("*-02_train_hpo-*/model_card.html"))
    assert cards, f"no training model card under {SAMPLES} (make samples)"
    return cards


@needs_chromium
def test_committed_model_card_opens_in_chromium(tmp_path):
    """The real-data model card a reader opens from the README renders offline, whole."""
    card = _committed_cards()[-1]
    dom, stderr = dump_dom(card.as_uri(), tmp_path / "profile")
    assert not console_problems(stderr), console_problems(stderr)
    headings = re.findall(r"<h2[^>]*>([^<]+)</h2>", dom)
    assert [h for h in headings if h in CARD_SECTIONS] == list(CARD_SECTIONS)
    assert "<tr><td>Data source</td><td>real</td></tr>" in dom  # made from the real UCI data
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', dom)
    assert len(images) == 3
    for encoded in images:  # every figure is a PNG that decodes to a real picture
        picture = matplotlib.image.imread(io.BytesIO(base64.b64decode(encoded)), format="png")
        assert picture.shape[0] > 200 and picture.shape[1] > 300
    assert not re.search(r'(?:src|href)="https?://', dom)  # nothing loaded from the network


def test_readme_links_the_committed_model_card():
    readme = (SAMPLES.parents[1] / "README.md").read_text()
    linked = re.findall(r"\((rendered/samples/[^)]+/model_card\.html)\)", readme)
    assert linked, "the README does not link a committed model card"
    assert all((SAMPLES.parents[1] / link).is_file() for link in linked), linked
