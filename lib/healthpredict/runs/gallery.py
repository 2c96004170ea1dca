"""``rendered/index.html``: one page listing every notebook run, newest first.

The page is self-contained (inline CSS, inline SVG and one small inline script, no network), so
it opens from the file system or from a static bucket. Links are relative to the page and only
point at files that exist when the page is built (the Evidently dashboard's address aside). At
the top, the monitored stream (:mod:`healthpredict.runs.gallery_timeline`); below, every run.

A run whose ``run.json`` still says ``running`` is shown as what it became
(:func:`healthpredict.runs.record.live_status`): ``killed`` when its runner's process on this
host is gone, ``stale`` when its runner is elsewhere and it gave no sign of life for
:data:`~healthpredict.runs.record.STALE_AFTER`, else ``running``; with a link to its partial
notebook. Radio buttons above the table show one status and one notebook at a time (CSS only);
the script keeps the choice in the address (``#notebook=03_drift_monitor&status=failed``) and
applies the address's choice on load.
"""

from __future__ import annotations

import html
import os
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from healthpredict.core import storage
from healthpredict.core.layout import RUN_JSON
from healthpredict.core.settings import get_settings
from healthpredict.mlops import evidently_workspace
from healthpredict.runs import record
from healthpredict.runs.gallery_timeline import timeline_html

GALLERY_NAME = "index.html"
KEY_SCRAPS = (
    "n_rows", "target_rate", "best_family", "test_roc_auc", "drift_status", "drifted_share",
    "n_drifted_columns", "model_version", "promoted", "decision", "challenger_version",
    "champion_version",
)  # fmt: skip
# Shown status -> (row class, badge class); any other status is shown as failed.
_STYLES = {
    record.SUCCEEDED: ("run-ok", "ok"),
    record.FAILED: ("run-failed", "failed-badge"),
    record.KILLED: ("run-killed", "killed"),
    record.STALE: ("run-stale", "stale"),
    record.RUNNING: ("run-running", "running"),
}
_UNFINISHED = (record.KILLED, record.STALE, record.RUNNING)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;font-size:14px;margin:20px;
 color:#222}
h1{font-size:22px;margin:0 0 4px 0}
.sub{color:#666;margin-bottom:14px}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #e3e3e8;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f3f4f8;position:sticky;top:0}
tr.run-failed td{background:#fdecea}
tr.run-killed td{background:#f3e5f5}
tr.run-stale td{background:#f1f1f1}
tr.run-running td{background:#e3f2fd}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;color:#fff;
 font-size:12px}
.ok{background:#2e7d32}.failed-badge{background:#c62828}.synthetic{background:#e65100}
.real{background:#1565c0}.unknown{background:#9e9e9e}.drift{background:#c62828}
.nodrift{background:#2e7d32}.killed{background:#6a1b9a}.stale{background:#616161}
.running{background:#1565c0}
input[name=show]{vertical-align:middle;margin-left:10px}
label{cursor:pointer}
table{margin-top:8px}
#show-ok:checked ~ table tbody tr:not(.run-ok){display:none}
#show-failed:checked ~ table tbody tr:not(.run-failed){display:none}
#show-killed:checked ~ table tbody tr:not(.run-killed){display:none}
#show-stale:checked ~ table tbody tr:not(.run-stale){display:none}
#show-running:checked ~ table tbody tr:not(.run-running){display:none}
.err{color:#c62828;font-size:12px}
.note{color:#555;font-size:12px}
code{font-size:12px}
.kv{white-space:nowrap}
h2{font-size:17px;margin:18px 0 6px 0}
#timeline .stream{margin:6px 0 10px 0}
.timeline a circle{cursor:pointer}
.apart ul{margin:4px 0;padding-left:20px}
input[name=nb]{vertical-align:middle;margin-left:10px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _short(value: Any, limit: int = 48) -> str:
    text = _fmt(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _rel_link(target: str, rendered_dir: str) -> str:
    rel = target[len(rendered_dir.rstrip("/")) + 1 :] if storage.is_s3(target) else None
    if rel is None:
        rel = os.path.relpath(target, rendered_dir)
    return "/".join(quote(part) for part in rel.replace(os.sep, "/").split("/"))


def _sort_key(run: Mapping[str, Any]) -> str:
    return str(run.get("started_at") or "")


def _heartbeat(folder: str, notebook: Any) -> datetime | None:
    """When papermill last saved the run's notebook (it saves after every cell); local only."""
    if storage.is_s3(folder):
        return None
    try:
        return datetime.fromtimestamp(os.stat(Path(folder, f"{notebook}.ipynb")).st_mtime, UTC)
    except OSError:
        return None


def load_runs(rendered_dir: str) -> list[dict[str, Any]]:
    """Read every ``run.json`` under ``rendered_dir``, oldest first.

    Each run gets three extra keys: ``_dir`` (where its ``run.json`` was found, which is where
    its files are even if the folder was moved), ``_files`` (the files inside that folder) and
    ``_status`` (the status to show: see :func:`healthpredict.runs.record.live_status`).
    """
    uris = sorted(storage.list_uris(rendered_dir))
    sep = "/" if storage.is_s3(rendered_dir) else os.sep
    runs = []
    for uri in uris:
        if uri.replace(os.sep, "/").rsplit("/", 1)[-1] != RUN_JSON:
            continue
        try:
            prov = storage.read_json(uri)
        except (storage.StorageError, ValueError):
            continue
        if not isinstance(prov, dict) or "notebook" not in prov:
            continue
        folder = uri[: -len(RUN_JSON) - 1]
        prov["_dir"] = folder
        # The folder's files are one slice of the sorted listing (a scan per run was quadratic:
        # 11 s for 1,000 runs, measured).
        prefix = folder + sep
        first, end = bisect_left(uris, prefix), bisect_left(uris, prefix + "\U0010ffff")
        prov["_files"] = set(uris[first:end])
        heartbeat = None
        if prov.get("status") == record.RUNNING:
            heartbeat = _heartbeat(folder, prov["notebook"])
        prov["_status"] = record.live_status(prov, heartbeat=heartbeat)
        runs.append(prov)
    return sorted(runs, key=_sort_key)


def _report_files(run: Mapping[str, Any]) -> list[str]:
    """Files named by the ``report_paths`` scrap that exist inside the run folder."""
    value = (run.get("scraps") or {}).get("report_paths")
    if isinstance(value, Mapping):
        items: Iterable[Any] = value.values()
    elif isinstance(value, list | tuple):
        items = value
    elif isinstance(value, str):
        items = [value]
    else:
        return []
    folder = run["_dir"]
    sep = "/" if storage.is_s3(folder) else os.sep
    bases = [str(b).rstrip("/") for b in (run.get("local_dir"), run.get("run_dir"), folder) if b]
    found = []
    for item in items:
        if not isinstance(item, str) or not item:
            continue
        rel = item
        for base in bases:
            if item.startswith(base + "/") or item.startswith(base + os.sep):
                rel = item[len(base) + 1 :]
                break
        if rel.startswith(("/", "s3://")) or ".." in rel.split("/"):
            continue  # outside the run folder: nothing a relative link can reach
        candidate = folder + sep + rel.replace("/", sep)
        if candidate in run["_files"] and candidate not in found:
            found.append(candidate)
    return found


def _badge(text: str, cls: str) -> str:
    return f'<span class="badge {cls}">{_e(text)}</span>'


def _shown_status(run: Mapping[str, Any]) -> str:
    return str(run.get("_status") or run.get("status") or "unknown")


def _unfinished_note(run: Mapping[str, Any], status: str, has_notebook: bool) -> str:
    """What became of a run that never wrote its final record, and where its partial files are."""
    owner = run.get("owner") or {}
    who = f"pid {owner.get('pid')} on {owner.get('host')}" if owner else "an unknown runner"
    if status == record.KILLED:
        text = f"its runner ({who}) is gone; the run never finished"
    elif status == record.STALE:
        hours = record.STALE_AFTER.total_seconds() / 3600
        text = f"no heartbeat for over {hours:g} h; its runner ({who}) cannot be checked from here"
    else:
        text = f"in progress ({who})"
    local_dir = run.get("local_dir")
    if not has_notebook and local_dir and local_dir != run.get("run_dir"):
        text += f"; its partial files are in {local_dir} on {owner.get('host', 'its host')}"
    elif status != record.RUNNING:
        text += "; partial notebook kept" if has_notebook else "; no notebook was saved"
    return f'<div class="{"note" if status == record.RUNNING else "err"}">{_e(text)}</div>'


def _row(run: Mapping[str, Any], rendered_dir: str, nb_index: int) -> str:
    status = _shown_status(run)
    failed = status != record.SUCCEEDED
    row_cls, badge_cls = _STYLES.get(status, _STYLES[record.FAILED])
    started = str(run.get("started_at") or "")
    when = started[:19].replace("T", " ") + (" UTC" if started else "")
    source = run.get("data_source")
    source_cell = {
        "synthetic": _badge("SYNTHETIC", "synthetic"),
        "real": _badge("real", "real"),
    }.get(str(source), _badge(str(source or "unknown"), "unknown"))
    params = {k: v for k, v in (run.get("given_parameters") or {}).items() if k != "run_dir"}
    params_cell = (
        "<br>".join(
            f'<span class="kv"><code>{_e(k)}={_e(_short(v))}</code></span>'
            for k, v in params.items()
        )
        or '<span class="sub">defaults</span>'
    )
    status_cell = _badge(status, badge_cls)
    error = run.get("error") or {}
    if failed and error:
        cell = error.get("cell_number")
        where = f"cell {cell}: " if cell is not None else ""
        status_cell += f'<div class="err">{_e(where)}{_e(error.get("ename"))}: {_e(_short(error.get("evalue"), 160))}</div>'
    scraps = run.get("scraps") or {}
    bits = []
    for name in KEY_SCRAPS:
        if name not in scraps or scraps[name] is None:
            continue
        value = scraps[name]
        if name == "drift_status":
            bits.append(_badge(str(value), "drift" if value == "DRIFT_DETECTED" else "nodrift"))
        else:
            bits.append(f'<span class="kv">{_e(name)}: <b>{_e(_short(value))}</b></span>')
    folder = run["_dir"]
    sep = "/" if storage.is_s3(folder) else os.sep
    unfinished = status in _UNFINISHED
    if unfinished:
        has_notebook = folder + sep + f"{run['notebook']}.ipynb" in run["_files"]
        status_cell += _unfinished_note(run, status, has_notebook)
    links = []
    for label, filename in (
        ("HTML", f"{run['notebook']}.html"),
        ("partial ipynb" if unfinished else "ipynb", f"{run['notebook']}.ipynb"),
        ("run.json", RUN_JSON),
    ):
        target = folder + sep + filename
        if target in run["_files"]:
            links.append(f'<a href="{_e(_rel_link(target, rendered_dir))}">{_e(label)}</a>')
    for report in _report_files(run):
        name = report.replace(os.sep, "/").rsplit("/", 1)[-1]
        links.append(f'<a href="{_e(_rel_link(report, rendered_dir))}">{_e(name)}</a>')
    return (
        f'<tr class="{row_cls}" data-run-id="{_e(run.get("run_id", ""))}" '
        f'data-notebook="{_e(run.get("notebook"))}" data-status="{_filter_status(run)}" '
        f'data-nb="{nb_index}">'
        f"<td>{_e(when)}</td><td><b>{_e(run.get('notebook'))}</b></td><td>{source_cell}</td>"
        f"<td>{params_cell}</td><td>{status_cell}</td><td>{'<br>'.join(bits)}</td>"
        f"<td>{' · '.join(links)}</td></tr>"
    )


def _filter_status(run: Mapping[str, Any]) -> str:
    """The status a row is filtered by: its shown one, any unknown status counting as failed."""
    status = _shown_status(run)
    return status if status in _STYLES else record.FAILED


def _row_class(run: Mapping[str, Any]) -> str:
    return _STYLES[_filter_status(run)][0]


def _radio(group: str, ident: str, value: str, label: str, checked: bool = False) -> str:
    return (
        f'<input type="radio" name="{group}" id="{ident}" value="{_e(value)}"'
        f'{" checked" if checked else ""}><label for="{ident}">{label}</label>'
    )


def _filter(runs: list[dict[str, Any]], notebooks: list[str]) -> str:
    """Radio buttons choosing a status and a notebook (CSS only: they precede the table)."""
    counts = {cls: 0 for cls, _ in _STYLES.values()}
    for run in runs:
        counts[_row_class(run)] += 1
    status = [_radio("show", "show-all", "", "all", checked=True)]
    for name, (row_cls, badge_cls) in _STYLES.items():
        short = row_cls.removeprefix("run-")
        badge = f"{_badge(name, badge_cls)} {counts[row_cls]}"
        status.append(_radio("show", f"show-{short}", name, badge))
    by_notebook = [_radio("nb", "nb-all", "", "all", checked=True)]
    per_notebook = Counter(str(r.get("notebook")) for r in runs)
    for i, name in enumerate(notebooks):
        label = f"<code>{_e(name)}</code> {per_notebook[name]}"
        by_notebook.append(_radio("nb", f"nb-{i}", name, label))
    return (
        '<span class="sub">status: </span>' + "\n".join(status) + "\n<br>"
        '<span class="sub">notebook: </span>' + "\n".join(by_notebook) + "\n"
        '<span class="sub" id="shown"></span>'
    )


# Keeps the radios' choice in the address and applies the address's choice (a link to a filtered
# view); the rows' hidden attribute mirrors the CSS rules, so a DOM dump shows what is shown.
_SCRIPT = """(function(){
var groups={status:"show",notebook:"nb"};
function radios(g){return document.querySelectorAll('input[name="'+g+'"]');}
function apply(){
 var want={},parts=[];
 for(var k in groups){var c=document.querySelector('input[name="'+groups[k]+'"]:checked');
  want[k]=c?c.value:"";if(want[k])parts.push(k+"="+encodeURIComponent(want[k]));}
 var rows=document.querySelectorAll("#runs tbody tr[data-run-id]"),n=0;
 rows.forEach(function(r){var ok=(!want.status||r.dataset.status===want.status)&&
  (!want.notebook||r.dataset.notebook===want.notebook);r.hidden=!ok;if(ok)n++;});
 document.getElementById("shown").textContent=" "+n+" of "+rows.length+" runs shown";
 var hash=parts.length?"#"+parts.join("&"):"";
 if(hash!==location.hash)history.replaceState(null,"",hash||location.pathname+location.search);
}
function fromHash(){
 var p=new URLSearchParams(location.hash.slice(1));
 for(var k in groups){var v=p.get(k)||"",found=false;
  radios(groups[k]).forEach(function(i){i.checked=i.value===v;found=found||i.checked;});
  if(!found)radios(groups[k])[0].checked=true;}
 apply();
}
document.addEventListener("change",function(e){if(e.target.name==="show"||e.target.name==="nb")apply();});
window.addEventListener("hashchange",fromHash);
fromHash();
})();"""


def _notebook_css(notebooks: list[str]) -> str:
    """One rule per notebook radio: when checked, the other notebooks' rows are hidden."""
    return "".join(
        f'#nb-{i}:checked ~ table tbody tr:not([data-nb="{i}"]){{display:none}}\n'
        for i in range(len(notebooks))
    )


def _run_html(run: Mapping[str, Any], rendered_dir: str) -> str | None:
    """Relative link to a run's notebook HTML, None when it does not exist."""
    sep = "/" if storage.is_s3(run["_dir"]) else os.sep
    target = run["_dir"] + sep + f"{run['notebook']}.html"
    return _rel_link(target, rendered_dir) if target in run["_files"] else None


def render_gallery(
    runs: list[dict[str, Any]], rendered_dir: str, dashboard_url: str | None = None
) -> str:
    """HTML of the gallery for runs read by :func:`load_runs` (oldest first).

    Args:
        runs: The runs, oldest first.
        rendered_dir: The folder the page is written into (links are relative to it).
        dashboard_url: Address of the Evidently dashboard of the monitoring runs (None: no link).
    """
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    classes = [_row_class(r) for r in runs]
    n_synth = sum(1 for r in runs if r.get("data_source") == "synthetic")
    counts = ", ".join(
        f"{classes.count(cls)} {status}"
        for status, (cls, _) in _STYLES.items()
        if status == record.FAILED or (status != record.SUCCEEDED and cls in classes)
    )
    notebooks = sorted({str(r.get("notebook")) for r in runs})
    index = {name: i for i, name in enumerate(notebooks)}
    rows = "\n".join(
        _row(r, rendered_dir, index[str(r.get("notebook"))])
        for r in sorted(runs, key=_sort_key, reverse=True)
    )
    if not rows:
        rows = '<tr><td colspan="7" class="sub">No runs yet: try <code>healthpredict run 01_eda</code>.</td></tr>'
    dashboard = (
        f' · <a class="dashboard" href="{_e(dashboard_url)}">Evidently dashboard</a> '
        "(served by <code>make monitoring-ui</code>)"
        if dashboard_url
        else ""
    )
    timeline = timeline_html(runs, lambda run: _run_html(run, rendered_dir))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Health Predict runs</title><style>{_CSS}{_notebook_css(notebooks)}</style></head>
<body>
<h1>Health Predict: notebook runs</h1>
<div class="sub">{len(runs)} runs ({counts}, {n_synth} on synthetic data) · built {_e(now)}{dashboard}</div>
{timeline}
<h2>Runs</h2>
{_filter(runs, notebooks)}
<table id="runs">
<thead><tr><th>time</th><th>notebook</th><th>data</th><th>parameters</th><th>status</th><th>key results</th><th>files</th></tr></thead>
<tbody>
{rows}
</tbody></table>
<script>{_SCRIPT}</script>
</body></html>
"""


def build_gallery(
    rendered_dir: str | os.PathLike | None = None, dashboard_url: str | None = None
) -> str:
    """Rebuild ``index.html`` in the rendered folder from the runs found there.

    Args:
        rendered_dir: Folder (or ``s3://`` prefix) holding the runs; default the
            ``rendered_dir`` setting.
        dashboard_url: Address of the Evidently dashboard to link to; default the monitoring
            workspace's (``make monitoring-ui``), no link when it has no project yet.

    Returns:
        Path or URI of the written ``index.html``.
    """
    if rendered_dir is None:
        rendered_dir = get_settings().rendered_dir
    rendered = str(rendered_dir)
    if not storage.is_s3(rendered):
        rendered = str(Path(rendered).expanduser().resolve())
        Path(rendered).mkdir(parents=True, exist_ok=True)
    if dashboard_url is None:
        dashboard_url = evidently_workspace.dashboard_url()
    page = render_gallery(load_runs(rendered), rendered, dashboard_url)
    return storage.write_text(storage.join(rendered, GALLERY_NAME), page)
