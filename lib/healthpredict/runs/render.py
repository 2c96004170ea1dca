"""HTML rendering of an executed notebook, with the run's provenance as a header block.

The HTML must open from the file system with no network: the CDN scripts of nbconvert's lab
template (require.js, MathJax, Mermaid) are left out; plots are already embedded as images.
"""

from __future__ import annotations

import copy
import html
import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from healthpredict.runs.scraps import NULL_SCRAP_MIMETYPE

_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block body_header -%}{{ super() }}{{ resources.hp_header }}{%- endblock body_header -%}
"""

_CSS = """
<style>
.hp-prov{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;font-size:13px;
 margin:12px auto;max-width:1100px;border:1px solid #ccd;border-radius:6px;padding:10px 14px;
 background:#f7f8fb}
.hp-prov h1{font-size:18px;margin:0 0 6px 0}
.hp-prov table{border-collapse:collapse;margin:4px 0}
.hp-prov td,.hp-prov th{border:1px solid #dde;padding:2px 8px;text-align:left;vertical-align:top}
.hp-prov code{font-size:12px;word-break:break-all}
.hp-badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;color:#fff}
.hp-ok{background:#2e7d32}.hp-failed{background:#c62828}.hp-synthetic{background:#e65100}
.hp-real{background:#1565c0}.hp-unknown{background:#757575}
.hp-banner{background:#e65100;color:#fff;font-weight:700;padding:6px 10px;margin:6px 0;
 border-radius:4px;letter-spacing:.05em}
.hp-error{background:#fdecea;border:1px solid #c62828;padding:6px 10px;border-radius:4px}
</style>
"""


def _e(value: Any) -> str:
    if isinstance(value, str):
        return html.escape(value)
    return html.escape(json.dumps(value, default=str))


def _rows(pairs: Mapping[str, Any]) -> str:
    return "".join(
        f"<tr><th>{_e(str(k))}</th><td><code>{_e(v)}</code></td></tr>" for k, v in pairs.items()
    )


def provenance_header(prov: Mapping[str, Any]) -> str:
    """HTML block summarising a run's provenance (all text escaped).

    Args:
        prov: Provenance dict as written to ``run.json``.

    Returns:
        A ``<section class="hp-prov">`` element, preceded by its stylesheet.
    """
    status = str(prov.get("status") or "unknown")
    source = prov.get("data_source")
    source_cls = {"synthetic": "hp-synthetic", "real": "hp-real"}.get(str(source), "hp-unknown")
    parts = [
        _CSS,
        '<section class="hp-prov" id="hp-provenance">',
        f"<h1>{_e(str(prov.get('notebook', '')))} "
        f'<span class="hp-badge {"hp-ok" if status == "succeeded" else "hp-failed"}">'
        f"{_e(status)}</span> "
        f'<span class="hp-badge {source_cls}">data: {_e(str(source or "unknown"))}</span></h1>',
    ]
    if source == "synthetic":
        parts.append(
            '<div class="hp-banner">SYNTHETIC DATA: these results come from generated data, '
            "not from real patients.</div>"
        )
    error = prov.get("error")
    if error:
        cell = error.get("cell_number")
        where = f"cell {cell}" if cell is not None else "after the last cell"
        parts.append(
            f'<div class="hp-error"><b>Failed at {_e(where)}:</b> '
            f"<code>{_e(str(error.get('ename')))}: {_e(str(error.get('evalue')))}</code></div>"
        )
    git = prov.get("git") or {}
    env = prov.get("environment") or {}
    summary = {
        "run id": prov.get("run_id"),
        "started (UTC)": prov.get("started_at"),
        "ended (UTC)": prov.get("ended_at"),
        "duration (s)": prov.get("duration_s"),
        "notebook": prov.get("notebook_path"),
        "notebook sha256": prov.get("notebook_sha256"),
        "git commit": git.get("commit"),
        "git dirty": git.get("dirty"),
        "kernel": prov.get("kernel_name"),
        "python": env.get("python"),
        "MLflow run id": prov.get("mlflow_run_id"),
        "run dir": prov.get("run_dir"),
    }
    parts.append(f"<table>{_rows(summary)}</table>")
    parts.append(
        "<details open><summary>Parameters</summary>"
        f"<table>{_rows(prov.get('parameters') or {})}</table></details>"
    )
    inputs = prov.get("inputs") or {}
    flat = {uri: sha for found in inputs.values() for uri, sha in found.items()}
    parts.append(
        f"<details><summary>Input data ({len(flat)} files, sha256)</summary>"
        f"<table>{_rows(flat)}</table></details>"
    )
    parts.append(
        "<details><summary>Package versions</summary>"
        f"<table>{_rows(env.get('packages') or {})}</table></details>"
    )
    scraps = prov.get("scraps") or {}
    parts.append(
        f"<details><summary>Scraps ({len(scraps)})</summary><table>{_rows(scraps)}</table></details>"
    )
    parts.append("</section>")
    return "\n".join(parts)


@lru_cache(maxsize=1)
def _exporter():
    # nbconvert (with jinja2) costs ~1.1 s to import (measured): only when HTML is rendered
    import jinja2
    from nbconvert import HTMLExporter

    # Building the exporter loads templates and CSS (~0.3 s); one per process is enough.
    return HTMLExporter(
        template_name="lab",
        extra_loaders=[jinja2.DictLoader({"hp_lab.html.j2": _TEMPLATE})],
        template_file="hp_lab.html.j2",
    )


def _is_scrap(output: Mapping[str, Any]) -> bool:

    prefixes = ("application/scrapbook.scrap.", NULL_SCRAP_MIMETYPE)
    return any(m.startswith(prefixes) for m in output.get("data") or {})


def _failing_cell(nb: Mapping[str, Any]) -> int | None:
    for index, cell in enumerate(nb.get("cells", [])):
        if any(o.get("output_type") == "error" for o in cell.get("outputs", []) or []):
            return index
    return None


def render_html(nb: Any, prov: Mapping[str, Any], *, hide_code: bool = True) -> str:
    """Render an executed notebook to standalone HTML with a provenance header.

    Args:
        nb: Executed notebook (``nbformat.NotebookNode``); it is not modified.
        prov: Provenance for the header (see :func:`provenance_header`).
        hide_code: Hide code cell inputs, keeping outputs and plots. The failing cell of a
            failed run keeps its source, next to its traceback, so the error can be read.

    Returns:
        The HTML document.
    """
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.get("outputs"):
            # Scraps are data for programs; nbconvert would warn about them and draw empty boxes.
            cell.outputs = [o for o in cell.outputs if not _is_scrap(o)]
    if hide_code:
        failing = _failing_cell(nb)
        for index, cell in enumerate(nb.cells):
            if cell.get("cell_type") == "code" and index != failing:
                # nbconvert's templates skip a cell's source when this flag is set (that is how
                # TagRemovePreprocessor hides inputs); it acts per cell, unlike exclude_input.
                cell.metadata["transient"] = {"remove_source": True}
    nb.metadata["title"] = f"{prov.get('notebook', 'notebook')} - {prov.get('run_id', '')}"
    body, _ = _exporter().from_notebook_node(nb, resources={"hp_header": provenance_header(prov)})
    return body


def fallback_html(prov: Mapping[str, Any], problem: str) -> str:
    """A minimal page used when nbconvert itself fails, so a run never lacks its HTML."""
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
        f"{_e(str(prov.get('notebook', 'notebook')))}</title></head><body>"
        f"{provenance_header(prov)}<p>Rendering the notebook failed: <code>{_e(problem)}</code>. "
        "Open the .ipynb beside this file.</p></body></html>"
    )
