"""The encode: screenshots + narration + subtitles into one H.264 MP4 (ffmpeg)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

FPS = 2  # frames are stills: a low rate costs nothing visible and keeps the file small
CRF = 26
AUDIO_BITRATE = "48k"


def ffmpeg() -> str:
    """The ffmpeg binary.

    Raises:
        FileNotFoundError: It is not installed.
    """
    found = shutil.which("ffmpeg")
    if not found:
        raise FileNotFoundError("ffmpeg not found: apt-get install ffmpeg")
    return found


def encode(stills: list[tuple[Path, float]], audio: Path, subtitles: Path, out: Path) -> None:
    """Show each still for its seconds over ``audio``, with ``subtitles`` as a mov_text track.

    Raises:
        RuntimeError: ffmpeg failed.
    """
    # One looped input per still, for exactly its frames (sections last whole frames), joined
    # by the concat filter: the concat demuxer's durations lose frames at the joins.
    stills_in: list[str] = []
    for path, seconds in stills:
        stills_in += ["-loop", "1", "-framerate", str(FPS), "-t", f"{seconds:.3f}", "-i", str(path)]
    n = len(stills)
    joined = "".join(f"[{i}:v]" for i in range(n)) + f"concat=n={n}:v=1:a=0,format=yuv420p[v]"
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.mp4")
    done = subprocess.run(
        [
            ffmpeg(), "-y", "-v", "error",
            *stills_in, "-i", str(audio), "-i", str(subtitles), "-filter_complex", joined,
            "-map", "[v]", "-map", f"{n}:a", "-map", f"{n + 1}:s",
            "-c:v", "libx264", "-preset", "slow", "-tune", "stillimage", "-crf", str(CRF),
            "-r", str(FPS), "-g", str(10 * FPS), "-threads", "2",
            "-c:a", "aac", "-b:a", AUDIO_BITRATE, "-ac", "1",
            "-c:s", "mov_text", "-metadata:s:s:0", "language=eng",
            "-metadata:s:a:0", "language=eng", "-map_metadata", "-1",
            "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
            "-movflags", "+faststart", str(partial),
        ],
        capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg could not encode {out}: {done.stderr[-2000:]}")
    partial.replace(out)
