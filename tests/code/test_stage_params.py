"""Each stage's parameters: the notebook cell and the CLI options are the stage model's.

The DAG Params are checked against the same models in ``tests/dags/test_stage_params_dags.py``
(it needs Airflow).
"""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest
import typer
from typer.testing import CliRunner

from healthpredict.cli import app
from healthpredict.cli.options import option_name
from healthpredict.core import layout
from healthpredict.core.constants import MIN_BATCH_ROWS, REFERENCE_SPLIT, champion_uri
from healthpredict.core.settings import get_settings
from healthpredict.core.stages import (
    RUN_DIR_PARAMETER,
    STAGES,
    EdaParams,
    LoopParams,
    MonitorParams,
    RetrainParams,
    StageParams,
    TrainParams,
    user_fields,
)
from healthpredict.runs import ParameterError, provenance
from healthpredict.runs.parameters import parse_parameters, validate_stage_parameters

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
# The command of each stage; 01_eda has none of its own (`healthpredict run 01_eda`).
COMMANDS = {TrainParams: "train", RetrainParams: "retrain", MonitorParams: "monitor"}
# Options a command cannot do without, though the notebook has a placeholder default.
REQUIRED = {RetrainParams: {"retraining_data_path"}, MonitorParams: {"new_data_path"}}
# Older spellings that keep working.
ALIASES = {
    RetrainParams: {"retraining_data_path": "--batch"},
    MonitorParams: {
        "new_data_path": "--batch",
        "reference_data_path": "--reference",
        "mlflow_model_uri": "--model-uri",
        "evidently_reports_path": "--reports-dir",
    },
}


def _defaults(model: type[StageParams], include_run_dir: bool = True) -> dict:
    fields = model.model_fields if include_run_dir else user_fields(model)
    return {n: f.get_default(call_default_factory=True) for n, f in fields.items()}


def _options(command_name: str) -> dict:
    command = typer.main.get_command(app).commands[command_name]
    return {p.name: p for p in command.params if p.name not in ("force", "help")}


def test_every_pipeline_notebook_has_a_stage_model():
    notebooks = {p.stem for p in NOTEBOOKS.glob("[0-9]*.py")}
    assert notebooks == set(STAGES)
    assert set(STAGES.values()) == {EdaParams, TrainParams, MonitorParams, RetrainParams}


@pytest.mark.parametrize("model", STAGES.values(), ids=lambda m: m.notebook)
def test_parameters_cell_equals_the_model(model):
    path = NOTEBOOKS / f"{model.notebook}.py"
    cell = {p.name: p.default for p in parse_parameters(jupytext.read(path), where=str(path))}
    assert list(cell) == list(model.model_fields)  # same names, same order
    assert cell == _defaults(model)


@pytest.mark.parametrize("model", COMMANDS, ids=lambda m: m.notebook)
def test_cli_options_equal_the_model(model):
    options = _options(COMMANDS[model])
    assert list(options) == list(user_fields(model))
    required = REQUIRED.get(model, set())
    for name, default in _defaults(model, include_run_dir=False).items():
        option = options[name]
        assert option_name(name) in option.opts, name
        assert option.help == model.model_fields[name].description
        if name in required:
            assert option.required, name
        else:
            assert not option.required and option.default == default, name
    for name, alias in ALIASES.get(model, {}).items():
        assert alias in options[name].opts


def test_loop_options_equal_the_loop_model():
    options = _options("loop")
    assert {n: o.default for n, o in options.items()} == _defaults(LoopParams)
    assert _options("demo")["batch_size"].default == LoopParams().batch_size


def test_stage_check_rejects_unknown_names_and_wrong_types_listing_the_valid_ones():
    bad = {"n_trial": 5, "families": "rf", "n_workers": 0, "timeout_s": "soon"}
    with pytest.raises(ParameterError) as info:
        validate_stage_parameters(TrainParams, bad, where="02_train_hpo.py")
    message = str(info.value)
    assert "unknown parameter 'n_trial'" in message
    assert "parameter 'families' must be list" in message
    assert "parameter 'n_workers' must be greater than or equal to 1" in message
    assert "parameter 'timeout_s' must be float or None" in message
    assert "n_trials = 30  # Optuna trials in all" in message


def test_stage_check_merges_over_the_defaults_without_run_dir_in_the_listing():
    merged = validate_stage_parameters(MonitorParams, {"false_alarm_rate": 1, "n_null_batches": 9})
    assert list(merged) == list(MonitorParams.model_fields)
    assert merged["false_alarm_rate"] == 1.0 and isinstance(merged["false_alarm_rate"], float)
    assert merged[RUN_DIR_PARAMETER] is None and merged["mlflow_model_uri"] is None
    with pytest.raises(ParameterError) as info:
        validate_stage_parameters(MonitorParams, {"nope": 1})
    assert f"\n  {RUN_DIR_PARAMETER} =" not in str(info.value)


class _Ran:
    run_dir = "/runs/x"
    scraps = {"drift_status": "NO_DRIFT"}


@pytest.fixture
def executed(monkeypatch):
    """What the commands hand the runner, captured instead of running a notebook."""
    calls: list[tuple[str, dict]] = []

    def execute(notebook, parameters, force):
        calls.append((notebook, parameters))
        return _Ran()

    monkeypatch.setattr("healthpredict.cli._execute", execute)
    return calls


def test_old_option_spellings_still_work(executed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    done = runner.invoke(app, ["retrain", "--batch", "s3://b/1.csv", "--batch", "s3://b/2.csv"])
    assert done.exit_code == 0, done.output
    old = ["monitor", "--batch", "b.csv", "--reference", "r.csv", "--model-uri", "models:/M/3"]
    done = runner.invoke(app, [*old, "--reports-dir", "reports"])
    assert done.exit_code == 0, done.output
    (retrain, given), (monitor, checked) = executed
    assert retrain == "04_retrain" and given["retraining_data_path"] == [
        "s3://b/1.csv",
        "s3://b/2.csv",
    ]
    assert given == {
        **_defaults(RetrainParams, include_run_dir=False),
        "retraining_data_path": given["retraining_data_path"],
    }
    assert monitor == "03_drift_monitor"
    assert checked["new_data_path"] == str(tmp_path / "b.csv")  # the kernel runs elsewhere
    assert checked["reference_data_path"] == str(tmp_path / "r.csv")
    assert checked["evidently_reports_path"] == str(tmp_path / "reports")
    assert checked["mlflow_model_uri"] == "models:/M/3" and RUN_DIR_PARAMETER not in checked


def test_monitor_defaults_to_the_configured_champion_and_reference(executed, hp_env):
    done = CliRunner().invoke(app, ["monitor", "--new-data-path", "s3://b/x.csv"])
    assert done.exit_code == 0, done.output
    ((_, given),) = executed
    assert given["mlflow_model_uri"] == champion_uri(get_settings().model_name)
    assert given["reference_data_path"] == layout.split_csv(REFERENCE_SPLIT)


def test_commands_refuse_a_missing_batch_and_a_too_small_batch_size(executed):
    runner = CliRunner()
    assert runner.invoke(app, ["monitor"]).exit_code == 2
    assert runner.invoke(app, ["retrain"]).exit_code == 2
    assert runner.invoke(app, ["train", "--n-trials", "0"]).exit_code == 2
    assert runner.invoke(app, ["loop", "--batch-size", str(MIN_BATCH_ROWS - 1)]).exit_code == 2
    assert executed == []


def test_a_default_model_uri_is_pinned_like_an_explicit_one(monkeypatch, tmp_path):
    """None means the configured champion: the re-use key must still follow the alias."""
    monkeypatch.setattr(provenance, "_resolve_model", lambda uri: {uri: "models:/M/7 run r"})
    hashes = provenance.input_hashes({"mlflow_model_uri": None}, tmp_path)
    assert hashes == {
        "mlflow_model_uri": {champion_uri(get_settings().model_name): "models:/M/7 run r"}
    }


def test_retrain_makes_local_paths_absolute(executed, tmp_path, monkeypatch):
    """The kernel runs in notebooks/: a relative batch path would name another file there."""
    monkeypatch.chdir(tmp_path)
    args = ["retrain", "--batch", "b/1.csv", "--batch", "s3://b/2.csv", "--data-dir", "prep"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    ((_, given),) = executed
    assert given["retraining_data_path"] == [str(tmp_path / "b" / "1.csv"), "s3://b/2.csv"]
    assert given["data_dir"] == str(tmp_path / "prep") and given["gate_data_path"] is None
