"""Notebook runs inside an Airflow DAG: prepared by one task, executed by PapermillOperator.

PapermillOperator cannot read a jupytext ``.py`` notebook, and given a notebook object it records
the whole notebook as its input path. So a DAG first *prepares* a run
(:func:`prepare_notebook_run`): the parameters are checked against the notebook's parameters
cell, the ``.py`` becomes ``<name>.input.ipynb`` with the project kernel in the run's own folder
under ``rendered/``, and the real ``.py`` path, its sha256 and the input data hashes are kept.
The operator's hooks (:func:`papermill_args`) export the settings to the kernel and write a
``running`` ``run.json`` naming the worker process (:func:`start_notebook_run`) before it
starts, and when it finished, record the run with :mod:`healthpredict.runs.record` exactly like
:func:`healthpredict.runs.run`, so Airflow runs appear in the gallery (a killed task's run as
killed or stale); a run without its required scraps fails its task.

Nothing here imports Airflow: the package works without the ``airflow`` extra.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from healthpredict.core import storage
from healthpredict.core.settings import get_settings
from healthpredict.core.stages import RUN_DIR_PARAMETER
from healthpredict.runs import provenance, record
from healthpredict.runs.errors import NotebookRunError
from healthpredict.runs.parameters import check_parameters
from healthpredict.runs.runner import kernel_manager_config, resolve_notebook
from healthpredict.runs.scraps import read_scraps

log = logging.getLogger(__name__)

INPUT_SUFFIX = ".input.ipynb"
ENGINE = "airflow PapermillOperator"
_ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def safe_name(text: str, limit: int = 100) -> str:
    """File-name-safe form of a run id such as ``manual__2025-01-01T00:00:00+00:00``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_.")[:limit] or "run"


def run_dir_name(notebook: str, run_id: str, when: dt.datetime | None = None) -> str:
    """Folder name of a notebook run started by Airflow.

    ``<UTC time>-<notebook>-<run id>`` sorts with the folders of
    :func:`healthpredict.runs.run` (``<UTC time>-<notebook>-<hex>``).
    """
    when = when or record.utc_now()
    return f"{when:%Y%m%dT%H%M%SZ}-{notebook}-{safe_name(run_id, 80)}"


def _parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0] if storage.is_s3(uri) else str(Path(uri).parent)


def prepare_notebook_run(
    notebook: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    run_id: str,
    dag_id: str | None = None,
    task_id: str | None = None,
    rendered_dir: str | None = None,
    kernel_name: str | None = None,
) -> dict[str, Any]:
    """Check the parameters and write the notebook as ``.ipynb`` into a new run folder.

    Args:
        notebook: Name in ``notebooks/`` (``"03_drift_monitor"``) or path of a ``.py`` notebook.
        parameters: Values for the parameters cell (checked before any kernel starts).
        run_id: Airflow run id (names the folder).
        dag_id: Airflow DAG id, for the record.
        task_id: Id of the task that will execute the notebook, for the record.
        rendered_dir: Parent of the run folder (default: the ``rendered_dir`` setting).
        kernel_name: Jupyter kernel (default: the ``kernel_name`` setting).

    Returns:
        JSON-safe description of the run for XCom: ``notebook``, ``notebook_path``,
        ``notebook_sha256``, ``run_dir``, ``input_ipynb``, ``output_ipynb``, ``parameters``
        (all of them, as executed), ``given_parameters``, ``inputs`` (sha256 of the input data),
        ``kernel_name``, ``airflow`` and ``prepared_at``.

    Raises:
        healthpredict.runs.NotebookNotFoundError: No such notebook.
        healthpredict.runs.ParameterError: Unknown parameter or wrong type.
    """
    # jupytext and nbformat take ~3.5 s to import (measured): in the task, not at DAG parse time
    import jupytext
    import nbformat

    settings = get_settings()
    path = resolve_notebook(notebook)
    source = path.read_bytes()
    nb = jupytext.reads(source.decode("utf-8"), fmt="py:percent")
    merged = check_parameters(nb, parameters, notebook=path.stem, where=str(path))
    rendered = rendered_dir or settings.rendered_dir
    if not storage.is_s3(rendered):
        rendered = str(Path(rendered).expanduser().resolve())
    run_dir = storage.join(rendered, run_dir_name(path.stem, run_id))
    if RUN_DIR_PARAMETER in merged:
        merged[RUN_DIR_PARAMETER] = run_dir  # where the notebook keeps its own files
    kernel = kernel_name or settings.kernel_name
    sha = storage.sha256_bytes(source)
    prepared = {
        "notebook": path.stem,
        "notebook_path": str(path),
        "notebook_relpath": record.relpath_in_project(path),
        "notebook_sha256": sha,
        "run_dir": run_dir,
        "input_ipynb": storage.join(run_dir, f"{path.stem}{INPUT_SUFFIX}"),
        "output_ipynb": storage.join(run_dir, f"{path.stem}.ipynb"),
        "parameters": merged,
        "given_parameters": {k: merged[k] for k in (parameters or {})},
        "inputs": provenance.input_hashes(merged, base_dir=path.parent),
        "kernel_name": kernel,
        "airflow": {"dag_id": dag_id, "run_id": run_id, "task_id": task_id},
        "prepared_at": record.iso(record.utc_now()),
    }
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    nb.metadata["healthpredict"] = {"source": {"path": str(path), "sha256": sha}}
    # Writing the input beside the output also creates the folder papermill writes into.
    storage.write_text(prepared["input_ipynb"], nbformat.writes(nb))
    return prepared


def _spec(prepared: Mapping[str, Any]) -> record.RunSpec:
    run_dir = prepared["run_dir"]
    return record.RunSpec(
        run_id=run_dir.rstrip("/").replace(os.sep, "/").rsplit("/", 1)[-1],
        notebook=prepared["notebook"],
        notebook_path=prepared["notebook_path"],
        notebook_sha256=prepared["notebook_sha256"],
        parameters=prepared["parameters"],
        given_parameters=prepared.get("given_parameters", {}),
        inputs=prepared.get("inputs", {}),
        kernel_name=prepared["kernel_name"],
        run_dir=run_dir,
        local_dir=run_dir,
        executor={"engine": ENGINE, **prepared.get("airflow", {})},
    )


def _started(prepared: Mapping[str, Any]) -> dt.datetime:
    return dt.datetime.strptime(prepared["prepared_at"], _ISO_FORMAT).replace(tzinfo=dt.UTC)


def start_notebook_run(prepared: Mapping[str, Any]) -> dict[str, Any]:
    """Write the run's ``running`` record, naming this process, before its kernel starts.

    Called in the process that runs the kernel (the operator's ``pre_execute``), so that a
    worker killed mid-run leaves a record the gallery shows as killed (same host) or stale.

    Args:
        prepared: What :func:`prepare_notebook_run` returned.

    Returns:
        The record written to ``run.json``.
    """
    spec = _spec(prepared)
    running = record.running_record(spec, _started(prepared))
    record.write_running(running)
    record.refresh_gallery(_parent(spec.run_dir))
    return running.to_dict()


def finish_notebook_run(
    prepared: Mapping[str, Any], failure: BaseException | None = None
) -> dict[str, Any]:
    """Write ``run.json`` and the HTML of an executed run; return its provenance.

    The status is ``failed`` when ``failure`` is given, when the executed notebook is missing,
    or when a scrap required by :mod:`healthpredict.runs.contracts` is missing or invalid.

    Args:
        prepared: What :func:`prepare_notebook_run` returned.
        failure: The exception the notebook task raised, if it failed.

    Returns:
        The provenance written to ``run.json`` (status, error, scraps, parameters, hashes...).
    """
    spec = _spec(prepared)
    executed = record.read_executed(prepared["output_ipynb"])
    scraps = record.executed_scraps(executed)
    if failure is None and executed is None:
        failure = FileNotFoundError(f"no executed notebook at {prepared['output_ipynb']}")
    error = record.outcome_error(spec.notebook, failure, scraps)
    ended = record.utc_now()
    started = _started(prepared)
    duration = round((ended - started).total_seconds(), 3)
    run_record = record.build_record(spec, scraps, error, started, ended, duration)
    record.write_run(run_record, executed, spec.run_dir)
    record.refresh_gallery(_parent(spec.run_dir))
    return run_record.to_dict()


def read_run_scraps(prepared: Mapping[str, Any]) -> dict[str, Any]:
    """Scraps of an executed run, checked against the notebook's contract.

    Raises:
        healthpredict.runs.NotebookRunError: A required scrap is missing or invalid.
    """
    scraps = read_scraps(prepared["output_ipynb"])
    error = record.contract_error(prepared["notebook"], scraps)
    if error is not None:
        record.raise_if_failed(
            {**prepared, "status": record.FAILED, "scraps": scraps, "error": error}
        )
    return scraps


def _prepared_from(context: Mapping[str, Any], prepare_task_id: str, key: str | None) -> dict:
    prepared = context["ti"].xcom_pull(task_ids=prepare_task_id)
    if key is not None:
        prepared = (prepared or {}).get(key)
    if not prepared:
        raise RuntimeError(f"task {prepare_task_id!r} left no prepared notebook run in XCom")
    return prepared


def encrypt_operator_kernels() -> None:
    """Make papermill's default engine, in this process, start kernels as the runner does.

    PapermillOperator calls ``papermill.execute_notebook`` with no way to pass nbclient a
    configuration, so its kernels would talk plain TCP and ipykernel would warn about it in every
    task log. papermill looks its default engine up by name (``None``) in a registry meant for
    extension; the one registered here only adds :func:`kernel_manager_config` (CurveZMQ). The
    registry lives in the task's own process, so nothing else changes.
    """
    from papermill.engines import NBClientEngine, papermill_engines

    class EncryptedEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
            kwargs.setdefault("config", kernel_manager_config())
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register(None, EncryptedEngine)


def papermill_args(prepare_task_id: str, key: str | None = None) -> dict[str, Any]:
    """Keyword arguments of a PapermillOperator executing a run prepared by another task.

    The prepared run (:func:`prepare_notebook_run`) comes from ``prepare_task_id``'s XCom
    (``[key]`` of it when given). Needs the DAG's ``render_template_as_native_obj=True`` so that
    the parameters arrive as a dict. The hooks export the resolved settings to the kernel and
    write the ``running`` ``run.json`` before it starts, and write the final ``run.json`` and
    HTML afterwards; a run that lacks a required scrap fails its task.
    """
    xcom = f"ti.xcom_pull(task_ids={prepare_task_id!r})" + (f"[{key!r}]" if key else "")

    def start(context) -> None:
        # The operator starts the kernel from this process with no way to pass it an
        # environment: relative settings become absolute so that the kernel reads the same
        # storage and MLflow store whatever its working folder.
        os.environ.update(get_settings().as_env())
        encrypt_operator_kernels()
        start_notebook_run(_prepared_from(context, prepare_task_id, key))

    def finish(context, result=None) -> None:
        record.raise_if_failed(finish_notebook_run(_prepared_from(context, prepare_task_id, key)))

    def record_failure(context) -> None:
        failure = context.get("exception")
        if isinstance(failure, NotebookRunError):
            return  # finish() already recorded this run
        try:
            prepared = _prepared_from(context, prepare_task_id, key)
            finish_notebook_run(prepared, failure or RuntimeError("the task failed"))
        except Exception as exc:  # a callback must not hide the task's own error
            log.warning("could not record the failed notebook run: %s", exc)

    return {
        "input_nb": "{{ " + xcom + "['input_ipynb'] }}",
        "output_nb": "{{ " + xcom + "['output_ipynb'] }}",
        "parameters": "{{ " + xcom + "['parameters'] }}",
        "kernel_name": "{{ " + xcom + "['kernel_name'] }}",
        "language_name": "python",
        "log_output": True,
        "do_xcom_push": False,  # the prepared run already says where the output is
        "pre_execute": start,
        "post_execute": finish,
        "on_failure_callback": record_failure,
    }
