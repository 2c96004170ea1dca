"""The record of one notebook run (``run.json``), built and written in one place.

The local runner (:func:`healthpredict.runs.run`) and the PapermillOperator path of the DAGs
(:mod:`healthpredict.runs.papermill_task`) both describe their run with a :class:`RunSpec`.
Before the kernel starts, :func:`write_running` puts a ``running`` record (with its
:func:`process_owner`: host, pid, process start) at the run's final ``run.json``; when the
kernel is done the scraps are read, the contract is checked, the executed notebook gets the
record in its metadata, the HTML is rendered (or a fallback page when the rendering fails) and
the final ``run.json`` (``succeeded`` or ``failed``) replaces the running one, atomically.

A run whose runner was killed keeps its ``running`` record; :func:`live_status` tells such a
run (``killed`` or ``stale``) from a live one.

In memory a record names this machine's absolute paths (what the kernel used); ``run.json``,
the notebook's metadata and the HTML name them portably (:func:`portable_record`, e.g.
``<storage>/processed_data/test.csv``), and :func:`resolve_record` reads them back.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from healthpredict.core import layout, storage
from healthpredict.core.gitinfo import git_info
from healthpredict.core.portable import portable_notebook, portable_tree, resolve_path, resolve_tree
from healthpredict.core.settings import project_root
from healthpredict.runs import contracts, provenance, render
from healthpredict.runs.errors import NotebookRunError
from healthpredict.runs.result import RunResult
from healthpredict.runs.scraps import scraps_from_notebook

log = logging.getLogger(__name__)

SUCCEEDED = "succeeded"
FAILED = "failed"
RUNNING = "running"  # written at the start; replaced by SUCCEEDED or FAILED at the end
# What live_status makes of a RUNNING record whose runner is gone (never written to run.json).
KILLED = "killed"
STALE = "stale"
# No notebook of the project runs near this long without saving its notebook (papermill saves
# after every cell): a running record older than this, whose runner cannot be checked from
# here, is shown as stale.
STALE_AFTER = timedelta(hours=6)
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
# Optional keys: only one of the two executors sets them, and run.json leaves them out then.
_OPTIONAL_KEYS = ("cache_key", "executor")
# The record's own locations: paths even when relative (then to the repository).
_PATH_KEYS = ("notebook_path", "run_dir", "local_dir", "ipynb", "html", "run_json")


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


def parse_iso(text: Any) -> datetime | None:
    """A time written by :func:`iso` (or any ISO 8601 form), None when absent or unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a process from /proc; None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces
    return fields[0], int(fields[19])


def _boot_id() -> str | None:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return None


def process_owner(pid: int | None = None) -> dict[str, Any]:
    """Who runs a notebook: host, pid, and what tells this process from a later one.

    ``process_start`` (clock ticks since boot) and ``boot_id`` come from Linux's /proc; they
    are None elsewhere, and then only the pid is checked.
    """
    pid = os.getpid() if pid is None else pid
    stat = _proc_stat(pid)
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "process_start": None if stat is None else stat[1],
        "boot_id": _boot_id(),
    }


def owner_alive(owner: Any) -> bool | None:
    """Whether the process that wrote a running record still runs; None when it cannot be told.

    It cannot be told from another host (or without a recorded pid). On the same host, the
    process is gone when the machine rebooted since (another ``boot_id``), when no process has
    its pid, when that process is a zombie, or when it started at another time than recorded
    (the pid was reused).
    """
    if not isinstance(owner, Mapping) or owner.get("host") != socket.gethostname():
        return None
    pid = owner.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    boot = _boot_id()
    if owner.get("boot_id") and boot and owner["boot_id"] != boot:
        return False
    stat = _proc_stat(pid)
    if stat is None:
        if Path("/proc/self/stat").exists():
            return False  # /proc works here and has no such process
        try:  # no /proc (not Linux): signal 0 only says whether the pid exists
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state, started = stat
    if state in ("Z", "X"):  # dead, not yet reaped by its parent
        return False
    recorded = owner.get("process_start")
    return recorded is None or recorded == started


def live_status(
    prov: Mapping[str, Any], *, heartbeat: datetime | None = None, now: datetime | None = None
) -> str:
    """The status to show for a run: its recorded one, or what became of a running run.

    A ``running`` record is shown as:

    - :data:`KILLED` when it was written on this host and its process is gone
      (:func:`owner_alive`: no such pid, a zombie, a reused pid or a reboot);
    - :data:`RUNNING` when that process still runs;
    - otherwise (another host, such as an Airflow worker, or no owner recorded):
      :data:`STALE` when the last sign of life, the newest of ``started_at`` and ``heartbeat``
      (e.g. when papermill last saved the partial notebook), is older than
      :data:`STALE_AFTER`; else :data:`RUNNING`.

    Args:
        prov: The ``run.json`` document.
        heartbeat: Last time the run was seen working, when known.
        now: The current time (default: now).
    """
    status = str(prov.get("status") or "unknown")
    if status != RUNNING:
        return status
    alive = owner_alive(prov.get("owner"))
    if alive is not None:
        return RUNNING if alive else KILLED
    signs = [t for t in (parse_iso(prov.get("started_at")), heartbeat) if t is not None]
    if not signs:
        return STALE
    return STALE if (now or utc_now()) - max(signs) > STALE_AFTER else RUNNING


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
    owner: dict[str, Any]
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
    ended_at: str | None
    duration_s: float | None
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


def running_record(spec: RunSpec, started: datetime) -> RunRecord:
    """The record of a run about to start: status ``running``, no outcome, this process as owner."""
    return RunRecord(
        run_id=spec.run_id,
        notebook=spec.notebook,
        notebook_path=spec.notebook_path,
        notebook_relpath=relpath_in_project(spec.notebook_path),
        notebook_sha256=spec.notebook_sha256,
        status=RUNNING,
        error=None,
        owner=process_owner(),
        data_source=None,
        mlflow_run_id=None,
        parameters=spec.parameters,
        given_parameters=spec.given_parameters,
        inputs=spec.inputs,
        cache_key=spec.cache_key,
        git=git_info(project_root()),
        environment=provenance.environment(),
        kernel_name=spec.kernel_name,
        executor=spec.executor,
        started_at=iso(started),
        ended_at=None,
        duration_s=None,
        run_dir=spec.run_dir,
        local_dir=spec.local_dir,
        ipynb=spec.final(f"{spec.notebook}.ipynb"),
        html=spec.final(f"{spec.notebook}.html"),
        run_json=spec.final(layout.RUN_JSON),
    )


def finished_record(
    running: RunRecord,
    scraps: Mapping[str, Any],
    error: dict[str, Any] | None,
    ended: datetime,
    duration_s: float,
) -> RunRecord:
    """The running record completed with the outcome, scraps and end time."""
    return replace(
        running,
        status=FAILED if error else SUCCEEDED,
        error=error,
        owner=process_owner(),
        data_source=scraps.get("data_source"),
        mlflow_run_id=scraps.get("mlflow_run_id"),
        ended_at=iso(ended),
        duration_s=duration_s,
        scraps=dict(scraps),
    )


def build_record(
    spec: RunSpec,
    scraps: Mapping[str, Any],
    error: dict[str, Any] | None,
    started: datetime,
    ended: datetime,
    duration_s: float,
) -> RunRecord:
    """The record of a finished run: the spec plus outcome, scraps, times and environment."""
    return finished_record(running_record(spec, started), scraps, error, ended, duration_s)


def portable_record(prov: Mapping[str, Any]) -> dict[str, Any]:
    """A record as ``run.json`` holds it: every local path portable (``<storage>/...``)."""
    return portable_tree(dict(prov))


def resolve_record(prov: Mapping[str, Any], *, rendered: str | None = None) -> dict[str, Any]:
    """A ``run.json`` read back with this machine's paths (inverse of :func:`portable_record`).

    Args:
        prov: The ``run.json`` document (portable, or absolute as older runs wrote it).
        rendered: The rendered folder it was read from (default: the ``rendered_dir`` setting).
    """
    doc = resolve_tree(dict(prov), rendered=rendered)
    for key in _PATH_KEYS:
        if isinstance(doc.get(key), str) and doc[key]:
            doc[key] = resolve_path(doc[key], rendered=rendered)
    env = doc.get("environment")
    if isinstance(env, dict) and isinstance(env.get("executable"), str):
        env["executable"] = resolve_path(env["executable"], rendered=rendered)
    return doc


def write_running(running: RunRecord) -> str:
    """Write a running record at the run's final ``run.json`` (S3 included); returns its URI.

    Local writes are atomic (temporary file and rename), an S3 write is one PUT: a reader sees
    the whole record or none.
    """
    return storage.write_json(running.run_json, portable_record(running.to_dict()))


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

    prov = portable_record(record.to_dict())
    name = record.notebook
    files_dir = str(files_dir)
    if executed is None:
        error = record.error or {}
        page = render.fallback_html(prov, f"{error.get('ename')}: {error.get('evalue')}")
    else:
        executed.metadata["healthpredict"] = prov
        # Papermill records its input, a notebook object or a derived .ipynb; name the real source.
        executed.metadata.setdefault("papermill", {})["input_path"] = prov["notebook_path"]
        # nbformat.write's form: the JSON and a final newline
        text = nbformat.writes(executed)
        storage.write_text(storage.join(files_dir, f"{name}.ipynb"), text.rstrip("\n") + "\n")
        try:
            page = render.render_html(portable_notebook(executed), prov, hide_code=hide_code)
        except Exception as exc:  # the run's record matters more than its pretty rendering
            log.warning("rendering %s failed: %s", record.ipynb, exc)
            page = render.fallback_html(prov, f"{type(exc).__name__}: {exc}")
    storage.write_text(storage.join(files_dir, f"{name}.html"), page)
    storage.write_json(storage.join(files_dir, layout.RUN_JSON), prov)


def refresh_gallery(rendered_dir: str) -> None:
    """Rebuild the gallery of ``rendered_dir``; a broken gallery never fails a run."""
    # The gallery reads records through this module (live_status): imported here, not above.
    from healthpredict.runs.gallery import build_gallery

    try:
        build_gallery(rendered_dir)
    except Exception as exc:
        log.warning("could not rebuild the gallery in %s: %s", rendered_dir, exc)


def executed_scraps(executed: Any | None) -> dict[str, Any]:
    """The scraps an executed notebook recorded (none without a notebook)."""
    return scraps_from_notebook(executed) if executed is not None else {}
