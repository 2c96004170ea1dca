"""NannyML's CBPE on files written by bench_estimation.py (runs in ``.venv-nannyml``, not the project's).

NannyML 0.13 needs pandas 3, which the project's Evidently cannot import, so it lives in its own
venv (``make nannyml-venv``) and exchanges data through CSV files. Both input files have the
columns ``segment`` (one model of the stream: CBPE is fitted on that model's reference and
estimates that model's batches), ``y_pred_proba`` and ``y_pred``; the reference file also has
``y_true``. Each segment's analysis rows are chunked by ``--chunk-size`` in file order (the
caller writes whole batches only, so chunks are its batches).

Usage: ``.venv-nannyml/bin/python benchmarks/nannyml_cbpe.py REFERENCE.csv ANALYSIS.csv OUT.json
[--chunk-size 2000]``. Writes ``{"nannyml_version", "segments": {segment: [estimated ROC AUC
per chunk, in order]}}``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys


def main() -> int:
    """Fit CBPE per segment and write the estimated ROC AUC of each chunk; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference")
    parser.add_argument("analysis")
    parser.add_argument("out")
    parser.add_argument("--chunk-size", type=int, default=2000)
    args = parser.parse_args()
    try:
        import nannyml
        import pandas as pd
    except ImportError as exc:
        print(f"NannyML is not importable here ({exc}): run make nannyml-venv", file=sys.stderr)
        return 2
    reference = pd.read_csv(args.reference)
    analysis = pd.read_csv(args.analysis)
    out: dict[str, list[float]] = {}
    for segment, ref in reference.groupby("segment", sort=False):
        rows = analysis[analysis["segment"] == segment]
        if len(rows) % args.chunk_size:
            print(
                f"segment {segment}: {len(rows)} analysis rows is not a whole number of "
                f"chunks of {args.chunk_size}",
                file=sys.stderr,
            )
            return 2
        estimator = nannyml.CBPE(
            problem_type="classification_binary",
            y_pred_proba="y_pred_proba",
            y_pred="y_pred",
            y_true="y_true",
            metrics=["roc_auc"],
            chunk_size=args.chunk_size,
        )
        estimator.fit(ref.drop(columns="segment").reset_index(drop=True))
        result = estimator.estimate(rows.drop(columns="segment").reset_index(drop=True))
        frame = result.filter(period="analysis").to_df()
        values = [float(v) for v in frame[("roc_auc", "value")]]
        out[str(segment)] = [v if math.isfinite(v) else None for v in values]
    with open(args.out, "w") as fh:
        json.dump({"nannyml_version": nannyml.__version__, "segments": out}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
