"""The gallery's stream timeline: one point per monitored batch of the loop, in stream order.

Built from run records alone (the gallery may be read far from the storage that held the loop
state). A drift-monitor run belongs to the stream when the batch it monitored is one the loop
cut: ``new_data_path`` named like :attr:`healthpredict.monitoring.state.BatchWindow.name`
(``batch_<start row>.csv``); its start row orders it. A loop that starts the stream again (as
``healthpredict demo`` does) starts a new stream; a batch monitored again (a re-run after a
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
# BatchWindow.name: a test keeps the two in step (the runs layer reads records, not the state).
BATCH_FILE = re.compile(r"(?:^|[/\\])batch_(\d+)\.csv$")
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
        """The model version that served (and was monitored on) the batch."""
        version = _scraps(self.run).get("model_version")
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
    """The batches of one pass of the loop over the stream, by start row."""

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
    """The streams (oldest first) and the monitor and retrain runs outside any of them.

    Args:
        runs: Runs oldest first (as from :func:`healthpredict.runs.gallery.load_runs`).
    """
    streams: list[Stream] = []
    apart: list[Run] = []
    last: Batch | None = None  # the batch of the latest stream monitor run
    for run in runs:
        name = run.get("notebook")
        if name == MONITOR:
            start = batch_start(run)
            if start is None:
                apart.append(run)
                continue
            # The cursor only moves forward: a batch before the last one is a new pass.
            if not streams or start < max(streams[-1].batches):
                streams.append(Stream())
            last = streams[-1].batches.setdefault(start, Batch(start))
            last.runs.append(run)
        elif name == RETRAIN:
            if last is not None and wants_retrain(last.runs[-1]):
                last.retrains.append(run)
            else:
                apart.append(run)
    return streams, apart


def _marker(kind: str, x: float, y: float, colour: str, title: str, filled: bool = True) -> str:
    if kind == "retrain":
        shape = f"M{x:.1f},{y - 6:.1f} L{x + 6:.1f},{y + 5:.1f} L{x - 6:.1f},{y + 5:.1f} Z"
    else:
        shape = (
            f"M{x:.1f},{y - 7:.1f} L{x + 6:.1f},{y:.1f} L{x:.1f},{y + 7:.1f} L{x - 6:.1f},{y:.1f} Z"
        )
    fill = colour if filled else "#fff"
    return (
        f'<path class="marker {kind}" d="{shape}" fill="{fill}" stroke="{colour}" '
        f'stroke-width="1.5"><title>{_e(title)}</title></path>'
    )


def _batch_title(batch: Batch) -> str:
    est, real = batch.auc("estimated"), batch.auc("realised")
    share = _number(_scraps(batch.run).get("drifted_share"))
    lines = [
        f"batch rows {batch.rows} · {batch.status}"
        + (f" ({share:.1%} of columns drifted)" if share is not None else ""),
        f"decision: {batch.decision}",
        f"champion serving it: v{batch.champion or '?'}",
        f"estimated ROC AUC {est:.3f}" if est is not None else "estimated ROC AUC: not recorded",
        f"realised ROC AUC {real:.3f} (labels arrived by this batch)"
        if real is not None
        else "realised ROC AUC: no labels arrived",
        f"monitor run {batch.run.get('run_id')}"
        + (f" ({len(batch.runs)} runs of this batch)" if len(batch.runs) > 1 else ""),
    ]
    return "\n".join(lines)


def stream_svg(stream: Stream, link: Link, width: int = 900) -> str:
    """Inline SVG of one stream: ROC AUC lines, drift points, retrain/promotion markers, champion.

    Every batch is a ``<g class="batch">`` with ``data-start``, ``data-status``,
    ``data-decision`` and ``data-champion``, and a hover title; its point links to its monitor
    run's notebook HTML when ``link`` gives one.
    """
    batches = stream.ordered
    n = len(batches)
    left, right = 86, 16
    plot_w = width - left - right
    auc_top, auc_bottom, drift_y, retrain_y, promo_y, band_y, height = 8, 78, 98, 120, 140, 152, 190
    step = plot_w / max(n, 1)

    def sx(i: int) -> float:
        return left + step * (i + 0.5)

    values = [v for b in batches for v in (b.auc("estimated"), b.auc("realised")) if v is not None]
    lo, hi = (min(values), max(values)) if values else (0.5, 1.0)
    lo, hi = (
        (lo - 0.01, hi + 0.01) if hi - lo >= 0.02 else ((lo + hi) / 2 - 0.02, (lo + hi) / 2 + 0.02)
    )

    def sy(v: float) -> float:
        return auc_bottom - (auc_bottom - auc_top) * (v - lo) / (hi - lo)

    out = [
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="stream timeline: {n} monitored batches">'
    ]
    for label, y in (
        (f"ROC AUC {hi:.2f}", auc_top + 4), (f"{lo:.2f}", auc_bottom), ("drift", drift_y + 4),
        ("retrain", retrain_y + 4), ("promotion", promo_y + 4), ("champion", band_y + 12),
    ):  # fmt: skip
        out.append(
            f'<text x="{left - 6}" y="{y}" font-size="11" text-anchor="end" fill="#555">{label}</text>'
        )
    for y in (auc_top, auc_bottom):
        out.append(f'<line x1="{left}" y1="{y}" x2="{left + plot_w}" y2="{y}" stroke="#e0e0e0"/>')
    radius = max(2.5, min(6.0, step / 3))
    for kind, colour, dash in (
        ("estimated", "#e65100", ' stroke-dasharray="4 3"'),
        ("realised", "#1565c0", ""),
    ):
        pts = [(sx(i), v, b) for i, b in enumerate(batches) if (v := b.auc(kind)) is not None]
        if len(pts) > 1:
            coords = " ".join(f"{x:.1f},{sy(v):.1f}" for x, v, _ in pts)
            out.append(
                f'<polyline class="auc {kind}" points="{coords}" fill="none" stroke="{colour}" stroke-width="1.5"{dash}/>'
            )
        for x, v, b in pts:
            title = f"{kind} ROC AUC {v:.3f} · batch rows {b.rows}"
            out.append(
                f'<circle class="auc {kind}" cx="{x:.1f}" cy="{sy(v):.1f}" r="{min(radius, 3):.1f}" '
                f'fill="{colour}"><title>{_e(title)}</title></circle>'
            )
    previous: str | None = None
    versions: dict[str, str] = {}
    for i, batch in enumerate(batches):
        x = sx(i)
        colour = DRIFT_COLOURS.get(batch.status)
        fill, stroke = (colour, colour) if colour else ("#fff", "#757575")
        point = f'<circle cx="{x:.1f}" cy="{drift_y}" r="{radius:.1f}" fill="{fill}" stroke="{stroke}" stroke-width="1.5"/>'
        href = link(batch.run)
        if href:
            point = f'<a href="{_e(href)}">{point}</a>'
        out.append(
            f'<g class="batch" data-start="{batch.start}" data-status="{_e(batch.status)}" '
            f'data-decision="{_e(batch.decision)}" data-champion="{_e(batch.champion or "")}" '
            f'data-run-id="{_e(batch.run.get("run_id", ""))}"><title>{_e(_batch_title(batch))}</title>{point}</g>'
        )
        if batch.retrain is not None:
            ok = _status(batch.retrain) == record.SUCCEEDED
            out.append(
                _marker(
                    "retrain",
                    x,
                    retrain_y,
                    "#6a1b9a",
                    f"retraining after batch rows {batch.rows}: {batch.decision}",
                    ok,
                )
            )
        if batch.promoted:
            out.append(
                _marker(
                    "promotion",
                    x,
                    promo_y,
                    "#f9a825",
                    f"v{batch.promoted} promoted after batch rows {batch.rows}: it serves the next batches",
                )
            )
        elif previous is not None and batch.champion and batch.champion != previous:
            promoted_before = i > 0 and batches[i - 1].promoted == batch.champion
            if not promoted_before:
                out.append(
                    _marker(
                        "champion-change",
                        x,
                        promo_y,
                        "#f9a825",
                        f"champion v{previous} → v{batch.champion} outside the loop's retraining",
                        False,
                    )
                )
        version = batch.champion or "?"
        band = (
            VERSION_COLOURS[len(versions) % len(VERSION_COLOURS)]
            if version not in versions
            else versions[version]
        )
        versions.setdefault(version, band)
        out.append(
            f'<rect x="{x - step / 2:.1f}" y="{band_y}" width="{step:.1f}" height="16" fill="{band}"/>'
        )
        if version != previous:
            out.append(
                f'<text class="champion" x="{x - step / 2 + 3:.1f}" y="{band_y + 12}" font-size="11" fill="#222">v{_e(version)}</text>'
            )
        previous = batch.champion or previous
    for i in sorted({0, n - 1, *range(0, n, max(1, n // 6))}):
        out.append(
            f'<text x="{sx(i):.1f}" y="{height - 6}" font-size="10" text-anchor="middle" fill="#555">{batches[i].start}</text>'
        )
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
        heading = f"{len(batches)} batches (rows {batches[0].start} to {batches[-1].rows.split('-')[1] or '…'}), {retrains} retrainings, {promotions} promotions"
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
            "realised ROC AUC; ▲ retraining (hollow: not succeeded); ◆ promotion (hollow: champion "
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
