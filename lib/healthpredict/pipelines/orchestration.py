"""What the Airflow DAGs do, as plain functions; the files in ``dags/`` only wire them.

Notebook runs: PapermillOperator cannot read a jupytext ``.py`` notebook, and given a notebook
object it records the whole notebook as its input path. So a DAG first *prepares* a run
(:func:`prepare_notebook_run`): the parameters are checked against the notebook's parameters
cell, the ``.py`` becomes ``<name>.input.ipynb`` with the project kernel in the run's own folder
under ``rendered/``, and the real ``.py`` path, its sha256 and the input data hashes are kept.
The operator's hooks (:func:`papermill_args`) export the settings to the kernel and, when it
finished, write ``run.json`` and the HTML exactly like :func:`healthpredict.runs.run`, so
Airflow runs appear in the gallery; a run without its required scraps fails its task.

Monitoring: the batch cursor is :class:`healthpredict.pipelines.loop.LoopState` in storage, shared with
``healthpredict loop``; the decisions are :mod:`healthpredict.pipelines.loop`'s. The cursor moves only in
:func:`advance_state`, after monitoring (and an awaited retraining) succeeded.

Nothing here imports Airflow at module level: the package works without the ``airflow`` extra.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from healthpredict.core import layout, storage
from healthpredict.core.settings import get_settings, project_root
from healthpredict.core.stages import RUN_DIR_PARAMETER
from healthpredict.pipelines import loop

log = logging.getLogger(__name__)

MONITOR_NOTEBOOK = "03_drift_monitor"
INPUT_SUFFIX = ".input.ipynb"


def safe_name(text: str, limit: int = 100) -> str:
    """File-name-safe form of a run id such as ``manual__2025-01-01T00:00:00+00:00``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_.")[:limit] or "run"


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def run_dir_name(notebook: str, run_id: str, when: dt.datetime | None = None) -> str:
    """Folder name of a notebook run started by Airflow.

    ``<UTC time>-<notebook>-<run id>`` sorts with the folders of
    :func:`healthpredict.runs.run` (``<UTC time>-<notebook>-<hex>``).
    """
    when = when or _utc_now()
    return f"{when:%Y%m%dT%H%M%SZ}-{notebook}-{safe_name(run_id, 80)}"


def _parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0] if storage.is_s3(uri) else str(Path(uri).parent)


def _registry():
    """The registry module, with MLflow pointed at the configured store first.

    MLflow's own default would be ``./mlflow.db`` in whatever folder the task runs in.
    """
    from healthpredict.mlops import registry, tracking

    tracking.setup_mlflow()
    return registry


def _iso(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---- notebook runs through PapermillOperator --------------------------------------------------


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
    import jupytext
    import nbformat

    from healthpredict.runs import provenance, resolve_notebook
    from healthpredict.runs.parameters import check_parameters

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
    try:
        relpath = str(path.relative_to(project_root()))
    except ValueError:
        relpath = None
    prepared = {
        "notebook": path.stem,
        "notebook_path": str(path),
        "notebook_relpath": relpath,
        "notebook_sha256": sha,
        "run_dir": run_dir,
        "input_ipynb": storage.join(run_dir, f"{path.stem}{INPUT_SUFFIX}"),
        "output_ipynb": storage.join(run_dir, f"{path.stem}.ipynb"),
        "parameters": merged,
        "given_parameters": {k: merged[k] for k in (parameters or {})},
        "inputs": provenance.input_hashes(merged, base_dir=path.parent),
        "kernel_name": kernel,
        "airflow": {"dag_id": dag_id, "run_id": run_id, "task_id": task_id},
        "prepared_at": _iso(_utc_now()),
    }
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    nb.metadata["healthpredict"] = {"source": {"path": str(path), "sha256": sha}}
    # Writing the input beside the output also creates the folder papermill writes into.
    storage.write_text(prepared["input_ipynb"], nbformat.writes(nb))
    return prepared


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
    import nbformat

    from healthpredict.runs import contracts, provenance, render
    from healthpredict.runs.runner import error_info
    from healthpredict.runs.scraps import scraps_from_notebook

    name = prepared["notebook"]
    try:
        executed = nbformat.reads(storage.read_text(prepared["output_ipynb"]), as_version=4)
    except storage.StorageError:
        executed = None
    scraps = scraps_from_notebook(executed) if executed is not None else {}
    error = None
    if failure is not None:
        error = error_info(failure)
    elif executed is None:
        error = error_info(FileNotFoundError(f"no executed notebook at {prepared['output_ipynb']}"))
    else:
        problems = contracts.check_scraps(name, scraps)
        if problems:
            missing = problems[0].startswith("required")
            error = error_info(RuntimeError("; ".join(problems)))
            error["ename"] = "MissingScraps" if missing else "ContractViolation"
    ended = _utc_now()
    run_dir = prepared["run_dir"]
    started = dt.datetime.strptime(prepared["prepared_at"], "%Y-%m-%dT%H:%M:%S.%fZ")
    prov: dict[str, Any] = {
        "run_id": run_dir.rstrip("/").replace(os.sep, "/").rsplit("/", 1)[-1],
        "notebook": name,
        "notebook_path": prepared["notebook_path"],
        "notebook_relpath": prepared.get("notebook_relpath"),
        "notebook_sha256": prepared["notebook_sha256"],
        "status": "failed" if error else "succeeded",
        "error": error,
        "data_source": scraps.get("data_source"),
        "mlflow_run_id": scraps.get("mlflow_run_id"),
        "parameters": prepared["parameters"],
        "given_parameters": prepared.get("given_parameters", {}),
        "inputs": prepared.get("inputs", {}),
        "git": provenance.git_info(project_root()),
        "environment": provenance.environment(),
        "kernel_name": prepared["kernel_name"],
        "executor": {"engine": "airflow PapermillOperator", **prepared.get("airflow", {})},
        "started_at": prepared["prepared_at"],
        "ended_at": _iso(ended),
        "duration_s": round((ended.replace(tzinfo=None) - started).total_seconds(), 3),
        "run_dir": run_dir,
        "local_dir": run_dir,
        "ipynb": prepared["output_ipynb"],
        "html": storage.join(run_dir, f"{name}.html"),
        "run_json": storage.join(run_dir, "run.json"),
        "scraps": scraps,
    }
    if executed is not None:
        executed.metadata["healthpredict"] = prov
        # PapermillOperator read the derived .ipynb; the record names the real source.
        executed.metadata.setdefault("papermill", {})["input_path"] = prepared["notebook_path"]
        storage.write_text(prepared["output_ipynb"], nbformat.writes(executed))
        try:
            page = render.render_html(executed, prov)
        except Exception as exc:  # the record matters more than its rendering
            log.warning("rendering %s failed: %s", prepared["output_ipynb"], exc)
            page = render.fallback_html(prov, f"{type(exc).__name__}: {exc}")
    else:
        page = render.fallback_html(prov, f"{error['ename']}: {error['evalue']}")
    storage.write_text(prov["html"], page)
    storage.write_json(prov["run_json"], prov)
    try:
        from healthpredict.runs.gallery import build_gallery

        build_gallery(_parent(run_dir))
    except Exception as exc:  # a broken gallery never fails a run
        log.warning("could not rebuild the gallery: %s", exc)
    return prov


def raise_if_failed(prov: Mapping[str, Any]) -> None:
    """Raise :class:`~healthpredict.runs.NotebookRunError` for a failed run's provenance."""
    from healthpredict.runs import NotebookRunError, RunResult

    if prov["status"] == "succeeded":
        return
    error = prov.get("error") or {}
    cell = error.get("cell_number")
    where = f"cell {cell}" if cell is not None else "the run"
    raise NotebookRunError(
        f"notebook {prov['notebook']} failed at {where}: {error.get('ename')}: "
        f"{error.get('evalue')} (run dir: {prov['run_dir']})",
        RunResult.from_provenance(prov),
    )


def read_run_scraps(prepared: Mapping[str, Any]) -> dict[str, Any]:
    """Scraps of an executed run, checked against the notebook's contract.

    Raises:
        healthpredict.runs.NotebookRunError: A required scrap is missing or invalid.
    """
    from healthpredict.runs import contracts
    from healthpredict.runs.scraps import read_scraps

    scraps = read_scraps(prepared["output_ipynb"])
    problems = contracts.check_scraps(prepared["notebook"], scraps)
    if problems:
        error = {"ename": "MissingScraps", "evalue": "; ".join(problems)}
        raise_if_failed({**prepared, "status": "failed", "scraps": scraps, "error": error})
    return scraps


def _prepared_from(context: Mapping[str, Any], prepare_task_id: str, key: str | None) -> dict:
    prepared = context["ti"].xcom_pull(task_ids=prepare_task_id)
    if key is not None:
        prepared = (prepared or {}).get(key)
    if not prepared:
        raise RuntimeError(f"task {prepare_task_id!r} left no prepared notebook run in XCom")
    return prepared


def papermill_args(prepare_task_id: str, key: str | None = None) -> dict[str, Any]:
    """Keyword arguments of a PapermillOperator executing a run prepared by another task.

    The prepared run (:func:`prepare_notebook_run`) comes from ``prepare_task_id``'s XCom
    (``[key]`` of it when given). Needs the DAG's ``render_template_as_native_obj=True`` so that
    the parameters arrive as a dict. The hooks export the resolved settings to the kernel
    before it starts and write the run's ``run.json`` and HTML afterwards; a run that lacks a
    required scrap fails its task.
    """
    xcom = f"ti.xcom_pull(task_ids={prepare_task_id!r})" + (f"[{key!r}]" if key else "")

    def export_settings(context) -> None:
        # The kernel inherits this process's environment: relative settings become absolute
        # so it reads the same storage and MLflow store whatever its working folder.
        os.environ.update(get_settings().as_env())

    def finish(context, result=None) -> None:
        raise_if_failed(finish_notebook_run(_prepared_from(context, prepare_task_id, key)))

    def record_failure(context) -> None:
        from healthpredict.runs import NotebookRunError

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
        "pre_execute": export_settings,
        "post_execute": finish,
        "on_failure_callback": record_failure,
    }


# ---- the monitoring DAG -----------------------------------------------------------------------


def iteration_state(root: str | None = None) -> dict[str, Any]:
    """The loop's state, read under its lease (so a running ``healthpredict loop`` is refused).

    Raises:
        healthpredict.pipelines.loop.LoopLockedError: Another runner holds the lease.
    """
    with loop.lease(root):
        state = loop.LoopState.load(root)
    return {
        "next_batch_start_index": state.next_batch_start_index,
        "batches_since_retrain": list(state.batches_since_retrain),
        "reference_uri": state.reference_uri,
        "model_reference_uri": state.model_reference_uri,
        "batches_done": len(state.history),
    }


def simulate_batch(
    future_uri: str, next_start: int, batch_size: int, root: str | None = None
) -> dict[str, Any]:
    """Cut the next batch of the future stream and write it (named by its start index).

    Returns:
        ``has_data`` False when the stream is exhausted; otherwise ``start``, ``end`` and
        ``batch_uri`` of the batch written. ``total_rows`` either way.
    """
    from healthpredict.data.uci import read_raw_csv

    future = read_raw_csv(future_uri)
    window = loop.next_window(int(next_start), len(future), int(batch_size))
    if window is None:
        return {"has_data": False, "start": int(next_start), "total_rows": len(future)}
    return {
        "has_data": True,
        "start": window.start,
        "end": window.end,
        "batch_uri": loop.write_batch(future, window, root),
        "total_rows": len(future),
    }


def prepare_monitoring(
    batch: Mapping[str, Any],
    state: Mapping[str, Any],
    *,
    model_name: str | None,
    reference_uri: str,
    experiment_name: str,
    run_id: str,
    dag_id: str | None = None,
    task_id: str | None = None,
    monitor_params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Pin the production model and prepare the drift-monitor run for ``batch``.

    The champion alias is resolved to its version now, so the notebook and the record name the
    model that was actually monitored even if the alias moves meanwhile. The reference is the
    loop's (set after a promotion) or else ``reference_uri``, as in
    :func:`healthpredict.pipelines.loop.process_batch`.

    Raises:
        healthpredict.mlops.registry.ModelNotFoundError: No champion: train a model first.
    """
    registry = _registry()
    info = registry.get_model_info(registry.champion_uri(model_name))
    parameters = {
        **loop.monitor_parameters(
            loop.LoopState(
                reference_uri=state.get("reference_uri"),
                model_reference_uri=state.get("model_reference_uri"),
            ),
            batch["batch_uri"],
            reference_uri,
        ),
        "mlflow_model_uri": info.model_uri,
        "mlflow_experiment_name": experiment_name,
        **dict(monitor_params or {}),
    }
    monitor = prepare_notebook_run(
        MONITOR_NOTEBOOK, parameters, run_id=run_id, dag_id=dag_id, task_id=task_id
    )
    return {"model_uri": info.model_uri, "model_version": info.version, "monitor": monitor}


def decide(
    prepared: Mapping[str, Any],
    state: Mapping[str, Any],
    batch: Mapping[str, Any],
    retrain_window: int,
) -> dict[str, Any]:
    """Read the monitor's scraps and decide, with :func:`healthpredict.pipelines.loop.should_retrain`.

    Returns:
        ``drift_status``, ``drifted_share``, ``monitor_run_dir``, ``retrain`` (bool) and
        ``recent_batches``: the batches a retraining learns from (the last ``retrain_window``
        since the last promotion, this one included), as in the loop.
    """
    scraps = read_run_scraps(prepared)
    status = scraps["drift_status"]
    recent = [*state["batches_since_retrain"], batch["batch_uri"]][-int(retrain_window) :]
    return {
        "drift_status": status,
        "drifted_share": scraps.get("drifted_share"),
        "monitor_run_dir": prepared["run_dir"],
        "retrain": loop.should_retrain(status),
        "recent_batches": recent,
    }


def retrain_result_uri(run_id: str, root: str | None = None) -> str:
    """Where the training DAG leaves the outcome of a retraining run with this run id."""
    return storage.join(loop.monitoring_dir(root), "retrains", f"{safe_name(run_id, 200)}.json")


def retraining_outcome(
    trigger_run_id: str | None, awaited: bool, root: str | None = None
) -> dict[str, Any] | None:
    """Outcome of the retraining run the monitoring DAG triggered; None when not awaited.

    Raises:
        RuntimeError: The run was awaited (so it succeeded) but left no outcome: fail closed.
    """
    if not awaited:
        return None
    if not trigger_run_id:
        raise RuntimeError("the retraining trigger left no run id in XCom")
    uri = retrain_result_uri(trigger_run_id, root)
    if not storage.exists(uri):
        raise RuntimeError(f"retraining run {trigger_run_id} finished but left no outcome at {uri}")
    return storage.read_json(uri)


def promotion_gate(trigger_task_id: str) -> Callable[[Any], None]:
    """A ``pre_execute`` hook that skips its task unless the awaited retraining promoted.

    Without ``wait_for_retraining`` the outcome is unknown when the task runs, so it is skipped
    (the deployment can be triggered by hand once the retraining run promoted).
    """

    def gate(context) -> None:
        from airflow.sdk.exceptions import AirflowSkipException

        params = context["params"]
        trigger_run_id = context["ti"].xcom_pull(task_ids=trigger_task_id, key="trigger_run_id")
        outcome = retraining_outcome(trigger_run_id, bool(params["wait_for_retraining"]))
        if outcome is None:
            raise AirflowSkipException(
                f"retraining run {trigger_run_id} was not awaited (wait_for_retraining is off): "
                "its promotion is unknown, so nothing is deployed"
            )
        if not outcome.get("promoted"):
            raise AirflowSkipException(
                f"retraining {outcome.get('decision')}: {outcome.get('reason')}; nothing to deploy"
            )

    return gate


def advance_state(
    batch: Mapping[str, Any],
    decision: Mapping[str, Any],
    *,
    model_uri: str,
    retrain_outcome: Mapping[str, Any] | None = None,
    trigger_run_id: str | None = None,
    dag_run_id: str | None = None,
    root: str | None = None,
) -> dict[str, Any]:
    """Move the cursor past ``batch``, as :func:`healthpredict.pipelines.loop.process_batch` does.

    A promotion (known only when the retraining was awaited) makes the recent batches the new
    drift reference and empties the list; otherwise the batch joins the recent batches.

    Returns:
        The history entry appended to the state.

    Raises:
        RuntimeError: The cursor is no longer at this batch (another runner moved it).
        healthpredict.pipelines.loop.LoopLockedError: Another runner holds the lease.
    """
    with loop.lease(root):
        state = loop.LoopState.load(root)
        if state.next_batch_start_index != batch["start"]:
            raise RuntimeError(
                f"the loop cursor is at {state.next_batch_start_index}, not at this batch's "
                f"start {batch['start']}: another runner processed it; nothing was changed"
            )
        retrain = None
        if decision["retrain"]:
            if retrain_outcome is None:
                retrain = {"triggered_run_id": trigger_run_id, "awaited": False}
            else:
                retrain = loop.retrain_summary(retrain_outcome, retrain_outcome.get("run_dir"))
                retrain["triggered_run_id"] = trigger_run_id
        outcome = loop.BatchOutcome(
            loop.BatchWindow(batch["start"], batch["end"]),
            batch["batch_uri"],
            decision["drift_status"],
            decision.get("drifted_share"),
            decision["monitor_run_dir"],
            retrain,
        )
        entry = loop.advance(
            state,
            outcome,
            list(decision["recent_batches"]),
            root=root,
            model_uri=model_uri,
            dag_run_id=dag_run_id,
        )
    return entry


# ---- the training DAG -------------------------------------------------------------------------


def ensure_prepared_data(
    prepare: bool,
    *,
    source: str | None = None,
    n_synthetic: int = 30_000,
    initial_fraction: float = 0.2,
    target: str = "<30",
) -> dict[str, Any]:
    """Prepare the splits when asked; in any case check they exist and summarise them.

    Raises:
        FileNotFoundError: ``prepare`` is off and no prepared data (manifest) exists.
    """
    from healthpredict.data.split import SplitParams, read_manifest
    from healthpredict.data.split import prepare as prepare_splits

    data_dir = layout.processed_data()
    if prepare:
        params = SplitParams(initial_fraction=initial_fraction, target=target)
        manifest = prepare_splits(source, params=params, n_synthetic=n_synthetic)
    else:
        try:
            manifest = read_manifest(data_dir)
        except storage.StorageError:
            raise FileNotFoundError(
                f"no prepared data at {data_dir} (manifest.json missing): trigger with "
                "prepare_data=true, or run `healthpredict data prepare` first"
            ) from None
    return {
        "data_dir": data_dir,
        "data_source": manifest["data_source"],
        "rows": {name: split["rows"] for name, split in manifest["splits"].items()},
    }


def check_registration(prepared: Mapping[str, Any], model_name: str | None = None) -> dict:
    """Check that the training run registered its model and that the champion is sound.

    Raises:
        healthpredict.runs.NotebookRunError: Required scraps are missing.
        healthpredict.mlops.registry.ModelNotFoundError: The version the run reported does not exist.
        RuntimeError: The run says it promoted its model, but the champion is another version.
    """
    registry = _registry()
    scraps = read_run_scraps(prepared)
    name = model_name or get_settings().model_name
    info = registry.get_model_info(f"models:/{name}/{scraps['model_version']}")
    champion = registry.alias_version(name, registry.CHAMPION)
    if champion is None:
        raise RuntimeError(f"registered model {name!r} has no champion after training")
    if scraps["promoted"] and champion != info.version:
        raise RuntimeError(
            f"the run promoted version {info.version} but the champion is version {champion}"
        )
    return {
        "model_version": info.version,
        "promoted": bool(scraps["promoted"]),
        "champion_version": champion,
        "test_roc_auc": scraps["test_roc_auc"],
        "run_dir": prepared["run_dir"],
    }


def as_uri_list(value: str | Sequence[str] | None) -> list[str]:
    """``retraining_data_path`` as a list: one URI, a comma-separated string, or a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(v) for v in value if str(v).strip()]


def record_retraining(prepared: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    """Read the retrain run's decision and leave it where the monitoring DAG looks for it.

    Raises:
        healthpredict.runs.NotebookRunError: Required scraps are missing.
    """
    scraps = read_run_scraps(prepared)
    outcome = {
        "decision": scraps["decision"],
        "promoted": bool(scraps["promoted"]),
        "reason": scraps["reason"],
        "challenger_version": scraps["challenger_version"],
        "champion_version": scraps["champion_version"],
        "mlflow_run_id": scraps["mlflow_run_id"],
        "holdout_path": scraps["holdout_path"],
        "run_dir": prepared["run_dir"],
        "retraining_data_path": prepared["parameters"]["retraining_data_path"],
        "dag_run_id": run_id,
    }
    storage.write_json(retrain_result_uri(run_id), outcome)
    return outcome


# ---- the deployment DAG -----------------------------------------------------------------------


def champion(model_name: str | None = None) -> dict[str, str]:
    """Version and pinned URI of the champion.

    Raises:
        healthpredict.mlops.registry.ModelNotFoundError: The model has no champion.
    """
    registry = _registry()
    info = registry.get_model_info(registry.champion_uri(model_name))
    return {"version": info.version, "model_uri": info.model_uri}


def deployment_record_uri(run_id: str) -> str:
    """``<storage>/deployments/<run id>.json``: what a deployment run did (or would have done)."""
    return storage.join(get_settings().storage, "deployments", f"{safe_name(run_id, 200)}.json")


def record_deployment(run_id: str, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into the run's deployment record (``steps`` are merged per step)."""
    uri = deployment_record_uri(run_id)
    record = storage.read_json(uri) if storage.exists(uri) else {"dag_run_id": run_id}
    steps = {**record.get("steps", {}), **fields.pop("steps", {})}
    record.update(fields, steps=steps, updated_at=_iso(_utc_now()))
    storage.write_json(uri, record)
    return record


def deployment_step(step: str, version: str, params: Mapping[str, Any], run_id: str) -> list:
    """Run (or, with ``params["dry_run"]``, only record) one step of the deployment.

    Raises:
        healthpredict.mlops.deploy.DeploymentError: A command failed or is not installed.
        ValueError: The registry is not set (``ecr_registry`` param or ``HP_ECR_REGISTRY``).
    """
    from healthpredict.mlops import deploy

    registry = params["ecr_registry"]
    if not registry:
        raise ValueError("no image registry: set the ecr_registry param or HP_ECR_REGISTRY")
    commands = deploy.deployment_steps(
        version,
        registry,
        params["image_name"],
        params["k8s_dir"],
        params["namespace"],
        kube_context=params["kube_context"] or None,
        deployment=params["deployment_name"],
        container=params["container_name"],
        rollout_timeout=params["rollout_timeout"],
    )[step]
    dry_run = bool(params["dry_run"])
    records = deploy.run_commands(commands, dry_run=dry_run, cwd=project_root(), log=log.info)
    record_deployment(
        run_id,
        dry_run=dry_run,
        version=str(version),
        image=deploy.image_ref(registry, params["image_name"], version),
        steps={step: records},
    )
    return records
