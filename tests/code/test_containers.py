"""The podman argv the serving image is built with, without running podman."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from healthpredict.mlops.containers import (
    STANDIN_BASE,
    ContainerError,
    Podman,
    _alive,
    model_dir_version,
    serving_build_argv,
    serving_tag,
)


def _model_dir(tmp_path, info):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_info.json").write_text(json.dumps(info))
    return folder


def test_the_build_bakes_the_model_folder_and_names_its_version(tmp_path):
    model = _model_dir(tmp_path, {"version": "7"})
    podman = Podman(tmp_path / "store")
    argv = serving_build_argv(podman, model, serving_tag(7), root=tmp_path)
    assert argv[:2] == ["env", f"CONTAINERS_CONF={podman.conf}"]
    pairs = {(a, b) for a, b in zip(argv, argv[1:], strict=False)}
    assert ("--build-context", f"model={model.resolve()}") in pairs
    assert ("--build-arg", f"BASE_IMAGE={STANDIN_BASE}") in pairs
    assert ("--build-arg", "MODEL_VERSION=7") in pairs
    assert ("-t", "healthpredict-api:v7") in pairs
    assert ("--target", "baked") in pairs and ("--format", "docker") in pairs
    assert ("--ignorefile", str(tmp_path / "serving" / "Dockerfile.dockerignore")) in pairs
    assert "--pull=never" in argv and argv[-1] == str(tmp_path)


def test_a_model_folder_without_a_version_is_refused(tmp_path):
    with pytest.raises(ContainerError, match="names no model version"):
        model_dir_version(_model_dir(tmp_path, {"name": "HealthPredict"}))
    with pytest.raises(ContainerError, match="export-model"):
        model_dir_version(tmp_path / "nowhere")


def test_alive_tells_a_running_process_from_an_exited_one():
    proc = subprocess.Popen(["sleep", "30"])
    try:
        assert _alive(proc.pid)
        proc.kill()
        proc.wait()
        assert not _alive(proc.pid)
    finally:
        proc.kill()
    assert _alive(os.getpid())
