"""A quiet console: no spurious papermill or kernel warnings, one line per notebook, a summary.

The causes are pinned one by one (fast): papermill's own parser reads every pipeline
notebook's parameters cell, and a notebook run through the runner neither makes papermill
re-parse its cell nor starts a kernel on plain TCP. Then ``healthpredict demo`` runs as a user
starts it (slow): its whole output holds none of the warnings and ends with the batch table.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest
from papermill.translators import PythonTranslator

from healthpredict.core.stages import STAGES
from healthpredict.runs.parameters import PARAMETERS_TAG
from tests.support.processes import signal_group

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
# What the console printed before: papermill's line parser and ipykernel's transport warning.
NOISE = re.compile(r"WARNING|Unable to parse|unknown parameter")

# A parameters cell papermill's line parser cannot read (a second '=' in a comment) and a cell
# that reports whether its kernel's transport is encrypted.
PROBE = """# %% tags=["parameters"]
level = 1  # >= 1: how loud; None = quiet
run_dir = ""  # set by the runner

# %%
from ipykernel.kernelapp import IPKernelApp

from healthpredict.runs.scraps import record

app = IPKernelApp.instance()
record("level", level)
record("transport", app.transport)
record("encrypted", app.curve_secretkey is not None)
"""


def _isolated_env(base: Path) -> dict[str, str]:
    """This process's environment with storage, MLflow and runs under ``base``."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(
        HP_STORAGE=str(base / "var"),
        HP_MLFLOW_TRACKING_URI=f"sqlite:///{base / 'mlflow.db'}",
        HP_RENDERED_DIR=str(base / "rendered"),
        HP_UCI_SOURCE="synthetic",
    )
    return env


def _cli(args: list[str], base: Path, timeout: float) -> subprocess.CompletedProcess:
    """``healthpredict ARGS`` in its own process group (ended with its kernels on any exit)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "healthpredict.cli", *args],
        cwd=base,
        env=_isolated_env(base),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        signal_group(process.pid, signal.SIGKILL)
        process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.mark.parametrize("notebook", sorted(STAGES))
def test_papermill_reads_every_parameter_of_the_pipeline_notebooks(notebook, caplog):
    """Papermill (the Airflow operator passes it the parameters) must see each one: a line it
    cannot parse is skipped with a warning, and the parameter then called unknown."""
    nb = jupytext.read(NOTEBOOKS / f"{notebook}.py")
    cell = next(c for c in nb.cells if PARAMETERS_TAG in c.metadata.get("tags", []))
    names = [p.name for p in PythonTranslator.inspect(cell)]
    assert names == list(STAGES[notebook].model_fields)
    assert "Unable to parse" not in caplog.text


def test_a_run_neither_reparses_its_cell_nor_talks_plain_tcp(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    done = _cli(["run", str(probe), "-p", "level", "3"], tmp_path, timeout=180)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert not NOISE.search(output), output
    assert '"level": 3' in done.stdout  # the injected parameter reached the kernel
    assert '"transport": "tcp"' in done.stdout and '"encrypted": true' in done.stdout
    # A log (not a terminal) gets a start and an outcome line, with the cells count: the
    # parameters cell, the one injected after it, and the probe.
    assert re.search(r"^running probe \(3 cells\) -> ", done.stderr, re.M), done.stderr
    assert re.search(r"^succeeded probe: 3/3 cells in [\d.]+ s -> ", done.stderr, re.M)


@pytest.mark.slow
def test_demo_console_is_quiet_and_ends_with_the_batch_table(tmp_path):
    args = ["demo", "--source", "synthetic", "--n-trials", "1", "--batches", "1"]
    done = _cli([*args, "--batch-size", "500"], tmp_path, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    noisy = [line for line in output.splitlines() if NOISE.search(line)]
    assert not noisy, noisy
    # one outcome line per notebook run, with its cells
    for notebook in ("01_eda", "02_train_hpo", "03_drift_monitor"):
        assert re.search(rf"^succeeded {notebook}: (\d+)/\1 cells in ", output, re.M), notebook
    assert re.search(r"^batch 1/1 rows 0-500: (NO_DRIFT|DRIFT_DETECTED) ", output, re.M)
    assert "monitoring loop" in output and "1/1 batches" in output
    table = output[output.index("Monitored batches") :]
    header = r"#\s+rows\s+drift\s+share\s+decision\s+model\s+est\. AUC\s+real AUC"
    assert re.search(header, table), table
    # one batch: no labels arrived yet, so no realised ROC AUC
    decision = r"(keep|retrain skipped)"
    row = rf"^\s*1\s+0-500\s+(no drift|drift)\s+\d\.\d\d\s+{decision}\s+v\d+\s+0\.\d{{3}}\s+-\s*$"
    assert re.search(row, table, re.M), table
