"""Security basics: no secrets in git, tokens required, nothing runs as root, checkov clean.

What other tests already prove is marked ``faults`` there and not repeated here:

- JupyterLab's token: tests/infra/test_compose.py (``test_jupyterlab_requires_a_token``: the
  command uses ``${JUPYTER_TOKEN:?...}``; ``test_compose_refuses_to_start_jupyterlab_without_a_
  token``: the real Compose CLI refuses an empty token; ``test_env_example_holds_placeholders_
  not_secrets``);
- non-root: tests/infra/test_compose.py (``test_containers_do_not_run_as_root``: every compose
  service), tests/serving/test_deploy_files.py (``test_dockerfile_essentials``: USER 10001;
  ``test_kustomization_renders_a_valid_deployment``: the rendered pod's security context);
- checkov: tests/infra/test_terraform.py (``iac/`` and ``deploy/`` Dockerfiles) and
  tests/serving/test_deploy_files.py (the rendered ``k8s/`` and ``serving/Dockerfile``);
- the reload token from ``RELOAD_TOKEN``: tests/serving/test_reload.py (401 without, 403 wrong,
  200 right, 403 when no token is configured);
- the API clients' bearer tokens on ``/predict``: tests/serving/test_auth.py (401/403 and their
  shape, rotation of a Kubernetes-style Secret without a restart, a malformed file keeps the
  last good clients, refusal to start without clients, nothing of a request in the logs) and
  tests/serving/test_schemathesis.py (unauthenticated fuzzing gets only 401).

Added here: a detect-secrets scan of every git-tracked file (with a positive control), every
Dockerfile stage that ships and every k8s workload checked generically for root, the compose
secrets without default values and JupyterLab with no second way to turn auth off, checkov on
the ``k8s/`` folder as it is (not only as rendered), and the reload token read from a mounted
file (``RELOAD_TOKEN_FILE``, the Kubernetes way): rotated without a restart, empty = disabled.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SERVING_TESTS = Path(__file__).resolve().parents[1] / "serving"
if str(SERVING_TESTS) not in sys.path:
    sys.path.insert(0, str(SERVING_TESTS))

from serving_helpers import Server, baked_model, request  # noqa: E402

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
DETECT_SECRETS = Path(sys.executable).with_name("detect-secrets")
CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"
SAMPLES = "rendered/samples/"  # the audit trail `make samples` writes and git keeps
ENTROPY = ("HexHighEntropyString", "Base64HighEntropyString")

# Findings that are not secrets: (file, detector, the first 8 characters of detect-secrets' hash
# of the value) -> what the flagged text is. Keyed by value, not line, so a new finding on the
# same line still fails; 8 hex characters are too short to be flagged themselves.
NOT_SECRETS = {
    (".github/workflows/ci.yml", "Secret Keyword", "59443718"):
        "the words 'No AIRFLOW_API_URL secret: trigger the deployment DAG' in a step summary",
    ("iac/github_oidc.tf", "Hex High Entropy String", "cbc1f47e"):
        "a SHA-1 thumbprint of GitHub's OIDC certificate chain, published by GitHub",
    ("iac/github_oidc.tf", "Hex High Entropy String", "1583f84a"):
        "the other published thumbprint of GitHub's OIDC certificate chain",
    ("k8s/deployment.yaml", "Secret Keyword", "9cb69ee5"):
        "secretName: healthpredict-reload-token, the name of the Secret object, not its value",
    ("lib/healthpredict/mlops/deploy.py", "Secret Keyword", "662548d8"):
        "the default name of the image pull Secret (ecr-pull), not its value",
    ("lib/healthpredict/mlops/deploy.py", "Secret Keyword", "54f18a12"):
        "the name of the Secret with the API clients' token hashes, not its value",
    ("tests/dags/test_deployment_dag.py", "Secret Keyword", "79bead8e"):
        "secretName: tok, the name of a Secret in a manifest a test adapts",
    ("tests/serving/test_http_io.py", "Secret Keyword", "a3a855c0"):
        "SECRET_VALUE, a sentinel request value the test checks is never logged",
    ("k8s/deployment.yaml", "Secret Keyword", "54f18a12"):
        "secretName: healthpredict-api-tokens, the name of the Secret with the API clients' "
        "token hashes, not its value",
    ("lib/healthpredict/data/uci.py", "Hex High Entropy String", "42b8d356"):
        "CSV_SHA256, the checksum the downloaded UCI file is verified against",
    ("lib/healthpredict/data/uci.py", "Hex High Entropy String", "84df8c77"):
        "BUNDLED_ZIP_SHA256, the checksum of the UCI zip committed under data/uci",
    ("tests/infra/test_terraform.py", "Private Key", "27c6929a"):
        "the PEM header line of an OpenSSH private key, alone: the input of a test that a "
        "private key pasted as ssh_public_key is refused",
    ("tests/model/test_training_units.py", "Basic Auth Credentials", "e5e9fa1b"):
        "the input of the test that studies.redact hides passwords in storage URLs",
}  # fmt: skip
# Anywhere under tests/: the dummy AWS credentials of moto's documentation.
TEST_PLACEHOLDERS = {hashlib.sha1(b"testing").hexdigest()[:8]}


def _explained(path: str, kind: str, hashed: str) -> bool:
    if (path, kind, hashed[:8]) in NOT_SECRETS:
        return True
    return (
        path.startswith("tests/") and kind == "Secret Keyword" and hashed[:8] in TEST_PLACEHOLDERS
    )


# --------------------------------------------------------------------------- secrets in git


def _detect_secrets() -> str:
    if not DETECT_SECRETS.exists():
        pytest.skip("detect-secrets is not installed (it is in the dev extra: make setup)")
    return str(DETECT_SECRETS)


def _scan(groups: list[tuple[list[str], tuple[str, ...]]], cwd: Path) -> list[tuple]:
    """detect-secrets over each (files, plugins to disable) group, the groups in parallel.

    Returns:
        (file, line, detector, hashed value) of every finding.
    """
    exe = _detect_secrets()
    procs = [
        subprocess.Popen(
            [exe, "scan", "-n", *(f"--disable-plugin={p}" for p in disabled), *files],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for files, disabled in groups
        if files
    ]
    findings = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        for path, items in json.loads(out)["results"].items():
            findings += [(path, i["line_number"], i["type"], i["hashed_secret"]) for i in items]
    return findings


def _groups(files: list[str]) -> list[tuple[list[str], tuple[str, ...]]]:
    """Sources with every detector; the generated samples without the guessing ones.

    The samples hold sha256 provenance hashes and base64 plots by design (entropy detectors
    flag every one), and their HTML is megabytes of one-line JavaScript where the keyword
    heuristic costs ~10 s and finds only code. The precise detectors (AWS, private keys,
    tokens, basic auth, JWT, ...) still read every sample.
    """
    sources = [f for f in files if not f.startswith(SAMPLES)]
    html = sorted((f for f in files if f.startswith(SAMPLES) and f.endswith(".html")),
                  key=lambda f: -(ROOT / f).stat().st_size)  # fmt: skip
    other = [f for f in files if f.startswith(SAMPLES) and not f.endswith(".html")]
    return [
        (sources, ()),
        (other, ENTROPY),
        (html[0::2], (*ENTROPY, "KeywordDetector")),  # two halves: two cores
        (html[1::2], (*ENTROPY, "KeywordDetector")),
    ]


def test_no_secrets_in_tracked_files():
    """detect-secrets over the files git tracks (or would): only the justified non-secrets."""
    done = subprocess.run(  # tracked, and new files git would track (not ignored ones)
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"not a git checkout: {done.stderr.strip()}")
    files = sorted({f for f in done.stdout.split("\0") if f and (ROOT / f).is_file()})
    assert len(files) > 100 and "lib/healthpredict/serving/api.py" in files
    findings = _scan(_groups(files), ROOT)
    unexplained = [
        f"{path}:{line} {kind}"
        for path, line, kind, hashed in findings
        if not _explained(path, kind, hashed)
    ]
    assert not unexplained, (
        "possible secrets in git-tracked files (remove them, or add the finding to NOT_SECRETS "
        "with what it is):\n" + "\n".join(unexplained)
    )


def test_the_secret_scan_finds_planted_secrets(tmp_path):
    """Positive control: the same scan, both ways, catches real-looking secrets."""
    key_id = "AKIA" + "QWERTYUIOPASDFGH"  # built here, so this file holds no key
    pem = "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"
    (tmp_path / "settings.py").write_text(f'AWS_ACCESS_KEY_ID = "{key_id}"\n{pem}\n')
    (tmp_path / "config.yml").write_text("db_password: " + "Zq8" + "xW2vL9pR4tY7u\n")
    (tmp_path / "report.html").write_text(f"<pre>{key_id}</pre>\n")
    found = _scan(
        [(["settings.py", "config.yml"], ()), (["report.html"], (*ENTROPY, "KeywordDetector"))],
        tmp_path,
    )
    kinds = {(path, kind) for path, _, kind, _ in found}
    assert ("settings.py", "AWS Access Key") in kinds and ("settings.py", "Private Key") in kinds
    assert ("config.yml", "Secret Keyword") in kinds
    assert ("report.html", "AWS Access Key") in kinds  # the reduced scan of generated HTML


# --------------------------------------------------------------------------- non-root images


def dockerfile_users(text: str) -> dict[str, str]:
    """Effective USER of every stage that can ship: not a ``COPY --from`` source nor only the
    base of other stages (whose users are checked instead).

    A stage without USER inherits its parent stage's user, or root from an outside image.
    """
    stages: list[list[str]] = []  # [name, parent, user]
    copied_from = set(re.findall(r"(?m)^\s*COPY\s+.*--from=(\S+)", text))
    for line in re.sub(r"\\\n", " ", text).splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        op = words[0].upper()
        if op == "FROM":
            image = next(w for w in words[1:] if not w.startswith("--"))
            name = words[-1] if len(words) > 3 and words[-2].upper() == "AS" else str(len(stages))
            parent = next((s for s in stages if s[0] == image), None)
            stages.append([name, image, parent[2] if parent else "root"])
        elif op == "USER" and stages:
            stages[-1][2] = words[1]
    bases = {image for _, image, _ in stages}
    return {name: user for name, _, user in stages if name not in copied_from | bases}


def _is_root(user: str) -> bool:
    return user.split(":")[0] in ("root", "0")


@pytest.mark.parametrize(
    "path",
    [ROOT / "serving" / "Dockerfile", *sorted((ROOT / "deploy").glob("*/Dockerfile"))],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_shipped_image_stage_runs_as_non_root(path):
    users = dockerfile_users(path.read_text())
    assert users, path
    assert not {stage: user for stage, user in users.items() if _is_root(user)}, users


def test_the_dockerfile_check_catches_root():
    """Negative control: root by default, by inheritance and by a USER that switches back."""
    text = (
        "FROM python:3.11 AS build\nRUN make\n"
        "FROM python:3.11 AS base\nUSER 10001\nCOPY --from=build /a /a\n"
        "FROM base AS ok\n"
        "FROM base AS back\nUSER root\n"
        "FROM debian\nRUN true\n"
    )
    users = dockerfile_users(text)
    assert users == {"ok": "10001", "back": "root", "4": "root"}
    assert [s for s, u in users.items() if _is_root(u)] == ["back", "4"]


# --------------------------------------------------------------------------- Kubernetes


def _pod_specs(doc: dict):
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    if kind == "Pod":
        yield spec
    elif kind == "CronJob":
        yield spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield spec["template"]["spec"]


def test_every_k8s_workload_is_non_root_read_only_without_escalation():
    """Every pod template in k8s/*.yaml, every container and init container (not just one)."""
    docs = [d for p in sorted((ROOT / "k8s").glob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text()) if d]  # fmt: skip
    pods = [(d["metadata"]["name"], pod) for d in docs for pod in _pod_specs(d)]
    assert pods, "k8s/ has a Deployment"
    for name, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"].get("runAsUser", 1) != 0, name
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), name
        assert pod.get("automountServiceAccountToken") is False, name
        for box in pod.get("initContainers", []) + pod["containers"]:
            sec = box.get("securityContext") or {}
            where = f"{name}/{box['name']}"
            assert sec.get("allowPrivilegeEscalation") is False, where
            assert sec.get("readOnlyRootFilesystem") is True, where
            assert not sec.get("privileged"), where
            assert sec.get("runAsUser", 1) != 0 and sec.get("runAsNonRoot", True) is True, where
            assert "ALL" in (sec.get("capabilities") or {}).get("drop", []), where
    kustomization = yaml.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())
    tags = {i["name"]: i["newTag"] for i in kustomization["images"]}
    for _, pod in pods:  # the raw manifests name the tag kustomize applies
        for box in pod["containers"]:
            image, _, tag = box["image"].partition(":")
            assert tags.get(image) == tag, box["image"]


def test_checkov_finds_nothing_in_the_k8s_folder(tmp_path):
    """checkov on k8s/ as it is (kubernetes) and as kustomize renders it; skips need reasons."""
    if not CHECKOV.exists():
        pytest.skip(f"checkov is not installed in {CHECKOV.parent.parent}: run `make tools`")
    done = subprocess.run(
        [str(CHECKOV), "-d", str(ROOT / "k8s"), "--framework", "kubernetes", "kustomize",
         "--skip-download", "-o", "json"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "HOME": str(tmp_path),
             "LOG_LEVEL": "ERROR", "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",
             "BC_SKIP_MAPPING": "TRUE"},
    )  # fmt: skip
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert {r["check_type"] for r in reports} == {"kubernetes", "kustomize"}, done.stderr[-2000:]
    for report in reports:
        failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
        assert not failed, f"{report['check_type']}: {failed}"
        assert report["summary"]["passed"] > 50
        for skipped in report["results"]["skipped_checks"]:
            assert len(skipped["check_result"].get("suppress_comment") or "") > 20, skipped


# --------------------------------------------------------------------------- compose secrets


SECRET = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}")


def test_compose_secrets_come_from_env_without_defaults():
    """A secret is never written into docker-compose.yml nor defaulted when .env lacks it."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    checked = 0
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.partition("=")[::2] for e in env)
        for key, value in env.items():
            # A *_FILE variable names where a mounted compose secret is, not the secret.
            is_secret_path = key.endswith("_FILE") and str(value).startswith("/run/secrets/")
            if SECRET.search(key) and not is_secret_path:
                assert INTERPOLATION.search(str(value)), f"{name}: {key} is written in the file"
        parts = [str(v) for v in env.values()] + [str(c) for c in service.get("command") or []]
        for part in parts:
            for var, rest in INTERPOLATION.findall(part.replace("$$", "")):
                if SECRET.search(var):
                    checked += 1
                    assert not rest.startswith((":-", "-")), f"{name}: {var} has a default"
    assert checked >= 8, checked
    command = compose["services"]["jupyterlab"]["command"]
    auth = [c for c in command if re.search(r"token|password|unauthenticated|xsrf", c, re.I)]
    assert auth == ["--IdentityProvider.token=${JUPYTER_TOKEN:?set JUPYTER_TOKEN}"], auth
    assert not SECRET.search(json.dumps(compose["services"]["jupyterlab"].get("environment")))


# --------------------------------------------------------------------------- the reload token


@pytest.fixture(scope="module")
def token_file_server(tmp_path_factory):
    """A uvicorn whose reload token comes from a file, as a mounted Kubernetes secret does."""
    tmp = tmp_path_factory.mktemp("token-file")
    token_file = tmp / "token"
    token_file.write_text("first-token-value\n")  # a trailing newline (echo > file) is no part
    server = Server(
        tmp,
        {"MODEL_DIR": str(baked_model(tmp / "model")), "RELOAD_TOKEN_FILE": str(token_file)},
    )
    try:
        server.wait("/ready", 200)
        yield server, token_file
    finally:
        server.stop()


def _reload(server, headers=None, query=""):
    return request(server.url + "/reload" + query, b"", headers=headers or {}, method="POST")


def test_reload_token_from_a_file(token_file_server):
    server, token_file = token_file_server
    status, body = _reload(server)
    assert status == 401 and body["detail"] == "missing bearer token"
    status, body = _reload(server, query="?token=first-token-value")  # never from a URL
    assert status == 422 and body["errors"][0]["field"] == "query.token"
    assert _reload(server, {"Authorization": "Bearer "})[0] == 401
    assert _reload(server, {"Authorization": "Bearer first-token-valu"})[0] == 403
    status, body = _reload(server, {"Authorization": "Bearer first-token-value"})
    assert status == 200 and body["status"] == "unchanged"

    token_file.write_text("second-token-value")  # the secret rotated: no restart needed
    assert _reload(server, {"Authorization": "Bearer first-token-value"})[0] == 403
    assert _reload(server, {"Authorization": "bearer second-token-value"})[0] == 200

    token_file.write_text("")  # an empty secret disables reloads; it does not open them
    for auth in ("Bearer ", "Bearer second-token-value", "Bearer x"):
        status, body = _reload(server, {"Authorization": auth})
        assert status == 403 and body["detail"].startswith("reloads are disabled"), auth
    token_file.unlink()
    assert _reload(server, {"Authorization": "Bearer second-token-value"})[0] == 403
    assert "second-token-value" not in server.log() and "Traceback" not in server.log()
