"""The record of one notebook run (``run.json``), built and written in one place.

The local runner (:func:`healthpredict.runs.run`) and the PapermillOperator path of the DAGs
(:mod:`healthpredict.runs.papermill_task`) both describe their run with a :class:`RunSpec`,
then call :func:`record_run`: the scraps are read, the contract is checked, the executed
notebook gets the record in its metadata, the HTML is rendered (or a fallback page when the
rendering fails), ``run.json`` is written atomically and the gallery is refreshed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from healthpredict.core import layout, storage
from healthpredict.core.gitinfo import git_info
from healthpredict.core.settings import project_root
from healthpredict.runs import contracts, provenance, render
from healthpredict.runs.errors import NotebookRunError
from healthpredict.runs.gallery import build_gallery
from healthpredict.runs.result import RunResult
from healthpredict.runs.scraps import scraps_from_notebook

log = logging.getLogger(__name__)

SUCCEEDED = "succeeded"
FAILED = "failed"
# Optional keys: only one of the two executors sets them, and run.json leaves them out then.
_OPTIONAL_KEYS = ("cache_key", "executor")


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """A time as ``run.json`` writes it (``2025-01-02T03:04:05.000000Z``)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def relpath_in_project(path: str | os.PathLike) -> str | None:
    """``path`` relative to the project root, or None when it lies outside."""
    try:
        return str(Path(path).relative_to(project_root()))
    except ValueError:
        return None


@dataclass(frozen=True)
class RunSpec:
    """What is known about a notebook run before its kernel starts.

    Attributes:
        run_id: Name of the run folder.
        notebook: Notebook name (file stem).
        notebook_path: Absolute path of the ``.py`` notebook.
        notebook_sha256: sha256 of the notebook's bytes.
        parameters: All parameters, as executed.
        given_parameters: The parameters the caller set.
        inputs: sha256 of the input data the parameters name.
        kernel_name: Jupyter kernel.
        run_dir: Folder or ``s3://`` prefix the run's files end up in.
        local_dir: Folder the kernel wrote into (a temporary one for a remote ``run_dir``).
        cache_key: Re-use key (local runner only).
        executor: Who executed it (PapermillOperator path only: engine, DAG, run and task ids).
    """

    run_id: str
    notebook: str
    notebook_path: str
    notebook_sha256: str
    parameters: dict[str, Any]
    given_parameters: dict[str, Any]
    inputs: dict[str, Any]
    kernel_name: str
    run_dir: str
    local_dir: str
    cache_key: str | None = None
    executor: dict[str, Any] | None = None

    def final(self, filename: str) -> str:
        """URI of one of the run's files in ``run_dir``."""
        return storage.join(self.run_dir, filename)


@dataclass
class RunRecord:
    """The content of ``run.json``; the keys are read by tests, the gallery and the samples."""

    run_id: str
    notebook: str
    notebook_path: str
    notebook_relpath: str | None
    notebook_sha256: str
    status: str
    error: dict[str, Any] | None
    data_source: Any
    mlflow_run_id: Any
    parameters: dict[str, Any]
    given_parameters: dict[str, Any]
    inputs: dict[str, Any]
    cache_key: str | None
    git: dict[str, Any]
    environment: dict[str, Any]
    kernel_name: str
    executor: dict[str, Any] | None
    started_at: str
    ended_at: str
    duration_s: float
    run_dir: str
    local_dir: str
    ipynb: str
    html: str
    run_json: str
    scraps: dict[str, Any] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        """Whether the run succeeded."""
        return self.status == SUCCEEDED

    def to_dict(self) -> dict[str, Any]:
        """The ``run.json`` document (optional keys only when set)."""
        doc = asdict(self)
        for key in _OPTIONAL_KEYS:
            if doc[key] is None:
                del doc[key]
        return doc


def build_record(
    spec: RunSpec,
    scraps: Mapping[str, Any],
    error: dict[str, Any] | None,
    started: datetime,
    ended: datetime,
    duration_s: float,
) -> RunRecord:
    """The record of a finished run: the spec plus outcome, scraps, times and environment."""
    return RunRecord(
        run_id=spec.run_id,
        notebook=spec.notebook,
        notebook_path=spec.notebook_path,
        notebook_relpath=relpath_in_project(spec.notebook_path),
        notebook_sha256=spec.notebook_sha256,
        status=FAILED if error else SUCCEEDED,
        error=error,
        data_source=scraps.get("data_source"),
        mlflow_run_id=scraps.get("mlflow_run_id"),
        parameters=spec.parameters,
        given_parameters=spec.given_parameters,
        inputs=spec.inputs,
        cache_key=spec.cache_key,
        git=git_info(project_root()),
        environment=provenance.environment(),
        kernel_name=spec.kernel_name,
        executor=spec.executor,
        started_at=iso(started),
        ended_at=iso(ended),
        duration_s=duration_s,
        run_dir=spec.run_dir,
        local_dir=spec.local_dir,
        ipynb=spec.final(f"{spec.notebook}.ipynb"),
        html=spec.final(f"{spec.notebook}.html"),
        run_json=spec.final(layout.RUN_JSON),
        scraps=dict(scraps),
    )


def error_info(exc: BaseException) -> dict[str, Any]:
    """Where and why a run failed, as ``run.json`` records it (cell number, exception name, text)."""
    # papermill takes seconds to import (10 s measured on a busy 2-core box): only on failure
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
    return _error(type(exc).__name__, str(exc))


def _error(ename: str, evalue: str) -> dict[str, Any]:
    return {
        "cell_number": None,
        "execution_count": None,
        "cell_index": None,
        "ename": ename,
        "evalue": evalue,
    }


def contract_error(
    notebook: str, scraps: Mapping[str, Any], required: Sequence[str] | None = None
) -> dict[str, Any] | None:
    """The error of a run whose scraps break the notebook's contract, or None when they keep it.

    The exception name is ``MissingScraps`` when a required scrap is missing, else
    ``ContractViolation``.
    """
    problems = contracts.check_scraps(notebook, scraps, required=required)
    if not problems:
        return None
    ename = "MissingScraps" if problems[0].startswith("required") else "ContractViolation"
    return _error(ename, "; ".join(problems))


def outcome_error(
    notebook: str,
    failure: BaseException | None,
    scraps: Mapping[str, Any],
    contract: Sequence[str] | None = None,
) -> dict[str, Any] | None:
    """The run's error: the failure when there was one, else a broken contract, else None."""
    if failure is not None:
        return error_info(failure)
    return contract_error(notebook, scraps, required=contract)


def error_message(prov: Mapping[str, Any]) -> str:
    """One line saying which notebook failed, where, why, and where its files are."""
    error = prov.get("error") or {}
    cell = error.get("cell_number")
    where = f"cell {cell}" if cell is not None else "the run"
    return (
        f"notebook {prov['notebook']} failed at {where}: {error.get('ename')}: "
        f"{error.get('evalue')} (run dir: {prov['run_dir']})"
    )


def raise_if_failed(prov: Mapping[str, Any]) -> None:
    """Raise :class:`~healthpredict.runs.NotebookRunError` for a failed run's ``run.json``."""
    if prov["status"] == SUCCEEDED:
        return
    raise NotebookRunError(error_message(prov), RunResult.from_provenance(prov))


def read_executed(uri: str | os.PathLike) -> Any | None:
    """The executed notebook at ``uri``, or None when the kernel never wrote it."""
    # nbformat takes ~1 s to import: only when a run is recorded, not in every notebook kernel
    import nbformat

    try:
        return nbformat.reads(storage.read_text(uri), as_version=4)
    except (storage.StorageError, FileNotFoundError):
        return None


def write_run(
    record: RunRecord,
    executed: Any | None,
    files_dir: str | os.PathLike,
    *,
    hide_code: bool = True,
) -> None:
    """Write the executed notebook (with the record in its metadata), the HTML and ``run.json``.

    Args:
        record: The run's record.
        executed: The executed notebook, or None when there is none (a fallback page is written).
        files_dir: Where to write (``run_dir``, or the local folder uploaded to it afterwards).
        hide_code: Leave code out of the HTML.
    """
    import nbformat  # see read_executed

    prov = record.to_dict()
    name = record.notebook
    files_dir = str(files_dir)
    if executed is None:
        error = record.error or {}
        page = render.fallback_html(prov, f"{error.get('ename')}: {error.get('evalue')}")
    else:
        executed.metadata["healthpredict"] = prov
        # Papermill records its input, a notebook object or a derived .ipynb; name the real source.
        executed.metadata.setdefault("papermill", {})["input_path"] = record.notebook_path
        # nbformat.write's form: the JSON and a final newline
        text = nbformat.writes(executed)
        storage.write_text(storage.join(files_dir, f"{name}.ipynb"), text.rstrip("\n") + "\n")
        try:
            page = render.render_html(executed, prov, hide_code=hide_code)
        except Exception as exc:  # the run's record matters more than its pretty rendering
            log.warning("rendering %s failed: %s", record.ipynb, exc)
            page = render.fallback_html(prov, f"{type(exc).__name__}: {exc}")
    storage.write_text(storage.join(files_dir, f"{name}.html"), page)
    storage.write_json(storage.join(files_dir, layout.RUN_JSON), prov)


def refresh_gallery(rendered_dir: str) -> None:
    """Rebuild the gallery of ``rendered_dir``; a broken gallery never fails a run."""
    try:
        build_gallery(rendered_dir)
    except Exception as exc:
        log.warning("could not rebuild the gallery in %s: %s", rendered_dir, exc)


def executed_scraps(executed: Any | None) -> dict[str, Any]:
    """The scraps an executed notebook recorded (none without a notebook)."""
    return scraps_from_notebook(executed) if executed is not None else {}
