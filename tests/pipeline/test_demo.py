"""`healthpredict demo` end to end on synthetic data, twice: the second run starts afresh."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.slow


def test_demo_twice_monitors_its_own_model_from_the_first_batch(hp_env):
    from healthpredict.cli import app
    from healthpredict.mlops.registry import champion_uri, get_model_info
    from healthpredict.monitoring import state as loop_state

    args = ["demo", "--source", "synthetic", "--n-trials", "1", "--batches", "1"]
    first = CliRunner().invoke(app, [*args, "--batch-size", "500"])
    assert first.exit_code == 0, first.output
    assert "batches monitored: 1" in first.output
    assert "gallery:" in first.output and "champion: models:/HealthPredict/" in first.output

    second = CliRunner().invoke(app, [*args, "--batch-size", "600"])
    assert second.exit_code == 0, second.output
    # The earlier cursor is kept aside, not lost, and the loop starts at the first row again.
    assert "the earlier loop state was kept as" in second.output
    kept = list((hp_env / "var" / "monitoring").glob("state-before-demo-*.json"))
    assert len(kept) == 1
    assert loop_state.LoopState.load().history[0]["start"] == 0
    assert loop_state.LoopState.load().history[0]["end"] == 600
    # The model trained by this run is the one monitored, not the first run's champion.
    made = re.search(r"demo: version (\d+) made champion for this run", second.output)
    assert made, second.output
    monitored = loop_state.LoopState.load().history[0]
    run = json.loads((Path(monitored["monitor_run_dir"]) / "run.json").read_text())
    pinned = run["inputs"]["mlflow_model_uri"]["models:/HealthPredict@champion"]
    assert pinned.startswith(f"models:/HealthPredict/{made.group(1)} "), pinned
    assert int(get_model_info(champion_uri()).version) >= int(made.group(1))
