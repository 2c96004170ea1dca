"""The notebook runner on a real Jupyter kernel: outputs, provenance, failures, contract, re-use."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import nbformat
import pytest

from healthpredict.core import storage
from healthpredict.runs import NotebookRunError, run
from healthpredict.runs.record import portable_record, resolve_record
from healthpredict.runs.render import render_html
from healthpredict.runs.scraps import read_scraps

FIXTURES = Path(__file__).parent / "fixtures"
RECORDS = FIXTURES / "records.py"
RAISES = FIXTURES / "raises.py"
PARTIAL = FIXTURES / "partial.py"
CLI = Path(sys.executable).with_name("healthpredict")
CODE_MARKER = "A report written into the run folder"  # a comment in records.py

pytestmark = pytest.mark.slow


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Settings pointing at one temporary folder for the whole module (kernel runs are costly)."""
    from healthpredict.core.settings import get_settings

    root = tmp_path_factory.mktemp("runner")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HP_STORAGE", str(root / "var"))
        mp.setenv("HP_RENDERED_DIR", str(root / "rendered"))
        mp.setenv("HP_MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        get_settings.cache_clear()
        yield root
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def data_file(env) -> Path:
    path = env / "input.txt"
    path.write_text("twelve bytes")
    return path


@pytest.fixture(scope="module")
def ok_run(env, data_file):
    return run(RECORDS, {"n": 5, "input_path": str(data_file)})


@pytest.fixture(scope="module")
def failed_run(env):
    with pytest.raises(NotebookRunError) as info:
        run(RAISES, {"message": "kaboom"})
    return info.value


def test_success_writes_files_and_provenance(ok_run, env, data_file):
    run_dir = Path(ok_run.run_dir)
    assert ok_run.status == "succeeded" and not ok_run.reused
    assert run_dir.parent == env / "rendered"
    assert run_dir.name.endswith(ok_run.provenance["run_id"][-6:])
    for name in ("records.ipynb", "records.html", "run.json"):
        assert (run_dir / name).is_file(), name

    prov = json.loads((run_dir / "run.json").read_text())
    # run.json names the run's folder portably; read back, it is the run's own record.
    assert prov == portable_record(ok_run.provenance)
    assert resolve_record(prov) == ok_run.provenance
    assert ok_run.provenance["run_dir"] == str(run_dir)
    assert prov["notebook"] == "records"
    assert prov["notebook_path"] == "tests/notebooks/fixtures/records.py"  # repository-relative
    assert prov["notebook_sha256"] == sha(RECORDS)
    assert prov["parameters"] == {
        "n": 5,
        "ratio": 0.5,
        "label": "fixture",
        "input_path": str(data_file),
        "options": {},
        "run_dir": f"<rendered>/{run_dir.name}",
    }
    assert prov["given_parameters"] == {"n": 5, "input_path": str(data_file)}
    assert prov["inputs"] == {"input_path": {str(data_file): sha(data_file)}}
    assert set(prov["git"]) == {"commit", "dirty"}
    assert prov["git"]["commit"] is None or len(prov["git"]["commit"]) == 40
    env_info = prov["environment"]
    assert env_info["python"] == platform.python_version()
    assert env_info["packages"]["papermill"] == metadata.version("papermill")
    assert env_info["packages"]["healthpredict"] == metadata.version("healthpredict")
    assert {"pandas", "numpy", "scikit-learn", "mlflow", "evidently", "optuna", "jupytext"} <= set(
        env_info["packages"]
    )
    assert prov["kernel_name"] == "healthpredict"
    assert prov["status"] == "succeeded" and prov["error"] is None
    assert prov["data_source"] == "synthetic"
    assert prov["mlflow_run_id"] is None
    assert prov["started_at"] < prov["ended_at"] and prov["duration_s"] > 0
    assert prov["scraps"]["n"] == 5
    assert prov["run_dir"] == f"<rendered>/{run_dir.name}"
    assert len(prov["cache_key"]) == 64

    nb = nbformat.read(run_dir / "records.ipynb", as_version=4)
    assert nb.metadata["healthpredict"] == prov
    assert nb.metadata["papermill"]["input_path"] == prov["notebook_path"]

    page = (run_dir / "records.html").read_text()
    assert 'id="hp-provenance"' in page
    assert prov["notebook_sha256"] in page
    assert "SYNTHETIC DATA" in page
    assert "VISIBLE-OUTPUT n=5 label=fixture chars=12" in page
    assert CODE_MARKER not in page  # code hidden by default
    assert "cdnjs" not in page.split("</head>")[0]  # opens offline


def test_scraps_round_trip(ok_run):
    expected = {
        "data_source": "synthetic",
        "n": 5,
        "ratio": 0.5,
        "flag": True,
        "where": "/tmp/somewhere",
        "array": [0, 1, 2],
        "missing": None,
        "label": "fixture",
        "repeated": 2,  # last value wins
        "run_dir_seen": ok_run.run_dir,
    }
    ours = read_scraps(ok_run.ipynb)
    assert {k: ours[k] for k in expected} == expected
    assert ours["report_paths"] == {
        "fixture": str(Path(ok_run.run_dir, "reports", "fixture_report.html"))
    }
    assert ok_run.scraps == ours

    import scrapbook as sb

    theirs = {name: scrap.data for name, scrap in sb.read_notebook(ok_run.ipynb).scraps.items()}
    # scrapbook cannot hold None (its schema forbids null), so those are ours alone.
    assert theirs == {k: v for k, v in ours.items() if v is not None}


def test_show_code_keeps_sources(ok_run):
    nb = nbformat.read(ok_run.ipynb, as_version=4)
    assert CODE_MARKER in render_html(nb, ok_run.provenance, hide_code=False)


def test_failure_leaves_files_and_raises(failed_run, env):
    result = failed_run.result
    run_dir = Path(result.run_dir)
    assert failed_run.cell == 4 and failed_run.ename == "ValueError"
    assert failed_run.evalue == "kaboom in the fixture"
    message = str(failed_run)
    assert "notebook raises failed at cell 4: ValueError: kaboom in the fixture" in message
    assert str(run_dir) in message

    prov = json.loads((run_dir / "run.json").read_text())
    assert prov["status"] == "failed"
    assert prov["error"]["cell_number"] == 4
    assert prov["error"]["ename"] == "ValueError"
    assert prov["error"]["evalue"] == "kaboom in the fixture"

    nb = nbformat.read(run_dir / "raises.ipynb", as_version=4)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert errors and errors[0]["evalue"] == "kaboom in the fixture"
    assert nb.metadata["healthpredict"]["status"] == "failed"

    page = (run_dir / "raises.html").read_text()
    assert "Failed at cell 4" in page
    assert page.count("kaboom in the fixture") >= 2  # header and traceback
    assert "Traceback" in page
    assert "before the failure" in page  # earlier outputs stay

    index = json.loads((env / "rendered" / "index.json").read_text())
    assert f"<rendered>/{run_dir.name}" not in {e["run_dir"] for e in index["entries"]}
    assert index["entries"]  # the successful runs are there, named portably
    assert all(e["run_dir"].startswith("<rendered>/") for e in index["entries"])


def test_missing_required_scrap_fails_the_run(env):
    with pytest.raises(NotebookRunError) as info:
        run(PARTIAL, contract=["data_source", "drift_status", "n_rows", "model_version"])
    assert info.value.ename == "MissingScraps"
    assert "required scraps missing: n_rows, model_version" in str(info.value)
    prov = json.loads(Path(info.value.result.run_json).read_text())
    assert prov["status"] == "failed"
    assert prov["scraps"] == {"data_source": "synthetic", "drift_status": "NO_DRIFT"}
    assert Path(info.value.result.html).is_file() and Path(info.value.result.ipynb).is_file()


def test_reuse_and_what_invalidates_it(hp_env):
    data = hp_env / "data.txt"
    data.write_text("abc")
    rendered = hp_env / "rendered"

    first = run(RECORDS, {"input_path": str(data)}, progress=False)
    assert not first.reused

    start = time.monotonic()
    again = run(RECORDS, {"input_path": str(data)}, progress=False)
    assert again.reused and again.run_dir == first.run_dir
    assert again.scraps == first.scraps
    assert time.monotonic() - start < 1.0
    runs = lambda: sorted(p.name for p in rendered.iterdir() if p.is_dir())  # noqa: E731
    assert len(runs()) == 1

    changed_param = run(RECORDS, {"input_path": str(data), "n": 4}, progress=False)
    assert not changed_param.reused and changed_param.run_dir != first.run_dir

    data.write_text("abd")  # one byte differs
    changed_input = run(RECORDS, {"input_path": str(data)}, progress=False)
    assert not changed_input.reused
    assert changed_input.provenance["cache_key"] != first.provenance["cache_key"]

    forced = run(RECORDS, {"input_path": str(data)}, force=True, progress=False)
    assert not forced.reused and forced.run_dir != changed_input.run_dir
    assert len(runs()) == 4

    # The index is only a cache of the run.json files: without it, re-use still works.
    (rendered / "index.json").unlink()
    rebuilt = run(RECORDS, {"input_path": str(data)}, progress=False)
    assert rebuilt.reused and rebuilt.run_dir in (changed_input.run_dir, forced.run_dir)
    assert (rendered / "index.json").is_file()


def _cli(*args: str, env_root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HP_RENDERED_DIR": str(env_root / "rendered")}
    env["HP_STORAGE"] = str(env_root / "var")
    return subprocess.run(
        [str(CLI), *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def test_cli_prints_run_dir_then_scraps(ok_run, env, data_file):
    # Same parameters as ok_run, given as text: "-p n 5" must arrive as the int 5 for the run
    # to be recognised as identical (and re-used, so no kernel is needed here).
    done = _cli(
        "run", str(RECORDS), "-p", "n", "5", "-p", "input_path", str(data_file), env_root=env
    )
    assert done.returncode == 0, done.stderr
    first, rest = done.stdout.split("\n", 1)
    assert first == ok_run.run_dir
    assert json.loads(rest) == ok_run.scraps
    assert "reused" in done.stderr


def test_cli_failure_exits_1_with_cell_and_message(env):
    done = _cli("run", str(RAISES), "-p", "message", "cli-boom", env_root=env)
    assert done.returncode == 1
    assert "failed at cell 4: ValueError: cli-boom in the fixture" in done.stderr
    assert done.stdout == ""


def test_run_to_s3(hp_env, s3_bucket):
    from healthpredict.runs import RunResult

    source = storage.join(s3_bucket, "inputs", "data.txt")
    storage.write_text(source, "from s3")
    target = storage.join(s3_bucket, "runs", "first")
    result = run(RECORDS, {"input_path": source}, run_dir=target, progress=False)
    assert isinstance(result, RunResult) and result.run_dir == target
    files = storage.list_uris(target)
    assert {u.rsplit("/", 1)[-1] for u in files} >= {
        "records.ipynb",
        "records.html",
        "run.json",
        "fixture_report.html",
    }
    prov = storage.read_json(result.run_json)
    assert prov["status"] == "succeeded" and prov["ipynb"] == f"{target}/records.ipynb"
    assert prov["inputs"]["input_path"] == {source: storage.sha256(source)}
    assert read_scraps(result.ipynb)["n"] == 3
    assert not Path(prov["local_dir"]).exists()  # the local working copy is cleaned up

    again = run(RECORDS, {"input_path": source}, run_dir=target, progress=False)
    assert again.reused and again.run_dir == target
