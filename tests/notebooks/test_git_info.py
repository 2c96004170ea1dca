"""The dirty flag of the provenance: code changes count, run outputs under rendered/ do not."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from healthpredict.core.gitinfo import git_info

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="no git binary")


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_rendered_outputs_do_not_make_the_checkout_dirty(tmp_path):
    (tmp_path / "rendered" / "samples").mkdir(parents=True)
    (tmp_path / "rendered" / "samples" / "index.html").write_text("old")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert git_info(tmp_path)["dirty"] is False

    (tmp_path / "rendered" / "samples" / "index.html").write_text("regenerated")
    (tmp_path / "rendered" / "new-run").mkdir()
    (tmp_path / "rendered" / "new-run" / "run.json").write_text("{}")
    assert git_info(tmp_path)["dirty"] is False

    (tmp_path / "code.py").write_text("x = 2\n")
    info = git_info(tmp_path)
    assert info["dirty"] is True and len(info["commit"]) == 40
