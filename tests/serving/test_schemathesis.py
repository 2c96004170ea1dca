"""Property-based tests of the live API from its own OpenAPI schema (schemathesis).

Over a thousand generated requests (counted from schemathesis' own report), valid and invalid:
no 5xx, statuses, content types and bodies as documented, invalid data rejected and valid data
accepted. The one configured exception: 413 counts as a proper rejection of a list longer than
``maxItems`` (the records limit). Part of ``make faults``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,negative_data_rejection,positive_data_acceptance"
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
