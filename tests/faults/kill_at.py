"""``healthpredict loop``'s code, killed with SIGKILL at one boundary of a step (fault tests).

Usage: ``python kill_at.py BOUNDARY BATCH_ROWS`` (boundary ``none``: no kill). The loop runs with
the settings of ``test_promotion_crash.py``: labels with their batch, any new labelled row asks
for a retraining, a one-trial search, and a gate that promotes a challenger trained on more data.
The process kills itself right after the boundary's step returned, the first time it is reached.
"""

from __future__ import annotations

import functools
import os
import signal
import sys

from healthpredict.core.stages import LoopParams
from healthpredict.mlops import registry
from healthpredict.pipelines import commit, local_loop, monitoring_step

OPTIONS = local_loop.LoopOptions(
    monitor_params={"growth_trigger": 0.0},
    retrain_params={"n_trials": 1, "non_inferiority_margin": 1.0},
)
# Boundary -> (module, function) after whose return the runner dies.
BOUNDARIES = {
    "monitored": (monitoring_step, "monitor_batch"),
    "retrained": (monitoring_step, "retrain_on"),
    "intent_saved": (commit, "advance"),  # the state with the promotion intent is saved
    "alias_moved": (registry, "promote"),
    "intent_cleared": (commit, "finish_promotion"),
}


def _die_after(module, name: str) -> None:
    original = getattr(module, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        if name != "advance" or args[0].promotion:  # advance: only the write-ahead save
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(module, name, wrapper)


def main(boundary: str, batch_rows: int) -> None:
    if boundary != "none":
        _die_after(*BOUNDARIES[boundary])
    params = LoopParams(batch_size=batch_rows, label_delay_batches=0)
    for outcome in local_loop.run_loop(params, OPTIONS):
        print("batch", outcome.window.start, "retrain", outcome.retrain, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
