"""How far can the real data go? Test ROC AUC of fixed models over several splits (not a test).

``make bench-train`` measures one search on one split; its test split (~3,000 encounters, ~11 %
positive) pins ROC AUC down to about ±0.03, and which patients land in it moves the figure by
±0.01-0.02. This benchmark asks the question behind the 0.70 goal instead: with one fixed,
reasonable gradient-boosting model, what test ROC AUC does each idea give on average over
``--seeds`` chronological, patient-grouped splits, and how much does it add to the product's
features?

Variants, each scored on the same test rows as the variant it is paired with (``default``
unless stated) for a paired difference; keep an idea only when its mean paired gain exceeds the
gain's standard deviation over the splits:

- ``default``: the product's features and split (20 % initial period), the fixed ``HGB``.
- ``-icd9_codes``: without the target-encoded 3-digit ICD-9 codes of ``diag_1..3`` (the
  product's features before they were added).
- ``+earlier_encounters``: the count of the patient's earlier encounters (``encounter_id``
  order), from :func:`history_features`.
- ``+previous_readmitted_lt30``: whether the patient's previous encounter was followed by a
  readmission within 30 days (known at this admission: that readmission is this one or earlier).
- ``+history``: both history features.
- ``+later_encounters_LEAK``: the count of the patient's LATER encounters. REFUSED as a
  feature: it is unknowable at admission; it is measured only to show what a leak looks like.
- ``lightgbm``: LightGBM (``LGBM``: the same learning rate, iterations, leaves, minimum leaf
  size and L2 as ``HGB``) on the product's features; skipped, with the reason printed, when
  ``lightgbm`` cannot be imported.
- ``refit_train+val``: the model refit on training and validation rows together.
- ``initial_80%``: a four times larger initial period (``initial_fraction=0.8``); it has its
  own, larger test split, so its difference from ``default`` is per seed, not on the same rows.
- ``initial_80%+history``: the same with both history features, paired with ``initial_80%``
  (later periods have more earlier encounters per patient to draw on).
- ``stream``: the ``default`` model scored on the stream (``future_data``, the encounters after
  the initial period) of the patients it was not trained on: a chronological test.
- ``stream+earlier_encounters``, ``stream+previous_readmitted_lt30``, ``stream+history``: the
  history features on that chronological test, each paired with ``stream``.

Every fit runs on one thread (:func:`healthpredict.modeling.models.single_threaded`).

Usage: ``make bench-train-ceiling`` or ``python benchmarks/bench_train_ceiling.py
[--seeds 42,1,2,3] [--variants default,+history]`` (a variant needs the one it is paired with).
Ten seeds and all variants take ~20 min on two busy cores. Writes
``var/bench/train_ceiling.json``. Without the real data it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from bench_train import GOAL_AUC, ROOT, find_real_data
from sklearn.metrics import roc_auc_score

from healthpredict.data.schema import make_target
from healthpredict.data.split import SplitParams, resolve_source, split_frame
from healthpredict.modeling.features import build_preprocessor
from healthpredict.modeling.models import make_estimator, single_threaded

# A sound untuned configuration (the search finds nothing reliably better on this data).
HGB = {
    "learning_rate": 0.03,
    "max_iter": 200,
    "max_leaf_nodes": 8,
    "min_samples_leaf": 100,
    "l2_regularization": 1.0,
}
# LightGBM with the same capacity as HGB (both grow trees leaf-wise, best split first), so the
# paired difference is the library, not the configuration. Everything else stays at LightGBM's
# defaults (no row or column subsampling, 255 bins like HGB).
LGBM = {
    "learning_rate": HGB["learning_rate"],
    "n_estimators": HGB["max_iter"],
    "num_leaves": HGB["max_leaf_nodes"],
    "min_child_samples": HGB["min_samples_leaf"],
    "reg_lambda": HGB["l2_regularization"],
}
HISTORY = ("earlier_encounters", "previous_readmitted_lt30")
LEAK = "later_encounters"
# Variant -> (extra columns, model family, split) for the scorer of that split.
VARIANTS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "default": ((), "hgb", "default"),
    "-icd9_codes": ((), "hgb", "no_codes"),
    "+earlier_encounters": (("earlier_encounters",), "hgb", "default"),
    "+previous_readmitted_lt30": (("previous_readmitted_lt30",), "hgb", "default"),
    "+history": (HISTORY, "hgb", "default"),
    "+later_encounters_LEAK": ((LEAK,), "hgb", "default"),
    "lightgbm": ((), "lightgbm", "default"),
    "refit_train+val": ((), "hgb", "train+val"),
    "initial_80%": ((), "hgb", "initial_80%"),
    "initial_80%+history": (HISTORY, "hgb", "initial_80%"),
    "stream": ((), "hgb", "stream"),
    "stream+earlier_encounters": (("earlier_encounters",), "hgb", "stream"),
    "stream+previous_readmitted_lt30": (("previous_readmitted_lt30",), "hgb", "stream"),
    "stream+history": (HISTORY, "hgb", "stream"),
}
# The variant each one is compared with on the same test rows (default otherwise).
PAIRED_WITH = {
    "initial_80%+history": "initial_80%",
    **{name: "stream" for name in VARIANTS if name.startswith("stream")},
}
REFUSED = {"+later_encounters_LEAK": "refused: built from later encounters (leak demonstration)"}


def history_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Per encounter, features from the same patient's EARLIER encounters only.

    Encounters are put in ``encounter_id`` order (it grows with time) whatever the row order of
    ``frame``; a later encounter never changes an earlier row's values.

    Args:
        frame: Raw encounters with ``encounter_id``, ``patient_nbr`` and ``readmitted``, with a
            unique index.

    Returns:
        Indexed like ``frame``: ``earlier_encounters`` (how many the patient had before) and
        ``previous_readmitted_lt30`` (1.0 when the patient's previous encounter is labelled
        ``<30``: that readmission is this encounter or an earlier one, so it is known now).
    """
    if not frame.index.is_unique:
        raise ValueError("history_features needs a frame with a unique index")
    ordered = frame.sort_values("encounter_id", kind="stable")
    by_patient = ordered.groupby("patient_nbr", sort=False)
    previous_label = by_patient["readmitted"].shift(1)
    out = pd.DataFrame(
        {
            "earlier_encounters": by_patient.cumcount().astype(float),
            "previous_readmitted_lt30": (previous_label == "<30").astype(float),
        },
        index=ordered.index,
    )
    return out.loc[frame.index]


def later_encounters(frame: pd.DataFrame) -> pd.Series:
    """Count of the patient's LATER encounters: a leak, never a feature (see ``REFUSED``)."""
    ordered = frame.sort_values("encounter_id", kind="stable")
    later = ordered.groupby("patient_nbr", sort=False).cumcount(ascending=False)
    return later.astype(float).rename(LEAK).loc[frame.index]


def import_lightgbm() -> tuple[Any, str | None]:
    """``(lightgbm module, None)``, or ``(None, reason)`` when it cannot be imported."""
    try:
        import lightgbm
    except (ImportError, OSError) as exc:  # OSError: the wheel's libgomp missing
        return None, f"lightgbm not importable ({type(exc).__name__}: {exc})"
    return lightgbm, None


def make_model(family: str, seed: int) -> Any:
    """The fixed, unfitted classifier of ``family`` (``hgb`` or ``lightgbm``)."""
    if family == "hgb":
        return make_estimator("hgb", HGB, seed=seed)
    if family == "lightgbm":
        from lightgbm import LGBMClassifier

        return LGBMClassifier(**LGBM, random_state=seed, n_jobs=1, verbose=-1)
    raise ValueError(f"unknown family {family!r}; choose hgb or lightgbm")


def make_scorer(
    train: pd.DataFrame, test: pd.DataFrame, extra: pd.DataFrame, *, seed: int, codes: bool = True
) -> Callable[[Sequence[str], str], float]:
    """Fit the product's preprocessor on ``train`` once; return ``score(columns, family)``.

    ``score`` appends the ``extra`` columns named by ``columns`` (rows matched by index) to both
    matrices, fits the fixed model of ``family`` and returns its ROC AUC on ``test``.
    ``codes=False`` drops the target-encoded ICD-9 categories.
    """
    y_train, y_test = make_target(train), make_target(test)
    pre = build_preprocessor(scale_numeric=False)
    if not codes:
        pre.set_params(encode__codes="drop")
    x_train, x_test = pre.fit_transform(train, y_train), pre.transform(test)

    def score(columns: Sequence[str] = (), family: str = "hgb") -> float:
        a, b = x_train, x_test
        if columns:
            a = np.hstack([a, extra.loc[train.index, list(columns)].to_numpy()])
            b = np.hstack([b, extra.loc[test.index, list(columns)].to_numpy()])
        model = make_model(family, seed).fit(a, y_train)
        return float(roc_auc_score(y_test, model.predict_proba(b)[:, 1]))

    return score


def run_seed(
    ordered: pd.DataFrame, extra: pd.DataFrame, seed: int, variants: Sequence[str]
) -> dict[str, float]:
    """Test ROC AUC of each of ``variants`` on the splits of one seed."""
    parts = split_frame(ordered, SplitParams(seed=seed))
    train, val, test = parts["initial_train"], parts["validation"], parts["test"]

    def data(split: str) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
        """(training rows, test rows, with ICD-9 codes) of one kind of split."""
        if split == "initial_80%":
            large = split_frame(ordered, SplitParams(initial_fraction=0.8, seed=seed))
            return large["initial_train"], large["test"], True
        if split == "stream":
            future = parts["future_data"]
            return train, future[~future["patient_nbr"].isin(train["patient_nbr"])], True
        if split == "train+val":
            return pd.concat([train, val]), test, True
        return train, test, split != "no_codes"

    scorers: dict[str, Callable[[Sequence[str], str], float]] = {}
    out = {}
    for name in variants:
        columns, family, split = VARIANTS[name]
        if split not in scorers:
            tr, te, codes = data(split)
            scorers[split] = make_scorer(tr, te, extra, seed=seed, codes=codes)
        out[name] = scorers[split](columns, family)
    return out


def summarize(table: pd.DataFrame) -> dict[str, dict]:
    """Per variant: test ROC AUC over the splits and the paired gain over its partner's."""

    def fig(value: float) -> float | None:  # an sd of one split is undefined: null, not NaN
        return None if np.isnan(value) else round(float(value), 4)

    summary = {}
    for name in table.columns:
        partner = PAIRED_WITH.get(name, "default")
        gain = table[name] - table[partner]
        row = {
            "mean": fig(table[name].mean()),
            "sd": fig(table[name].std()),
            "min": fig(table[name].min()),
            "max": fig(table[name].max()),
            "paired_with": partner,
            "mean_gain": fig(gain.mean()),
            "sd_gain": fig(gain.std()),
        }
        if name in REFUSED:
            row["verdict"] = REFUSED[name]
        elif name != partner and len(table) < 2:
            row["verdict"] = "undecided: one split has no spread"
        elif name != partner:
            # Unrounded, so a tie at the fourth decimal does not decide.
            row["helps_beyond_spread"] = bool(gain.mean() > gain.std())
            row["verdict"] = "keep" if row["helps_beyond_spread"] else "within its spread"
        summary[name] = row
    return summary


def nan_if_none(value: float | None) -> float:
    """``value``, or NaN for an undefined figure (for printing)."""
    return float("nan") if value is None else value


def table_lines(summary: dict[str, dict]) -> list[str]:
    """The printed table of :func:`summarize`: one line per variant, with its verdict."""
    lines = [
        f"{'variant':32s} {'mean':>7s} {'sd':>7s} {'min':>7s} {'max':>7s} "
        f"{'paired gain ± sd':>17s}  vs / verdict"
    ]
    for name, s in summary.items():
        pairing = f"vs {s['paired_with']}: {s['verdict']}" if "verdict" in s else ""
        sd, sd_gain = nan_if_none(s["sd"]), nan_if_none(s["sd_gain"])
        lines.append(
            f"{name:32s} {s['mean']:7.4f} {sd:7.4f} {s['min']:7.4f} {s['max']:7.4f} "
            f"{s['mean_gain']:+8.4f} ± {sd_gain:.4f}  {pairing}"
        )
    return lines


def main() -> int:
    """Run the study; return the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seeds", default="42,1,2,3,4,5,6,7,8,9", help="comma-separated split seeds"
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated variants (default: all)"
    )
    parser.add_argument("--out", default=str(ROOT / "var" / "bench" / "train_ceiling.json"))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    chosen = args.variants.split(",")
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    unpaired = sorted({PAIRED_WITH.get(v, "default") for v in chosen} - set(chosen))
    if unpaired:
        parser.error(f"--variants must include {unpaired}: the variants the others pair with")
    source = find_real_data()
    if source is None:
        print("bench-train-ceiling skipped: real data not found (see bench_train.py)")
        return 0
    lightgbm, missing = import_lightgbm()
    variants = [v for v in chosen if not (v == "lightgbm" and lightgbm is None)]
    if missing:
        print(f"variant lightgbm skipped: {missing}")
    started = time.perf_counter()
    raw = resolve_source(source).frame
    ordered = raw.sort_values("encounter_id", kind="stable").reset_index(drop=True)
    extra = history_features(ordered).join(later_encounters(ordered))
    rows = {}
    with single_threaded():
        for seed in seeds:
            rows[seed] = run_seed(ordered, extra, seed, variants)
            print(f"seed {seed}: " + "  ".join(f"{k} {v:.4f}" for k, v in rows[seed].items()))
    summary = summarize(pd.DataFrame(rows).T)
    report = {
        "seeds": seeds,
        "source": source,
        "model": {"family": "hgb", **HGB},
        "lightgbm": (
            {"version": lightgbm.__version__, **LGBM} if lightgbm else {"skipped": missing}
        ),
        "test_roc_auc": {str(s): r for s, r in rows.items()},
        "summary": summary,
        "rule": "keep an idea only when its mean paired gain exceeds the gain's sd",
        "goal": GOAL_AUC,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    lines = table_lines(summary)
    print(
        f"\ntest ROC AUC (<30) over {len(seeds)} splits, fixed HGB (goal {GOAL_AUC}):\n"
        + "\n".join(lines)
        + f"\nwall {report['wall_s']:.0f} s; written {out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
