"""The model card's numbers on cases with known answers, and its standalone HTML."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from healthpredict.data.schema import AGE_BRACKETS
from healthpredict.modeling.card import (
    TOO_FEW,
    average_precision_along,
    build_card,
    capture_table,
    decision_curve,
    expected_calibration_error,
    net_benefit,
    operating_point,
    reliability_table,
    subgroup_labels,
    treat_all_benefit,
)
from healthpredict.modeling.card_report import SECTIONS, card_tables, render_card_html

RULE = "maximum F1 on the validation split"


def raw_frame(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Raw UCI-like subgroup columns, independent of the risk."""
    return pd.DataFrame(
        {
            "age": rng.choice(AGE_BRACKETS[3:], n),
            "gender": rng.choice(["Female", "Male"], n),
            "race": rng.choice(
                ["Caucasian", "AfricanAmerican", "Hispanic"], n, p=[0.6, 0.25, 0.15]
            ),
            "admission_type_id": rng.choice([1, 2, 3], n),
            "payer_code": rng.choice(["MC", "?"], n),
        }
    )


def calibrated(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Rows whose labels are drawn from their risks (a calibrated model, ROC AUC ~0.7)."""
    rng = np.random.default_rng(seed)
    p = rng.beta(2, 12, n)
    return raw_frame(n, rng), (rng.random(n) < p).astype(int), p


def card_of(frame, y, p, threshold=0.15, n_resamples=300, **kw):
    facts = {"model_name": "HealthPredict", "params": {"max_iter": 200}, "training_rows": 20000}
    return build_card(
        frame, y, p, threshold=threshold, threshold_rule=RULE, facts=facts,
        n_resamples=n_resamples, **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def planted():
    """8,000 calibrated rows; one race's risks shuffled (no ranking there); 15 rows of a tiny race."""
    frame, y, p = calibrated(8000, seed=3)
    hispanic = (frame["race"] == "Hispanic").to_numpy()
    p = p.copy()
    p[hispanic] = np.random.default_rng(0).permutation(p[hispanic])
    frame.loc[frame.index[:15], "race"] = "Asian"
    return card_of(frame, y, p)


# --- calibration -------------------------------------------------------------------------------


def test_ece_is_zero_when_every_bin_predicts_its_observed_rate():
    # 10 bins of 20 rows: bin b predicts (2b+1)/20 and holds exactly 2b+1 readmissions.
    p = np.repeat((2 * np.arange(10) + 1) / 20, 20)
    y = np.concatenate([np.r_[np.ones(2 * b + 1), np.zeros(19 - 2 * b)] for b in range(10)])
    order = np.random.default_rng(0).permutation(200)  # row order must not matter
    assert expected_calibration_error(y[order], p[order]) == pytest.approx(0, abs=1e-12)
    table = reliability_table(y[order], p[order])
    assert table["n"].tolist() == [20] * 10
    np.testing.assert_allclose(table["observed_rate"], table["mean_predicted"])


def test_ece_by_hand():
    # 20 rows, risks 0, 0.05, ..., 0.95: bins of two with mean risk 0.025, 0.125, ..., 0.925.
    # The five lower bins have no readmission, the five upper ones two each:
    # ECE = 0.1 * (0.025 + 0.125 + 0.225 + 0.325 + 0.425 + 0.475 + 0.375 + 0.275 + 0.175 + 0.075)
    p = np.arange(20) / 20
    y = (np.arange(20) >= 10).astype(int)
    assert expected_calibration_error(y, p) == pytest.approx(0.25)
    # the vectorised form gives each resample's ECE
    rows = np.random.default_rng(1).integers(0, 20, (5, 20))
    each = [expected_calibration_error(y[r], p[r]) for r in rows]
    np.testing.assert_allclose(expected_calibration_error(y[rows], p[rows]), each)


def test_calibration_in_the_large_is_observed_minus_predicted():
    frame, _, _ = calibrated(1000, seed=0)
    y = np.r_[np.ones(300), np.zeros(700)].astype(int)
    p = np.random.default_rng(2).permutation(np.linspace(0.1, 0.3, 1000))  # mean 0.2
    card = card_of(frame, y, p)
    citl = card.calibration["citl"]
    assert citl["value"] == pytest.approx(0.1)
    assert citl["low"] > 0  # 0.3 observed vs 0.2 predicted on 1,000 rows is beyond noise


# --- capture and decision curve ------------------------------------------------------------------


def test_capture_at_known_ranks():
    ranks = np.array([1, 2, 4, 7, 10, 15, 19, 20, 30, 50, 90])  # 11 readmissions of 100
    p_by_rank = np.linspace(0.99, 0.01, 100)
    y_by_rank = np.isin(np.arange(1, 101), ranks).astype(int)
    order = np.random.default_rng(0).permutation(100)
    table = capture_table(y_by_rank[order], p_by_rank[order])
    assert table["n_flagged"].tolist() == [5, 10, 20]
    np.testing.assert_allclose(table["readmissions_reached"], [3 / 11, 5 / 11, 8 / 11])
    np.testing.assert_allclose(table["precision"], [3 / 5, 5 / 10, 8 / 20])
    np.testing.assert_allclose(table["lift"], [60 / 11, 50 / 11, 40 / 11])
    np.testing.assert_allclose(table["risk_cutoff"], p_by_rank[[4, 9, 19]])


def test_net_benefit_by_hand():
    y = np.array([1, 1, 0, 0, 0, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.6, 0.55, 0.3, 0.2, 0.15, 0.1, 0.05, 0.04, 0.01])
    # t=0.5: TP 2, FP 1 -> 0.2 - 0.1*1; t=0.2: TP 2, FP 3 -> 0.2 - 0.3/4; t=0.1: TP 3, FP 4
    expected = [0.2 - 0.1, 0.2 - 0.3 * 0.25, 0.3 - 0.4 * (0.1 / 0.9)]
    np.testing.assert_allclose(net_benefit(y, p, [0.5, 0.2, 0.1]), expected)
    curve = decision_curve(y, p, [0.1, 0.3, 0.5])
    assert (curve["treat_none"] == 0).all()
    # treat-all is positive below the prevalence (0.3), zero at it, negative above
    assert curve["treat_all"][0] > 0 and curve["treat_all"][2] < 0
    assert treat_all_benefit(0.3, [0.3])[0] == pytest.approx(0)
    assert treat_all_benefit(0.3, [0.1])[0] == pytest.approx(0.3 - 0.7 / 9)


def test_operating_point_by_hand():
    y = np.array([1, 1, 0, 0, 0, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.6, 0.55, 0.3, 0.2, 0.15, 0.1, 0.05, 0.04, 0.01])
    grid = np.array([0.1, 0.3, 0.5, 0.7, 0.8, 0.92])
    op = operating_point(y, p, 0.5, RULE, decision_curve(y, p, grid))
    assert (op["share_flagged"], op["sensitivity"], op["ppv"]) == pytest.approx((0.3, 2 / 3, 2 / 3))
    assert op["specificity"] == pytest.approx(6 / 7)
    assert op["net_benefit"] == pytest.approx(0.1) and op["pays"]
    # beats both at 0.1 .. 0.8; at 0.92 nobody is flagged (net benefit 0 = treat-none)
    assert (op["useful_low"], op["useful_high"], op["useful_elsewhere"]) == (0.1, 0.8, 0)
    # Readmissions at ranks 1, 6, 7: net benefit 0.256 at 0.1 (beats treat-all 0.222), below 0
    # at 0.3 and 0.5, 0.1 from 0.7 on: the longest run is 0.7-0.85, one threshold elsewhere.
    y = np.array([1, 0, 0, 0, 0, 1, 1, 0, 0, 0])
    grid = np.array([0.1, 0.3, 0.5, 0.7, 0.8, 0.85])
    op = operating_point(y, p, 0.5, RULE, decision_curve(y, p, grid))
    assert op["net_benefit"] == pytest.approx(-0.1) and not op["pays"]
    assert (op["useful_low"], op["useful_high"], op["useful_elsewhere"]) == (0.7, 0.85, 1)
    assert "does NOT beat" in op["why"] and "0.70 to 0.85 (and at 1 other" in op["why"]


# --- overall performance ------------------------------------------------------------------------


def test_overall_roc_auc_is_sklearns_and_its_interval_narrows_with_rows():
    widths = []
    for n in (600, 6000):
        frame, y, p = calibrated(n, seed=5)
        card = card_of(frame, y, p)
        auc = card.overall["roc_auc"]
        assert auc["value"] == pytest.approx(skm.roc_auc_score(y, p))
        assert auc["low"] < auc["value"] < auc["high"]
        pr = card.overall["pr_auc"]
        assert pr["value"] == pytest.approx(skm.average_precision_score(y, p))
        assert pr["low"] < pr["value"] < pr["high"]
        assert card.overall["brier"]["value"] == pytest.approx(np.mean((p - y) ** 2))
        widths.append(auc["high"] - auc["low"])
    assert widths[1] < widths[0] / 2  # ~sqrt(10) narrower


def test_vectorised_average_precision_matches_sklearn_with_ties():
    rng = np.random.default_rng(4)
    y = (rng.random((20, 60)) < 0.3).astype(int)
    p = np.round(rng.random((20, 60)), 1)  # many tied risks, as in resamples
    expected = [skm.average_precision_score(a, b) for a, b in zip(y, p, strict=True)]
    np.testing.assert_allclose(average_precision_along(y, p), expected)


# --- subgroups ----------------------------------------------------------------------------------


def test_a_planted_subgroup_is_flagged_and_same_distribution_groups_are_not(planted):
    sub = planted.subgroups.set_index(["attribute", "group"])
    hispanic = sub.loc[("race", "Hispanic")]
    assert hispanic["differs"]
    assert "ROC AUC lower than overall" in hispanic["flag"]
    assert hispanic["roc_auc_high"] < planted.overall["roc_auc"]["value"]
    for sex in ("Female", "Male"):  # both sexes hold the planted rows alike
        assert not sub.loc[("sex", sex), "differs"], sub.loc[("sex", sex), "flag"]
    for payer in ("known", "unknown"):
        assert not sub.loc[("payer", payer), "differs"], sub.loc[("payer", payer), "flag"]


def test_a_tiny_subgroup_is_too_few_to_judge(planted):
    asian = planted.subgroups.set_index(["attribute", "group"]).loc[("race", "Asian")]
    assert asian["n"] == 15
    assert asian["flag"] == TOO_FEW and not asian["differs"]
    assert asian[["roc_auc", "roc_auc_low", "citl", "flagged_rate_high"]].isna().all()


def test_a_miscalibrated_subgroup_is_flagged_for_calibration_and_flag_rate():
    frame, y, p = calibrated(6000, seed=8)
    urgent = (frame["admission_type_id"] == 2).to_numpy()
    p = np.where(urgent, np.minimum(p + 0.08, 1), p)  # risks too high in one admission type
    row = (
        card_of(frame, y, p)
        .subgroups.set_index(["attribute", "group"])
        .loc[("admission type", "Urgent")]
    )
    assert row["differs"]
    assert "risk over-estimated" in row["flag"] and "flagged more often" in row["flag"]


def test_subgroup_mapping_of_raw_values():
    raw = pd.DataFrame(
        {
            "age": ["[0-10)", "[30-40)", "[40-50)", "[50-60)", "[60-70)", "[70-80)", "[80-90)",
                    "[90-100)", "?", None],
            "gender": ["Male", "Female", "Unknown/Invalid", None, "?", "Male", "Female", "Male",
                       "Male", "Missing"],
            "race": ["Caucasian", "?", None, "Missing", "AfricanAmerican", "Asian", "Hispanic",
                     "Other", "", "Caucasian"],
            "admission_type_id": [1, 2, 3, 4, 5, 6, 7, 8, None, "1"],
            "payer_code": ["MC", "?", None, "Missing", "", "BC", "SP", "?", "MD", np.nan],
        }
    )  # fmt: skip
    labels = subgroup_labels(raw)
    assert labels["age band"].tolist() == [
        "<40", "<40", "40–59", "40–59", "60–79", "60–79", "80+", "80+", "Unknown", "Unknown",
    ]  # fmt: skip
    assert labels["sex"].tolist() == ["Male", "Female"] + ["Unknown"] * 3 + [
        "Male", "Female", "Male", "Male", "Unknown",
    ]  # fmt: skip
    assert labels["race"].tolist() == [
        "Caucasian", "Unknown", "Unknown", "Unknown", "AfricanAmerican", "Asian", "Hispanic",
        "Other", "Unknown", "Caucasian",
    ]  # fmt: skip
    assert labels["admission type"].tolist() == [
        "Emergency", "Urgent", "Elective", "Newborn", "Unknown", "Unknown", "Trauma center",
        "Unknown", "Unknown", "Emergency",
    ]  # fmt: skip
    assert labels["payer"].tolist() == [
        "known", "unknown", "unknown", "unknown", "unknown", "known", "known", "unknown",
        "known", "unknown",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="payer_code"):
        subgroup_labels(raw.drop(columns="payer_code"))


# --- inputs, operating point, serialisation -----------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"y": np.zeros(5)}, "rows"),
        ({"y": np.full(500, 2)}, "0/1"),
        ({"p": np.full(500, 1.5)}, r"\[0, 1\]"),
        ({"threshold": 1.5}, "threshold"),
    ],
)
def test_bad_inputs_are_refused_by_name(change, message):
    frame, y, p = calibrated(500, seed=0)
    args = {"y": y, "p": p, "threshold": 0.15} | change
    with pytest.raises(ValueError, match=message):
        card_of(frame, args["y"], args["p"], threshold=args["threshold"])


def test_operating_point_and_json(planted):
    op = planted.operating_point
    assert op["threshold"] == 0.15 and op["rule"] == RULE
    assert 0 < op["share_flagged"] < 1 and 0 < op["sensitivity"] < 1
    assert op["pays"] and op["useful_low"] <= 0.15 <= op["useful_high"]
    assert RULE in op["why"] and "the model beats both alternatives" in op["why"]
    data = json.loads(json.dumps(planted.to_dict(), allow_nan=False))  # NaN became null
    asian = [r for r in data["subgroups"] if r["group"] == "Asian"][0]
    assert asian["roc_auc"] is None and asian["flag"] == TOO_FEW
    assert data["overall"]["roc_auc"]["value"] == pytest.approx(planted.overall["roc_auc"]["value"])


# --- the HTML -----------------------------------------------------------------------------------


def test_the_html_is_one_self_contained_page(planted):
    page = render_card_html(planted, title="Model card: test")
    for _, heading in SECTIONS:
        assert f"<h2>{heading}</h2>" in page
    assert page.count('<img src="data:image/png;base64,') >= 2
    assert "Calibration plot" in page and "Decision curve" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "<script" not in page.lower()
    assert "ROC AUC lower than overall" in page and TOO_FEW in page
    assert 'class="flagged"' in page
    assert "not for diagnosis" in page and "CC BY 4.0" in page
    assert "HealthPredict" in page and "max_iter=200" in page  # facts in order, with labels
    tables = card_tables(planted)
    assert set(tables) == {"performance", "calibration", "subgroups", "capture", "operating_point"}
    assert len(tables["subgroups"]) == len(planted.subgroups)
    assert not math.isnan(planted.calibration["ece"]["value"])
