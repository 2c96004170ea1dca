"""Render the walkthrough: ``python -m scripts.walkthrough [--samples DIR] [--out FILE.mp4]``.

Writes ``FILE.mp4`` (H.264, AAC narration, mov_text subtitles), ``FILE.vtt`` (the subtitles)
and ``FILE.json`` (the manifest: per section its title, start, end, page, narration and the
fingerprint of its screenshot, which tests/code/test_walkthrough.py checks the video against).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from . import assemble, capture, narrate, records
from .sections import narration

MANIFEST_VERSION = 1


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (manifests are committed: no machine paths in them)."""
    return os.path.relpath(path.resolve(), root.resolve())


def render(samples: Path, out: Path, work: Path) -> dict:
    """Render the walkthrough of the sample under ``samples`` into ``out``; the manifest."""
    t0 = time.monotonic()
    sample = records.load(samples)
    sections = narration(sample, records.facts(sample))
    track = narrate.Track(assemble.FPS)
    profile = work / "chromium-profile"
    stills, entries = [], []
    for number, (section, text) in enumerate(sections, 1):
        page = section.page(sample) if section.page else capture.closing_card(work, section.title)
        label = capture.banner(number, len(sections), section.title)
        staged = capture.staged_page(page, section.target, label, work, section.key)
        shot = work / f"{number:02d}_{section.key}.png"
        capture.screenshot(staged, shot, profile)
        start, end = track.add_section(text, work, section.key)
        stills.append((shot, end - start))
        entries.append(
            {
                "key": section.key,
                "title": section.title,
                "page": _relative(page, samples) if section.page else None,
                "target": section.target and vars(section.target),
                "start": start,
                "end": end,
                "text": text,
                "fingerprint": capture.encode_fingerprint(capture.fingerprint(shot)),
            }
        )
        print(f"  {number:2d}/{len(sections)} {section.title}: {end - start:.1f} s", flush=True)
    audio, vtt = work / "narration.wav", out.with_suffix(".vtt")
    track.write(audio)
    narrate.write_vtt(track.cues, vtt)
    assemble.encode(stills, audio, vtt, out)
    manifest = {
        "version": MANIFEST_VERSION,
        "video": out.name,
        "subtitles": vtt.name,
        "samples": _relative(samples, out.parent),
        "size": [capture.WIDTH, capture.HEIGHT],
        "fps": assemble.FPS,
        "duration": track.seconds,
        "fingerprint_size": list(capture.FINGERPRINT_SIZE),
        "sections": entries,
    }
    out.with_suffix(".json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(
        f"{out}: {track.seconds:.1f} s, {out.stat().st_size / 1e6:.2f} MB, "
        f"{len(entries)} sections, rendered in {time.monotonic() - t0:.0f} s"
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    """The command: render, or print the problem and exit 1."""
    parser = argparse.ArgumentParser(prog="python -m scripts.walkthrough", description=__doc__)
    parser.add_argument(
        "--samples",
        type=Path,
        default=Path("rendered/samples"),
        help="the sample run to show (a gallery folder with index.json)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the video to write (default: SAMPLES/walkthrough.mp4)",
    )
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the screenshots and speech in this folder")  # fmt: skip
    args = parser.parse_args(argv)
    out = args.out or args.samples / "walkthrough.mp4"
    try:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            render(args.samples, out, args.keep)
        else:
            with tempfile.TemporaryDirectory(prefix="walkthrough-") as work:
                render(args.samples, out, Path(work))
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as problem:
        print(f"walkthrough: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
