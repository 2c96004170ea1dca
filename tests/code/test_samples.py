"""The committed run samples: no absolute paths of the producer; the model card opens whole."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import matplotlib.image

from tests.support.chromium import console_problems, dump_dom, needs_chromium

SAMPLES = Path(__file__).resolve().parents[2] / "rendered" / "samples"
# Folders a producing machine's paths start with (a repository, a home, temporary files).
MACHINE_PATH = re.compile(r"(?<![\w.:/])/(?:work|home|root|tmp|Users|check|var/folders)/[\w.-]+")


def test_committed_samples_carry_no_machine_paths():
    files = [p for p in SAMPLES.rglob("*") if p.suffix in (".json", ".html", ".ipynb", ".md")]
    assert files, f"no samples under {SAMPLES}"
    found = {
        str(p.relative_to(SAMPLES)): sorted(set(MACHINE_PATH.findall(p.read_text())))[:3]
        for p in files
    }
    assert {k: v for k, v in found.items() if v} == {}


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
