"""The image and cluster files: hadolint, kustomize + schema validation, checkov, requirements.

Offline: ``kubectl kustomize`` renders k8s/, ``kubernetes-validate --strict`` checks the result
against the Kubernetes schemas, checkov scans the rendered manifests and the Dockerfile (from
``.venv-tools``, which ``make tools`` creates: checkov's pins clash with ours).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TOOLS = ROOT / ".venv-tools"
DOCKERFILE = ROOT / "serving" / "Dockerfile"
REQUIREMENTS = ROOT / "serving" / "requirements.txt"
PICKLE_SENSITIVE = ("scikit-learn", "numpy", "scipy", "pandas", "cloudpickle")
# Imported only when present (guarded imports of the libraries), so not required in the image.
OPTIONAL_IMPORTS = {
    "pyarrow": "pandas",
    "psutil": "joblib",
    "rich": "scikit-learn progress bars",
    "sniffio": "anyio",
    "python_multipart": "fastapi forms",
    "email_validator": "pydantic EmailStr",
    "ujson": "fastapi UJSONResponse",
    "pydantic_extra_types": "fastapi",
    "_distutils_hack": "setuptools' import hook",
}


def _tool(name: str, extra: str = "dev") -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (it comes with the {extra} extra)")
    return found


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """``kubectl kustomize k8s/`` written to a file."""
    out = tmp_path_factory.mktemp("k8s") / "rendered.yaml"
    done = subprocess.run(
        [_tool("kubectl"), "kustomize", str(ROOT / "k8s")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out.write_text(done.stdout)
    return out


@pytest.fixture(scope="module")
def checkov() -> str:
    """checkov from .venv-tools (``make tools`` creates it, pinned), or skip with the reason."""
    exe = TOOLS / "bin" / "checkov"
    if not exe.exists() and shutil.which("make"):
        try:  # the same pinned install CI does; checkov's pins clash with the project's
            subprocess.run(
                ["make", "-C", str(ROOT), "tools"], check=True, capture_output=True, timeout=900
            )
        except (subprocess.SubprocessError, OSError) as exc:
            pytest.skip(f"checkov could not be installed into {TOOLS} (make tools): {exc}")
    if not exe.exists():
        pytest.skip(f"checkov is not installed in {TOOLS}: run make tools")
    return str(exe)


def test_dockerfile_passes_hadolint():
    done = subprocess.run(
        [_tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.faults
def test_dockerfile_essentials():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim", text, re.M)  # official slim by default
    assert text.count("FROM ${BASE_IMAGE}") >= 2  # multi-stage, every stage on the base
    assert "COPY --from=model" in text and "MODEL_DIR=/opt/model" in text  # the model is baked
    assert "USER 10001" in text and "HEALTHCHECK" in text
    assert "--reload" not in text
    assert "pip install --no-cache-dir -r serving/requirements.txt" in text
    ignore = [ln for ln in DOCKERFILE.with_name("Dockerfile.dockerignore").read_text().splitlines()
              if ln and not ln.startswith("#")]  # fmt: skip
    assert ignore[0] == "*" and "!lib/" in ignore and "!serving/app.py" in ignore  # an allow-list


@pytest.mark.faults
def test_kustomization_renders_a_valid_deployment(rendered):
    docs = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) >= {
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
    }
    assert {"MODEL_URI", "MLFLOW_TRACKING_URI"} <= set(kinds["ConfigMap"]["data"])
    assert kinds["Service"]["spec"]["type"] == "NodePort"
    dep = kinds["Deployment"]["spec"]
    assert dep["replicas"] == 2
    assert dep["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = dep["template"]["spec"]
    [api] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    assert api["resources"]["requests"] and api["resources"]["limits"]
    sec = api["securityContext"]
    assert sec["readOnlyRootFilesystem"] is True and sec["allowPrivilegeEscalation"] is False
    assert sec["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in api["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    secrets = {v["secret"]["secretName"]: v for v in volumes.values() if "secret" in v}
    assert set(secrets) == {"healthpredict-api-tokens", "healthpredict-reload-token"}
    assert secrets["healthpredict-reload-token"]["secret"]["optional"] is True
    assert not secrets["healthpredict-api-tokens"]["secret"].get("optional")  # required
    env = {e["name"]: e.get("value") for e in api["env"]}
    where = {
        v["secret"]["secretName"]: p
        for p, n in mounts.items()
        for v in [volumes[n]]
        if "secret" in v
    }
    # The contract shared with the image and deployment code: key "tokens" of this Secret.
    assert where["healthpredict-api-tokens"] == "/var/run/secrets/healthpredict/api-tokens"
    assert env["HP_SERVE_TOKENS_FILE"] == "/var/run/secrets/healthpredict/api-tokens/tokens"
    assert env["RELOAD_TOKEN_FILE"].startswith(where["healthpredict-reload-token"] + "/")
    for mount in api["volumeMounts"]:
        if "secret" in volumes[mount["name"]]:
            assert mount["readOnly"] is True and "subPath" not in mount  # subPath: no updates
    paths = sorted(mounts)
    assert not any(b.startswith(a + "/") for a in paths for b in paths), "nested mounts"
    assert not any(d["kind"] == "Secret" for d in docs), "no secret may be committed"
    hpa = kinds["HorizontalPodAutoscaler"]["spec"]
    assert (
        hpa["scaleTargetRef"]["name"] == kinds["Deployment"]["metadata"]["name"]
        and hpa["minReplicas"] == 2
    )


def test_manifests_match_the_kubernetes_schemas(rendered):
    done = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "--quiet", "-k", "1.30.0", str(rendered)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.faults
def test_checkov_finds_nothing(checkov, rendered):
    done = subprocess.run(
        [checkov, "-f", str(rendered), "-f", str(DOCKERFILE), "--framework", "kubernetes", "dockerfile",
         "--skip-download", "-o", "json"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "LOG_LEVEL": "ERROR"},
    )  # fmt: skip
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert {r["check_type"] for r in reports} == {"kubernetes", "dockerfile"}
    for report in reports:
        failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
        assert not failed, f"{report['check_type']}: {failed}"
        assert report["summary"]["passed"] > 20
        for skipped in report["results"]["skipped_checks"]:  # every skip carries its reason
            assert len(skipped["check_result"].get("suppress_comment") or "") > 20, skipped[
                "check_id"
            ]


def _pins() -> dict[str, str]:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"unpinned requirement {line!r}"
            pins[re.sub(r"[-_.]+", "-", name.lower())] = version
    return pins


def test_image_pins_match_the_training_environment():
    pins = _pins()
    for dist in PICKLE_SENSITIVE:  # the model is a pickle: these must equal the trainer's
        assert pins[dist] == metadata.version(dist), dist


def _closure(names) -> set[str]:
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop().lower())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for spec in requires:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def test_image_requirements_cover_the_serving_imports():
    code = (
        "import json, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import app, yaml, cloudpickle\n"  # serving/app.py plus what the model loader reads pickles with
        "import healthpredict.modeling.runtime.predictor, healthpredict.modeling.runtime.model_meta\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    from healthpredict.serving.auth import token_line

    done = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "serving")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HP_SERVE_TOKENS": token_line("import-check", "x")},  # else no start
    )
    assert done.returncode == 0, done.stderr
    modules = set(json.loads(done.stdout)) - set(sys.stdlib_module_names) - {"healthpredict", "app"}
    modules -= set(OPTIONAL_IMPORTS)
    owners = metadata.packages_distributions()
    allowed = _closure(_pins())
    missing = {
        m: owners.get(m)
        for m in modules
        if m in owners and not any(re.sub(r"[-_.]+", "-", d.lower()) in allowed for d in owners[m])
    }
    assert not missing, (
        f"imported by the serving code but not in serving/requirements.txt: {missing}"
    )
    assert "mlflow" not in modules  # registry access is imported lazily, only for MODEL_URI
