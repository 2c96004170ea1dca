"""The package's layers hold: import-linter's contracts pass, and a violating import is caught.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``) and ``make lint`` runs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(project: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(project / "lib")}
    cmd = [str(LINT_IMPORTS), "--no-cache"]
    return subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture()
def package_copy(tmp_path: Path) -> Path:
    """A copy of the package and its contracts, to break on purpose."""
    shutil.copytree(ROOT / "lib" / "healthpredict", tmp_path / "lib" / "healthpredict")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _add_import(module: Path, line: str) -> None:
    text = module.read_text()
    anchor = "from __future__ import annotations\n"
    assert anchor in text
    module.write_text(text.replace(anchor, anchor + line + "\n", 1))


def test_the_package_keeps_its_contracts(package_copy):
    done = _lint(package_copy)
    assert done.returncode == 0 and "0 broken" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        # a lower layer reaching up: the storage layer importing the notebook engine
        ("core/storage.py", "import healthpredict.runs.runner", "Layers"),
        # modeling must stay free of MLflow logging
        ("modeling/features.py", "from healthpredict.mlops import registry", "Layers"),
        # the API image must not pull the training or monitoring code
        ("serving/records.py", "import healthpredict.monitoring", "Serving"),
    ],
)
def test_a_violating_import_is_caught(package_copy, module, line, contract):
    _add_import(package_copy / "lib" / "healthpredict" / module, f"{line}  # noqa")
    done = _lint(package_copy)
    assert done.returncode != 0, done.stdout
    assert contract in done.stdout and "BROKEN" in done.stdout, done.stdout
