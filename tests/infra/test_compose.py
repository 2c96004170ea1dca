"""The service stack (docker-compose.yml) and what it must agree with.

Checked without a Docker engine: against the Compose specification's JSON schema (shipped in
the check-jsonschema package, no download at test time), by the real Compose implementation's
offline `config` command when `make tools` installed it, and against .env.example, the
Terraform security group and docs/terraform_guide.md.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY_OVERRIDE = ROOT / "docker-compose.deploy.yml"
ENV_EXAMPLE = ROOT / ".env.example"
GUIDE = ROOT / "docs" / "terraform_guide.md"
USER_DATA = ROOT / "iac" / "templates" / "user_data.sh.tftpl"
INIT_SCRIPT = ROOT / "deploy" / "postgres" / "init-databases.sh"

AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
}
# service -> the port it publishes; the same numbers as local.service_ports in iac/main.tf.
UI_PORTS = {"airflow-apiserver": 8080, "mlflow": 5000, "jupyterlab": 8888, "api": 8000}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            assert key not in pairs, f"{key} twice in .env.example"
            pairs[key.strip()] = value
    return pairs


def _compose_variables(path: Path = COMPOSE) -> set[str]:
    """Names interpolated by Compose: ${NAME}, ${NAME:-x}, ${NAME:?x}; $${...} is literal."""
    text = "\n".join(
        line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    text = text.replace("$$", "")
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


def _published(service: dict) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of each short-syntax port."""
    out = []
    for port in service.get("ports", []):
        parts = str(port).rsplit(":", 2)
        assert len(parts) == 3, f"port {port!r} must name the address it binds to"
        out.append((parts[0], parts[1], parts[2]))
    return out


# --- the Compose specification ---------------------------------------------------------------


def test_compose_file_matches_the_compose_specification():
    checker = Path(sys.executable).with_name("check-jsonschema")
    assert checker.exists(), "check-jsonschema missing: it is in the dev extra (make setup)"
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def docker_compose(tool, checker_env, tmp_path_factory):
    """Run the real Compose CLI (offline: `config` needs no engine) with .env.example."""
    binary = tool("docker-compose")
    workdir = tmp_path_factory.mktemp("compose")

    def run(*args: str, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess:
        return subprocess.run(
            [binary, "--project-directory", str(ROOT), "--env-file", str(env_file)]
            + ["-f", str(COMPOSE), *args],
            cwd=workdir,
            env=checker_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run


def test_compose_resolves_with_the_example_env(docker_compose):
    result = docker_compose("--profile", "api", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)["services"]
    assert set(resolved) == AIRFLOW_SERVICES | {"postgres", "mlflow", "jupyterlab", "api"}
    (pg_port,) = resolved["postgres"]["ports"]
    assert pg_port["host_ip"] == "127.0.0.1" and pg_port["published"] == "5432"
    for name, port in UI_PORTS.items():
        (published,) = resolved[name]["ports"]
        assert published["target"] == port and published["published"] == str(port), name
    assert resolved["jupyterlab"]["command"][-1] == "--IdentityProvider.token=change-me"
    assert "s3://replace-with-terraform-output-bucket_name/mlartifacts" in " ".join(
        resolved["mlflow"]["command"]
    )


@pytest.mark.faults
def test_compose_refuses_to_start_jupyterlab_without_a_token(docker_compose, tmp_path):
    no_token = tmp_path / "env"
    no_token.write_text(
        re.sub(r"(?m)^JUPYTER_TOKEN=.*$", "JUPYTER_TOKEN=", ENV_EXAMPLE.read_text())
    )
    result = docker_compose("config", "--quiet", env_file=no_token)
    assert result.returncode != 0
    assert "JUPYTER_TOKEN" in result.stderr


# --- what runs, and how ------------------------------------------------------------------------


def test_the_stack_has_its_services(services):
    assert AIRFLOW_SERVICES | {"postgres", "mlflow", "jupyterlab", "api"} == set(services)
    assert services["api"]["profiles"] == ["api"], "the API is optional"
    assert services["api"]["build"]["dockerfile"] == "serving/Dockerfile"


def test_postgres_16_has_a_volume_a_healthcheck_and_two_databases(services):
    pg = services["postgres"]
    assert pg["image"].startswith("postgres:16")
    assert any(v.startswith("pgdata:") for v in pg["volumes"])
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    init = [v for v in pg["volumes"] if "docker-entrypoint-initdb.d" in v]
    assert init == [
        "./deploy/postgres/init-databases.sh:/docker-entrypoint-initdb.d/10-init-databases.sh:ro"
    ]
    script = INIT_SCRIPT.read_text()
    for name in re.findall(r'"\$([A-Z_]+)"', script):
        assert name in pg["environment"], f"init script reads {name}, not passed to postgres"
    assert script.count("CREATE DATABASE") == 2


def test_init_script_is_valid_bash():
    result = subprocess.run(
        ["bash", "-n", str(INIT_SCRIPT)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    # The postgres entrypoint runs executable scripts; others it sources into its own shell.
    assert INIT_SCRIPT.stat().st_mode & 0o111, "init-databases.sh should be executable"


def test_init_script_passes_shellcheck(tool, checker_env):
    result = subprocess.run(
        [tool("shellcheck"), "--shell=bash", str(INIT_SCRIPT)],
        capture_output=True,
        text=True,
        env=checker_env,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def test_postgres_is_published_on_loopback_only(services):
    assert _published(services["postgres"]) == [("127.0.0.1", "5432", "5432")]
    for name, service in services.items():
        for address, host_port, _ in _published(service):
            if host_port == "5432":
                assert name == "postgres" and address == "127.0.0.1"


def test_ui_ports_match_the_security_group(services, iac):
    sg_ports = {
        svc["port"]
        for svc in iac["locals"]["service_ports"].values()
        if isinstance(svc["port"], int)
    }
    published = {
        int(host_port)
        for name, service in services.items()
        if name != "postgres"
        for _, host_port, _ in _published(service)
    }
    assert published == sg_ports == set(UI_PORTS.values())
    for name, port in UI_PORTS.items():
        assert _published(services[name]) == [("${UI_BIND_ADDRESS}", str(port), str(port))]


def test_mlflow_uses_postgres_and_serves_s3_artifacts(services):
    mlflow = services["mlflow"]
    command = mlflow["command"]
    assert command[:2] == ["mlflow", "server"]
    assert "--serve-artifacts" in command
    assert "--workers=1" in command
    assert "--artifacts-destination=s3://${HP_BUCKET}/mlartifacts" in command
    backend = mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"]
    # psycopg 3, the driver tests/production/test_mlflow_server.py runs MLflow's store with.
    assert backend.startswith("postgresql+psycopg://") and "@postgres:5432/" in backend
    # The password stays out of the command line.
    assert not any("PASSWORD" in part for part in command)


def test_airflow_runs_3_3_2_with_local_executor_and_the_project_mounted(compose, services):
    common = compose["x-airflow-common"]
    dockerfile = ROOT / common["build"]["dockerfile"]
    assert "FROM apache/airflow:3.3.2-python3.11" in dockerfile.read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"apache-airflow==3.3.2"' in pyproject, "image and [airflow] extra agree"
    assert "apache-airflow-providers-papermill" in pyproject
    assert "ipykernel install" in dockerfile.read_text()
    assert "--name healthpredict" in dockerfile.read_text()
    env = common["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    # psycopg 3 for both engines, as tests/airflow run it (no asyncpg needed).
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"):
        assert env[key].startswith("postgresql+psycopg://"), key
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-apiserver:")
    assert "./dags:/opt/airflow/dags:ro" in common["volumes"]
    # The checkout (notebooks, lib, rendered/, serving/, k8s/) at the project root the
    # package resolves (healthpredict.core.settings.project_root), and the DAG param's registry.
    assert ".:/opt/healthpredict" in common["volumes"]
    assert env["PYTHONPATH"] == "/opt/healthpredict/lib"
    assert env["HP_ECR_REGISTRY"] == "${ECR_REGISTRY}"
    commands = {name: services[name].get("command") for name in AIRFLOW_SERVICES}
    assert commands["airflow-apiserver"] == "api-server"
    assert commands["airflow-scheduler"] == "scheduler"
    assert commands["airflow-dag-processor"] == "dag-processor"
    assert commands["airflow-triggerer"] == "triggerer"
    init = "\n".join(commands["airflow-init"])
    assert "airflow db migrate" in init and "airflow users create --role Admin" in init
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        service = services[name]
        assert service["image"] == "healthpredict-airflow:3.3.2", name
        assert service["healthcheck"]["test"], name
        depends = service["depends_on"]
        assert depends["airflow-init"]["condition"] == "service_completed_successfully", name


def test_the_executor_switch_is_documented():
    text = COMPOSE.read_text()
    assert "CeleryExecutor" in text and "apache-airflow-providers-celery" in text
    assert "KubernetesExecutor" in text and "apache-airflow-providers-cncf-kubernetes" in text


@pytest.mark.faults
def test_jupyterlab_requires_a_token(services):
    command = services["jupyterlab"]["command"]
    assert "--IdentityProvider.token=${JUPYTER_TOKEN:?set JUPYTER_TOKEN}" in command
    assert not any("token=''" in part or 'token=""' in part for part in command)
    assert ".:/home/hp/healthpredict" in services["jupyterlab"]["volumes"]


@pytest.mark.faults
def test_containers_do_not_run_as_root(services):
    for name, service in services.items():
        assert not service.get("privileged"), name
        assert not any("docker.sock" in str(v) for v in service.get("volumes", [])), name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        if name == "api":
            continue  # its user is set by serving/Dockerfile, owned by the serving code
        user = str(service.get("user", "root"))
        assert user not in {"root", "0", "0:0"} and not user.startswith("0:"), name
    runtime = (ROOT / "deploy" / "runtime" / "Dockerfile").read_text()
    assert "\nUSER hp\n" in runtime


def test_build_contexts_keep_the_venv_out():
    for dockerfile in (ROOT / "deploy").glob("*/Dockerfile"):
        ignore = dockerfile.with_name("Dockerfile.dockerignore")
        assert ignore.is_file(), f"{dockerfile} builds from the repository root: add {ignore}"
        lines = [line for line in ignore.read_text().splitlines() if not line.startswith("#")]
        assert lines[0] == "*", "allow-list: exclude everything, then name what the build needs"
        assert "!lib/" in lines


# --- the deployment override ----------------------------------------------------------------


def test_only_the_deploy_override_hands_out_the_docker_socket(services):
    override = yaml.safe_load(DEPLOY_OVERRIDE.read_text())
    assert set(override["services"]) == {"airflow-scheduler"}, "the scheduler runs the tasks"
    scheduler = override["services"]["airflow-scheduler"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in scheduler["volumes"]
    assert all(v.endswith(":ro") for v in scheduler["volumes"] if "docker.sock" not in v)
    assert scheduler["group_add"] == ["${DOCKER_GID}"]
    assert override["networks"]["minikube"]["external"] is True
    assert "root on the host" in DEPLOY_OVERRIDE.read_text(), "the risk is spelled out"
    dockerfile = (ROOT / "deploy" / "airflow" / "Dockerfile").read_text()
    for tool_name in ("docker-", "kubectl", "awscli"):
        assert tool_name in dockerfile, f"the deployment DAG needs {tool_name} in the image"


def test_deploy_override_merges_with_the_stack(docker_compose):
    result = docker_compose(
        "-f", str(DEPLOY_OVERRIDE), "config", "--format", "json"
    )  # the base file is already passed by the fixture
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    scheduler = resolved["services"]["airflow-scheduler"]
    assert set(scheduler["networks"]) == {"default", "minikube"}
    targets = {volume["target"] for volume in scheduler["volumes"]}
    assert {"/var/run/docker.sock", "/opt/healthpredict", "/opt/airflow/dags"} <= targets
    others = [s for name, s in resolved["services"].items() if name != "airflow-scheduler"]
    assert not any("docker.sock" in json.dumps(s.get("volumes", [])) for s in others)


# --- .env.example ----------------------------------------------------------------------------


def test_every_variable_the_stack_uses_is_in_env_example():
    missing = _compose_variables() - set(_env_example())
    assert not missing, f"docker-compose.yml uses variables missing from .env.example: {missing}"
    # The override also reads HOME, which the shell of the host user provides.
    missing = _compose_variables(DEPLOY_OVERRIDE) - set(_env_example()) - {"HOME"}
    assert not missing, f"docker-compose.deploy.yml uses variables missing: {missing}"


def test_every_env_example_entry_is_used():
    used = _compose_variables() | _compose_variables(DEPLOY_OVERRIDE)
    used |= set(re.findall(r"^\s+([A-Z_]+)=\*\)", USER_DATA.read_text(), re.M))
    unused = set(_env_example()) - used
    assert not unused, f".env.example entries nothing reads: {unused}"


@pytest.mark.faults
def test_env_example_holds_placeholders_not_secrets():
    for key, value in _env_example().items():
        if SECRET_NAME.search(key):
            assert value == "change-me", f"{key} must be the placeholder change-me"
    assert re.search(r"(?m)^\.env$", (ROOT / ".gitignore").read_text()), ".env is git-ignored"


def test_bootstrap_fills_entries_that_exist():
    """The EC2 bootstrap rewrites some .env.example lines; each must still be there."""
    filled = set(re.findall(r"^\s+([A-Z_]+)=\*\)", USER_DATA.read_text(), re.M))
    assert filled, "the bootstrap fills bucket, region, uid and MLflow hosts"
    assert filled <= set(_env_example())


# --- the guide -------------------------------------------------------------------------------


def test_guide_names_real_services_ports_and_outputs(services, iac):
    guide = GUIDE.read_text()
    named = set(
        re.findall(
            r"docker compose (?:--profile \w+ )?(?:exec|logs -f|logs|up -d(?: --build)?) ([a-z][a-z-]+)",
            guide,
        )
    )
    assert named, "the guide shows docker compose commands for single services"
    assert named <= set(services), f"unknown services in the guide: {named - set(services)}"
    for port in (*UI_PORTS.values(), 5432):
        assert str(port) in guide, port
    mentioned = set(re.findall(r"terraform output (?:-raw |-json )?([a-z_]+)", guide))
    assert mentioned <= set(iac["output"]), mentioned - set(iac["output"])
    for output in iac["output"]:
        assert f"`{output}`" in guide, f"output {output} is not described in the guide"
    for step in ("terraform init", "terraform plan", "terraform apply", "terraform destroy"):
        assert step in guide
    for step in ("docker compose up -d", "docker compose exec postgres psql", "kubectl get nodes"):
        assert step in guide
    for step in ("minikube start", "minikube delete", "docker compose --profile api down -v"):
        assert step in guide


# --- the README's start and teardown --------------------------------------------------------

README = ROOT / "README.md"


def _readme_stack_commands() -> tuple[str, list[str]]:
    """The COMPOSE_FILE the README exports, and its shell lines in order (comments dropped)."""
    lines = [
        line.split("#", 1)[0].strip()
        for line in README.read_text().splitlines()
        if line.split("#", 1)[0].strip()
    ]
    (compose_file,) = {
        m.group(1) for line in lines if (m := re.match(r"export COMPOSE_FILE=(\S+)$", line))
    }
    return compose_file, lines


def test_the_readme_starts_the_stack_the_deployment_dag_needs_and_tears_it_down():
    compose_file, lines = _readme_stack_commands()
    assert compose_file.split(":") == [COMPOSE.name, DEPLOY_OVERRIDE.name]

    def first(prefix: str) -> int:
        found = [i for i, line in enumerate(lines) if line.startswith(prefix)]
        assert found, f"the README has no `{prefix}`"
        return found[0]

    # Minikube first (the override joins its external network and reads its kubeconfig), then
    # the stack with the override, then the tokens Secret the API needs to start.
    start = first("docker compose up -d")
    assert first("minikube start") < first("export COMPOSE_FILE=") < start
    assert first("kubectl -n healthpredict create secret generic healthpredict-api-tokens") > start
    assert not any(re.match(r"docker compose (-f \S+ )*up", line) for line in lines[:start])
    # Teardown: every service (the optional api too) and its volumes, then the cluster side.
    down = first("docker compose --profile api down -v")
    assert down > start
    assert first("kubectl delete namespace healthpredict") > down
    assert first("minikube delete") > down


def test_the_readme_stack_resolves_with_the_deploy_override(tool, checker_env, tmp_path):
    compose_file, _ = _readme_stack_commands()
    result = subprocess.run(
        [tool("docker-compose"), "--env-file", str(ENV_EXAMPLE), "--profile", "api", "config",
         "--format", "json"],
        cwd=ROOT,
        env={**checker_env, "COMPOSE_FILE": compose_file},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    scheduler = resolved["services"]["airflow-scheduler"]
    env = scheduler["environment"]
    # What the deployment DAG's defaults (docker, ecr, kubectl) need in the scheduler.
    assert env["KUBECONFIG"] == "/home/airflow/.kube/config"
    assert env["HP_API_URL"] == _env_example()["HP_API_URL"]
    assert env["HP_ECR_REGISTRY"] == _env_example()["ECR_REGISTRY"]
    assert env["DOCKER_HOST"] == "unix:///var/run/docker.sock"
    assert set(scheduler["networks"]) == {"default", "minikube"}
    assert resolved["networks"]["minikube"]["external"] is True  # down -v leaves it to Minikube
    # down -v removes the named volumes: they are all the stack keeps.
    assert set(resolved["volumes"]) == {"pgdata", "airflow-logs"}
    # The optional API builds the stage that loads the champion from MLflow, with its tokens.
    api = resolved["services"]["api"]
    assert api["build"]["target"] == "registry"
    assert api["environment"]["HP_SERVE_TOKENS_FILE"] == "/run/secrets/api_tokens"
    assert api["secrets"] == [{"source": "api_tokens", "target": "/run/secrets/api_tokens"}]
    assert Path(resolved["secrets"]["api_tokens"]["file"]) == ROOT / "var" / "api-tokens"
    assert re.search(r"(?m)^var/$", (ROOT / ".gitignore").read_text()), "tokens stay out of git"
