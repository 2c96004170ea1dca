"""PapermillOperator's kernels use the runner's encrypted transport (a quiet task log)."""

from __future__ import annotations

import nbformat
import pytest

from healthpredict.core.settings import get_settings
from healthpredict.runs import papermill_task

WARNING = "Kernel is running over TCP without encryption"


@pytest.fixture
def default_engine():
    """Restores papermill's own default engine after the test."""
    from papermill.engines import papermill_engines

    engine = papermill_engines.get_engine(None)
    yield
    papermill_engines.register(None, engine)


def _run_operator(tmp_path, name: str) -> None:
    from airflow.providers.papermill.operators.papermill import PapermillOperator

    source = tmp_path / f"{name}.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    nbformat.write(nb, source)
    PapermillOperator(
        task_id=name,
        input_nb=str(source),
        output_nb=str(tmp_path / f"{name}.out.ipynb"),
        kernel_name=get_settings().kernel_name,
        language_name="python",
    ).execute(context={})


def test_operator_kernels_are_encrypted(tmp_path, capfd, default_engine):
    _run_operator(tmp_path, "plain")
    # papermill's own engine: the warning this guards against (kernel stderr is inherited)
    assert WARNING in capfd.readouterr().err

    papermill_task.encrypt_operator_kernels()
    _run_operator(tmp_path, "encrypted")
    err = capfd.readouterr().err
    assert WARNING not in err, err[-2000:]
