"""The live API (real uvicorn, real sqlite MLflow): every endpoint, validation and limits."""

from __future__ import annotations

import http.client
import json
import math

import pytest
from serving_helpers import CLIENT_AUTH, CLIENT_ID, request
from serving_helpers import predict as predict_as_client

from healthpredict.data.schema import ALIASES, schema_hash
from healthpredict.data.synthetic import generate
from healthpredict.modeling.runtime.records import records_from_frame


def canonical(record: dict) -> dict:
    """The record with the original (hyphenated) column names."""
    inverse = {py: name for py, name in ALIASES.items()}
    return {inverse.get(k, k): v for k, v in record.items()}


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return [canonical(r) for r in records_from_frame(generate(30, seed=21))]


def predict(live, body, **kw):
    return predict_as_client(live.url, body, **kw)


@pytest.mark.faults
def test_not_ready_until_a_model_exists(live):
    status, body = live.early.ready
    assert status == 503
    assert body["ready"] is False
    assert "model not found" in body["reason"] and "'live'" in body["reason"]
    assert body["attempts"] >= 1 and body["source"] == "models:/HealthPredict@live"
    assert live.early.model_info[0] == 503
    assert live.early.predict[0] == 503
    assert "no model loaded" in live.early.predict[1]["detail"]
    assert (
        "ERROR healthpredict.serving: model not loaded from models:/HealthPredict@live"
        in live.server.log()
    )


def test_health_and_ready(live):
    assert request(live.url + "/health") == (200, {"status": "ok"})
    status, body = request(live.url + "/ready")
    assert status == 200 and body["ready"] is True and body["model_version"]


def test_model_info(live):
    status, info = request(live.url + "/model-info")
    assert status == 200
    assert info["name"] == "HealthPredict" and info["alias"] == "live"
    assert info["version"] and len(info["run_id"]) == 32 and info["trained_at"]
    assert info["test_metrics"] == {"pr_auc": 0.2, "roc_auc": 0.61}
    assert info["threshold"] == 0.3
    assert info["feature_schema_hash"] == schema_hash() and info["schema_matches"] is True
    assert info["inference"]["path"] in ("fast", "fast-encoder", "pipeline")


def test_predict_one_and_many(live, records):
    status, one = predict(live, records[0])
    assert status == 200
    version = request(live.url + "/model-info")[1]["version"]
    assert one["model_version"] == version and one["threshold"] == 0.3
    [pred] = one["predictions"]
    assert 0.0 <= pred["readmission_probability"] <= 1.0
    assert pred["label"] == int(pred["readmission_probability"] >= 0.3)
    assert pred["model_version"] == version
    assert pred["encounter_id"] == records[0]["encounter_id"]
    status, many = predict(live, records[:10])
    assert status == 200 and len(many["predictions"]) == 10
    assert many["predictions"][0]["readmission_probability"] == pytest.approx(
        pred["readmission_probability"], abs=1e-12
    )
    assert [p["encounter_id"] for p in many["predictions"]] == [
        r["encounter_id"] for r in records[:10]
    ]


def test_ids_and_nullable_fields_are_optional(live, records):
    record = {
        k: v
        for k, v in records[1].items()
        if k not in ("encounter_id", "patient_nbr", "weight", "payer_code")
    }
    record["diag_3"] = None
    status, body = predict(live, record)
    assert status == 200, body
    assert body["predictions"][0]["encounter_id"] is None


@pytest.mark.faults
def test_hyphen_and_underscore_names_agree(live, records):
    hyphen = records[2]
    underscore = {k.replace("-", "_"): v for k, v in hyphen.items()}
    assert "glyburide_metformin" in underscore and "glyburide-metformin" in hyphen
    a, b = predict(live, hyphen), predict(live, [underscore, hyphen])
    assert a[0] == b[0] == 200
    p = a[1]["predictions"][0]["readmission_probability"]
    assert [q["readmission_probability"] for q in b[1]["predictions"]] == [p, p]


def _errors_by_field(body: dict) -> dict:
    return {(e["record"], e["field"]): e for e in body["errors"]}


@pytest.mark.faults
def test_422_lists_every_offending_field(live, records):
    bad = dict(records[3])
    del bad["gender"]
    bad.update(
        age="[100-110)",
        num_procedures="3",
        time_in_hospital=99,
        diag_1="XYZ",
        foo="bar",
        readmitted="NO",
        glyburide_metformin="No",  # also given as glyburide-metformin
    )
    status, body = predict(live, [records[0], bad])
    assert status == 422
    errors = _errors_by_field(body)
    assert set(errors) == {
        (1, f)
        for f in (
            "gender",
            "age",
            "num_procedures",
            "time_in_hospital",
            "diag_1",
            "foo",
            "readmitted",
            "glyburide-metformin",
        )
    }
    assert (
        errors[(1, "gender")]["type"] == "missing"
        and "'Female'" in errors[(1, "gender")]["expected"]
    )
    assert (
        errors[(1, "age")]["value"] == "[100-110)"
        and "'[90-100)'" in errors[(1, "age")]["expected"]
    )
    assert errors[(1, "num_procedures")]["value"] == "3"
    assert errors[(1, "num_procedures")]["expected"].startswith("an integer in [0, 20]")
    assert errors[(1, "time_in_hospital")]["value"] == 99
    assert "matching" in errors[(1, "diag_1")]["expected"]
    assert errors[(1, "foo")]["message"] == "unknown field"
    assert "not an input" in errors[(1, "readmitted")]["expected"]
    assert errors[(1, "glyburide-metformin")]["type"] == "duplicate_field"
    assert body["detail"] == f"{len(errors)} problem(s) in the request"


@pytest.mark.faults
def test_single_record_errors_have_no_index(live, records):
    bad = {**records[0], "race": "Martian"}
    status, body = predict(live, bad)
    assert status == 422
    [err] = body["errors"]
    assert err["record"] is None and err["field"] == "race" and err["value"] == "Martian"
    assert "or null" in err["expected"]


@pytest.mark.faults
@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(live, records, token):
    text = json.dumps(records[0]).replace(
        '"num_lab_procedures": ', f'"num_lab_procedures": {token}, "x": ', 1
    )
    status, body = predict(live, text.encode())
    assert status == 422
    errors = _errors_by_field(body)
    assert set(errors) == {(None, "num_lab_procedures"), (None, "x")}
    nan = errors[(None, "num_lab_procedures")]
    assert nan["type"] == "json_invalid" and nan["value"] == token
    assert nan["message"].startswith(f"{token} is not a JSON number")


@pytest.mark.faults
def test_integers_are_strict_json_integers(live, records):
    for value in (12.5, "12", True):
        status, body = predict(live, {**records[0], "num_medications": value})
        assert status == 422 and body["errors"][0]["field"] == "num_medications", value
    # 12.0 is an integer in JSON Schema, and scores like 12.
    assert (
        predict(live, {**records[0], "num_medications": 12.0})[1]["predictions"]
        == (predict(live, {**records[0], "num_medications": 12})[1]["predictions"])
    )


@pytest.mark.faults
@pytest.mark.parametrize("body", [b"[]", b'"text"', b"[1]", b"{bad json", b""])
def test_bodies_that_are_not_records(live, body):
    status, answer = predict(live, body)
    assert status == 422
    assert answer["errors"]


@pytest.mark.faults
def test_413_on_too_many_records(live, records):
    status, body = predict(live, [records[0]] * 101)  # the fixture's limit is 100
    assert status == 413 and "101 records" in body["detail"]


@pytest.mark.faults
def test_413_on_too_large_body(live, records):
    status, body = predict(live, [records[0]] * 190)  # ~200 kB, over the fixture's 200,000 bytes
    assert status == 413 and "200,000" in body["detail"]


@pytest.mark.faults
def test_413_on_chunked_body_without_length(live, records):
    chunk = json.dumps(records[0]).encode()
    conn = http.client.HTTPConnection("127.0.0.1", int(live.url.rsplit(":", 1)[1]), timeout=30)
    conn.request(
        "POST",
        "/predict",
        body=iter([b"["] + [chunk + b","] * 250 + [chunk + b"]"]),
        headers={"Content-Type": "application/json", **CLIENT_AUTH},
        encode_chunked=True,
    )
    resp = conn.getresponse()
    assert resp.status == 413
    assert "limit" in json.loads(resp.read())["detail"]
    conn.close()


def test_metrics(live, records):
    predict(live, records[:3])
    predict(live, {"race": "Caucasian"})
    status, text = request(live.url + "/metrics")
    assert status == 200
    version = request(live.url + "/model-info")[1]["version"]
    assert (
        'healthpredict_http_requests_total{endpoint="/predict",method="POST",status="200"}' in text
    )
    assert (
        'healthpredict_http_request_duration_seconds_bucket{endpoint="/predict",le="0.005"}' in text
    )
    assert (
        f'healthpredict_predictions_total{{model_name="HealthPredict",model_version="{version}"}}'
        in text
    )
    assert 'healthpredict_request_errors_total{endpoint="/predict",kind="validation"}' in text
    assert f'healthpredict_client_predictions_total{{client="{CLIENT_ID}"}}' in text
    assert f'healthpredict_client_requests_total{{client="{CLIENT_ID}"}}' in text
    assert (
        'healthpredict_model_info{inference_path="' in text and f'model_version="{version}"' in text
    )
    assert "healthpredict_model_loaded 1.0" in text


def test_openapi_and_docs(live):
    status, html = request(live.url + "/docs")
    assert status == 200 and "swagger" in html.lower()
    status, spec = request(live.url + "/openapi.json")
    assert status == 200
    record = spec["components"]["schemas"]["EncounterRecord"]
    assert record["additionalProperties"] is False
    assert (
        "glyburide-metformin" in record["properties"] and "readmitted" not in record["properties"]
    )
    assert record["properties"]["gender"]["enum"] == ["Female", "Male", "Unknown/Invalid"]
    assert "gender" in record["required"] and "weight" not in record["required"]
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["anyOf"][1]["maxItems"] == 100
    assert not math.isnan(0.0)  # the spec itself is valid JSON (no NaN)
