"""Killed notebook runs stay visible: ``run.json`` says running from the start, the gallery tells.

A real notebook run in a child process is killed with SIGKILL half-way; its folder keeps the
``running`` record and the partial notebook, and the gallery lists it as killed. A run of this
very process is live, so it shows as running until it ends and its final record replaces the
running one. The liveness rule is checked on real processes (alive, reaped, zombie, reused pid).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from typer.testing import CliRunner

from healthpredict.cli import app
from healthpredict.core import storage
from healthpredict.runs import papermill_task, record, reuse, run
from healthpredict.runs.gallery import build_gallery

# The last cell waits for a file: the test decides when the run ends (or kills it before).
NOTEBOOK = """# ---
# jupyter:
#   kernelspec:
#     display_name: Health Predict
#     language: python
#     name: healthpredict
# ---

# %% tags=["parameters"]
marker = ""  # file written when the last cell starts
release = ""  # the last cell waits until this file exists (at most 120 s)

# %%
from healthpredict.runs.scraps import record

record("data_source", "synthetic")
print("FIRST", "CELL", "DONE")  # joined in the output only, not in the source

# %%
import time
from pathlib import Path

Path(marker).write_text("started")
deadline = time.monotonic() + 120
while release and not Path(release).exists() and time.monotonic() < deadline:
    time.sleep(0.1)
print("END", "OF", "RUN")
"""
NAME = "killable"


class _Rows(HTMLParser):
    """Rows of the gallery table (run id, class, links) and the filter's labels."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict] = {}
        self.filters: list[str] = []
        self._row: dict | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-run-id" in attrs:
            self._row = {"class": attrs.get("class"), "links": []}
            self.rows[attrs["data-run-id"]] = self._row
        elif tag == "a" and self._row is not None:
            self._row["links"].append(attrs["href"])
        elif tag == "input" and attrs.get("name") == "show":
            self.filters.append(attrs["id"])


def _gallery(rendered: str | Path) -> tuple[_Rows, str]:
    page = storage.read_text(build_gallery(str(rendered)))
    parser = _Rows()
    parser.feed(page)
    return parser, page


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
    return value


def _ppid(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2 :].split()[1])


def _kernels_of(pid: int) -> list[int]:
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _ppid(int(p.name)) == pid
    ]


@pytest.fixture
def notebook(hp_env) -> Path:
    path = hp_env / f"{NAME}.py"
    path.write_text(NOTEBOOK)
    return path


def _params(tmp: Path, tag: str) -> dict[str, str]:
    return {"marker": str(tmp / f"{tag}.started"), "release": str(tmp / f"{tag}.release")}


def _first_cell_saved(folder: Path) -> bool:
    ipynb = folder / f"{NAME}.ipynb"
    return ipynb.exists() and "FIRST CELL DONE" in ipynb.read_text()


def _in_thread(notebook: Path, params: dict, **kwargs) -> tuple[threading.Thread, dict]:
    """Run the notebook in this process, in a thread; the outcome lands in the returned dict."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["result"] = run(notebook, params, progress=False, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test through outcome
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.slow
def test_a_killed_run_is_listed_as_killed_with_its_partial_notebook(hp_env, notebook):
    rendered = hp_env / "rendered"
    killed_params = _params(hp_env, "killed")
    args = [a for k, v in killed_params.items() for a in ("-p", k, v)]
    child = subprocess.Popen(
        [sys.executable, "-m", "healthpredict.cli", "run", str(notebook), *args],
        cwd=hp_env,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=(hp_env / "child.log").open("w"),
        start_new_session=True,
    )
    kernels: list[int] = []
    try:
        _wait(lambda: Path(killed_params["marker"]).exists(), 180, "the last cell to start")
        (killed_dir,) = rendered.glob(f"*-{NAME}-*")
        _wait(lambda: _first_cell_saved(killed_dir), 30, "papermill to save the first cell")
        # Alive: the record names the child, and the gallery shows it running.
        prov = json.loads((killed_dir / "run.json").read_text())
        assert prov["status"] == "running" and prov["ended_at"] is None
        assert prov["owner"]["pid"] == child.pid
        assert prov["owner"]["host"] == socket.gethostname()
        assert prov["owner"]["process_start"] is not None
        rows, _ = _gallery(rendered)
        assert rows.rows[prov["run_id"]]["class"] == "run-running"

        kernels = _kernels_of(child.pid)
        os.killpg(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        for pid in [child.pid, *kernels]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # The folder keeps the running record and the partial notebook (first cell, not the last).
    assert json.loads((killed_dir / "run.json").read_text()) == prov
    partial = (killed_dir / f"{NAME}.ipynb").read_text()
    assert "FIRST CELL DONE" in partial and "END OF RUN" not in partial
    assert not (killed_dir / f"{NAME}.html").exists()

    # A live run of this very process, alongside: running while it runs, ok once done.
    live_params = _params(hp_env, "live")
    thread, outcome = _in_thread(notebook, live_params)
    _wait(lambda: Path(live_params["marker"]).exists() or outcome, 180, "the live run to start")
    assert not outcome, outcome
    (live_dir,) = set(rendered.glob(f"*-{NAME}-*")) - {killed_dir}
    live = json.loads((live_dir / "run.json").read_text())
    assert live["status"] == "running" and live["owner"]["pid"] == os.getpid()
    rows, page = _gallery(rendered)
    assert {r: v["class"] for r, v in rows.rows.items()} == {
        prov["run_id"]: "run-killed",
        live["run_id"]: "run-running",
    }
    killed_row = rows.rows[prov["run_id"]]
    assert [unquote(h) for h in killed_row["links"]] == [
        f"{killed_dir.name}/{NAME}.ipynb",
        f"{killed_dir.name}/run.json",
    ]
    assert "partial ipynb</a>" in page
    assert f"its runner (pid {child.pid} on {socket.gethostname()}) is gone" in page
    assert "show-killed" in rows.filters and "show-running" in rows.filters
    assert "2 runs (0 failed, 1 killed, 1 running" in page

    Path(live_params["release"]).write_text("go")
    thread.join(timeout=120)
    assert outcome["result"].succeeded, outcome
    done = json.loads((live_dir / "run.json").read_text())
    assert done["status"] == "succeeded" and done["ended_at"] and done["scraps"]
    assert done["owner"]["pid"] == os.getpid()

    # The CLI rebuilds the same page: the killed run once, as killed; the finished one as ok.
    cli = CliRunner().invoke(app, ["gallery", "--rendered-dir", str(rendered)])
    assert cli.exit_code == 0, cli.output
    page = Path(cli.stdout.strip()).read_text()
    rows = _Rows()
    rows.feed(page)
    assert {r: v["class"] for r, v in rows.rows.items()} == {
        prov["run_id"]: "run-killed",
        live["run_id"]: "run-ok",
    }
    for href in rows.rows[prov["run_id"]]["links"]:
        assert (rendered / unquote(href)).is_file(), href

    # Re-use never picks the killed run, even with the index rebuilt from the run.json files.
    reuse.rebuild_index(str(rendered))
    assert reuse.find_reusable(str(rendered), prov["cache_key"]) is None
    found = reuse.find_reusable(str(rendered), done["cache_key"])
    assert found is not None and found["run_dir"] == str(live_dir)


@pytest.mark.slow
def test_an_s3_run_says_running_at_its_final_place_from_the_start(hp_env, notebook, s3_bucket):
    target = storage.join(s3_bucket, "runs", "one")
    params = _params(hp_env, "s3")
    thread, outcome = _in_thread(notebook, params, run_dir=target)
    _wait(lambda: Path(params["marker"]).exists() or outcome, 180, "the S3 run to start")
    assert not outcome, outcome
    running = storage.read_json(storage.join(target, "run.json"))
    assert running["status"] == "running" and running["owner"]["pid"] == os.getpid()
    assert running["run_dir"] == target and running["local_dir"] != target
    # The files come at the end; meanwhile the gallery says where the partial ones are.
    rows, page = _gallery(storage.join(s3_bucket, "runs"))
    assert [v["class"] for v in rows.rows.values()] == ["run-running"]
    assert f"its partial files are in {running['local_dir']}" in page

    Path(params["release"]).write_text("go")
    thread.join(timeout=120)
    assert outcome["result"].succeeded, outcome
    final = storage.read_json(storage.join(target, "run.json"))
    assert final["status"] == "succeeded" and final["started_at"] == running["started_at"]
    assert storage.exists(storage.join(target, f"{NAME}.ipynb"))


@pytest.mark.slow
def test_the_papermill_operator_path_writes_running_then_the_outcome(hp_env, notebook):
    import papermill

    params = _params(hp_env, "pm")
    Path(params["release"]).write_text("go")  # no wait: the run goes straight through
    prepared = papermill_task.prepare_notebook_run(
        str(notebook), params, run_id="manual__1", dag_id="dag", task_id="run_it"
    )
    running = papermill_task.start_notebook_run(prepared)
    on_disk = storage.read_json(storage.join(prepared["run_dir"], "run.json"))
    assert on_disk == record.portable_record(running) and running["status"] == "running"
    assert running["executor"]["dag_id"] == "dag" and running["executor"]["task_id"] == "run_it"
    assert (
        running["owner"]["pid"] == os.getpid() and running["started_at"] == prepared["prepared_at"]
    )
    rows, _ = _gallery(hp_env / "rendered")
    assert [v["class"] for v in rows.rows.values()] == ["run-running"]

    papermill.execute_notebook(
        prepared["input_ipynb"],
        prepared["output_ipynb"],
        parameters=prepared["parameters"],
        kernel_name=prepared["kernel_name"],
        progress_bar=False,
    )
    final = papermill_task.finish_notebook_run(prepared)
    assert final["status"] == "succeeded"
    assert storage.read_json(final["run_json"])["status"] == "succeeded"
    rows, _ = _gallery(hp_env / "rendered")
    assert [v["class"] for v in rows.rows.values()] == ["run-ok"]


# What an Airflow worker does for a PapermillOperator task: the pre_execute hook's record, then
# papermill writing the output notebook after every cell (here in a child process, killed).
_WORKER = """
import json, sys
import papermill
from healthpredict.runs import papermill_task

prepared = json.loads(sys.argv[1])
papermill_task.start_notebook_run(prepared)
papermill.execute_notebook(
    prepared["input_ipynb"], prepared["output_ipynb"], parameters=prepared["parameters"],
    kernel_name=prepared["kernel_name"], progress_bar=False, request_save_on_cell_execute=True,
)
"""


@pytest.mark.slow
def test_a_killed_papermill_task_is_listed_as_killed(hp_env, notebook):
    params = _params(hp_env, "worker")
    prepared = papermill_task.prepare_notebook_run(
        str(notebook), params, run_id="scheduled__1", dag_id="dag", task_id="run_it"
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER, json.dumps(prepared)],
        env=os.environ.copy(),
        stderr=(hp_env / "worker.log").open("w"),
        start_new_session=True,
    )
    kernels: list[int] = []
    try:
        _wait(lambda: Path(params["marker"]).exists(), 180, "the task's last cell to start")
        folder = Path(prepared["run_dir"])
        _wait(lambda: _first_cell_saved(folder), 30, "papermill to save the first cell")
        kernels = _kernels_of(worker.pid)
        os.killpg(worker.pid, signal.SIGKILL)
        assert worker.wait(timeout=30) == -signal.SIGKILL
    finally:
        for pid in [worker.pid, *kernels]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    prov = storage.read_json(folder / "run.json")
    assert prov["status"] == "running" and prov["owner"]["pid"] == worker.pid
    assert prov["executor"]["task_id"] == "run_it"
    rows, page = _gallery(hp_env / "rendered")
    (row,) = rows.rows.values()
    assert row["class"] == "run-killed"
    assert f"{folder.name}/{NAME}.ipynb" in [unquote(h) for h in row["links"]]


# The liveness rule, on real processes.


def _spawn() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_owner_alive_tells_live_dead_zombie_and_reused_pids():
    me = record.process_owner()
    assert me["pid"] == os.getpid() and record.owner_alive(me) is True

    child = _spawn()
    try:
        owner = record.process_owner(child.pid)
        assert record.owner_alive(owner) is True
        os.kill(child.pid, signal.SIGKILL)
        # Killed but not reaped: a zombie still holds the pid.
        _wait(
            lambda: Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] == "Z",
            10,
            "zombie",
        )
        assert record.owner_alive(owner) is False
    finally:
        child.kill()
        child.wait()
    assert record.owner_alive(owner) is False  # reaped: no such pid

    assert record.owner_alive({**me, "process_start": me["process_start"] + 1}) is False  # reused
    assert record.owner_alive({**me, "boot_id": "another-boot"}) is False  # rebooted since
    assert record.owner_alive({**me, "host": "elsewhere"}) is None  # cannot be told from here
    assert record.owner_alive(None) is None


def test_live_status_rule():
    started = record.utc_now() - timedelta(hours=1)
    base = {"status": "running", "started_at": record.iso(started)}
    me = record.process_owner()
    gone = {**me, "process_start": me["process_start"] + 1}
    elsewhere = {**me, "host": "worker-7"}
    assert record.live_status({**base, "owner": me}) == "running"
    assert record.live_status({**base, "owner": gone}) == "killed"
    # Another host: running until STALE_AFTER without a sign of life, then stale.
    late = started + record.STALE_AFTER + timedelta(minutes=1)
    assert record.live_status({**base, "owner": elsewhere}) == "running"
    assert record.live_status({**base, "owner": elsewhere}, now=late) == "stale"
    saved = started + timedelta(hours=2)  # papermill saved the notebook later: still alive
    assert record.live_status({**base, "owner": elsewhere}, heartbeat=saved, now=late) == "running"
    assert record.live_status({**base}, now=late) == "stale"  # no owner at all
    assert record.live_status({"status": "succeeded", "owner": gone}) == "succeeded"
    assert record.live_status({"status": "failed"}) == "failed"


class _TaskInstance:
    """What the operator's hooks use of Airflow's task instance: the prepare task's XCom."""

    def __init__(self, prepared: dict) -> None:
        self.prepared = prepared

    def xcom_pull(self, task_ids: str) -> dict:
        assert task_ids == "prepare"
        return {"nb": self.prepared}


def test_the_operator_hook_writes_the_running_record_before_the_kernel(hp_env, notebook):
    prepared = papermill_task.prepare_notebook_run(
        str(notebook), _params(hp_env, "hook"), run_id="manual__2", dag_id="dag", task_id="t"
    )
    hooks = papermill_task.papermill_args("prepare", "nb")
    hooks["pre_execute"]({"ti": _TaskInstance(prepared)})
    written = storage.read_json(storage.join(prepared["run_dir"], "run.json"))
    assert written["status"] == "running" and written["owner"]["pid"] == os.getpid()
    assert written["executor"] == {"engine": papermill_task.ENGINE, **prepared["airflow"]}
