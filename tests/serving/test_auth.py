"""Clients and tokens on /predict against a real uvicorn: 401/403, rotation, metrics, logs.

The token file is laid out as a Kubernetes Secret volume is (``tokens -> ..data/tokens``,
``..data -> ..<version>``) and rotated as the kubelet does it: a new version folder, then the
``..data`` symlink swapped in one rename. The server checks the file every 0.2 s here
(``HP_SERVE_TOKENS_CHECK_S``; 1 s by default).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
from pathlib import Path

import pytest
from serving_helpers import Server, baked_model, client_tokens, request

from healthpredict.data.synthetic import generate
from healthpredict.modeling.runtime.records import records_from_frame

WARD, WARD_TOKEN = "ward-7", "hp_ward-7-token"
OPS, OPS_TOKEN = "ops", "hp_ops-token"  # predict and reload
AUDIT, AUDIT_TOKEN = "audit", "hp_audit-token"  # reload only: no predictions
WARD9, WARD9_TOKEN = "ward-9", "hp_ward-9-token"
FIRST = (
    (WARD, WARD_TOKEN),
    (OPS, OPS_TOKEN, ("predict", "reload")),
    (AUDIT, AUDIT_TOKEN, ("reload",)),
)
# Values that must never reach a log line: they stand for patient data and secrets.
SENTINELS = ("918273645", "5647382910", "Zyxwvut-Sentinel", "SENTINEL-422", "SENTINEL-401")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class SecretVolume:
    """A folder shaped like a mounted Kubernetes Secret, updated the way the kubelet does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.version = 0
        (root / "tokens").symlink_to("..data/tokens")

    @property
    def file(self) -> Path:
        return self.root / "tokens"

    def write(self, text: str) -> None:
        self.version += 1
        folder = self.root / f"..v{self.version}"
        folder.mkdir()
        (folder / "tokens").write_text(text)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(folder.name)
        os.replace(tmp, self.root / "..data")  # atomic: a reader sees the old or the new file


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return baked_model(tmp_path_factory.mktemp("auth-model") / "model")


@pytest.fixture(scope="module")
def api(tmp_path_factory, model_dir):
    """A uvicorn logging all it can (ours at DEBUG, uvicorn's at TRACE), clients from a Secret."""
    tmp = tmp_path_factory.mktemp("auth")
    secret = SecretVolume(tmp / "secret")
    secret.write(client_tokens(*FIRST))
    server = Server(
        tmp,
        {
            "MODEL_DIR": str(model_dir),
            "HP_SERVE_TOKENS_FILE": str(secret.file),
            "HP_SERVE_TOKENS_CHECK_S": "0.2",
            "HP_SERVE_LOG_LEVEL": "DEBUG",
        },
        args=("--log-level", "trace"),  # uvicorn's most verbose: every ASGI message
    )
    try:
        server.wait("/ready", 200)
        server.secret = secret
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return records_from_frame(generate(4, seed=12))


def call(server, path="/predict", body=None, headers=None, method="POST"):
    """(status, headers, parsed body) of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        data = (
            b""
            if body is None
            else (body if isinstance(body, bytes) else json.dumps(body).encode())
        )
        conn.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
        ctype = resp.getheader("content-type", "")
        return resp.status, dict(resp.getheaders()), (json.loads(raw) if "json" in ctype else raw)
    finally:
        conn.close()


def metric(server, name: str, **labels) -> float:
    text = request(server.url + "/metrics")[1]
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    series = f"{name}{{{want}}}" if want else name
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.faults
@pytest.mark.parametrize(
    ("headers", "reason", "detail"),
    [
        ({}, "missing", "missing bearer token: send Authorization: Bearer <token>"),
        ({"Authorization": "Basic d2FyZDpwdw=="}, "malformed", "malformed Authorization header"),
        ({"Authorization": "Bearer"}, "malformed", "malformed Authorization header"),
        ({"Authorization": "Bearer a b"}, "malformed", "malformed Authorization header"),
        (bearer("hp_not-a-client"), "unknown_token", "unknown bearer token"),
        (bearer(WARD_TOKEN + " "), None, None),  # surrounding blanks are no part of a token
    ],
    ids=["none", "basic", "no-token", "two-words", "unknown", "trailing-blank"],
)
def test_401_without_a_known_token(api, records, headers, reason, detail):
    before = metric(api, "healthpredict_auth_failures_total", reason=reason) if reason else 0
    status, head, body = call(api, body=records[0], headers=headers)
    if reason is None:
        assert status == 200, body
        return
    assert status == 401
    assert set(body) == {"detail"} and body["detail"].startswith(detail), body  # ErrorResponse
    assert head["www-authenticate"] == "Bearer"
    assert metric(api, "healthpredict_auth_failures_total", reason=reason) == before + 1
    assert metric(
        api, "healthpredict_request_errors_total", endpoint="/predict", kind="unauthorized"
    )


@pytest.mark.faults
def test_401_comes_before_the_body_is_read(api):
    """An unauthenticated caller learns nothing about the body's checks (no 415, 413 or 422)."""
    assert call(api, body=b"{not json")[0] == 401
    assert call(api, body=b"x" * 300_000)[0] == 401
    assert call(api, body=b"{}", headers={"Content-Type": "text/plain"})[0] == 401
    assert call(api, path="/predict?x=1", body=b"{}")[0] == 401


@pytest.mark.faults
def test_403_for_a_client_without_the_predict_scope(api, records):
    status, head, body = call(api, body=records[0], headers=bearer(AUDIT_TOKEN))
    assert status == 403
    assert body == {"detail": "client 'audit' lacks the 'predict' scope"}
    assert head["www-authenticate"] == 'Bearer error="insufficient_scope", scope="predict"'
    assert metric(api, "healthpredict_auth_failures_total", reason="scope") >= 1


def test_open_endpoints_need_no_token(api):
    for path in ("/health", "/ready", "/model-info", "/metrics", "/openapi.json", "/docs"):
        assert call(api, path=path, method="GET")[0] == 200, path
    spec = request(api.url + "/openapi.json")[1]
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["paths"]["/predict"]["post"]["security"] == [{"bearer": []}]
    assert spec["paths"]["/reload"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/model-info"]["get"]
    assert {"401", "403"} <= set(spec["paths"]["/predict"]["post"]["responses"])


def test_predictions_are_counted_per_client(api, records):
    ward = metric(api, "healthpredict_client_predictions_total", client=WARD)
    ops = metric(api, "healthpredict_client_predictions_total", client=OPS)
    ops_requests = metric(api, "healthpredict_client_requests_total", client=OPS)
    assert call(api, body=records[:3], headers=bearer(WARD_TOKEN))[0] == 200
    assert call(api, body=records[:2], headers=bearer(OPS_TOKEN))[0] == 200
    assert call(api, body=records[:1], headers=bearer(OPS_TOKEN))[0] == 200
    assert call(api, body={"race": "x"}, headers=bearer(OPS_TOKEN))[0] == 422  # not counted
    assert metric(api, "healthpredict_client_predictions_total", client=WARD) == ward + 3
    assert metric(api, "healthpredict_client_predictions_total", client=OPS) == ops + 3
    assert metric(api, "healthpredict_client_requests_total", client=OPS) == ops_requests + 2
    assert metric(api, "healthpredict_api_clients") == 3


def test_reload_accepts_a_client_with_the_reload_scope(api):
    status, _, body = call(api, path="/reload", headers=bearer(OPS_TOKEN))
    assert status == 200 and body["status"] == "unchanged"
    status, _, body = call(api, path="/reload", headers=bearer(WARD_TOKEN))
    assert status == 403 and body["detail"] == "client 'ward-7' lacks the 'reload' scope"
    assert call(api, path="/reload")[0] == 401
    assert call(api, path="/reload", headers=bearer("hp_nobody"))[2]["detail"] == (
        "wrong reload token"
    )


def _until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the token file change was not picked up"
        time.sleep(0.05)


@pytest.mark.faults
def test_rotation_without_restart_and_a_bad_file_keeps_the_last_good_set(api, records):
    one = records[0]

    def status(token: str) -> int:
        return call(api, body=one, headers=bearer(token))[0]

    pid = api.proc.pid
    # ward-7's token rotated (a new one), ward-9 added, audit removed.
    new_ward = "hp_ward-7-rotated"
    api.secret.write(client_tokens((WARD, new_ward), (OPS, OPS_TOKEN), (WARD9, WARD9_TOKEN)))
    _until(lambda: status(WARD9_TOKEN) == 200)
    assert status(WARD_TOKEN) == 401 and status(new_ward) == 200 and status(OPS_TOKEN) == 200
    assert call(api, body=one, headers=bearer(AUDIT_TOKEN))[0] == 401
    assert metric(api, "healthpredict_api_clients") == 3

    invalid = metric(api, "healthpredict_token_file_loads_total", outcome="invalid")
    broken = client_tokens((WARD, new_ward)) + "ward-9 sha256:not-a-hash\n"
    api.secret.write(broken)  # a typo in the next rotation
    _until(lambda: metric(api, "healthpredict_token_file_loads_total", outcome="invalid") > invalid)
    time.sleep(0.5)  # more checks pass: the same broken file is logged and counted once
    assert metric(api, "healthpredict_token_file_loads_total", outcome="invalid") == invalid + 1
    assert status(WARD9_TOKEN) == 200 and status(new_ward) == 200  # the last good set
    log = api.log()
    assert (
        f"ERROR healthpredict.serving: token file not reloaded: {api.secret.file} line 2: " in log
    )
    assert "the 3 clients of the last good version stay in force" in log

    api.secret.write(client_tokens((WARD, new_ward)))  # fixed: ward-9 and ops are revoked
    _until(lambda: status(WARD9_TOKEN) == 401)
    assert status(OPS_TOKEN) == 401 and status(new_ward) == 200
    assert api.proc.pid == pid and api.proc.poll() is None  # no restart
    assert "Traceback" not in api.log()
    api.secret.write(client_tokens(*FIRST))  # as the other tests expect it
    _until(lambda: status(WARD_TOKEN) == 200)


@pytest.mark.faults
def test_no_body_value_or_token_in_the_logs(api, records):
    """Scored, refused (422, 401, 403) and cut-off requests: no value of theirs is logged."""
    record = {**records[1], "encounter_id": 918273645, "patient_nbr": 5647382910,
              "medical_specialty": "Zyxwvut-Sentinel"}  # fmt: skip
    token = WARD_TOKEN
    assert call(api, body=record, headers=bearer(token))[0] == 200
    bad = {**record, "note": "SENTINEL-422", "age": "SENTINEL-422"}
    status, _, body = call(api, body=[record, bad], headers=bearer(token))
    assert status == 422 and "SENTINEL-422" in json.dumps(body)  # told to the caller only
    assert call(api, body={**record, "x": "SENTINEL-401"})[0] == 401
    assert (
        call(api, body={**record, "x": "SENTINEL-401"}, headers=bearer("hp_SENTINEL-401"))[0] == 401
    )
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:
        conn.putrequest("POST", "/predict")
        for name, value in {**bearer(token), "Content-Type": "application/json",
                            "Content-Length": "100000"}.items():  # fmt: skip
            conn.putheader(name, value)
        conn.endheaders(json.dumps(record).encode())
    finally:
        conn.close()  # the client leaves before the body is complete
    time.sleep(0.3)
    log = api.log()
    assert "TRACE:" in log and "ASGI [" in log  # uvicorn logged every message it passed on
    for value in (*SENTINELS, *(t for _, t, *_ in FIRST), "hp_ward-7-rotated"):
        assert value not in log, value


def _start_fails(tmp: Path, env: dict[str, str]) -> str:
    server = Server(tmp, {"MODEL_DIR": str(tmp / "no-model"), **env})
    try:
        code = server.proc.wait(timeout=120)
    finally:
        server.stop()
    log = server.log()
    assert code == 3, log
    return log


@pytest.mark.faults
def test_refuses_to_start_without_clients(tmp_path):
    """Auth on (the default) and no client: uvicorn exits 3 saying what to set, nothing served."""
    log = _start_fails(tmp_path, {"HP_SERVE_AUTH": "on"})
    assert (
        "healthpredict API not started: authentication is on but no API clients are configured"
        in log
    )
    for name in ("HP_SERVE_TOKENS_FILE", "HP_SERVE_TOKENS", "HP_SERVE_AUTH=off"):
        assert name in log
    assert "Traceback" not in log


@pytest.mark.faults
def test_refuses_to_start_with_a_malformed_token_file(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(client_tokens((WARD, WARD_TOKEN)) + "ward-9 sha256:abc predict\n")
    log = _start_fails(tmp_path, {"HP_SERVE_TOKENS_FILE": str(tokens)})
    assert f"HP_SERVE_TOKENS_FILE {tokens} line 2: the token must be stored as sha256:" in log


def test_auth_off_serves_anyone_and_says_so(tmp_path, model_dir, records):
    server = Server(tmp_path, {"MODEL_DIR": str(model_dir), "HP_SERVE_AUTH": "off"})
    try:
        server.wait("/ready", 200)
        assert call(server, body=records[:2])[0] == 200
        assert metric(server, "healthpredict_client_predictions_total", client="anonymous") == 2
        spec = request(server.url + "/openapi.json")[1]
        assert "security" not in spec["paths"]["/predict"]["post"]
    finally:
        server.stop()
    assert (
        "WARNING healthpredict.serving: HP_SERVE_AUTH=off: POST /predict is served WITHOUT "
        "authentication" in server.log()
    )
