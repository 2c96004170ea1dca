"""The committed walkthrough video (``make walkthrough``): its streams, a frame for every section,
subtitles for all the narration, and narration figures read from the run it shows.

``HP_WALKTHROUGH=<video.mp4>`` points the checks at another render (its ``.json`` manifest and
``.vtt`` next to it), e.g. a fresh one before committing it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from scripts.walkthrough import records
from scripts.walkthrough.narrate import read_vtt
from scripts.walkthrough.sections import narration

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "rendered" / "samples"
VIDEO = Path(os.environ.get("HP_WALKTHROUGH", SAMPLES / "walkthrough.mp4"))
MAX_BYTES = 10_000_000
# A frame and its own screenshot differ by ~0.1 grey level on average (compression); two
# different sections' screenshots by 3.4 or more in the committed render.
OWN_BOUND = 1.5


@pytest.fixture(scope="module")
def ffmpeg():
    """Skip without ffmpeg (apt-get install ffmpeg), fail instead under HP_TESTS_STRICT=1."""
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        if os.environ.get("HP_TESTS_STRICT") == "1":
            pytest.fail("HP_TESTS_STRICT=1 and ffmpeg/ffprobe are missing")
        pytest.skip("ffmpeg not installed (apt-get install ffmpeg)")


@pytest.fixture(scope="module")
def manifest() -> dict:
    path = VIDEO.with_suffix(".json")
    assert VIDEO.is_file() and path.is_file(), f"no {VIDEO} with its manifest: make walkthrough"
    return json.loads(path.read_text())


def _probe(video: Path) -> dict:
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(video)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return json.loads(done.stdout)


def _frame(video: Path, at: float, size: tuple[int, int]) -> np.ndarray:
    """The frame shown at ``at`` seconds, shrunk to ``size`` grey levels as the script does."""
    w, h = size
    done = subprocess.run(
        ["ffmpeg", "-v", "error", "-ss", f"{at:.3f}", "-i", str(video), "-frames:v", "1",
         "-vf", f"scale={w}:{h}:flags=area,format=gray", "-f", "rawvideo", "-"],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    assert len(done.stdout) == w * h, f"no frame at {at:.1f} s of {video}"
    return np.frombuffer(done.stdout, np.uint8).astype(float)


@pytest.fixture(scope="module")
def midpoint_frames(ffmpeg, manifest) -> list[np.ndarray]:
    """The frame at each section's midpoint (extracted once for the tests below)."""
    size = tuple(manifest["fingerprint_size"])
    return [_frame(VIDEO, (s["start"] + s["end"]) / 2, size) for s in manifest["sections"]]


def frame_problems(frames: list[np.ndarray], manifest: dict) -> list[str]:
    """Sections whose midpoint frame is not their own screenshot: farther than ``OWN_BOUND``
    from its fingerprint, or not at most half as far from it as from any other section's."""
    prints = [np.frombuffer(base64.b64decode(s["fingerprint"]), np.uint8).astype(float)
              for s in manifest["sections"]]  # fmt: skip
    problems = []
    for i, (section, frame) in enumerate(zip(manifest["sections"], frames, strict=True)):
        gaps = [float(np.abs(frame - p).mean()) for p in prints]
        nearest_other = min(g for j, g in enumerate(gaps) if j != i)
        if gaps[i] > OWN_BOUND or gaps[i] > nearest_other / 2:
            problems.append(
                f"{section['key']}: {gaps[i]:.2f} from its screenshot, {nearest_other:.2f} "
                "from the nearest other"
            )
    return problems


def test_video_streams_duration_and_size(ffmpeg, manifest):
    probe = _probe(VIDEO)
    kinds = [s["codec_type"] for s in probe["streams"]]
    assert sorted(kinds) == ["audio", "subtitle", "video"], kinds
    codecs = {s["codec_type"]: s["codec_name"] for s in probe["streams"]}
    assert codecs["video"] == "h264" and codecs["subtitle"] == "mov_text", codecs
    duration = float(probe["format"]["duration"])
    assert 120 <= duration <= 240, f"{duration:.1f} s"
    assert abs(duration - manifest["duration"]) < 0.6, (duration, manifest["duration"])
    for stream in probe["streams"]:
        if stream["codec_type"] in ("video", "audio"):
            assert abs(float(stream["duration"]) - duration) < 0.6, stream
    assert VIDEO.stat().st_size < MAX_BYTES, f"{VIDEO.stat().st_size / 1e6:.1f} MB"
    # Sections tile the video, in order, each on a page of the sample.
    sections = manifest["sections"]
    assert 8 <= len(sections) <= 14
    assert sections[0]["start"] == 0 and sections[-1]["end"] == manifest["duration"]
    assert all(a["end"] == b["start"] for a, b in zip(sections, sections[1:], strict=False))
    root = VIDEO.parent / manifest["samples"]
    missing = [s["page"] for s in sections if s["page"] and not (root / s["page"]).is_file()]
    assert missing == []


def test_each_section_shows_its_own_screenshot(midpoint_frames, manifest):
    assert frame_problems(midpoint_frames, manifest) == []


def test_the_frame_check_fails_on_a_wrong_order_or_a_missing_frame(midpoint_frames, manifest):
    """The check above can fail: sections in another order, or a frame that is not there."""
    swapped = json.loads(json.dumps(manifest))
    a, b = swapped["sections"][2], swapped["sections"][3]
    a["fingerprint"], b["fingerprint"] = b["fingerprint"], a["fingerprint"]
    assert [p.split(":")[0] for p in frame_problems(midpoint_frames, swapped)] == [
        a["key"],
        b["key"],
    ]
    blank = json.loads(json.dumps(manifest))
    blank["sections"][5]["fingerprint"] = base64.b64encode(
        bytes([255]) * (blank["fingerprint_size"][0] * blank["fingerprint_size"][1])
    ).decode()
    assert [p.split(":")[0] for p in frame_problems(midpoint_frames, blank)] == [
        blank["sections"][5]["key"]
    ]


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_subtitles_cover_each_section(ffmpeg, manifest):
    sidecar = read_vtt(VIDEO.with_suffix(".vtt").read_text())
    assert sidecar, "no cues in the sidecar"
    for section in manifest["sections"]:
        inside = [c for c in sidecar if section["start"] <= c.start < c.end <= section["end"]]
        said = _normal(" ".join(c.text for c in inside))
        assert said == _normal(section["text"]), section["key"]
    covered = sum(
        1
        for c in sidecar
        for s in manifest["sections"]
        if s["start"] <= c.start < c.end <= s["end"]
    )
    assert covered == len(sidecar), "a cue straddles two sections or lies outside them"
    # The MP4's own subtitle track carries the same cues.
    done = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(VIDEO), "-map", "0:s:0", "-f", "webvtt", "-"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    embedded = read_vtt(done.stdout)
    assert [_normal(c.text) for c in embedded] == [_normal(c.text) for c in sidecar]
    assert all(abs(e.start - s.start) < 0.01 for e, s in zip(embedded, sidecar, strict=True))


def test_narration_reads_its_figures_from_the_run(tmp_path, manifest):
    """The committed narration is the committed run's, and a changed record changes it."""
    sample = records.load(SAMPLES)
    said = {s.key: text for s, text in narration(sample, records.facts(sample))}
    assert said == {s["key"]: s["text"] for s in manifest["sections"]}, (
        "the walkthrough is stale for rendered/samples/: run make walkthrough"
    )
    auc = sample.train.scraps["test_roc_auc"]
    assert f"{auc:.3f}" in said["test"]
    # The same sample with other figures in its records: the narration follows them.
    copy = tmp_path / "samples"
    shutil.copytree(SAMPLES, copy, ignore=shutil.ignore_patterns("*.html", "walkthrough.*"))
    train_json = copy / sample.train.folder.name / "run.json"
    record = json.loads(train_json.read_text())
    record["scraps"]["test_roc_auc"] = 0.7123
    train_json.write_text(json.dumps(record))
    retrain_json = copy / sample.retrain.folder.name / "run.json"
    record = json.loads(retrain_json.read_text())
    record["scraps"]["gate"].update(decision="PROMOTED", ci_low=0.004)
    retrain_json.write_text(json.dumps(record))
    changed = records.load(copy)
    text = {s.key: t for s, t in narration(changed, records.facts(changed))}
    assert "0.712" in text["test"] and f"{auc:.3f}" not in text["test"]
    assert "PROMOTED" in text["gate"] and "beyond noise" in text["gate"]
