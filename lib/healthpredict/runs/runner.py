"""Run a pipeline notebook with papermill and leave its audit trail.

A run writes, into its own folder: the executed ``<name>.ipynb``, its ``<name>.html`` and a
``run.json`` with the provenance (also stored in the notebook's ``metadata.healthpredict`` and
shown at the top of the HTML). A failed run writes the same three files, then raises
:class:`NotebookRunError`. A successful run with the same notebook bytes, parameters and input
data is re-used instead of executed again.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from healthpredict.core import gitinfo, storage
from healthpredict.core.settings import get_settings, project_root
from healthpredict.core.stages import RUN_DIR_PARAMETER
from healthpredict.runs import contracts, provenance, render, reuse
from healthpredict.runs.errors import NotebookError, NotebookRunError, ParameterError
from healthpredict.runs.parameters import check_parameters
from healthpredict.runs.scraps import scraps_from_notebook

log = logging.getLogger(__name__)
# Progress and status go to stderr: the CLI's stdout carries only the run dir and the scraps.
_console = Console(stderr=True, soft_wrap=True)


class NotebookNotFoundError(NotebookError, FileNotFoundError):
    """No notebook with the given name or path."""


@dataclass
class RunResult:
    """Outcome of :func:`run`: where the run lives, what it recorded and how it went.

    Attributes:
        run_dir: Folder or ``s3://`` prefix holding the run's files.
        notebook: Notebook name (file stem, e.g. ``"01_eda"``).
        status: ``"succeeded"`` or ``"failed"``.
        scraps: Values the notebook recorded (see :mod:`healthpredict.runs.scraps`).
        provenance: Content of ``run.json``.
        html: URI of the HTML rendering.
        ipynb: URI of the executed notebook.
        reused: True when an earlier identical run was returned instead of executing.
    """

    run_dir: str
    notebook: str
    status: str
    scraps: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    html: str = ""
    ipynb: str = ""
    reused: bool = False

    @property
    def succeeded(self) -> bool:
        """Whether the run succeeded."""
        return self.status == "succeeded"

    @property
    def run_json(self) -> str:
        """URI of the run's ``run.json``."""
        return storage.join(self.run_dir, reuse.RUN_JSON)

    @classmethod
    def from_provenance(cls, prov: Mapping[str, Any], reused: bool = False) -> RunResult:
        """Build a result from a ``run.json`` document."""
        return cls(
            run_dir=prov["run_dir"],
            notebook=prov["notebook"],
            status=prov["status"],
            scraps=dict(prov.get("scraps") or {}),
            provenance=dict(prov),
            html=prov.get("html", ""),
            ipynb=prov.get("ipynb", ""),
            reused=reused,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-safe)."""
        return asdict(self)


def notebooks_dir() -> Path:
    """Folder of the project's pipeline notebooks."""
    return project_root() / "notebooks"


def resolve_notebook(notebook: str | os.PathLike) -> Path:
    """Find a notebook by name (``"01_eda"``, ``"01_eda.py"``) or by path.

    Raises:
        NotebookNotFoundError: Nothing matches; the message lists the available notebooks.
    """
    candidates = [Path(notebook)]
    text = str(notebook)
    if os.sep not in text and "/" not in text:
        stem = text[:-3] if text.endswith(".py") else text
        candidates.append(notebooks_dir() / f"{stem}.py")
    for path in candidates:
        if path.is_file() and path.suffix == ".py":
            return path.resolve()
    available = sorted(p.stem for p in notebooks_dir().glob("[0-9]*.py"))
    raise NotebookNotFoundError(
        f"no notebook {text!r}; give a path to a .py notebook or one of: "
        + (", ".join(available) or f"(none in {notebooks_dir()})")
    )


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _abs_location(uri: str) -> str:
    return uri if storage.is_s3(uri) else str(Path(uri).expanduser().resolve())


def error_info(exc: BaseException) -> dict[str, Any]:
    """Where and why a run failed, as ``run.json`` records it (cell number, exception name, text)."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        number = exc.exec_count if exc.exec_count is not None else exc.cell_index
        return {
            "cell_number": number,
            "execution_count": exc.exec_count,
            "cell_index": exc.cell_index,
            "ename": exc.ename,
            "evalue": exc.evalue,
        }
    return {
        "cell_number": None,
        "execution_count": None,
        "cell_index": None,
        "ename": type(exc).__name__,
        "evalue": str(exc),
    }


def _error_message(prov: Mapping[str, Any]) -> str:
    error = prov.get("error") or {}
    cell = error.get("cell_number")
    where = f"cell {cell}" if cell is not None else "the run"
    return (
        f"notebook {prov['notebook']} failed at {where}: {error.get('ename')}: "
        f"{error.get('evalue')} (run dir: {prov['run_dir']})"
    )


def _execute(
    nb: Any, out_ipynb: Path, parameters: dict[str, Any], kernel: str, cwd: Path, progress: bool
) -> BaseException | None:
    """Execute with papermill; returns the exception raised in the kernel/engine, if any."""
    import papermill

    # The kernel inherits this process's environment: export the resolved settings so that it
    # reads the same storage, MLflow store and rendered folder although its cwd differs.
    saved = dict(os.environ)
    os.environ.update(get_settings().as_env())
    try:
        papermill.execute_notebook(
            nb,
            str(out_ipynb),
            parameters=parameters,
            kernel_name=kernel,
            language="python",
            cwd=str(cwd),
            progress_bar={"file": sys.stderr} if progress else False,
            request_save_on_cell_execute=True,
        )
    except Exception as exc:  # any failure is recorded in the run, then re-raised as ours
        return exc
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return None


def run(
    notebook: str | os.PathLike,
    parameters: Mapping[str, Any] | None = None,
    run_dir: str | os.PathLike | None = None,
    *,
    kernel_name: str | None = None,
    force: bool = False,
    hide_code: bool = True,
    contract: Sequence[str] | None = None,
    progress: bool = True,
) -> RunResult:
    """Execute a jupytext notebook with papermill and write its audit trail.

    Parameters are checked against the notebook's parameters cell before any kernel starts.
    The kernel's working folder is the notebook's folder, so relative paths in parameters
    mean the same as when the notebook is opened in Jupyter. A notebook that declares a
    ``run_dir`` parameter gets the local folder the run writes into (files written there are
    kept with the run).

    Args:
        notebook: Name (``"01_eda"``) of a notebook in ``notebooks/``, or a path to a ``.py``.
        parameters: Values overriding the defaults of the parameters cell.
        run_dir: Where to write the run (local folder or ``s3://`` URI); default
            ``<rendered_dir>/<UTC time>-<name>-<6 hex>``.
        kernel_name: Jupyter kernel (default: the ``kernel_name`` setting).
        force: Execute even when an identical successful run exists.
        hide_code: Leave code out of the HTML (outputs, plots and errors stay).
        contract: Required scrap names overriding :data:`contracts.REQUIRED_SCRAPS`.
        progress: Show papermill's progress bar and status lines on stderr.

    Returns:
        The successful (or re-used) run.

    Raises:
        NotebookNotFoundError: No such notebook.
        ParameterError: Unknown parameter, wrong type, or no parameters cell (no kernel started).
        NotebookRunError: A cell raised, the kernel died, or a required scrap is missing; the
            run's files were written first and ``exc.result`` describes the run.
    """
    import jupytext
    import nbformat

    settings = get_settings()
    path = resolve_notebook(notebook)
    name = path.stem
    notebook_bytes = path.read_bytes()
    notebook_sha = storage.sha256_bytes(notebook_bytes)
    nb = jupytext.reads(notebook_bytes.decode("utf-8"), fmt="py:percent")
    given = dict(parameters or {})
    if RUN_DIR_PARAMETER in given:
        raise ParameterError(
            f"{path}: parameter {RUN_DIR_PARAMETER!r} is set by the runner; "
            "choose the folder with run(..., run_dir=...) / --run-dir"
        )
    merged = check_parameters(nb, given, notebook=name, where=str(path))
    given = {name: merged[name] for name in given}  # the JSON-safe form, as executed
    inputs = provenance.input_hashes(merged, base_dir=path.parent)
    key = provenance.cache_key(notebook_sha, merged, inputs)
    rendered = _abs_location(str(settings.rendered_dir))
    wanted_dir = None if run_dir is None else _abs_location(str(run_dir))

    if not force:
        previous = reuse.find_reusable(rendered, key, run_dir=wanted_dir)
        if previous is not None:
            log.info("re-using run %s for %s", previous["run_dir"], name)
            if progress:
                _console.print(
                    f"[green]reused[/green] {name}: identical earlier run at {previous['run_dir']} "
                    "(same notebook, parameters and inputs; --force runs it again)"
                )
            return RunResult.from_provenance(previous, reused=True)

    kernel = kernel_name or settings.kernel_name
    started = _utc_now()
    run_id = f"{started.strftime('%Y%m%dT%H%M%SZ')}-{name}-{secrets.token_hex(3)}"
    final_dir = wanted_dir or storage.join(rendered, run_id)
    remote = storage.is_s3(final_dir)
    work_dir = Path(tempfile.mkdtemp(prefix=f"hp-{name}-")) if remote else Path(final_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    out_ipynb = work_dir / f"{name}.ipynb"
    out_html = work_dir / f"{name}.html"
    exec_params = dict(merged)
    if RUN_DIR_PARAMETER in exec_params:
        exec_params[RUN_DIR_PARAMETER] = str(work_dir)

    nb.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    if progress:
        _console.print(f"[bold]running[/bold] {name} on kernel {kernel} -> {final_dir}")
    clock = time.monotonic()
    failure = _execute(nb, out_ipynb, exec_params, kernel, path.parent, progress)
    duration = round(time.monotonic() - clock, 3)
    ended = _utc_now()

    executed = nbformat.read(out_ipynb, as_version=4) if out_ipynb.exists() else nb
    scraps = scraps_from_notebook(executed)
    error = error_info(failure) if failure is not None else None
    if error is None:
        problems = contracts.check_scraps(name, scraps, required=contract)
        if problems:
            ename = "MissingScraps" if problems[0].startswith("required") else "ContractViolation"
            error = {
                "cell_number": None,
                "execution_count": None,
                "cell_index": None,
                "ename": ename,
                "evalue": "; ".join(problems),
            }

    def final(filename: str) -> str:
        return storage.join(final_dir, filename)

    try:
        rel_path = str(path.relative_to(project_root()))
    except ValueError:
        rel_path = None
    prov: dict[str, Any] = {
        "run_id": run_id,
        "notebook": name,
        "notebook_path": str(path),
        "notebook_relpath": rel_path,
        "notebook_sha256": notebook_sha,
        "status": "failed" if error else "succeeded",
        "error": error,
        "data_source": scraps.get("data_source"),
        "mlflow_run_id": scraps.get("mlflow_run_id"),
        "parameters": exec_params,
        "given_parameters": given,
        "inputs": inputs,
        "cache_key": key,
        "git": gitinfo.git_info(project_root()),
        "environment": provenance.environment(),
        "kernel_name": kernel,
        "started_at": _iso(started),
        "ended_at": _iso(ended),
        "duration_s": duration,
        "run_dir": final_dir,
        "local_dir": str(work_dir),
        "ipynb": final(out_ipynb.name),
        "html": final(out_html.name),
        "run_json": final(reuse.RUN_JSON),
        "scraps": scraps,
    }

    executed.metadata["healthpredict"] = prov
    # Given a notebook object, papermill stores the whole notebook as its "input path".
    executed.metadata.setdefault("papermill", {})["input_path"] = str(path)
    nbformat.write(executed, out_ipynb)
    try:
        page = render.render_html(executed, prov, hide_code=hide_code)
    except Exception as exc:  # the run's record matters more than its pretty rendering
        log.warning("rendering %s failed: %s", out_ipynb, exc)
        page = render.fallback_html(prov, f"{type(exc).__name__}: {exc}")
    out_html.write_text(page, encoding="utf-8")
    storage.write_json(work_dir / reuse.RUN_JSON, prov)

    if remote:
        _upload(work_dir, final_dir)
    result = RunResult.from_provenance(prov)
    if result.succeeded:
        reuse.add_to_index(rendered, prov)
    _refresh_gallery(rendered)

    if progress:
        if result.succeeded:
            _console.print(f"[green]succeeded[/green] {name} in {duration:.1f} s -> {final_dir}")
        else:
            _console.print(f"[red]failed[/red] {_error_message(prov)}")
    if not result.succeeded:
        raise NotebookRunError(_error_message(prov), result)
    return result


def _upload(work_dir: Path, final_dir: str) -> None:
    try:
        for file in sorted(p for p in work_dir.rglob("*") if p.is_file()):
            rel = file.relative_to(work_dir).as_posix()
            storage.write_bytes(storage.join(final_dir, rel), file.read_bytes())
    except Exception as exc:
        raise storage.StorageError(
            f"uploading the run to {final_dir} failed ({exc}); its files are kept in {work_dir}"
        ) from exc
    shutil.rmtree(work_dir, ignore_errors=True)


def _refresh_gallery(rendered: str) -> None:
    from healthpredict.runs.gallery import build_gallery

    try:
        build_gallery(rendered)
    except Exception as exc:  # a broken gallery must never fail a run
        log.warning("could not rebuild the gallery in %s: %s", rendered, exc)
