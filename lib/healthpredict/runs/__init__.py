"""The notebook engine: run parameterized jupytext notebooks with papermill, with provenance.

``run("01_eda", {"split": "validation"})`` checks the parameters, executes the notebook on the
project kernel and writes ``<name>.ipynb``, ``<name>.html`` and ``run.json`` into a run folder
(see :mod:`healthpredict.runs.runner`).
"""

from healthpredict.runs.errors import NotebookError, NotebookRunError, ParameterError
from healthpredict.runs.result import RunResult
from healthpredict.runs.runner import Kernel, NotebookNotFoundError, resolve_notebook, run

__all__ = [
    "Kernel",
    "NotebookError",
    "NotebookNotFoundError",
    "NotebookRunError",
    "ParameterError",
    "RunResult",
    "resolve_notebook",
    "run",
]
