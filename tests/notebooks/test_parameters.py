"""Parameters cell parsing and checking: fast, no kernel."""

from __future__ import annotations

import time
from pathlib import Path

import jupytext
import numpy as np
import pytest
from typer.testing import CliRunner

from healthpredict.cli import app
from healthpredict.runs import ParameterError, run
from healthpredict.runs.contracts import REQUIRED_SCRAPS, check_scraps
from healthpredict.runs.parameters import (
    merge_parameters,
    parse_parameters,
    parse_parameters_source,
)

FIXTURES = Path(__file__).parent / "fixtures"
PROJECT_NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

CELL = """
n_trials = 20  # Optuna trials
learning_rate = 0.1  # step size
name: str = "hp"  # model name
enabled = True  # switch
families = ["lr", "rf"]  # model families
options = {"a": 1}  # extra options
maybe = None  # anything goes
threshold = -0.5  # negative literal
multi = [
    1,
    2,
]  # a multi-line list
"""


def test_parse_reads_names_defaults_and_comments():
    params = {p.name: p for p in parse_parameters_source(CELL)}
    assert params["n_trials"].default == 20
    assert params["n_trials"].comment == "Optuna trials"
    assert params["name"].default == "hp"
    assert params["threshold"].default == -0.5
    assert params["multi"].default == [1, 2]
    assert params["multi"].comment == "a multi-line list"
    assert list(params) == [
        "n_trials", "learning_rate", "name", "enabled", "families", "options", "maybe",
        "threshold", "multi",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "source, fragment",
    [
        ("x = compute()  # no", "must be a literal"),
        ("import os", "only `name = literal"),
        ("a.b = 1", "plain name"),
        ("x = (", "invalid Python"),
    ],
)
def test_parse_rejects_non_literal_cells(source, fragment):
    with pytest.raises(ParameterError, match="parameters cell"):
        parse_parameters_source(source, where="nb: parameters cell")
    with pytest.raises(ParameterError) as info:
        parse_parameters_source(source)
    assert fragment in str(info.value)


def test_merge_checks_types_and_lists_valid_parameters():
    declared = parse_parameters_source(CELL)
    merged = merge_parameters(declared, {"n_trials": 5, "learning_rate": 1, "maybe": [1]})
    assert merged["n_trials"] == 5
    assert merged["learning_rate"] == 1.0 and isinstance(merged["learning_rate"], float)
    assert merged["maybe"] == [1]
    assert merged["families"] == ["lr", "rf"]
    assert merge_parameters(declared, {"name": Path("/x")})["name"] == "/x"
    assert type(merge_parameters(declared, {"n_trials": np.int64(7)})["n_trials"]) is int
    assert merge_parameters(declared, {"families": ("a",)})["families"] == ["a"]

    bad = {
        "n_trial": 5,  # typo
        "n_trials": "5",  # str for int
        "enabled": 1,  # int for bool
        "learning_rate": True,  # bool for float
        "families": "lr",  # str for list
        "options": [1],  # list for dict
        "name": None,  # None for str
    }
    with pytest.raises(ParameterError) as info:
        merge_parameters(declared, bad, where="nb.py")
    message = str(info.value)
    assert "unknown parameter 'n_trial'" in message
    for name in ("n_trials", "enabled", "learning_rate", "families", "options", "name"):
        assert f"parameter {name!r} must be" in message
    assert "valid parameters:" in message
    assert "n_trials = 20  # Optuna trials" in message
    assert "maybe = None  # anything goes" in message


def test_bad_parameters_fail_fast_without_a_kernel(hp_env):
    rendered = hp_env / "rendered"
    start = time.monotonic()
    with pytest.raises(ParameterError) as info:
        run(FIXTURES / "records.py", {"nn": 5})
    assert time.monotonic() - start < 1.0
    assert "unknown parameter 'nn'" in str(info.value)
    assert "n = 3  # how many items to count" in str(info.value)
    with pytest.raises(ParameterError, match="must be float"):
        run(FIXTURES / "records.py", {"ratio": "high"})
    with pytest.raises(ParameterError, match="set by the runner"):
        run(FIXTURES / "records.py", {"run_dir": "/tmp/x"})
    assert not rendered.exists() or not any(rendered.iterdir())


def test_notebook_without_parameters_cell_is_an_error(hp_env):
    with pytest.raises(ParameterError, match="no parameters cell"):
        run(FIXTURES / "no_params.py")
    assert not (hp_env / "rendered").exists()


def test_cli_bad_parameter_exits_2_with_valid_list(hp_env):
    result = CliRunner().invoke(
        app, ["run", str(FIXTURES / "records.py"), "-p", "n", '"three"', "-p", "colour", "red"]
    )
    assert result.exit_code == 2
    assert "parameter 'n' must be int" in result.output
    assert "unknown parameter 'colour'" in result.output
    assert "label = 'fixture'  # a string parameter" in result.output


def test_cli_unknown_notebook_exits_2(hp_env):
    result = CliRunner().invoke(app, ["run", "no_such_notebook"])
    assert result.exit_code == 2
    assert "no notebook 'no_such_notebook'" in result.output


def test_contract_checks():
    scraps = {name: 1 for name in REQUIRED_SCRAPS["03_drift_monitor"]}
    scraps["drift_status"] = "NO_DRIFT"
    assert check_scraps("03_drift_monitor", scraps) == []
    scraps["drift_status"] = "drift?"
    assert (
        "expected one of 'DRIFT_DETECTED', 'NO_DRIFT'"
        in check_scraps("03_drift_monitor", scraps)[0]
    )
    del scraps["mlflow_run_id"], scraps["report_paths"]
    problems = check_scraps("03_drift_monitor", scraps)
    assert problems[0] == "required scraps missing: report_paths, mlflow_run_id"
    assert check_scraps("some_other_notebook", {}) == []
    assert check_scraps("x", {"a": 1}, required=["a", "b"]) == ["required scraps missing: b"]


@pytest.mark.parametrize("path", sorted(PROJECT_NOTEBOOKS.glob("[0-9]*.py")), ids=lambda p: p.name)
def test_project_notebooks_declare_documented_parameters(path):
    """Every pipeline notebook: healthpredict kernelspec, a parameters cell, a comment per line."""
    nb = jupytext.read(path)
    assert nb.metadata.get("kernelspec", {}).get("name") == "healthpredict", "jupytext header"
    params = parse_parameters(nb, where=str(path))
    assert params, "the parameters cell declares nothing"
    undocumented = [p.name for p in params if not p.comment]
    assert not undocumented, f"parameters without a trailing comment: {undocumented}"
