"""Property-based tests of the live API from its own OpenAPI schema (schemathesis).

Over a thousand generated requests (counted from schemathesis' own report), valid and invalid:
no 5xx, statuses, content types and bodies as documented, invalid data rejected and valid data
accepted. The one configured exception: 413 counts as a proper rejection of a list longer than
``maxItems`` (the records limit). The run authenticates as the test client, and schemathesis'
``ignored_auth`` check sends each accepted request again without a token and with a wrong one
(both must fail). A second, short run without any token shows that fuzzing ``/predict``
unauthenticated gets 401 and nothing else (counted by the server itself). Part of
``make faults``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from serving_helpers import CLIENT_AUTH, request

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,negative_data_rejection,positive_data_acceptance,ignored_auth"
)
UNAUTHENTICATED_CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance"
)
CONFIG = """\
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
"""
MIN_CASES = 1000
MAX_SECONDS = 120  # ~10-20 s on two cores; the bound catches a run that got stuck


def _st() -> str:
    found = shutil.which("st", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(
            "schemathesis is not installed (pip install schemathesis; it is in the dev extra)"
        )
    return found


@pytest.mark.faults
def test_generated_requests_find_no_server_error(live, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    done = subprocess.run(
        [_st(), "--config-file", str(config), "run", f"{live.url}/openapi.json",
         "--header", f"Authorization: {CLIENT_AUTH['Authorization']}",
         "--checks", CHECKS, "--max-examples", "400", "--seed", "20240917",
         "--generation-database", "none", "--workers", "2", "--no-color",
         "--report", "json", "--report-json-path", str(tmp_path / "report.json")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,  # its caches stay out of the checkout
    )  # fmt: skip
    report = json.loads((tmp_path / "report.json").read_text())
    assert done.returncode == 0, done.stdout[-6000:]
    assert report["failures"] == [] and report["errors"] == []
    assert report["test_cases"]["generated"] >= MIN_CASES, report["test_cases"]
    assert report["test_cases"]["errored"] == 0
    assert report["operations"]["tested"] == 6
    assert report["running_time"] < MAX_SECONDS, report["running_time"]
    # Most cases exercise /predict, in both the coverage and the fuzzing phase.
    predict = report["valid_rates"]["POST /predict"]
    assert predict["coverage"]["accepted"] > 100 and predict["fuzzing"]["accepted"] > 100, predict
    assert "Traceback" not in live.server.log()


def _predict_answers(live) -> dict[str, float]:
    """The server's count of /predict answers by status."""
    text = request(live.url + "/metrics")[1]
    found = re.findall(
        r'healthpredict_http_requests_total\{endpoint="/predict",method="POST",status="(\d+)"\} (\S+)',
        text,
    )
    return {code: float(n) for code, n in found}


@pytest.mark.faults
def test_unauthenticated_fuzzing_gets_only_401(live, tmp_path):
    """No token: every generated /predict request, valid or not, is refused with 401."""
    before = _predict_answers(live)
    done = subprocess.run(
        [_st(), "run", f"{live.url}/openapi.json", "--include-path", "/predict",
         "--checks", UNAUTHENTICATED_CHECKS, "--max-examples", "40", "--seed", "20240917",
         "--phases", "coverage,fuzzing", "--generation-database", "none", "--no-color",
         "--report", "json", "--report-json-path", str(tmp_path / "report.json")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    report = json.loads((tmp_path / "report.json").read_text())
    assert done.returncode == 0, done.stdout[-6000:]
    assert report["failures"] == [] and report["errors"] == []
    after = _predict_answers(live)
    grew = {
        code: after[code] - before.get(code, 0)
        for code in after
        if after[code] > before.get(code, 0)
    }
    assert set(grew) == {"401"}, grew
    assert grew["401"] >= 100 and grew["401"] >= report["test_cases"]["generated"] // 2, (
        grew,
        report["test_cases"],
    )
