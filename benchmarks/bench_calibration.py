"""What calibration changes on the real data: Brier, ECE and ROC AUC before and after (not a test).

For each of several model configurations the search can pick (class-weighted or not, every
family) and each split seed, :func:`~healthpredict.modeling.fitting.fit_final` refits the model
on ``initial_train`` and calibrates it on ``validation`` (the product's code path). The raw and
the calibrated model are then scored side by side on the same rows: the held-out test split and
the first ``--batches`` batches of the time-ordered stream (``--batch-size`` rows each, as the
monitor sees them). Paired differences (calibrated minus raw) are summarised over seeds.

Usage: ``make bench-calibration`` or ``python benchmarks/bench_calibration.py [--seeds 42,1,2]``.
Writes ``var/bench/calibration.json``. Without the real data it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from bench_train import ROOT, find_real_data

from healthpredict.data.schema import make_target
from healthpredict.data.split import SplitParams, drop_unreadmittable, resolve_source, split_frame
from healthpredict.modeling.evaluation import classification_metrics
from healthpredict.modeling.fitting import fit_final
from healthpredict.modeling.models import single_threaded

# Configurations a search may pick; the class-weighted ones distort probabilities most.
CONFIGS = {
    "hgb_balanced": ("hgb", {"learning_rate": 0.05, "max_iter": 200, "max_leaf_nodes": 16,
                             "min_samples_leaf": 100, "class_weight": "balanced"}),
    "hgb": ("hgb", {"learning_rate": 0.05, "max_iter": 200, "max_leaf_nodes": 16,
                    "min_samples_leaf": 100}),
    "rf_balanced": ("rf", {"n_estimators": 200, "max_depth": 10, "min_samples_leaf": 8,
                           "max_features": 0.25, "class_weight": "balanced_subsample"}),
    "logreg_balanced": ("logreg", {"C": 0.1, "class_weight": "balanced"}),
}  # fmt: skip
MEASURES = ("roc_auc", "brier", "ece")


def _scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    m = classification_metrics(y, p, 0.5)
    return {k: m[k] for k in MEASURES}


def run_seed(raw: pd.DataFrame, seed: int, batches: int, batch_size: int) -> list[dict]:
    """Raw and calibrated scores of every configuration on one split seed."""
    parts = split_frame(raw, SplitParams(seed=seed))
    stream = drop_unreadmittable(parts["future_data"]).reset_index(drop=True)
    frames = {"test": drop_unreadmittable(parts["test"])}
    frames.update(
        {
            f"stream_{i + 1}": stream.iloc[i * batch_size : (i + 1) * batch_size]
            for i in range(batches)
        }
    )
    train = drop_unreadmittable(parts["initial_train"])
    val = drop_unreadmittable(parts["validation"])
    rows = []
    for name, (family, params) in CONFIGS.items():
        fitted = fit_final(family, params, train, val, target="<30", seed=seed)
        for where, frame in frames.items():
            y = make_target(frame)
            with single_threaded():
                raw = fitted.uncalibrated.predict_proba(frame)[:, 1]
                cal = fitted.pipeline.predict_proba(frame)[:, 1]
            before, after = _scores(y, raw), _scores(y, cal)
            rows.append(
                {
                    "seed": seed,
                    "config": name,
                    "method": fitted.calibration.method,
                    "where": where,
                    **{f"{k}_raw": v for k, v in before.items()},
                    **{f"{k}_calibrated": v for k, v in after.items()},
                }
            )
        print(f"seed {seed} {name}: {fitted.calibration.reason}", file=sys.stderr)
    return rows


def _sd(entry: dict) -> str:
    return "-" if entry["sd_change"] is None else f"{entry['sd_change']:.4f}"


def summarise(table: pd.DataFrame) -> dict:
    """Mean raw and calibrated figures and the paired change with its sd, per config and place."""
    table = table.assign(where=table["where"].str.replace(r"stream_\d+", "stream", regex=True))
    out: dict = {}
    for (config, where), group in table.groupby(["config", "where"]):
        entry = {"methods": group["method"].value_counts().to_dict(), "n": len(group)}
        for k in MEASURES:
            diff = group[f"{k}_calibrated"] - group[f"{k}_raw"]
            entry[k] = {
                "raw": round(float(group[f"{k}_raw"].mean()), 4),
                "calibrated": round(float(group[f"{k}_calibrated"].mean()), 4),
                "change": round(float(diff.mean()), 4),
                # one seed and one batch: no spread to report (None, not NaN: valid JSON)
                "sd_change": round(float(diff.std()), 4) if len(diff) > 1 else None,
            }
        out.setdefault(config, {})[where] = entry
    return out


def main() -> int:
    """Run the study; return the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="42,1,2", help="comma-separated split seeds")
    parser.add_argument("--batches", type=int, default=3, help="first stream batches scored")
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--out", default=str(ROOT / "var" / "bench" / "calibration.json"))
    args = parser.parse_args()
    source = find_real_data()
    if source is None:
        print("bench-calibration skipped: real data not found (see bench_train.py)")
        return 0
    started = time.perf_counter()
    raw = resolve_source(source).frame  # split_frame orders it by encounter_id
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        rows += run_seed(raw, seed, args.batches, args.batch_size)
    table = pd.DataFrame(rows)
    summary = summarise(table)
    report = {
        "seeds": args.seeds,
        "batches": args.batches,
        "batch_size": args.batch_size,
        "configs": {k: {"family": f, **p} for k, (f, p) in CONFIGS.items()},
        "summary": summary,
        "rows": rows,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"{'config':16s} {'where':7s} " + "  ".join(f"{k:>24s}" for k in MEASURES)]
    for config, places in summary.items():
        for where, e in places.items():
            cells = "  ".join(
                f"{e[k]['raw']:.4f}->{e[k]['calibrated']:.4f} ({e[k]['change']:+.4f}±{_sd(e[k])})"
                for k in MEASURES
            )
            lines.append(f"{config:16s} {where:7s} {cells}  {e['methods']}")
    print("\n".join(lines) + f"\nwall {report['wall_s']:.0f} s; written {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
