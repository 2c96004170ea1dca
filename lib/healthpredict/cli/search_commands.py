"""The search spread over separate workers: ``search-study create`` and ``search-worker``.

A study is made once, then any number of ``search-worker`` processes (on any machines that reach
its storage) fill it; ``healthpredict train --study-name`` refits, tests and registers its best
trial. The training DAG's ``search_tasks`` does the same with mapped Airflow tasks.
"""

from __future__ import annotations

import json

import typer

from healthpredict.cli.options import field_option
from healthpredict.cli.output import print_error
from healthpredict.core.stages import TrainParams

study_app = typer.Typer(
    help="Optuna studies searched by separate workers (see search-worker).", no_args_is_help=True
)


STUDY = typer.Option(..., "--study", help="Name of the Optuna study the workers share.")
STUDY_STORAGE = field_option(TrainParams, "study_storage", aliases=["--storage"])
SEARCH_FAMILIES = field_option(TrainParams, "families")


def _search_stage(**values) -> TrainParams:
    """The search's stage parameters from command options (refused like ``train``'s)."""
    from pydantic import ValidationError

    values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    try:
        return TrainParams(**values)
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from None


def study_create_command(
    study: str = STUDY,
    study_storage: str = STUDY_STORAGE,
    families: list[str] = SEARCH_FAMILIES,
    n_trials: int = field_option(TrainParams, "n_trials"),
    seed: int = field_option(TrainParams, "seed"),
    cv_folds: int = field_option(TrainParams, "cv_folds"),
) -> None:
    """Create the study search workers share (again: reused if its settings agree); print its name.

    Then start `healthpredict search-worker` processes on it (any machines that reach the
    storage) and finally `healthpredict train --study-name NAME` to refit, test and register
    its best trial.
    """
    from healthpredict.pipelines.training import create_search_study

    stage = _search_stage(
        study_storage=study_storage,
        families=families,
        n_trials=n_trials,
        seed=seed,
        cv_folds=cv_folds,
    )
    try:
        typer.echo(create_search_study(study, stage))
    except ValueError as exc:
        print_error(exc)
        raise typer.Exit(1) from None


def search_worker_command(
    study: str = STUDY,
    worker: int = typer.Option(
        ...,
        "--worker",
        min=0,
        help="This worker's index (0, 1, ...): seeds its sampler, tags its trials.",
    ),
    n_trials: int = typer.Option(..., "--n-trials", min=1, help="Trials this worker runs."),
    budget: int = typer.Option(
        None, min=1, help="Trials of all workers together (sampler start-up; default: --n-trials)."
    ),
    study_storage: str = STUDY_STORAGE,
    data_dir: str = field_option(TrainParams, "data_dir"),
    families: list[str] = SEARCH_FAMILIES,
    seed: int = field_option(TrainParams, "seed"),
    cv_folds: int = field_option(TrainParams, "cv_folds"),
    target: str = field_option(TrainParams, "target"),
) -> None:
    """Run trials of a shared study (made by `search-study create`) on the prepared splits.

    Start several, as separate processes or on several machines (a PostgreSQL --storage);
    each pulls trials from the study until its --n-trials are done. Prints a JSON summary.
    """
    from healthpredict.core.storage import StorageError
    from healthpredict.modeling.studies import StudyNotFoundError
    from healthpredict.pipelines.training import SEARCH_JOB_FIELDS, run_search_worker

    stage = _search_stage(
        data_dir=data_dir,
        families=families,
        n_trials=budget or n_trials,
        study_storage=study_storage,
        seed=seed,
        cv_folds=cv_folds,
        target=target,
    )
    job = {
        "study_name": study,
        "worker": worker,
        "n_trials": n_trials,
        "params": stage.model_dump(mode="json", include=set(SEARCH_JOB_FIELDS)),
    }
    try:
        summary = run_search_worker(job)
    except (StudyNotFoundError, StorageError, ValueError) as exc:
        print_error(exc)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(summary))


def register(app: typer.Typer) -> None:
    """Add ``search-study`` and ``search-worker`` to the ``healthpredict`` command."""
    study_app.command("create")(study_create_command)
    app.add_typer(study_app, name="search-study")
    app.command("search-worker")(search_worker_command)
