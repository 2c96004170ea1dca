"""The committed run samples read right on another machine: no absolute paths of the producer."""

from __future__ import annotations

import re
from pathlib import Path

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
