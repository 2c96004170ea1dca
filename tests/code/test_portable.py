"""Portable records: run.json, the re-use index, the HTML and manifests name no machine folder.

A path under the storage root is written ``<storage>/...``, under the rendered folder
``<rendered>/...``, under the repository relative to it; reading a record back gives this
machine's paths again, also after the folders were moved (another machine).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest

from healthpredict.core import portable as pt
from healthpredict.core.settings import get_settings, project_root

REPO = project_root()
RECORDS = Path(__file__).resolve().parents[1] / "notebooks" / "fixtures" / "records.py"
ODD = "in put #1 é%20.txt"  # spaces, '#', percent-encoding look-alike, non-ASCII


def _roots(base: Path, monkeypatch, storage: str = "var", rendered: str = "rendered") -> None:
    monkeypatch.setenv("HP_STORAGE", str(base / storage))
    monkeypatch.setenv("HP_RENDERED_DIR", str(base / rendered))
    get_settings.cache_clear()


@pytest.fixture
def roots(tmp_path, monkeypatch):
    _roots(tmp_path, monkeypatch)
    yield tmp_path
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("var/processed_data/test.csv", "<storage>/processed_data/test.csv"),
        ("var", "<storage>"),
        (f"var/inputs/{ODD}", f"<storage>/inputs/{ODD}"),
        ("rendered/20260101T000000Z-01_eda-abcdef/run.json", "<rendered>/20260101T000000Z-01_eda-abcdef/run.json"),
        ("var/./a//b/../c.csv", "<storage>/a/c.csv"),  # normalised first
        ("var2/x.csv", "var2/x.csv"),  # a sibling with the same prefix is not the storage
    ],
)  # fmt: skip
def test_local_paths_under_the_roots_round_trip(roots, rel, expected):
    path = str(roots) + "/" + rel
    written = pt.portable(path)
    if not expected.startswith("<"):
        assert written == path  # outside every root: kept as it is
        return
    assert written == expected and str(roots) not in written
    assert pt.resolve(written) == os.path.normpath(path)
    assert pt.portable(written) == written  # idempotent


def test_repository_home_and_foreign_values(roots):
    notebook = str(REPO / "notebooks" / "01_eda.py")
    assert pt.portable(notebook) == "notebooks/01_eda.py"
    assert pt.resolve("notebooks/01_eda.py") == "notebooks/01_eda.py"  # text stays text
    assert pt.resolve_path("notebooks/01_eda.py") == notebook
    cached = os.path.expanduser("~/.cache/healthpredict/dataset_diabetes.zip")
    assert pt.portable(cached) == "~/.cache/healthpredict/dataset_diabetes.zip"
    assert pt.resolve("~/.cache/healthpredict/dataset_diabetes.zip") == cached
    for value in (
        "s3://bucket/var/x.csv",
        "https://archive.ics.uci.edu/static/public/296/x.zip",
        "models:/HealthPredict@champion",
        r"C:\Users\ana\data set.csv",
        "/srv/elsewhere/data.csv",  # a file the user keeps elsewhere: still readable as is
        "synthetic:30000",
        "drift: 9.1% of the monitored columns drifted (threshold 3.0%)",
    ):
        assert pt.portable(value) == value
        assert pt.resolve_path(pt.portable(value)) in (value, str(REPO / value))
    assert pt.resolve_path(r"C:\Users\ana\data set.csv") == r"C:\Users\ana\data set.csv"


def test_paths_inside_text_uris_and_trees(roots):
    data = str(roots / "var" / "processed_data" / "test.csv")
    text = f"{data}: no such file (see {roots}/rendered/x/run.json)"
    assert (
        pt.portable(text)
        == "<storage>/processed_data/test.csv: no such file (see <rendered>/x/run.json)"
    )
    assert pt.resolve(pt.portable(text)) == text
    uri = (roots / "var" / "mlartifacts" / "1").as_uri()
    assert pt.portable(uri) == "file://<storage>/mlartifacts/1"
    tree = {"inputs": {data: "ab12"}, "paths": [data, 3, None], "n": 1.5}
    written = pt.portable_tree(tree)
    assert str(roots) not in json.dumps(written)
    assert pt.resolve_tree(written) == tree


def test_the_deepest_root_wins_and_an_s3_storage_resolves(tmp_path, monkeypatch):
    # The rendered folder inside the storage: its files are <rendered>/...; the storage's others
    # <storage>/...; the default layout (./var in the repository) gives <storage>, not var/...
    _roots(tmp_path, monkeypatch, storage="var", rendered="var/rendered")
    assert pt.portable(str(tmp_path / "var/rendered/r/run.json")) == "<rendered>/r/run.json"
    assert (
        pt.portable(str(tmp_path / "var/monitoring/state.json"))
        == "<storage>/monitoring/state.json"
    )
    assert pt.portable(str(REPO / "var" / "a.csv"), storage=str(REPO / "var")) == "<storage>/a.csv"
    assert pt.resolve("<storage>/batches/b.csv", storage="s3://bucket/prefix/") == (
        "s3://bucket/prefix/batches/b.csv"
    )
    get_settings.cache_clear()


def test_odd_folder_names_round_trip(tmp_path, monkeypatch):
    base = tmp_path / "my runs (1)+[x] é"  # spaces, regex metacharacters, non-ASCII
    _roots(base, monkeypatch)
    path = str(base / "var" / "processed_data" / ODD)
    assert pt.portable(path) == f"<storage>/processed_data/{ODD}"
    assert pt.resolve(pt.portable(path)) == path
    assert pt.portable(f"read '{path}' twice") == f"read '<storage>/processed_data/{ODD}' twice"
    get_settings.cache_clear()


@pytest.mark.slow
def test_a_run_writes_no_machine_folder_and_reads_back_on_another(
    hp_env, tmp_path_factory, monkeypatch
):
    """One real kernel run under a temporary storage; then the folders move (another machine)."""
    from healthpredict.runs import reuse, run
    from healthpredict.runs.gallery import build_gallery
    from healthpredict.runs.record import resolve_record

    data = hp_env / "var" / "inputs" / ODD
    data.parent.mkdir(parents=True)
    data.write_text("twelve bytes")
    result = run(RECORDS, {"input_path": str(data)}, progress=False)
    run_dir = Path(result.run_dir)
    build_gallery()

    written = {
        name: path.read_text()
        for name, path in {
            "run.json": run_dir / "run.json",
            "html": run_dir / "records.html",
            "index.json": hp_env / "rendered" / "index.json",
            "gallery": hp_env / "rendered" / "index.html",
        }.items()
    }
    assert {name: str(hp_env) in text for name, text in written.items()} == dict.fromkeys(
        written, False
    )
    prov = json.loads(written["run.json"])
    assert prov["parameters"]["input_path"] == f"<storage>/inputs/{ODD}"
    assert prov["inputs"]["input_path"] == {f"<storage>/inputs/{ODD}": result.provenance["inputs"]["input_path"][str(data)]}  # fmt: skip
    assert prov["scraps"]["report_paths"]["fixture"] == f"<rendered>/{run_dir.name}/reports/fixture_report.html"  # fmt: skip
    assert f"VISIBLE-INPUT &lt;storage&gt;/inputs/{ODD}" in written["html"]
    executed = nbformat.read(run_dir / "records.ipynb", as_version=4)
    assert executed.metadata["healthpredict"] == prov
    # The kernel itself was given the absolute path (it runs in another folder).
    assert executed.metadata["papermill"]["parameters"]["input_path"] == str(data)

    # Read back: this machine's paths, the files they name.
    back = resolve_record(prov)
    assert back == result.provenance
    assert Path(back["scraps"]["report_paths"]["fixture"]).is_file()
    assert all(Path(p).is_file() for p in back["inputs"]["input_path"])

    # Another machine: the same folders elsewhere. The record reads right there, and the same
    # run (same notebook, parameters in portable form, input bytes) is re-used, not executed.
    other = tmp_path_factory.mktemp("other machine")
    for folder in ("var", "rendered"):
        shutil.copytree(hp_env / folder, other / folder)
    _roots(other, monkeypatch)
    moved = other / "var" / "inputs" / ODD
    again = run(RECORDS, {"input_path": str(moved)}, progress=False)
    assert again.reused and again.run_dir == str(other / "rendered" / run_dir.name)
    assert again.provenance["parameters"]["input_path"] == str(moved)
    report = Path(again.scraps["report_paths"]["fixture"])
    assert report.is_file() and report.is_relative_to(other)
    found = reuse.find_reusable(str(other / "rendered"), prov["cache_key"])
    assert found is not None and found["html"] == str(other / "rendered" / run_dir.name / "records.html")  # fmt: skip


@pytest.mark.slow  # splitting the real data: ~30 s on two busy cores
def test_the_manifest_names_its_source_and_files_portably(hp_env, real_zip):
    from healthpredict.data.split import prepare, read_manifest

    source = hp_env / "var" / "raw" / "dataset_diabetes.zip"
    source.parent.mkdir(parents=True)
    shutil.copyfile(real_zip, source)
    prepare(str(source))
    text = (hp_env / "var" / "processed_data" / "manifest.json").read_text()
    assert str(hp_env) not in text
    manifest = read_manifest()
    assert manifest["source"] == "<storage>/raw/dataset_diabetes.zip"
    assert pt.resolve(manifest["source"]) == str(source)
    for split in manifest["splits"].values():
        assert split["uri"] == f"<storage>/processed_data/{split['file']}"
        assert Path(pt.resolve(split["uri"])).is_file()
