"""Run a pipeline notebook with papermill and leave its audit trail.

A run writes, into its own folder: the executed ``<name>.ipynb``, its ``<name>.html`` and a
``run.json`` with the provenance (also stored in the notebook's ``metadata.healthpredict`` and
shown at the top of the HTML). ``run.json`` first says ``running`` (written before the kernel
starts, naming this process), so that a run killed half-way still shows in the gallery with its
partial notebook; the final record replaces it. A failed run writes the same three files, then
raises :class:`NotebookRunError`. A successful run with the same notebook bytes, parameters and
input data is re-used instead of executed again.

The console (stderr) gets one live line per notebook run (cells done / total, elapsed), inside
the caller's display when one is open (:func:`progress_display`, e.g. the loop's batches), and
one line with the outcome.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from healthpredict.core import storage
from healthpredict.core.settings import get_settings, project_root
from healthpredict.core.stages import RUN_DIR_PARAMETER
from healthpredict.runs import provenance, record, reuse
from healthpredict.runs.errors import NotebookError, NotebookRunError, ParameterError
from healthpredict.runs.parameters import check_parameters
from healthpredict.runs.record import RunSpec
from healthpredict.runs.result import RunResult

log = logging.getLogger(__name__)
# Progress and status go to stderr: the CLI's stdout carries only the run dir and the scraps.
_console = Console(stderr=True, soft_wrap=True)
# The live display open in this context (progress_display), shared by nested runs.
_display: ContextVar[Progress | None] = ContextVar("healthpredict_progress", default=None)


@contextmanager
def progress_display(
    console: Console | None = None, *, transient: bool = False
) -> Iterator[Progress]:
    """The live display that notebook runs add their cells line to.

    A caller with progress of its own (the loop's batches) opens it, adds its task, and the runs
    inside share it; a nested call returns the open one. A task's ``unit`` field names what it
    counts (``cells``, ``batches``).

    Args:
        console: Where to draw (default: the runner's stderr console).
        transient: Remove the display when it closes (a lone run: its outcome line stays).
    """
    if (open_display := _display.get()) is not None:
        yield open_display
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} {task.fields[unit]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console or _console, transient=transient) as display:
        token = _display.set(display)
        try:
            yield display
        finally:
            _display.reset(token)


def _status_console() -> Console:
    display = _display.get()
    return display.console if display is not None else _console


def _say(text: str) -> None:
    """A status line, above the live display when one is open (else it would be torn)."""
    _status_console().print(text)


class NotebookNotFoundError(NotebookError, FileNotFoundError):
    """No notebook with the given name or path."""


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


def _abs_location(uri: str) -> str:
    return uri if storage.is_s3(uri) else str(Path(uri).expanduser().resolve())


@dataclass(frozen=True)
class Kernel:
    """The Jupyter kernel a notebook runs on.

    Attributes:
        name: Kernel name (default: the ``kernel_name`` setting).
        env: Extra environment variables for the kernel (e.g. the loop runner's id, which tags
            the MLflow runs the notebook starts).
    """

    name: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Notebook:
    """A notebook read and its parameters checked, before any kernel starts."""

    path: Path
    nb: Any
    sha256: str
    merged: dict[str, Any]
    given: dict[str, Any]
    inputs: dict[str, Any]
    cache_key: str


def _load(notebook: str | os.PathLike, parameters: Mapping[str, Any] | None) -> _Notebook:
    # jupytext takes ~2.5 s to import (measured): only when a notebook is run
    import jupytext

    path = resolve_notebook(notebook)
    notebook_bytes = path.read_bytes()
    sha = storage.sha256_bytes(notebook_bytes)
    nb = jupytext.reads(notebook_bytes.decode("utf-8"), fmt="py:percent")
    given = dict(parameters or {})
    if RUN_DIR_PARAMETER in given:
        raise ParameterError(
            f"{path}: parameter {RUN_DIR_PARAMETER!r} is set by the runner; "
            "choose the folder with run(..., run_dir=...) / --run-dir"
        )
    merged = check_parameters(nb, given, notebook=path.stem, where=str(path))
    given = {name: merged[name] for name in given}  # the JSON-safe form, as executed
    inputs = provenance.input_hashes(merged, base_dir=path.parent)
    key = provenance.cache_key(sha, merged, inputs)
    return _Notebook(path, nb, sha, merged, given, inputs, key)


def _spec(
    loaded: _Notebook, final_dir: str | None, rendered: str, kernel: str, started: datetime
) -> RunSpec:
    """Name the run, choose where the kernel writes, and describe it."""
    name = loaded.path.stem
    run_id = f"{started.strftime('%Y%m%dT%H%M%SZ')}-{name}-{secrets.token_hex(3)}"
    final_dir = final_dir or storage.join(rendered, run_id)
    remote = storage.is_s3(final_dir)
    work_dir = Path(tempfile.mkdtemp(prefix=f"hp-{name}-")) if remote else Path(final_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    exec_params = dict(loaded.merged)
    if RUN_DIR_PARAMETER in exec_params:
        exec_params[RUN_DIR_PARAMETER] = str(work_dir)
    return RunSpec(
        run_id=run_id,
        notebook=name,
        notebook_path=str(loaded.path),
        notebook_sha256=loaded.sha256,
        parameters=exec_params,
        given_parameters=loaded.given,
        inputs=loaded.inputs,
        kernel_name=kernel,
        run_dir=final_dir,
        local_dir=str(work_dir),
        cache_key=loaded.cache_key,
    )


def kernel_manager_config() -> Any:
    """Jupyter configuration of the kernels the runner starts: CurveZMQ-encrypted transport.

    jupyter_client provisions keys only when asked (``transport_encryption``, default
    ``disabled``) and the kernelspec declares ``curve`` in ``metadata.supported_encryption``
    (``ipykernel install`` writes it); otherwise the kernel talks plain TCP and ipykernel warns
    about it at every start. ``auto`` falls back to plain TCP for a kernel without support
    (and the warning says so).
    """
    import zmq
    from jupyter_client import KernelManager
    from traitlets.config import Config

    config = Config()
    # Older jupyter_client has no such setting (and warns about unknown ones); it refuses
    # 'auto' when libzmq was built without curve.
    if "transport_encryption" in KernelManager.class_traits() and zmq.has("curve"):
        config.KernelManager.transport_encryption = "auto"
    return config


def _parameterized(nb: Any, parameters: Mapping[str, Any], kernel_name: str) -> Any:
    """A copy of ``nb`` with the parameters cell papermill injects after the ``parameters`` one.

    Injected here rather than by ``execute_notebook(parameters=...)``: papermill would parse the
    parameters cell again with a line-based parser that skips any line with a second ``=`` (in
    a comment, say) and then warns the parameter is unknown; :func:`check_parameters` has
    already parsed and checked them (with :mod:`ast`).
    """
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    # a copy with papermill's metadata, as execute_notebook loads it
    nb = load_notebook_node(nb)
    return parameterize_notebook(nb, dict(parameters), kernel_name=kernel_name, language="python")


@dataclass
class _Cells:
    """Code cells executed so far out of the notebook's, drawn on the live display if any."""

    total: int
    done: int = 0
    display: Progress | None = None
    task: TaskID | None = None

    def executed(self, **_: Any) -> None:  # nbclient's on_cell_executed hook
        self.done += 1
        if self.display is not None and self.task is not None:
            self.display.update(self.task, completed=self.done)

    def text(self) -> str:
        return f"{self.done}/{self.total} cells"


def _code_cells(nb: Any) -> int:
    return sum(c.cell_type == "code" and bool(c.source.strip()) for c in nb.cells)


@contextmanager
def _cells_line(name: str, cells: _Cells, progress: bool) -> Iterator[None]:
    """The live ``<notebook> ━━━ done/total cells elapsed`` line of a run, removed at its end."""
    if not progress or not _status_console().is_terminal:
        yield  # a log gets the start and outcome lines only
        return
    with progress_display(transient=True) as display:
        cells.display = display
        cells.task = display.add_task(name, total=cells.total, unit="cells")
        try:
            yield
        finally:
            display.remove_task(cells.task)


def _execute(
    nb: Any, spec: RunSpec, cwd: Path, cells: _Cells, kernel_env: Mapping[str, str]
) -> BaseException | None:
    """Execute with papermill; returns the exception raised in the kernel/engine, if any."""
    # papermill takes seconds to import (10 s measured on a busy 2-core box): only to execute
    import papermill

    # The kernel inherits this process's environment: export the resolved settings so that it
    # reads the same storage, MLflow store and rendered folder although its cwd differs.
    saved = dict(os.environ)
    os.environ.update({**get_settings().as_env(), **kernel_env})
    try:
        papermill.execute_notebook(
            nb,
            str(Path(spec.local_dir) / f"{spec.notebook}.ipynb"),
            kernel_name=spec.kernel_name,
            language="python",
            cwd=str(cwd),
            progress_bar=False,  # our own line (_cells_line), not tqdm's
            request_save_on_cell_execute=True,
            # passed on to nbclient's NotebookClient
            config=kernel_manager_config(),
            on_cell_executed=cells.executed,
        )
    except Exception as exc:  # any failure is recorded in the run, then re-raised as ours
        return exc
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return None


def _reused(loaded: _Notebook, rendered: str, wanted_dir: str | None, progress: bool):
    """An earlier identical successful run, or None."""
    previous = reuse.find_reusable(rendered, loaded.cache_key, run_dir=wanted_dir)
    if previous is None:
        return None
    name = loaded.path.stem
    log.info("re-using run %s for %s", previous["run_dir"], name)
    if progress:
        _say(
            f"[green]reused[/green] {escape(name)}: identical earlier run at "
            f"{escape(previous['run_dir'])} "
            "(same notebook, parameters and inputs; --force runs it again)"
        )
    return RunResult.from_provenance(previous, reused=True)


def run(
    notebook: str | os.PathLike,
    parameters: Mapping[str, Any] | None = None,
    run_dir: str | os.PathLike | None = None,
    *,
    kernel: Kernel | None = None,
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
        kernel: Jupyter kernel and extra environment for it (default: the ``kernel_name``
            setting, the settings' environment).
        force: Execute even when an identical successful run exists.
        hide_code: Leave code out of the HTML (outputs, plots and errors stay).
        contract: Required scrap names overriding :data:`contracts.REQUIRED_SCRAPS`.
        progress: Show the run's cells line and its outcome on stderr.

    Returns:
        The successful (or re-used) run.

    Raises:
        NotebookNotFoundError: No such notebook.
        ParameterError: Unknown parameter, wrong type, or no parameters cell (no kernel started).
        NotebookRunError: A cell raised, the kernel died, or a required scrap is missing; the
            run's files were written first and ``exc.result`` describes the run.
    """
    settings = get_settings()
    kernel = kernel or Kernel()
    loaded = _load(notebook, parameters)
    rendered = _abs_location(str(settings.rendered_dir))
    wanted_dir = None if run_dir is None else _abs_location(str(run_dir))
    if not force and (previous := _reused(loaded, rendered, wanted_dir, progress)) is not None:
        return previous

    started = record.utc_now()
    spec = _spec(loaded, wanted_dir, rendered, kernel.name or settings.kernel_name, started)
    nb = loaded.nb
    nb.metadata["kernelspec"] = {
        "name": spec.kernel_name,
        "display_name": spec.kernel_name,
        "language": "python",
    }
    nb = _parameterized(nb, spec.parameters, spec.kernel_name)
    # Seen in the gallery from now on, even if this process is killed before the end (the final
    # record replaces it; for an s3:// run_dir it goes there now, the files at the end).
    running = record.running_record(spec, started)
    record.write_running(running)
    record.refresh_gallery(rendered)
    cells = _Cells(total=_code_cells(nb))
    if progress and not _status_console().is_terminal:
        # no live line in a log: say when a long run started
        _say(f"running {escape(spec.notebook)} ({cells.total} cells) -> {escape(spec.run_dir)}")
    clock = time.monotonic()
    with _cells_line(spec.notebook, cells, progress):
        failure = _execute(nb, spec, loaded.path.parent, cells, kernel.env)
    duration = round(time.monotonic() - clock, 3)
    ended = record.utc_now()

    executed = record.read_executed(Path(spec.local_dir) / f"{spec.notebook}.ipynb")
    executed = nb if executed is None else executed
    scraps = record.executed_scraps(executed)
    error = record.outcome_error(spec.notebook, failure, scraps, contract)
    run_record = record.finished_record(running, scraps, error, ended, duration)
    record.write_run(run_record, executed, spec.local_dir, hide_code=hide_code)
    return _finish(run_record, rendered, progress, cells)


def _finish(
    run_record: record.RunRecord, rendered: str, progress: bool, cells: _Cells
) -> RunResult:
    """Upload a remote run, index a successful one, refresh the gallery, report the outcome."""
    prov = run_record.to_dict()
    if storage.is_s3(run_record.run_dir):
        _upload(Path(run_record.local_dir), run_record.run_dir)
    result = RunResult.from_provenance(prov)
    if result.succeeded:
        reuse.add_to_index(rendered, prov)
    record.refresh_gallery(rendered)
    if progress:
        if result.succeeded:
            _say(
                f"[green]succeeded[/green] {escape(run_record.notebook)}: {cells.text()} in "
                f"{run_record.duration_s:.1f} s -> {escape(run_record.run_dir)}"
            )
        else:
            _say(f"[red]failed[/red] {escape(record.error_message(prov))}")
    if not result.succeeded:
        raise NotebookRunError(record.error_message(prov), result)
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
