"""One Optuna study on PostgreSQL filled by separate worker processes, then refit and registered.

The workers are ``healthpredict search-worker`` processes, as the training DAG's mapped search
tasks (or machines) would start them; ``train(study_name=...)`` then does what the notebook task
does after them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from healthpredict.core.stages import TrainParams
from healthpredict.mlops.train import TrainOptions, train
from healthpredict.modeling.models import split_trial_params
from healthpredict.modeling.search import run_worker
from healthpredict.modeling.studies import (
    SearchSettings,
    StudyNotFoundError,
    create_study,
    load_study,
    worker_shares,
)
from healthpredict.pipelines.training import create_search_study

BUDGET = 8
# Logistic regression only: the fastest family (a trial < 1 s); the sharing is the point.
FAMILIES = ["logreg"]
SEED = 3
QUIET = TrainOptions(importance_repeats=0, progress=False)
WORKER_TIMEOUT_S = 300


def worker_command(study: str, storage: str, worker: int, n_trials: int, data_dir: str) -> list:
    families = [arg for family in FAMILIES for arg in ("--families", family)]
    return [
        sys.executable,
        "-m",
        "healthpredict.cli",
        "search-worker",
        *("--study", study, "--storage", storage, "--data-dir", data_dir),
        *("--worker", str(worker), "--n-trials", str(n_trials), "--budget", str(BUDGET)),
        *("--seed", str(SEED), *families),
    ]


def run_workers(commands: list[list[str]], cwd: Path) -> list[tuple[int, str, str]]:
    """Start every command at once, wait for all; each is killed if it outlives the timeout."""
    procs = [
        subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd in commands
    ]
    try:
        outs = [proc.communicate(timeout=WORKER_TIMEOUT_S) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [(proc.returncode, out, err) for proc, (out, err) in zip(procs, outs, strict=True)]


@pytest.mark.slow
def test_two_worker_processes_share_one_postgres_study(postgres, data_dir, hp_env):
    from mlflow import MlflowClient

    url = postgres.create_database("optuna_two_workers")
    stage = TrainParams(
        data_dir=data_dir, families=FAMILIES, n_trials=BUDGET, study_storage=url, seed=SEED
    )
    study_name = create_search_study("shared", stage)
    create_search_study("shared", stage)  # a retried planning task reuses it

    shares = worker_shares(BUDGET, 2)
    commands = [
        worker_command(study_name, url, i, share, data_dir) for i, share in enumerate(shares)
    ]
    results = run_workers(commands, cwd=hp_env)
    for code, _, err in results:
        assert code == 0, err[-3000:]
    summaries = [json.loads(out.strip().splitlines()[-1]) for _, out, _ in results]
    assert [s["trials"] for s in summaries] == shares

    study = load_study(study_name, url)
    trials = study.trials
    assert len(trials) == BUDGET  # none lost
    assert sorted(t.number for t in trials) == list(range(BUDGET))  # none duplicated
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    assert Counter(t.user_attrs["worker"] for t in trials) == dict(enumerate(shares))
    # Different sampler seeds per worker: no parameter set was evaluated twice.
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == BUDGET

    result = train(
        TrainParams(
            data_dir=data_dir,
            families=FAMILIES,
            study_storage=url,
            study_name=study_name,
            seed=SEED,
        ),
        QUIET,
    )
    family, best = split_trial_params(study.best_trial.params)
    assert (result.best_family, result.best_params) == (family, best)
    assert result.search_val_roc_auc == study.best_value
    assert result.study_name == study_name and len(result.trials) == BUDGET
    client = MlflowClient()
    run = client.get_run(result.mlflow_run_id)
    assert run.data.metrics["search_best_val_roc_auc"] == pytest.approx(study.best_value)
    # The study's counts, not the unused parameters.
    assert (run.data.params["n_trials"], run.data.params["n_workers"]) == (str(BUDGET), "2")
    assert run.data.tags["study_name"] == study_name
    assert run.data.params["best_family"] == family
    version = client.get_model_version(result.model_info.name, result.model_version)
    assert version.run_id == result.mlflow_run_id
    nested = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{result.mlflow_run_id}'"
    )
    assert sorted(int(r.data.tags["optuna.trial"]) for r in nested) == list(range(BUDGET))


def test_training_on_a_missing_or_empty_study_names_it(data_dir, hp_env):
    storage = str(hp_env / "optuna" / "journal.log")
    params = TrainParams(data_dir=data_dir, families=FAMILIES, study_storage=storage, seed=SEED)
    with pytest.raises(StudyNotFoundError, match=r"no Optuna study 'nowhere' in storage .*journal"):
        train(params.model_copy(update={"study_name": "nowhere"}), QUIET)
    create_search_study("empty", params)
    with pytest.raises(StudyNotFoundError, match=r"'empty' .* has no completed trial"):
        train(params.model_copy(update={"study_name": "empty"}), QUIET)
    with pytest.raises(ValueError, match=r"'empty' was made with other settings .*'seed': 3"):
        train(params.model_copy(update={"study_name": "empty", "seed": 4}), QUIET)


def test_a_study_is_reused_only_with_the_same_settings(hp_env):
    settings = SearchSettings(
        families=FAMILIES, study_storage=str(hp_env / "journal.log"), progress=False
    )
    first = create_study("retry", settings)
    assert create_study("retry", settings)._study_id == first._study_id
    with pytest.raises(ValueError, match=r"'retry' was made with other settings"):
        create_study("retry", SearchSettings(**{**settings.__dict__, "seed": 7}))


def test_a_restarted_worker_fails_its_dead_trial_and_runs_only_the_rest(data_dir, hp_env):
    from healthpredict.modeling.fitting import load_training_splits

    settings = SearchSettings(
        families=FAMILIES,
        n_trials=3,
        study_storage=str(hp_env / "journal.log"),
        seed=SEED,
        progress=False,
    )
    study = create_study("restarted", settings)
    # What a worker killed mid-trial leaves: one finished trial and one RUNNING.
    _, frames = load_training_splits(data_dir)
    args = (frames["initial_train"], frames["validation"], "<30")
    assert run_worker("restarted", settings, *args, worker=0, n_trials=1) == 1
    dead = study.ask()
    dead.set_user_attr("worker", 0)

    assert run_worker("restarted", settings, *args, worker=0, n_trials=3) == 2
    states = Counter(t.state.name for t in study.get_trials())
    assert states["FAIL"] == 1 and states["COMPLETE"] + states["PRUNED"] == 3, states
    assert study.get_trials()[dead.number].state.name == "FAIL"
    # Its share is done: started once more, it runs nothing.
    assert run_worker("restarted", settings, *args, worker=0, n_trials=3) == 0
    assert len(study.get_trials()) == 4


def test_budget_shares_cover_it_and_leave_no_worker_idle():
    assert worker_shares(8, 2) == [4, 4]
    assert worker_shares(7, 3) == [3, 2, 2]
    assert worker_shares(2, 5) == [1, 1]
    with pytest.raises(ValueError, match="n_trials and n_workers must be >= 1"):
        worker_shares(0, 2)
