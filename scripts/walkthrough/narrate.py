"""Speech (``espeak-ng``, one WAV per sentence) and the subtitle cues timed from it."""

from __future__ import annotations

import re
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

VOICE = "en-us"
RATE_WPM = 170
# Silences, in seconds: before a section's first sentence, between sentences, after the last.
LEAD_S, GAP_S, TAIL_S = 0.3, 0.3, 0.7

# How espeak-ng should say what the subtitles write (letters spelt out, a dash as "minus").
SAY = (
    (r"\bROC AUC\b", "R O C, A U C"),
    (r"\bPR AUC\b", "P R, A U C"),
    (r"\bUCI\b", "U C I"),
    (r"\bMLflow\b", "M L flow"),
    (r"\b130-US\b", "130 U.S."),
    (r"\bDAGs\b", "dags"),
    (r"(?<![\w.])-(?=\d)", "minus "),
    (r"\+(?=\d)", "plus "),
)


@dataclass(frozen=True)
class Cue:
    """A subtitle: ``text`` shown from ``start`` to ``end`` seconds."""

    start: float
    end: float
    text: str


def espeak() -> str:
    """The espeak-ng binary.

    Raises:
        FileNotFoundError: It is not installed.
    """
    found = shutil.which("espeak-ng")
    if not found:
        raise FileNotFoundError("espeak-ng not found: apt-get install espeak-ng")
    return found


def sentences(text: str) -> list[str]:
    """``text`` split after each full stop, question or exclamation mark (not inside 0.675)."""
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def spoken(text: str) -> str:
    """``text`` as espeak-ng should read it."""
    for pattern, replacement in SAY:
        text = re.sub(pattern, replacement, text)
    return text


def synthesize(text: str, out: Path, *, voice: str = VOICE, rate: int = RATE_WPM) -> None:
    """Speak ``text`` into the WAV file ``out``.

    Raises:
        RuntimeError: espeak-ng failed.
    """
    done = subprocess.run(
        [espeak(), "-v", voice, "-s", str(rate), "-w", str(out), spoken(text)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"espeak-ng failed on {text!r}: {done.stderr[-800:]}")


class Track:
    """The narration's audio, built section by section, with its subtitle cues.

    Every section lasts a whole number of video frames (``1 / fps``), so that a section's
    screenshot and its speech start on the same frame.
    """

    def __init__(self, fps: int) -> None:
        self.fps = fps
        self.params: wave._wave_params | None = None
        self.chunks: list[bytes] = []
        self.samples = 0  # counted in samples, so that times add up exactly
        self.cues: list[Cue] = []

    @property
    def seconds(self) -> float:
        """The narration's length so far."""
        return self.samples / self.params.framerate if self.params else 0.0

    def _append(self, audio: bytes) -> None:
        assert self.params is not None
        self.chunks.append(audio)
        self.samples += len(audio) // (self.params.sampwidth * self.params.nchannels)

    def _silence(self, samples: int) -> None:
        assert self.params is not None
        self._append(b"\0" * samples * self.params.sampwidth * self.params.nchannels)

    def add_section(self, text: str, work: Path, name: str) -> tuple[float, float]:
        """Speak ``text`` (sentence by sentence, one cue each); the section's start and end."""
        start = self.seconds
        for i, sentence in enumerate(sentences(text)):
            path = work / f"{name}_{i:02d}.wav"
            synthesize(sentence, path)
            with wave.open(str(path), "rb") as w:
                params, audio = w.getparams(), w.readframes(w.getnframes())
            if self.params is None:
                self.params = params
            elif params[:3] != self.params[:3]:
                raise RuntimeError(f"espeak-ng changed its WAV format: {params} vs {self.params}")
            self._silence(round((LEAD_S if i == 0 else GAP_S) * params.framerate))
            begin = self.seconds
            self._append(audio)
            self.cues.append(Cue(round(begin, 3), round(self.seconds, 3), sentence))
        assert self.params is not None, f"section {name} has no sentence"
        self._silence(round(TAIL_S * self.params.framerate))
        # Round the section up to a whole frame of video.
        per_frame = self.params.framerate // self.fps
        if per_frame * self.fps != self.params.framerate:
            raise RuntimeError(f"{self.params.framerate} Hz is not a whole number of samples "
                               f"per frame at {self.fps} fps")  # fmt: skip
        self._silence(-self.samples % per_frame)
        return round(start, 3), round(self.seconds, 3)

    def write(self, out: Path) -> None:
        """The whole narration as one WAV file."""
        if self.params is None:
            raise RuntimeError("no narration to write")
        with wave.open(str(out), "wb") as w:
            w.setparams(self.params)
            w.writeframes(b"".join(self.chunks))


def _stamp(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def write_vtt(cues: list[Cue], out: Path) -> None:
    """The cues as a WebVTT file (the sidecar, and the source of the MP4's subtitle track)."""
    blocks = [f"{i}\n{_stamp(c.start)} --> {_stamp(c.end)}\n{c.text}" for i, c in
              enumerate(cues, 1)]  # fmt: skip
    out.write_text("WEBVTT\n\n" + "\n\n".join(blocks) + "\n")


def _seconds(stamp: str) -> float:
    parts = stamp.replace(",", ".").split(":")
    return sum(float(p) * 60**i for i, p in enumerate(reversed(parts)))


def read_vtt(text: str) -> list[Cue]:
    """Cues from WebVTT (hours optional) or SRT (a comma before the milliseconds) text."""
    stamp = r"((?:\d+:)?\d\d:\d\d[.,]\d{3})"
    cues = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.strip().splitlines()
        for j, line in enumerate(lines):
            m = re.match(rf"{stamp} --> {stamp}", line.strip())
            if m:
                start, end = _seconds(m.group(1)), _seconds(m.group(2))
                cues.append(Cue(start, end, " ".join(lines[j + 1 :]).strip()))
                break
    return cues
