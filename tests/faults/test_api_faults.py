"""Bad input and a failing model store against a real uvicorn: 4xx that say what to fix, no 5xx.

Extends tests/serving/test_api.py, which covers the basic 422 (every offending field of a batch,
strict integers, NaN/Infinity tokens, bodies that are not records) and the 413s (too many
records, a body over the limit, a chunked body without a length): those tests carry the
``faults`` mark too. Here: negative counts, wrong JSON types, unknown categories, null for a
"None" category, misspelled (dash/underscore, case) names of nullable fields that must not
turn into silent nulls, keys given twice, numbers beyond the float range, bodies that are not
UTF-8 or nested too deeply, wrong content types (415), a huge declared length, malformed HTTP,
truncated and corrupted bodies; and the model store (MLflow registry over HTTP or sqlite, S3
artifacts on moto) unreachable at start-up or going away after the model was loaded.

Every server is a real uvicorn process on 127.0.0.1 whose output (stderr included) is kept.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

SERVING_TESTS = Path(__file__).resolve().parents[1] / "serving"
if str(SERVING_TESTS) not in sys.path:
    sys.path.insert(0, str(SERVING_TESTS))

from serving_helpers import (  # noqa: E402
    CLIENT_AUTH,
    CLIENT_TOKEN,
    TOKEN,
    Server,
    baked_model,
    finish_register,
    free_port,
    predict,
    request,
    start_register,
)

from healthpredict.data.synthetic import generate  # noqa: E402
from healthpredict.modeling.runtime.records import records_from_frame  # noqa: E402
from healthpredict.serving.records import INPUT_COLUMNS, expected  # noqa: E402

pytestmark = pytest.mark.faults

AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY, MAX_RECORDS = 200_000, 100
COLUMN = {c.name: c for c in INPUT_COLUMNS} | {c.python_name: c for c in INPUT_COLUMNS}
CHAMPION = "models:/HealthPredict@champion"
USERINFO = "svc:" + "hunter2"  # credentials in a store URL, which reasons must not show


# --------------------------------------------------------------------------- fixtures, helpers


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """A uvicorn serving a baked MODEL_DIR (no registry needed) with small limits."""
    tmp = tmp_path_factory.mktemp("api-faults")
    server = Server(
        tmp,
        {
            "MODEL_DIR": str(baked_model(tmp / "model")),
            "RELOAD_TOKEN": TOKEN,
            "HP_SERVE_MAX_BODY_BYTES": str(MAX_BODY),
            "HP_SERVE_MAX_RECORDS": str(MAX_RECORDS),
        },
    )
    try:
        server.wait("/ready", 200)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def record() -> dict:
    return records_from_frame(generate(5, seed=21))[0]


def raw(server, body: bytes, headers: dict[str, str], path="/predict", method="POST"):
    """(status, parsed JSON body) of one request sent exactly as given (no implied headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, (
            json.loads(data) if "json" in resp.getheader("content-type", "") else data
        )
    finally:
        conn.close()


JSON_HEAD = (
    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    + f"Authorization: Bearer {CLIENT_TOKEN}\r\n".encode()
)


def send_raw(server, data: bytes):
    """(status, body) of bytes written as they are to the server's socket."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        body = resp.read()
    return resp.status, (json.loads(body) if "json" in resp.getheader("content-type", "") else body)


def post(server, body, content_type: str = "application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return raw(server, data, {"Content-Type": content_type, **CLIENT_AUTH})


def assert_says_what_to_fix(body: dict) -> None:
    """Each problem names its record, field and value, and what was expected instead."""
    assert body["detail"] == f"{len(body['errors'])} problem(s) in the request"
    assert body["errors"], body
    for problem in body["errors"]:
        assert set(problem) == {"record", "field", "value", "expected", "message", "type"}
        assert problem["expected"] and problem["message"] and problem["type"], problem
        col = COLUMN.get(problem["field"] or "")
        if col is not None and problem["type"] not in ("extra_forbidden", "duplicate_key"):
            assert problem["expected"] == expected(col), problem


def by_field(body: dict) -> dict:
    return {p["field"]: p for p in body["errors"]}


# --------------------------------------------------------------------------- field-level 422s


def _without(record: dict, *names: str) -> dict:
    return {k: v for k, v in record.items() if k not in names}


# name -> (make the body from a valid record, {field: (value reported, error type or None)})
FIELD_CASES = {
    "negative counts": (
        lambda r: {**r, "num_lab_procedures": -1, "number_inpatient": -3, "time_in_hospital": 0},
        {
            "num_lab_procedures": (-1, "greater_than_equal"),
            "number_inpatient": (-3, "greater_than_equal"),
            "time_in_hospital": (0, "greater_than_equal"),
        },
    ),
    "counts above their range": (
        lambda r: {**r, "num_medications": 151, "number_diagnoses": 2**70},
        {"num_medications": (151, "less_than_equal"), "number_diagnoses": (2**70, None)},
    ),
    "wrong JSON types": (
        lambda r: {
            **r,
            "race": {"a": 1},
            "diag_1": 250,
            "gender": None,
            "admission_type_id": "1",
            "metformin": True,
            "number_diagnoses": [3],
        },  # fmt: skip
        {
            "race": ({"a": 1}, None),
            "diag_1": (250, None),
            "gender": (None, None),
            "admission_type_id": ("1", None),
            "metformin": (True, None),
            "number_diagnoses": ([3], None),
        },
    ),
    "unknown categories": (
        lambda r: {
            **r,
            "A1Cresult": "High",
            "metformin": "Maybe",
            "max_glu_serum": "normal",
            "age": "[0-10]",
            "weight": "heavy",
            "admission_type_id": 99,
        },  # fmt: skip
        {
            "A1Cresult": ("High", "literal_error"),
            "metformin": ("Maybe", "literal_error"),
            "max_glu_serum": ("normal", "literal_error"),
            "age": ("[0-10]", "literal_error"),
            "weight": ("heavy", "literal_error"),
            "admission_type_id": (99, None),
        },
    ),
    "null is not the category 'None'": (
        lambda r: {**r, "max_glu_serum": None, "A1Cresult": None},
        {"max_glu_serum": (None, "literal_error"), "A1Cresult": (None, "literal_error")},
    ),
    "ids must be positive": (
        lambda r: {**r, "encounter_id": 0, "patient_nbr": -5},
        {"encounter_id": (0, "greater_than"), "patient_nbr": (-5, "greater_than")},
    ),
    # A misspelled nullable field dropped silently would become null: it must be reported.
    "misspelled nullable fields": (
        lambda r: {
            **_without(r, "medical_specialty", "payer_code", "diag_1", "race"),
            "medical-specialty": "Cardiology",
            "payer-code": "MC",
            "Diag_1": "250",
            "Race": "Caucasian",
        },  # fmt: skip
        {
            "medical-specialty": ("Cardiology", "extra_forbidden"),
            "payer-code": ("MC", "extra_forbidden"),
            "Diag_1": ("250", "extra_forbidden"),
            "Race": ("Caucasian", "extra_forbidden"),
        },
    ),
    "dash where the name has an underscore": (
        lambda r: {**_without(r, "time_in_hospital"), "time-in-hospital": 3},
        {"time-in-hospital": (3, "extra_forbidden"), "time_in_hospital": (None, "missing")},
    ),
    "wrong case of a dashed name": (
        lambda r: {**_without(r, "glyburide_metformin"), "Glyburide-Metformin": "No"},
        {
            "Glyburide-Metformin": ("No", "extra_forbidden"),
            "glyburide-metformin": (None, "missing"),
        },
    ),
    "an unknown field in a single record": (
        lambda r: {**r, "note": "frail"},
        {"note": ("frail", "extra_forbidden")},
    ),
    # JSON parsers keep the last of two equal keys: the first value would vanish unreported.
    "a key given twice": (
        lambda r: b'{"race": "Asian", ' + json.dumps(r)[1:].encode(),
        {"race": (["Asian", "<record>"], "duplicate_key")},
    ),
    "NaN and Infinity tokens": (
        lambda r: (
            json.dumps({**r, "num_lab_procedures": "@1", "number_emergency": "@2"})
            .replace('"@1"', "NaN")
            .replace('"@2"', "-Infinity")
            .encode()
        ),  # fmt: skip
        {
            "num_lab_procedures": ("NaN", "json_invalid"),
            "number_emergency": ("-Infinity", "json_invalid"),
        },
    ),
    "a number beyond the float range": (
        lambda r: json.dumps({**r, "num_procedures": "@"}).replace('"@"', "1e400").encode(),
        {"num_procedures": ("inf", "json_invalid")},
    ),
    "NaN as a string": (
        lambda r: {**r, "num_medications": "NaN", "number_outpatient": "Infinity"},
        {"num_medications": ("NaN", None), "number_outpatient": ("Infinity", None)},
    ),
}


@pytest.mark.parametrize("case", FIELD_CASES)
def test_every_offending_field_is_reported_with_its_value(api, record, case):
    make, wanted = FIELD_CASES[case]
    status, body = post(api, make(record))
    assert status == 422, body
    assert_says_what_to_fix(body)
    got = by_field(body)
    assert set(got) == set(wanted), body["errors"]
    for field, (value, kind) in wanted.items():
        problem = got[field]
        assert problem["record"] is None  # a single record: no index
        if value == ["Asian", "<record>"]:
            value = ["Asian", record["race"]]
        assert problem["value"] == value, problem
        assert kind is None or problem["type"] == kind, problem


def test_a_batch_reports_each_bad_record_by_index(api, record):
    batch = [
        record,
        {**record, "num_procedures": -2},
        {**record, "extra": 1, "gender": "F"},
        "not a record",
        {**_without(record, "payer_code"), "payer-code": "MC"},
        record,
    ]
    status, body = post(api, batch)
    assert status == 422
    assert_says_what_to_fix(body)
    got = {(p["record"], p["field"]) for p in body["errors"]}
    assert got == {(1, "num_procedures"), (2, "extra"), (2, "gender"), (3, None), (4, "payer-code")}
    assert [p["record"] for p in body["errors"]] == sorted(p["record"] for p in body["errors"])


def test_long_and_nested_values_are_cut_in_the_report(api, record):
    deep = "[" * 600 + "]" * 600  # parses, but is too deep to echo back
    body = json.dumps({**record, "diag_2": "9" * 5000, "race": "@"}).replace('"@"', deep)
    status, answer = post(api, body.encode())
    assert status == 422
    got = by_field(answer)
    assert got["diag_2"]["value"] == "9" * 200 + "..."
    assert got["race"]["value"] == "<list nested too deeply to show>"


# --------------------------------------------------------------------------- body-level errors


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"race": "\xff\xfe"}', "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"race": "Asian"} trailing', "Extra data"),
        (b'\xef\xbb\xbf{"race": "Asian"}', "BOM"),
        (b'{"race": "Asian",}', "double quotes"),
        (b'{"race": "Asi', "Unterminated string"),
        (b"{'race': 'Asian'}", "double quotes"),
    ],
    ids=["not-utf8", "deep", "trailing", "bom", "trailing-comma", "truncated", "single-quotes"],
)
def test_bodies_that_are_not_json_say_where(api, body, message):
    status, answer = post(api, body)
    assert status == 422
    [problem] = answer["errors"]
    assert answer["detail"] == "the body is not valid JSON"
    assert problem["type"] == "json_invalid" and message in problem["message"], problem
    assert problem["expected"] == "a JSON object or an array of objects (UTF-8)"


@pytest.mark.parametrize("body", [b"null", b"42", b"true", b'"record"', b"NaN"])
def test_json_that_is_not_a_record_is_refused(api, body):
    status, answer = post(api, body)
    assert status == 422
    [problem] = answer["errors"]
    assert problem["type"] == "body_type" and problem["expected"]
    assert problem["value"] == ("NaN" if body == b"NaN" else json.loads(body))


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/json; charset=latin-1",
    ],  # fmt: skip
)
def test_a_body_not_declared_as_json_is_415(api, record, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    status, answer = raw(api, json.dumps(record).encode(), {**headers, **CLIENT_AUTH})
    assert status == 415, answer
    assert "application/json" in answer["detail"] or "UTF-8" in answer["detail"]


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/x+json"]
)
def test_json_content_types_are_accepted(api, record, content_type):
    status, answer = post(api, record, content_type)
    assert status == 200, answer


def test_a_huge_declared_length_is_refused_before_reading(api):
    """413 comes back although the body was never sent: nothing was buffered."""
    status, body = send_raw(api, JSON_HEAD + b"Content-Length: 10000000000\r\n\r\n")
    assert status == 413
    assert body["detail"] == (
        "the body is 10,000,000,000 bytes; the limit is 200,000 (HP_SERVE_MAX_BODY_BYTES)"
    )


@pytest.mark.parametrize(
    "head",
    [
        JSON_HEAD + b"Content-Length: abc\r\n\r\n",
        JSON_HEAD + b"Content-Length: -5\r\n\r\n",
        JSON_HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GARBAGE\r\n\r\n",
    ],
    ids=["length-not-a-number", "negative-length", "bad-chunk", "no-request-line"],
)
def test_malformed_http_is_400(api, head):
    assert send_raw(api, head)[0] == 400


def test_a_client_leaving_mid_body_is_no_server_error(api, record):
    """An upload cut off halfway: counted as the client's doing (499), no traceback."""

    def left(text: str) -> float:
        found = re.search(r'kind="client_disconnect"\} (\S+)', text)
        return float(found.group(1)) if found else 0.0

    before = left(request(api.url + "/metrics")[1])
    body = json.dumps([record] * 20).encode()
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(JSON_HEAD + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:500])
        time.sleep(0.3)  # the server is reading the body now
    api.poll("/metrics", lambda _, text: left(text) == before + 1, timeout=10)
    assert "Traceback" not in api.log()


def test_query_parameters_are_checked_not_ignored(api, record):
    """A typo in a query parameter (``forse``) must not quietly mean the default."""
    status, body = raw(api, b"", AUTH, path="/reload?force=maybe")
    assert status == 422
    [problem] = body["errors"]
    assert problem["field"] == "query.force" and problem["value"] == "maybe"
    assert "boolean" in problem["expected"]

    status, body = raw(api, b"", AUTH, path="/reload?forse=true")
    assert status == 422
    assert body["errors"] == [
        {"record": None, "field": "query.forse", "value": "true", "type": "extra_forbidden",
         "expected": "no such query parameter: /reload takes only force",
         "message": "unknown query parameter"}
    ]  # fmt: skip
    status, body = raw(
        api, json.dumps(record).encode(), {"Content-Type": "application/json", **CLIENT_AUTH},
        path="/predict?threshold=0.1&model=2",
    )  # fmt: skip
    assert status == 422
    assert [(p["field"], p["value"]) for p in body["errors"]] == [
        ("query.threshold", "0.1"),
        ("query.model", "2"),
    ]
    assert body["errors"][0]["expected"] == "no such query parameter: /predict takes none"
    status, body = raw(api, b"", AUTH, path="/reload?force=true")
    assert status == 200 and body["status"] == "reloaded"


def test_truncated_and_corrupted_bodies_never_cause_a_5xx(api, record):
    """Every prefix of a valid batch, and random byte flips of it: 200 or a 4xx, nothing else."""
    good = json.dumps([record, {**record, "race": None}]).encode()
    rng = random.Random(9)
    bodies = [good[:cut] for cut in range(0, len(good), max(1, len(good) // 60))]
    for _ in range(120):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        bodies.append(bytes(data))
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    statuses = {}
    try:
        for body in bodies:
            conn.request(
                "POST", "/predict", body, {"Content-Type": "application/json", **CLIENT_AUTH}
            )
            resp = conn.getresponse()
            answer = json.loads(resp.read())  # always JSON, even for garbage in
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
            if resp.status == 422:
                assert answer["errors"] and all(p["expected"] for p in answer["errors"])
    finally:
        conn.close()
    assert set(statuses) <= {200, 422}, statuses
    assert statuses.get(422, 0) > 100, statuses


def test_no_request_of_this_module_caused_a_5xx(api):
    """The server's own count of answers: not one 5xx, and no traceback in its output."""
    assert "Traceback" not in api.log()
    status, text = request(api.url + "/metrics")
    assert status == 200
    answered = re.findall(r'healthpredict_http_requests_total\{([^}]*)status="(\d+)"\} (\S+)', text)
    server_errors = [
        (labels, code)
        for labels, code, n in answered
        if code.startswith("5") and float(n) > 0 and 'endpoint="/ready"' not in labels
    ]  # /ready answers 503 by design until the model is loaded
    assert answered and not server_errors
    for kind in ("validation", "too_large", "media_type", "client_disconnect"):
        assert f'healthpredict_request_errors_total{{endpoint="/predict",kind="{kind}"}}' in text


# --------------------------------------------------------------------------- the model store


def _store_server(tmp: Path, env: dict[str, str]) -> Server:
    return Server(
        tmp,
        {
            "MODEL_URI": CHAMPION,
            "RELOAD_TOKEN": TOKEN,
            "HP_SERVE_RETRY_INITIAL_S": "0.3",
            "HP_SERVE_RETRY_MAX_S": "1",
            **env,
        },
    )


def _failed_attempt(server: Server, attempts: int = 2) -> dict:
    """/ready once attempt ``attempts`` began: the earlier ones failed and were logged."""
    status, body = server.poll(
        "/ready",
        lambda code, body: (
            code != 503 or (body["attempts"] >= attempts and body["next_attempt_in_s"] is not None)
        ),
        timeout=90,
    )
    assert status == 503, body
    return body


def _reload(server: Server, force: bool = False):
    path = "/reload?force=true" if force else "/reload"
    return request(server.url + path, b"", headers=AUTH, method="POST")


@pytest.mark.parametrize("store", ["http", "sqlite"])
def test_registry_unreachable_at_startup(tmp_path, store):
    """/health 200 at once, /ready 503 naming the registry, the reason in the log; retried."""
    port = free_port()
    if store == "http":  # the credentials must not leak into /ready or the log
        uri, where = f"http://{USERINFO}@127.0.0.1:{port}", f"http://***@127.0.0.1:{port}"
    else:
        missing = tmp_path / "moved-away" / "mlflow.db"
        uri = where = f"sqlite:///{missing}"
    server = _store_server(tmp_path, {"MLFLOW_TRACKING_URI": uri})
    try:
        assert server.wait("/health") == {"status": "ok"}
        ready = _failed_attempt(server)
        reason = ready["reason"]
        assert reason.startswith(f"model store unreachable: MLflow registry {where} "
                                 "(MLFLOW_TRACKING_URI): "), reason  # fmt: skip
        if store == "http":
            assert "Connection refused" in reason
        else:
            assert "does not exist" in reason
            assert not missing.parent.exists(), "serving must not create an empty registry"
        assert ready["source"] == CHAMPION and ready["next_attempt_in_s"] is not None
        status, body = predict(server.url, records_from_frame(generate(1, seed=1)))
        assert status == 503 and body["detail"].startswith(
            "no model loaded: model store unreachable"
        )
        assert request(server.url + "/model-info")[0] == 503
        assert request(server.url + "/health")[0] == 200  # still alive after failed attempts
    finally:
        server.stop()
    log = server.log()
    assert f"ERROR healthpredict.serving: model not loaded from {CHAMPION} (attempt 1" in log
    assert f"model store unreachable: MLflow registry {where}" in log
    assert "hunter2" not in log and "hunter2" not in json.dumps(ready)
    assert "Traceback" not in log


@pytest.fixture(scope="module")
def registry(tmp_path_factory, moto_server):
    """A champion in a sqlite registry whose artifacts are in S3 (moto's real HTTP server)."""
    import boto3

    tmp = tmp_path_factory.mktemp("store-faults")
    bucket = f"hp-faults-{uuid.uuid4().hex[:8]}"
    aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    boto3.client(
        "s3",
        endpoint_url=moto_server,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    s3 = {**aws, "MLFLOW_S3_ENDPOINT_URL": moto_server}
    db = tmp / "mlflow.db"
    registering = start_register(tmp, f"sqlite:///{db}", "logreg", seed=3, alias="champion",
                                 env={**s3, "HP_STORAGE": f"s3://{bucket}/hp"})  # fmt: skip
    deadline = time.monotonic() + 120
    while not (tmp / "db-ready").exists():  # the schema exists: the server may open it now
        if registering.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"registration did not start: {registering.communicate()}")
        time.sleep(0.1)
    # A tracking server over the same registry, for the test that stops it (it starts slowly,
    # so it starts now, while the model registers and the tests before run).
    port = free_port()
    mlflow = _start_mlflow_server(db, port, tmp / "mlflow-server.log")
    try:
        version = finish_register(registering)
        yield SimpleNamespace(tmp=tmp, db=db, uri=f"sqlite:///{db}", aws=aws, s3=s3,
                              version=version, mlflow=mlflow, mlflow_port=port)  # fmt: skip
    finally:
        if registering.poll() is None:
            registering.kill()
        if mlflow.poll() is None:
            _stop(mlflow)


def test_artifact_store_unreachable_at_startup(registry):
    """The registry answers but S3 does not: the reason names the S3 endpoint, not the registry."""
    dead = f"http://127.0.0.1:{free_port()}"
    server = _store_server(
        registry.tmp,
        {**registry.aws, "MLFLOW_TRACKING_URI": registry.uri, "MLFLOW_S3_ENDPOINT_URL": dead},
    )
    try:
        assert server.wait("/health") == {"status": "ok"}
        reason = _failed_attempt(server)["reason"]
        assert reason.startswith(
            f"model store unreachable: artifact store {dead} (MLFLOW_S3_ENDPOINT_URL): "
        ), reason
        assert "Could not connect to the endpoint URL" in reason
        one = records_from_frame(generate(1, seed=1))
        assert predict(server.url, one)[0] == 503
    finally:
        server.stop()
    log = server.log()
    assert f"model not loaded from {CHAMPION} (attempt 1" in log
    assert f"artifact store {dead} (MLFLOW_S3_ENDPOINT_URL)" in log


def _start_mlflow_server(db: Path, port: int, log: Path) -> subprocess.Popen:
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    assert exe, "mlflow's CLI is part of the project's dependencies"
    with open(log, "w") as out:
        return subprocess.Popen(
            [exe, "server", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            cwd=log.parent, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _wait_mlflow_server(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited:\n{log.read_text()[-3000:]}")
        try:
            if request(f"http://127.0.0.1:{port}/health", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"mlflow server not up:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def test_registry_server_stops_after_loading(registry):
    """The tracking server dies: the loaded model keeps serving, reloads fail with the reason."""
    mlflow, port = registry.mlflow, registry.mlflow_port
    _wait_mlflow_server(mlflow, port, registry.tmp / "mlflow-server.log")
    records = records_from_frame(generate(8, seed=5))
    server = _store_server(
        registry.tmp, {**registry.s3, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    )
    try:
        server.wait("/ready", 200)
        before = predict(server.url, records)[1]
        assert before["model_version"] == registry.version
        assert _reload(server)[1]["status"] == "unchanged"  # the store answers: nothing to do
        _stop(mlflow)

        assert request(server.url + "/health")[0] == 200
        assert request(server.url + "/ready")[1]["model_version"] == registry.version
        assert request(server.url + "/model-info")[0] == 200
        for force in (False, True):
            status, body = _reload(server, force)
            assert status == 503, body
            assert body["detail"].startswith(
                f"reload failed, still serving version {registry.version}: model store "
                f"unreachable: MLflow registry http://127.0.0.1:{port} (MLFLOW_TRACKING_URI): "
            ), body
            assert "Connection refused" in body["detail"]
            assert predict(server.url, records)[1] == before
        metrics = request(server.url + "/metrics")[1]
        assert 'healthpredict_model_loads_total{outcome="failed"} 2.0' in metrics
    finally:
        server.stop()
    log = server.log()
    assert log.count(f"reload failed (still serving version {registry.version})") == 2
    assert "Traceback" not in log


def test_sqlite_registry_moved_after_loading(registry):
    """The registry file goes away and comes back: serving never re-creates it meanwhile."""
    records = records_from_frame(generate(8, seed=6))
    server = _store_server(registry.tmp, {**registry.s3, "MLFLOW_TRACKING_URI": registry.uri})
    moved = registry.db.with_name("mlflow.db.moved")
    try:
        server.wait("/ready", 200)
        before = predict(server.url, records)[1]
        registry.db.rename(moved)
        try:
            status, body = _reload(server, force=True)
            assert status == 503
            assert f"still serving version {registry.version}" in body["detail"]
            assert f"the database file {registry.db} does not exist" in body["detail"]
            assert not registry.db.exists(), "the reload created an empty registry"
            assert predict(server.url, records)[1] == before
            assert request(server.url + "/ready")[0] == 200
        finally:
            moved.rename(registry.db)
        assert _reload(server) == (
            200,
            {"status": "unchanged", "version": registry.version,
             "previous_version": registry.version},
        )  # fmt: skip
        assert predict(server.url, records)[1] == before
    finally:
        server.stop()
    assert "Traceback" not in server.log()
