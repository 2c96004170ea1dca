"""uv.lock: agrees with pyproject.toml, covers every extra, names only PyPI, pulls no torch.

The agreement check is ``uv lock --check --offline`` with an empty cache: a lock that matches
its pyproject.toml is validated without the index, so it needs only uv (``make setup`` installs
the pinned one into ``.uv/``), no network.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "uv.lock"
PYPROJECT = ROOT / "pyproject.toml"
PYPI_SIMPLE = "https://pypi.org/simple"
PYPI_FILES = "https://files.pythonhosted.org/"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def lock() -> dict:
    return tomllib.loads(LOCK.read_text())


@pytest.fixture(scope="module")
def uv() -> str:
    pinned = ROOT / ".uv" / "bin" / "uv"
    found = str(pinned) if pinned.exists() else shutil.which("uv")
    if found is None:
        pytest.fail("uv not found: `make setup` installs the pinned uv into .uv/")
    return found


def _lock_check(uv: str, project: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
    env.update(UV_CACHE_DIR=str(cache), UV_PYTHON_DOWNLOADS="never")
    return subprocess.run(
        [uv, "lock", "--check", "--offline", "--python", sys.executable],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_lock_agrees_with_pyproject(uv, tmp_path):
    result = _lock_check(uv, ROOT, tmp_path / "cache")
    assert result.returncode == 0, (
        "pyproject.toml and uv.lock disagree: run `make lock` and commit uv.lock\n" + result.stderr
    )


def test_lock_check_fails_on_a_changed_bound(uv, tmp_path):
    """The check above can fail: any change of a requirement, even one the locked version meets.

    Offline, uv reports it as an unsatisfiable resolution (the index is off); online (make
    lock-check) it says "The lockfile at `uv.lock` needs to be updated".
    """
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(LOCK, project / "uv.lock")
    text = PYPROJECT.read_text()
    assert '"pandas>=2.2,<3"' in text, "update this test: the pandas bound it edits moved"
    (project / "pyproject.toml").write_text(text.replace('"pandas>=2.2,<3"', '"pandas>=2.3,<3"'))
    result = _lock_check(uv, project, tmp_path / "cache")
    assert result.returncode != 0, result.stdout + result.stderr


def test_lock_covers_every_extra(lock):
    extras = set(tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"])
    (project,) = [p for p in lock["package"] if p["name"] == "healthpredict"]
    assert project["source"] == {"editable": "."}
    assert set(project["optional-dependencies"]) == extras


def test_lock_names_only_pypi(lock):
    """No machine's paths or local indexes (file://, /opt/wheels) in a committed lock."""
    for package in lock["package"]:
        if package["name"] == "healthpredict":
            continue
        assert package["source"] == {"registry": PYPI_SIMPLE}, package["name"]
        files = package.get("wheels", []) + ([package["sdist"]] if "sdist" in package else [])
        assert files, package["name"]
        for file in files:
            assert file["url"].startswith(PYPI_FILES), file["url"]
            assert file["hash"].startswith("sha256:"), file["url"]
    assert "file://" not in LOCK.read_text()


def test_lock_pulls_no_torch(lock):
    heavy = {_norm(p["name"]) for p in lock["package"]} & {"torch", "tensorflow", "jax"}
    nvidia = [p["name"] for p in lock["package"] if _norm(p["name"]).startswith("nvidia-")]
    assert not heavy and not nvidia, (heavy, nvidia)


def test_serving_image_pins_equal_the_lock(lock):
    """The serving image installs serving/requirements.txt: the same versions as the lock."""
    locked = {_norm(p["name"]): p["version"] for p in lock["package"]}
    pins = re.findall(
        r"(?m)^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)",
        (ROOT / "serving" / "requirements.txt").read_text(),
    )
    assert pins
    differ = {name: (version, locked.get(_norm(name))) for name, version in pins}
    assert {n: v for n, v in differ.items() if v[0] != v[1]} == {}
