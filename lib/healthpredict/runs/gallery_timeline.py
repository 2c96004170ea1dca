"""The gallery's stream timeline: one point per monitored batch of the loop, in stream order.

Built from run records alone (the gallery may be read far from the storage that held the loop
state). A drift-monitor run belongs to the stream when the batch it monitored is one the loop
cut: ``new_data_path`` named like :attr:`healthpredict.monitoring.state.BatchWindow.name`
(``batch_<start row>.csv``); its start row orders it. A loop that starts the stream again (as
``healthpredict demo`` does) makes a new pass over it; a batch monitored again (a re-run after a
failure) is one point, its latest successful run. A retrain run belongs to the batch whose
monitor run it follows when that run asked for a retraining with new labelled rows at hand (what
:func:`healthpredict.pipelines.monitoring_step.decide` requires); every other monitor or retrain
run is listed apart, not in the stream.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from healthpredict.core.constants import DRIFT_DETECTED, NO_DRIFT
from healthpredict.core.stages import MonitorParams, RetrainParams
from healthpredict.runs import record

MONITOR = MonitorParams.notebook
RETRAIN = RetrainParams.notebook
# The name BatchWindow.name gives a batch (not imported: monitoring.state loads pandas); a test
# keeps the two in step.
BATCH_FILE = re.compile(r"(?:^|[/\\])batch_(\d+)\.csv$")
RESOLVED_MODEL = re.compile(r"models:/[^/]+/(\d+)\b")  # how run records name a resolved model
DRIFT_COLOURS = {DRIFT_DETECTED: "#c62828", NO_DRIFT: "#2e7d32"}
VERSION_COLOURS = ("#bbdefb", "#c8e6c9", "#ffe0b2", "#e1bee7", "#b2dfdb", "#f8bbd0")

Run = dict[str, Any]
Link = Callable[[Mapping[str, Any]], str | None]


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _status(run: Mapping[str, Any]) -> str:
    return str(run.get("_status") or run.get("status") or "unknown")


def _scraps(run: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (run or {}).get("scraps") or {}


def _param(run: Mapping[str, Any], name: str) -> Any:
    for key in ("given_parameters", "parameters"):
        if name in (run.get(key) or {}):
            return run[key][name]
    return None


def batch_start(run: Mapping[str, Any]) -> int | None:
    """Start row of the stream batch a drift-monitor run monitored; None: not a stream batch."""
    path = _param(run, "new_data_path")
    match = BATCH_FILE.search(path) if isinstance(path, str) else None
    return int(match.group(1)) if match else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass
class Batch:
    """One batch of the stream: its monitor runs (oldest first) and the retrainings that followed."""

    start: int
    runs: list[Run] = field(default_factory=list)
    retrains: list[Run] = field(default_factory=list)

    @property
    def run(self) -> Run:
        """The run shown: the latest that succeeded, else the latest."""
        done = [r for r in self.runs if _status(r) == record.SUCCEEDED]
        return (done or self.runs)[-1]

    @property
    def retrain(self) -> Run | None:
        """The latest retraining of the batch, if any ran."""
        return self.retrains[-1] if self.retrains else None

    @property
    def status(self) -> str:
        """The drift status, or the monitor run's status when it did not succeed."""
        if _status(self.run) != record.SUCCEEDED:
            return _status(self.run)
        return str(_scraps(self.run).get("drift_status") or "unknown")

    @property
    def rows(self) -> str:
        """The batch's rows of the stream, ``start-end`` (``start-`` while unknown)."""
        n = _scraps(self.run).get("batch_rows")
        return f"{self.start}-{self.start + n}" if isinstance(n, int) else f"{self.start}-"

    @property
    def champion(self) -> str | None:
        """The model version that served (and was monitored on) the batch.

        A run that failed before recording it still names the version its model URI resolved
        to in its inputs (``models:/<name>/<version> run <id>``).
        """
        version = _scraps(self.run).get("model_version")
        if version is None:
            resolved = ((self.run.get("inputs") or {}).get("mlflow_model_uri") or {}).values()
            found = [m.group(1) for v in resolved if (m := RESOLVED_MODEL.match(str(v)))]
            version = found[0] if found else None
        return None if version is None else str(version)

    @property
    def promoted(self) -> str | None:
        """The version the batch's retraining promoted (None: no promotion)."""
        scraps = _scraps(self.retrain)
        if self.retrain is None or _status(self.retrain) != record.SUCCEEDED:
            return None
        return str(scraps.get("challenger_version")) if scraps.get("promoted") is True else None

    @property
    def decision(self) -> str:
        """What followed the batch, in the words of the loop's console (plus run failures)."""
        if _status(self.run) != record.SUCCEEDED:
            return f"monitor {_status(self.run)}"
        scraps = _scraps(self.run)
        if scraps.get("retrain") is not True:
            return "keep"
        if self.retrain is None:
            if wants_retrain(self.run):
                return "retrain not run"  # asked for, labels at hand: the step did not finish
            return "retrain skipped: awaiting labels"
        if _status(self.retrain) != record.SUCCEEDED:
            return f"retrain {_status(self.retrain)}"
        version = _scraps(self.retrain).get("challenger_version")
        return f"promote v{version}" if self.promoted else f"v{version} rejected"

    def auc(self, kind: str) -> float | None:
        """``estimated`` or ``realised`` ROC AUC the monitor recorded for the batch."""
        return _number(_scraps(self.run).get(f"{kind}_roc_auc"))


@dataclass
class Stream:
    """One pass of the loop over the stream: its batches by start row."""

    batches: dict[int, Batch] = field(default_factory=dict)

    @property
    def ordered(self) -> list[Batch]:
        """The batches in stream order."""
        return [self.batches[s] for s in sorted(self.batches)]


def wants_retrain(run: Mapping[str, Any]) -> bool:
    """Whether a monitor run asked for a retraining with new labelled rows to learn from."""
    scraps = _scraps(run)
    rows = scraps.get("new_labelled_rows", _param(run, "new_labelled_rows"))
    return scraps.get("retrain") is True and isinstance(rows, int) and rows > 0


def build_streams(runs: list[Run]) -> tuple[list[Stream], list[Run]]:
    """The passes over the stream (oldest first) and the monitor and retrain runs outside them.

    Args:
        runs: Runs oldest first (as from :func:`healthpredict.runs.gallery.load_runs`).
    """
    streams: list[Stream] = []
    apart: list[Run] = []
    last: Batch | None = None  # the batch of the latest stream monitor run
    furthest = -1  # the furthest batch start of the current pass
    for run in runs:
        name = run.get("notebook")
        if name == MONITOR:
            start = batch_start(run)
            if start is None:
                apart.append(run)
                continue
            # The cursor only moves forward: a batch before the furthest one is a new pass.
            if start < furthest or not streams:
                streams.append(Stream())
                furthest = start
            furthest = max(furthest, start)
            last = streams[-1].batches.setdefault(start, Batch(start))
            last.runs.append(run)
        elif name == RETRAIN:
            if last is not None and wants_retrain(last.runs[-1]):
                last.retrains.append(run)
            else:
                apart.append(run)
    return streams, apart


# Geometry of a stream's SVG (pixels): a ROC AUC panel, then one lane each for drift points,
# retrain markers, promotion markers and the champion band, then the start rows.
_LEFT, _RIGHT, _AUC_TOP, _AUC_BOTTOM = 86, 16, 8, 78
_DRIFT_Y, _DECISION_Y, _RETRAIN_Y, _PROMOTION_Y, _BAND_Y, _HEIGHT = 98, 120, 136, 154, 166, 204
_DECISION_ROOM = 64  # pixels per batch below which decisions are told by hover titles only
_AUC_COLOURS = {"estimated": ("#e65100", ' stroke-dasharray="4 3"'), "realised": ("#1565c0", "")}


def _text(x: float, y: float, text: str, anchor: str = "end", size: int = 11) -> str:
    return (
        f'<text x="{x:.1f}" y="{y}" font-size="{size}" text-anchor="{anchor}" fill="#555">'
        f"{_e(text)}</text>"
    )


def _marker(kind: str, x: float, y: float, colour: str, title: str, filled: bool = True) -> str:
    """A triangle (``retrain*``) or a diamond (``promotion``, ``champion-change``) with a title."""
    if kind.startswith("retrain"):
        shape = f"M{x:.1f},{y - 6} L{x + 6:.1f},{y + 5} L{x - 6:.1f},{y + 5} Z"
    else:
        shape = f"M{x:.1f},{y - 7} L{x + 6:.1f},{y} L{x:.1f},{y + 7} L{x - 6:.1f},{y} Z"
    return (
        f'<path class="marker {kind}" d="{shape}" fill="{colour if filled else "#fff"}" '
        f'stroke="{colour}" stroke-width="1.5"><title>{_e(title)}</title></path>'
    )


def _batch_title(batch: Batch) -> str:
    est, real = batch.auc("estimated"), batch.auc("realised")
    share = _number(_scraps(batch.run).get("drifted_share"))
    drifted = f" ({share:.1%} of columns drifted)" if share is not None else ""
    repeats = f" ({len(batch.runs)} runs of this batch)" if len(batch.runs) > 1 else ""
    return "\n".join(
        [
            f"batch rows {batch.rows} · {batch.status}{drifted}",
            f"decision: {batch.decision}",
            f"champion serving it: v{batch.champion or '?'}",
            f"estimated ROC AUC {est:.3f}" if est is not None else "estimated ROC AUC: none",
            f"realised ROC AUC {real:.3f} (labels arrived by this batch)"
            if real is not None
            else "realised ROC AUC: no labels arrived",
            f"monitor run {batch.run.get('run_id')}{repeats}",
        ]
    )


def _auc_panel(batches: list[Batch], sx: Callable[[int], float], radius: float) -> list[str]:
    """Estimated and realised ROC AUC over the batches, on a scale fitted to their values."""
    values = [v for b in batches for v in (b.auc("estimated"), b.auc("realised")) if v is not None]
    mid = (min(values) + max(values)) / 2 if values else 0.7
    half = max((max(values) - min(values)) / 2 + 0.01, 0.02) if values else 0.02
    lo, hi = mid - half, mid + half

    def sy(v: float) -> float:
        return _AUC_BOTTOM - (_AUC_BOTTOM - _AUC_TOP) * (v - lo) / (hi - lo)

    out = [
        _text(_LEFT - 6, _AUC_TOP + 4, f"ROC AUC {hi:.2f}"),
        _text(_LEFT - 6, _AUC_BOTTOM, f"{lo:.2f}"),
    ]
    for kind, (colour, dash) in _AUC_COLOURS.items():
        pts = [(sx(i), v, b) for i, b in enumerate(batches) if (v := b.auc(kind)) is not None]
        if len(pts) > 1:
            coords = " ".join(f"{x:.1f},{sy(v):.1f}" for x, v, _ in pts)
            out.append(
                f'<polyline class="auc {kind}" points="{coords}" fill="none" '
                f'stroke="{colour}" stroke-width="1.5"{dash}/>'
            )
        for x, v, b in pts:
            title = f"{kind} ROC AUC {v:.3f} · batch rows {b.rows}"
            out.append(
                f'<circle class="auc {kind}" cx="{x:.1f}" cy="{sy(v):.1f}" r="{min(radius, 3):.1f}"'
                f' fill="{colour}"><title>{_e(title)}</title></circle>'
            )
    return out


def _batch_point(batch: Batch, x: float, radius: float, link: Link) -> str:
    """The batch's drift point in a ``<g class="batch">`` carrying what a test or a reader needs."""
    colour = DRIFT_COLOURS.get(batch.status)
    fill, stroke = (colour, colour) if colour else ("#fff", "#757575")  # hollow: no verdict
    point = (
        f'<circle cx="{x:.1f}" cy="{_DRIFT_Y}" r="{radius:.1f}" fill="{fill}" stroke="{stroke}" '
        'stroke-width="1.5"/>'
    )
    if href := link(batch.run):
        point = f'<a href="{_e(href)}">{point}</a>'
    return (
        f'<g class="batch" data-start="{batch.start}" data-status="{_e(batch.status)}" '
        f'data-decision="{_e(batch.decision)}" data-champion="{_e(batch.champion or "")}" '
        f'data-run-id="{_e(batch.run.get("run_id", ""))}">'
        f"<title>{_e(_batch_title(batch))}</title>{point}</g>"
    )


def _events(batches: list[Batch], i: int, x: float) -> list[str]:
    """Markers of batch ``i``: its retraining, a promotion, a champion changed outside the loop."""
    batch, out = batches[i], []
    if batch.retrain is not None:
        done = _status(batch.retrain) == record.SUCCEEDED
        title = f"retraining after batch rows {batch.rows}: {batch.decision}"
        out.append(_marker("retrain", x, _RETRAIN_Y, "#6a1b9a", title, done))
    elif batch.decision.startswith("retrain "):  # asked for by the monitor, not run
        title = f"batch rows {batch.rows}: {batch.decision}"
        out.append(_marker("retrain-skipped", x, _RETRAIN_Y, "#9e9e9e", title, False))
    before = batches[i - 1] if i else None
    if batch.promoted:
        title = f"v{batch.promoted} promoted after batch rows {batch.rows}: serves the next batches"
        out.append(_marker("promotion", x, _PROMOTION_Y, "#f9a825", title))
    elif before and batch.champion and before.champion not in (None, batch.champion):
        if before.promoted != batch.champion:  # not the previous batch's promotion
            title = f"champion v{before.champion} → v{batch.champion} outside the loop's retraining"
            out.append(_marker("champion-change", x, _PROMOTION_Y, "#f9a825", title, False))
    return out


def _champion_band(batches: list[Batch], sx: Callable[[int], float], step: float) -> list[str]:
    """One coloured cell per batch by the version serving it, the version named where it starts."""
    out: list[str] = []
    colours: dict[str, str] = {}
    for i, batch in enumerate(batches):
        version = batch.champion or "?"
        if version not in colours:
            colours[version] = VERSION_COLOURS[len(colours) % len(VERSION_COLOURS)]
        x = sx(i) - step / 2
        out.append(
            f'<rect x="{x:.1f}" y="{_BAND_Y}" width="{step:.1f}" height="16" '
            f'fill="{colours[version]}"/>'
        )
        if i == 0 or (batches[i - 1].champion or "?") != version:
            out.append(
                f'<text class="champion" x="{x + 3:.1f}" y="{_BAND_Y + 12}" font-size="11" '
                f'fill="#222">v{_e(version)}</text>'
            )
    return out


def stream_svg(stream: Stream, link: Link, width: int = 900) -> str:
    """Inline SVG of one stream: ROC AUC lines, drift points, retrain/promotion markers, champion.

    Every batch is a ``<g class="batch">`` with ``data-start``, ``data-status``,
    ``data-decision`` and ``data-champion``, and a hover title; its point links to its monitor
    run's notebook HTML when ``link`` gives one.
    """
    batches = stream.ordered
    n = len(batches)
    step = (width - _LEFT - _RIGHT) / max(n, 1)

    def sx(i: int) -> float:
        return _LEFT + step * (i + 0.5)

    radius = max(2.5, min(6.0, step / 3))
    out = [
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{_HEIGHT}" viewBox="0 0 {width} {_HEIGHT}" role="img" '
        f'aria-label="stream timeline: {_count(n, "monitored batch", "monitored batches")}">'
    ]
    lanes = (
        ("drift", _DRIFT_Y + 4), ("decision", _DECISION_Y + 4), ("retrain", _RETRAIN_Y + 4),
        ("promotion", _PROMOTION_Y + 4), ("champion", _BAND_Y + 12),
    )  # fmt: skip
    out += [_text(_LEFT - 6, y, label) for label, y in lanes]
    out += [
        f'<line x1="{_LEFT}" y1="{y}" x2="{width - _RIGHT}" y2="{y}" stroke="#e0e0e0"/>'
        for y in (_AUC_TOP, _AUC_BOTTOM)
    ]
    out += _auc_panel(batches, sx, radius)
    out += _champion_band(batches, sx, step)
    for i, batch in enumerate(batches):
        out.append(_batch_point(batch, sx(i), radius, link))
        out += _events(batches, i, sx(i))
        if step >= _DECISION_ROOM:
            label = batch.decision.removeprefix("retrain skipped: ")
            out.append(_text(sx(i), _DECISION_Y + 4, label, "middle", 10))
    ticks = sorted({0, n - 1, *range(0, n, max(1, n // 6))})
    out += [_text(sx(i), _HEIGHT - 6, str(batches[i].start), "middle", 10) for i in ticks]
    out.append("</svg>")
    return "\n".join(out)


def _apart_item(run: Mapping[str, Any], link: Link) -> str:
    scraps = _scraps(run)
    what = [str(run.get("notebook"))]
    data = _param(run, "new_data_path")
    if isinstance(data, str) and data:
        what.append("on " + re.split(r"[/\\]", data)[-1])
    if _status(run) != record.SUCCEEDED:
        what.append(_status(run))
    elif run.get("notebook") == MONITOR:
        what.append(str(scraps.get("drift_status")))
    else:
        what.append(f"{scraps.get('decision')} v{scraps.get('challenger_version')}")
    when = str(run.get("started_at") or "")[:16].replace("T", " ")
    text = _e(" · ".join([when, *what]))
    href = link(run)
    return f'<li><a href="{_e(href)}">{text}</a></li>' if href else f"<li>{text}</li>"


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def timeline_html(runs: list[Run], link: Link) -> str:
    """The timeline section of the gallery: every stream (newest first), then the runs apart.

    Args:
        runs: Runs oldest first (as from :func:`healthpredict.runs.gallery.load_runs`).
        link: Relative link to a run's notebook HTML (None: the page does not exist).
    """
    streams, apart = build_streams(runs)
    parts = ['<section id="timeline"><h2>Monitored stream</h2>']
    if not streams:
        parts.append(
            '<p class="sub">No batch of the stream monitored yet: <code>healthpredict loop</code> monitors it.</p>'
        )
    for number, stream in reversed(list(enumerate(streams, 1))):
        batches = stream.ordered
        retrains = sum(b.retrain is not None for b in batches)
        promotions = sum(b.promoted is not None for b in batches)
        since = str(batches[0].runs[0].get("started_at") or "")[:16].replace("T", " ")
        last = f" (last batch at row {batches[-1].start})" if len(batches) > 1 else ""
        heading = (
            f"{_count(len(batches), 'batch', 'batches')} from row {batches[0].start}{last}, "
            f"{_count(retrains, 'retraining')}, {_count(promotions, 'promotion')}"
        )
        if len(streams) > 1:
            heading = f"pass {number} of {len(streams)} over the stream, from {since}: {heading}"
        parts.append(
            f'<div class="stream" data-pass="{number}"><div class="sub">{_e(heading)}</div>{stream_svg(stream, link)}</div>'
        )
    if streams:
        parts.append(
            '<div class="note">point: drift status (<span style="color:#c62828">●</span> drift, '
            '<span style="color:#2e7d32">●</span> no drift, ○ monitor run not succeeded); '
            '<span style="color:#e65100">- -</span> estimated and <span style="color:#1565c0">—</span> '
            "realised ROC AUC; decision (hover a point when too many to write); ▲ retraining "
            "(hollow: not succeeded; grey: asked for, not run); ◆ promotion (hollow: champion "
            "changed outside the loop); band: champion version serving each batch. Hover for "
            "details, click a point for its notebook.</div>"
        )
    if apart:
        items = "".join(_apart_item(r, link) for r in reversed(apart))
        parts.append(
            f'<details class="apart"><summary>{len(apart)} monitor or retrain runs outside the stream</summary><ul>{items}</ul></details>'
        )
    parts.append("</section>")
    return "\n".join(parts)
