"""How far can the real data go? Test ROC AUC of fixed models over several splits (not a test).

``make bench-train`` measures one search on one split; its test split (~3,000 encounters, ~11 %
positive) pins ROC AUC down to about ±0.03, and which patients land in it moves the figure by
±0.01-0.02. This benchmark asks the question behind the 0.70 goal instead: with one fixed,
reasonable gradient-boosting model, what test ROC AUC does each idea give on average over
``--seeds`` chronological, patient-grouped splits, and how much does it add to the product's
features?

Variants, each scored on the same test rows as ``default`` for a paired difference:

- ``default``: the product's features and split (20 % initial period).
- ``-icd9_codes``: without the target-encoded 3-digit ICD-9 codes of ``diag_1..3`` (the
  product's features before they were added).
- ``+history``: the patient's earlier encounters in the stream (how many, and whether the
  previous one was followed by a readmission within 30 days), computed strictly backwards.
- ``refit_train+val``: the model refit on training and validation rows together.
- ``initial_80%``: a four times larger initial period (``initial_fraction=0.8``).

Usage: ``make bench-train-ceiling`` or ``python benchmarks/bench_train_ceiling.py
[--seeds 42,1,2,3]``. Writes ``var/bench/train_ceiling.json``. Without the real data it says
so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from bench_train import GOAL_AUC, ROOT, find_real_data
from sklearn.metrics import roc_auc_score

from healthpredict.data.schema import make_target
from healthpredict.data.split import SplitParams, resolve_source, split_frame
from healthpredict.modeling.features import build_preprocessor
from healthpredict.modeling.models import make_estimator

# A sound untuned configuration (the search finds nothing reliably better on this data).
HGB = {
    "learning_rate": 0.03,
    "max_iter": 200,
    "max_leaf_nodes": 8,
    "min_samples_leaf": 100,
    "l2_regularization": 1.0,
}


def history_features(ordered: pd.DataFrame) -> pd.DataFrame:
    """Per encounter, from the same patient's EARLIER encounters only (rows in stream order)."""
    by_patient = ordered.groupby("patient_nbr", sort=False)
    earlier = by_patient.cumcount()
    previous_label = by_patient["readmitted"].shift(1)
    return pd.DataFrame(
        {
            "earlier_encounters": earlier.astype(float),
            "previous_readmitted_lt30": (previous_label == "<30").astype(float),
        },
        index=ordered.index,
    )


def test_auc(
    train: pd.DataFrame,
    test: pd.DataFrame,
    *,
    seed: int,
    extra: Callable[[pd.DataFrame, pd.DataFrame], tuple[np.ndarray, np.ndarray]] | None = None,
    codes: bool = True,
) -> float:
    """Fit the product's preprocessor + the fixed HGB on ``train``; ROC AUC on ``test``.

    ``extra(train, test)`` returns columns appended to both matrices; ``codes=False`` drops the
    target-encoded ICD-9 categories.
    """
    y_train = make_target(train)
    pre = build_preprocessor(scale_numeric=False)
    if not codes:
        pre.set_params(encode__codes="drop")
    x_train, x_test = pre.fit_transform(train, y_train), pre.transform(test)
    if extra is not None:
        more_train, more_test = extra(train, test)
        x_train, x_test = np.hstack([x_train, more_train]), np.hstack([x_test, more_test])
    model = make_estimator("hgb", HGB, seed=seed).fit(x_train, y_train)
    return float(roc_auc_score(make_target(test), model.predict_proba(x_test)[:, 1]))


def run_seed(ordered: pd.DataFrame, history: pd.DataFrame, seed: int) -> dict[str, float]:
    """Test ROC AUC of every variant on the splits of one seed."""
    parts = split_frame(ordered, SplitParams(seed=seed))
    train, val, test = parts["initial_train"], parts["validation"], parts["test"]

    def with_history(tr, te):
        return history.loc[tr.index].to_numpy(), history.loc[te.index].to_numpy()

    large = split_frame(ordered, SplitParams(initial_fraction=0.8, seed=seed))
    return {
        "default": test_auc(train, test, seed=seed),
        "-icd9_codes": test_auc(train, test, seed=seed, codes=False),
        "+history": test_auc(train, test, seed=seed, extra=with_history),
        "refit_train+val": test_auc(pd.concat([train, val]), test, seed=seed),
        "initial_80%": test_auc(large["initial_train"], large["test"], seed=seed),
    }


def main() -> int:
    """Run the study; return the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seeds", default="42,1,2,3,4,5,6,7,8,9", help="comma-separated split seeds"
    )
    parser.add_argument("--out", default=str(ROOT / "var" / "bench" / "train_ceiling.json"))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    source = find_real_data()
    if source is None:
        print("bench-train-ceiling skipped: real data not found (see bench_train.py)")
        return 0
    started = time.perf_counter()
    raw = resolve_source(source).frame
    ordered = raw.sort_values("encounter_id", kind="stable").reset_index(drop=True)
    history = history_features(ordered)
    rows = {}
    for seed in seeds:
        rows[seed] = run_seed(ordered, history, seed)
        print(f"seed {seed}: " + "  ".join(f"{k} {v:.4f}" for k, v in rows[seed].items()))
    table = pd.DataFrame(rows).T
    delta = table.sub(table["default"], axis=0)
    summary = {
        name: {
            "mean": round(float(table[name].mean()), 4),
            "sd": round(float(table[name].std()), 4),
            "min": round(float(table[name].min()), 4),
            "max": round(float(table[name].max()), 4),
            "mean_gain_vs_default": round(float(delta[name].mean()), 4),
            "sd_gain": round(float(delta[name].std()), 4),
        }
        for name in table.columns
    }
    report = {
        "seeds": seeds,
        "model": {"family": "hgb", **HGB},
        "test_roc_auc": {str(s): r for s, r in rows.items()},
        "summary": summary,
        "goal": GOAL_AUC,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"{'variant':18s} {'mean':>7s} {'sd':>7s} {'min':>7s} {'max':>7s} {'gain':>8s}"]
    for name, s in summary.items():
        lines.append(
            f"{name:18s} {s['mean']:7.4f} {s['sd']:7.4f} {s['min']:7.4f} {s['max']:7.4f} "
            f"{s['mean_gain_vs_default']:+8.4f} ± {s['sd_gain']:.4f}"
        )
    print(
        f"\ntest ROC AUC (<30) over {len(seeds)} splits, fixed HGB (goal {GOAL_AUC}):\n"
        + "\n".join(lines)
        + f"\nwall {report['wall_s']:.0f} s; written {out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
