"""The ``healthpredict`` command line: one typed command per pipeline stage."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from healthpredict.cli import data_commands, search_commands, token_commands
from healthpredict.cli.data_commands import prepare_or_exit, print_data_source, print_manifest
from healthpredict.cli.options import field_option, stage_options
from healthpredict.cli.output import console, print_error
from healthpredict.core import layout
from healthpredict.core.constants import DRIFT_DETECTED, REFERENCE_SPLIT, champion_uri
from healthpredict.core.settings import get_settings
from healthpredict.core.stages import LoopParams, MonitorParams, RetrainParams, TrainParams
from healthpredict.core.storage import is_s3

# Each command imports what it needs inside its body: importing it all at start-up takes ~5 s
# instead of ~1.7 s (measured), and `--help` or a usage error should answer at once.
app = typer.Typer(
    help="Health Predict: notebook-driven readmission-risk pipeline.", no_args_is_help=True
)
app.add_typer(data_commands.data_app, name="data")
app.add_typer(token_commands.token_app, name="api-token")
search_commands.register(app)


@app.command("loop")
def loop_command(
    batch_size: int = field_option(LoopParams, "batch_size"),
    max_batches: int = field_option(LoopParams, "max_batches"),
    retrain_window: int = field_option(LoopParams, "retrain_window"),
    label_delay_batches: int = field_option(LoopParams, "label_delay_batches"),
    label_timeout_batches: int = field_option(LoopParams, "label_timeout_batches"),
    label_source: str = field_option(LoopParams, "label_source"),
    data_dir: str = field_option(LoopParams, "data_dir"),
    model_uri: str = field_option(LoopParams, "model_uri"),
) -> None:
    """Monitor the stream batch by batch, labels arriving late; retrain when the monitor asks.

    Exit code 1: a check or a batch failed (the loop state did not move; the message names the
    batch and the problem, its failed notebook run is in the rendered folder); 3: another runner
    holds the lease (nothing was done).
    """
    from healthpredict import runs
    from healthpredict.core import storage
    from healthpredict.data.split import load_split
    from healthpredict.mlops.tracking import TrackingUnavailableError
    from healthpredict.modeling.runtime.model_meta import ModelNotFoundError
    from healthpredict.monitoring.lease import LoopLockedError
    from healthpredict.monitoring.state import LoopState, remaining_batches

    # Failures with a message written for a person (bad batch, missing model, service down...);
    # anything else is a bug and keeps its traceback.
    expected = (
        runs.NotebookError,
        storage.StorageError,
        ModelNotFoundError,
        TrackingUnavailableError,
        ValueError,
    )
    try:
        future_rows = len(load_split("future_data", data_dir))
        state = LoopState.load()
        total = remaining_batches(future_rows, state.next_batch_start_index, batch_size)
        total = min(total, max_batches) if max_batches else total
        params = LoopParams(
            batch_size=batch_size,
            max_batches=max_batches,
            retrain_window=retrain_window,
            label_delay_batches=label_delay_batches,
            label_timeout_batches=label_timeout_batches,
            label_source=label_source,
            data_dir=data_dir,
            model_uri=model_uri,
        )
        summaries = _run_loop_with_progress(total, params)
    except LoopLockedError as exc:
        print_error(exc)
        raise typer.Exit(3) from None
    except expected as exc:
        print_error(exc)
        raise typer.Exit(1) from None
    if summaries:
        _print_batch_table(summaries)
    for o, _ in summaries:
        typer.echo(json.dumps(o.as_dict()))


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _auc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _run_loop_with_progress(
    total: int, params: LoopParams, retrain_params: dict | None = None
) -> list:
    """Run the loop under one live display: the batches line, each notebook's cells line.

    ``retrain_params`` are extra parameters of the retrain notebook (the demo's search size).

    Returns:
        ``(BatchOutcome, BatchSummary)`` of each batch.
    """
    from rich.markup import escape

    from healthpredict.pipelines.local_loop import LoopOptions, run_loop, summarize
    from healthpredict.runs.runner import progress_display

    done: list = []
    with progress_display(console) as display:
        task = display.add_task("monitoring loop", total=total, unit="batches")

        def on_batch(outcome) -> None:
            summary = summarize(outcome)
            done.append((outcome, summary))
            display.console.print(
                f"[bold]batch {len(done)}/{total}[/bold] rows {summary.rows}: "
                f"{summary.drift_status} (drifted share {_share(summary.drifted_share)}), "
                f"est. ROC AUC {_auc(summary.estimated_roc_auc)} -> {summary.decision}"
            )
            for reason in summary.reasons:
                display.console.print(f"  {escape(reason)}", highlight=False)
            display.advance(task)

        run_loop(params, LoopOptions(retrain_params=retrain_params or {}), on_batch=on_batch)
    return done


def _print_batch_table(summaries: list) -> None:
    """The loop's batches: drift, decision, champion and its ROC AUC, one row each.

    Compact (short headers, no vertical rules) so that it fits 80 columns, a log's width.
    """
    from rich import box
    from rich.table import Table

    table = Table(
        title="Monitored batches", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0)
    )
    right = {"#", "share", "est. AUC", "real AUC"}
    for col in ("#", "rows", "drift", "share", "decision", "model", "est. AUC", "real AUC"):
        table.add_column(col, justify="right" if col in right else "left", no_wrap=True)
    for number, (_, s) in enumerate(summaries, start=1):
        drift = s.drift_status == DRIFT_DETECTED
        table.add_row(
            str(number),
            s.rows,
            "[red]drift[/red]" if drift else "no drift",
            _share(s.drifted_share),
            s.decision,
            "-" if s.champion_version is None else f"v{s.champion_version}",
            _auc(s.estimated_roc_auc),
            _auc(s.realised_roc_auc),
        )
    console.print(table)
    console.print(
        "model: the champion after the batch; est. AUC: its ROC AUC estimated on the batch (no "
        "labels needed); real AUC: measured on the labels that arrived since the batch before",
        style="dim",
    )


@app.command("demo")
def demo(
    source: str = typer.Option(
        None,
        help="Data source (default: HP_UCI_SOURCE, i.e. 'auto': the real UCI zip bundled in the "
        "repository); 'synthetic' for the offline generator.",
    ),
    # A first run's budget on the real data (measured in the README): the search sizes of
    # `healthpredict train` / `retrain` take about four times as long on 2 cores.
    n_trials: int = typer.Option(8, help="Optuna trials of the initial training."),
    retrain_trials: int = typer.Option(
        4, min=1, help="Optuna trials of each retraining the monitor asks for."
    ),
    batches: int = typer.Option(
        6,
        help="Batches of the future stream to monitor (bounded for time; on the real data the "
        "first retraining comes at batch 5).",
    ),
    batch_size: int = field_option(LoopParams, "batch_size"),
) -> None:
    """The whole pipeline on embedded defaults: prepare, EDA, train, monitoring loop, gallery."""
    from healthpredict import runs
    from healthpredict.core.settings import get_settings
    from healthpredict.runs.gallery import build_gallery

    settings = get_settings()
    console.rule("1/4 prepare data")
    manifest = prepare_or_exit(source)
    print_manifest(manifest)
    _start_demo_loop_afresh()
    console.rule("2/4 exploratory data analysis")
    eda = runs.run("01_eda", {})
    console.print(f"EDA: {eda.run_dir}")
    console.rule("3/4 train with hyper-parameter search")
    trained = runs.run("02_train_hpo", {"n_trials": n_trials})
    scraps = trained.scraps
    console.print(
        f"champion candidate: {scraps['best_family']} test ROC AUC {scraps['test_roc_auc']:.3f}, "
        f"version {scraps['model_version']} (promoted: {scraps['promoted']})"
    )
    if not scraps["promoted"]:
        # A champion from an earlier run (perhaps on other data) must not monitor this one.
        from healthpredict.mlops.registry import promote

        promote(settings.model_name, scraps["model_version"])
        console.print(f"demo: version {scraps['model_version']} made champion for this run")
    console.rule(f"4/4 monitoring loop ({batches} batches of {batch_size})")
    summaries = _run_loop_with_progress(
        batches,
        LoopParams(batch_size=batch_size, max_batches=batches),
        {"n_trials": retrain_trials},
    )
    gallery = build_gallery()
    from healthpredict.mlops.registry import champion_uri, get_model_info

    champion = get_model_info(champion_uri())
    console.rule("done")
    print_data_source(manifest)
    if summaries:
        _print_batch_table(summaries)
    drifted = sum(o.drift_status == DRIFT_DETECTED for o, _ in summaries)
    console.print(f"batches monitored: {len(summaries)}, drift detected in {drifted}")
    console.print(f"gallery:  {gallery}")
    console.print("Evidently: make monitoring-ui (the monitored batches over time)")
    console.print(f"MLflow:   mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}")
    console.print(
        f"champion: models:/{champion.name}/{champion.version} ({champion.params.get('family', '')})"
    )


def _start_demo_loop_afresh() -> None:
    """Set aside the loop state of an earlier run: its cursor meant other prepared data."""
    from healthpredict.core import storage

    state = layout.loop_state()
    if storage.exists(state):
        kept = storage.join(
            layout.monitoring_dir(), f"state-before-demo-{time.strftime('%Y%m%dT%H%M%S')}.json"
        )
        storage.write_bytes(kept, storage.read_bytes(state))
        storage.delete(state)
        console.print(f"demo: the earlier loop state was kept as {kept}; the loop starts again")
    # The earlier run's labels may clash with this run's data (same encounter ids).
    from healthpredict.monitoring.labels import set_aside

    if moved := set_aside(time.strftime("%Y%m%dT%H%M%S")):
        console.print(f"demo: {len(moved)} earlier label file(s) set aside")


def _parse_value(text: str):
    """A ``-p`` value: JSON when it parses (``5``, ``0.3``, ``true``, ``[1,2]``), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _notebook_and_params(tokens: list[str]) -> tuple[str, dict]:
    """Split ``NOTEBOOK [-p NAME VALUE]...`` (any order) into the notebook and its parameters."""
    notebook, params, i = None, {}, 0
    while i < len(tokens):
        token = tokens[i]
        if token in ("-p", "--param"):
            if len(tokens) - i < 3:
                raise typer.BadParameter(f"{token} needs two values: NAME VALUE")
            params[tokens[i + 1]] = _parse_value(tokens[i + 2])
            i += 3
            continue
        if token.startswith("-"):
            raise typer.BadParameter(f"no such option: {token}")
        if notebook is not None:
            raise typer.BadParameter(f"unexpected extra argument {token!r}")
        notebook, i = token, i + 1
    if notebook is None:
        raise typer.BadParameter("missing NOTEBOOK")
    return notebook, params


# -p NAME VALUE is parsed by hand: typer cannot declare a repeatable two-value option.
@app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run_command(
    ctx: typer.Context,
    notebook: str = typer.Argument(
        ...,
        metavar="NOTEBOOK [-p NAME VALUE]...",
        help="Notebook name in notebooks/ (01_eda) or a .py path.",
    ),
    run_dir: str = typer.Option(
        None, help="Run folder or s3:// URI (default: <rendered_dir>/<time>-<name>-<id>)."
    ),
    force: bool = typer.Option(False, "--force", help="Execute even if an identical run exists."),
    show_code: bool = typer.Option(False, "--show-code", help="Keep code cells in the HTML."),
    kernel: str = typer.Option(None, help="Jupyter kernel (default: HP_KERNEL_NAME)."),
) -> None:
    """Execute a notebook with papermill; print its run folder, then its scraps as JSON.

    Parameters: -p NAME VALUE, repeatable; VALUE is JSON when it parses (5 is an int). The
    pipeline notebooks take their stage's parameters (healthpredict.core.stages): `healthpredict
    train --help`, `retrain --help` and `monitor --help` list them with defaults.

    Exit code 1: the run failed (its files are still written); 2: bad parameters or notebook.
    """
    from healthpredict import runs

    notebook, parameters = _notebook_and_params([notebook, *ctx.args])
    try:
        result = runs.run(
            notebook,
            parameters,
            run_dir,
            kernel=runs.Kernel(name=kernel),
            force=force,
            hide_code=not show_code,
        )
    except runs.NotebookRunError as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except (runs.ParameterError, runs.NotebookNotFoundError) as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    typer.echo(result.run_dir)
    typer.echo(json.dumps(result.scraps, indent=2, default=str))


def _execute(notebook: str, parameters: dict, force: bool):
    """Run a pipeline notebook through the runner; exit 1 when the run failed, 2 on bad input."""
    from healthpredict import runs

    try:
        return runs.run(notebook, parameters, force=force)
    except runs.NotebookRunError as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except runs.ParameterError as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _run_stage(notebook: str, parameters: dict, force: bool) -> None:
    """Run a pipeline notebook; print its run folder and scraps."""
    result = _execute(notebook, parameters, force)
    typer.echo(result.run_dir)
    typer.echo(json.dumps(result.scraps, indent=2, default=str))


FORCE = typer.Option(False, "--force", help="Execute even if an identical run exists.")


@app.command("train")
@stage_options(TrainParams)
def train_command(params: TrainParams, force: bool = FORCE) -> None:
    """Search, evaluate and register a model by running notebooks/02_train_hpo.py."""
    _run_stage(TrainParams.notebook, params.as_parameters(), force)


@app.command("retrain")
@stage_options(
    RetrainParams, aliases={"retraining_data_path": ["--batch"]}, required=["retraining_data_path"]
)
def retrain_command(params: RetrainParams, force: bool = FORCE) -> None:
    """Retrain on new batches and promote through the gate by running notebooks/04_retrain.py.

    Give each labelled raw batch CSV (path or s3:// URI) with --retraining-data-path (or
    --batch), repeated.
    """
    given = params.as_parameters()
    given |= {
        name: _absolute(given[name])
        for name in ("retraining_data_path", "gate_data_path", "data_dir", "holdout_output_path")
    }
    _run_stage(RetrainParams.notebook, given, force)


def _absolute(uri: str | list[str] | None) -> str | list[str] | None:
    """Local paths made absolute (one or a list): the kernel runs in notebooks/, not here."""
    if isinstance(uri, list):
        return [_absolute(u) for u in uri]
    return uri if uri is None or is_s3(uri) else str(Path(uri).expanduser().resolve())


MONITOR_ALIASES = {
    "new_data_path": ["--batch"],
    "reference_data_path": ["--reference"],
    "mlflow_model_uri": ["--model-uri"],
    "evidently_reports_path": ["--reports-dir"],
}


@app.command("monitor")
@stage_options(MonitorParams, aliases=MONITOR_ALIASES, required=["new_data_path"])
def monitor_command(params: MonitorParams, force: bool = FORCE) -> None:
    """Check a batch for drift with notebooks/03_drift_monitor.py; the last stdout line is the status.

    Prints DRIFT_DETECTED or NO_DRIFT last and exits 0 in both cases; exits non-zero only when
    the run failed (bad batch, missing model, ...).
    """
    given = params.as_parameters()
    held_out = params.model_reference_path
    # The reference and the model are named explicitly (not left to the notebook's defaults)
    # so the run's input hashes and its record cover them.
    given |= {
        "new_data_path": _absolute(params.new_data_path),
        "reference_data_path": _absolute(
            params.reference_data_path or layout.split_csv(REFERENCE_SPLIT)
        ),
        "model_reference_path": _absolute(held_out),
        "mlflow_model_uri": params.mlflow_model_uri or champion_uri(get_settings().model_name),
        "evidently_reports_path": _absolute(params.evidently_reports_path),
    }
    result = _execute(MonitorParams.notebook, given, force)
    for reason in result.scraps.get("drift_reasons") or []:
        console.print(f"  {reason}", markup=False, highlight=False)
    typer.echo(result.run_dir)
    typer.echo(result.scraps["drift_status"])


@app.command("gallery")
def gallery_command(
    rendered_dir: str = typer.Option(None, help="Folder of the runs (default: HP_RENDERED_DIR)."),
) -> None:
    """Rebuild rendered/index.html (one row per notebook run) and print its path."""
    from healthpredict.runs.gallery import build_gallery

    typer.echo(build_gallery(rendered_dir))


@app.command("export-model")
def export_model_command(
    out: str = typer.Option(..., help="New or empty folder to write (the image's MODEL_DIR)."),
    model_uri: str = typer.Option(
        None, help="Registry URI, e.g. models:/HealthPredict/3 (default: the champion)."
    ),
) -> None:
    """Write a registered model plus model_info.json to a folder the serving image can bake in."""
    from healthpredict.mlops.registry import champion_uri
    from healthpredict.serving.load_errors import ModelLoadError
    from healthpredict.serving.model_store import export_model

    try:
        path = export_model(model_uri or champion_uri(), out)
    except (ModelLoadError, FileExistsError) as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    typer.echo(path)
