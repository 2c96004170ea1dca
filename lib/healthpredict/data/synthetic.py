"""Offline generator of encounters in the exact raw UCI schema, with a known risk model.

The marginals follow the real file (approximate frequencies of the 101,766 encounters) so that
EDA, training, drift monitoring and serving can run without the internet. The 30-day label is
drawn from a *known* logistic model (:func:`risk_probability`), which lets tests and drift
scenarios compare a model against the truth. Every frame is labelled with
``df.attrs["data_source"] == SYNTHETIC_MARKER`` so that outputs can say they are synthetic.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from healthpredict.data.schema import (
    AGE_BRACKETS,
    EXCLUDED_DISPOSITIONS,
    MEDICATIONS,
    RAW_COLUMNS,
    TARGET,
    WEIGHT_BRACKETS,
)

SYNTHETIC_MARKER = "synthetic"

# --- marginals, rounded from the real file -------------------------------------------------

_RACE = {"Caucasian": 0.748, "AfricanAmerican": 0.189, None: 0.022, "Hispanic": 0.020,
         "Other": 0.015, "Asian": 0.006}  # fmt: skip
_GENDER = {"Female": 0.5375, "Male": 0.4624, "Unknown/Invalid": 0.0001}
_AGE = (0.0016, 0.0068, 0.0163, 0.0371, 0.0952, 0.1696, 0.2209, 0.2562, 0.1690, 0.0274)
_WEIGHT_MISSING = 0.9686
_WEIGHT = (0.016, 0.032, 0.281, 0.418, 0.194, 0.045, 0.010, 0.003, 0.001)  # given present
_ADMISSION_TYPE = {1: 0.5305, 3: 0.1854, 2: 0.1816, 6: 0.052, 5: 0.047, 8: 0.0031,
                   7: 0.0002, 4: 0.0001}  # fmt: skip
# admission_source depends strongly on admission_type (emergencies arrive through the ER, 7).
_SOURCE_GIVEN_TYPE = {
    1: {7: 0.899, 6: 0.037, 1: 0.031, 17: 0.012, 5: 0.011, 2: 0.005, 4: 0.004, 3: 0.001},
    2: {1: 0.499, 7: 0.332, 4: 0.099, 2: 0.028, 6: 0.010, 17: 0.011, 5: 0.007, 9: 0.007,
        20: 0.006, 3: 0.001},
    3: {1: 0.858, 4: 0.057, 7: 0.049, 2: 0.017, 5: 0.006, 3: 0.005, 6: 0.004, 20: 0.002,
        17: 0.001, 22: 0.001},
    4: {4: 0.5, 1: 0.2, 7: 0.2, 14: 0.1},
    5: {17: 0.616, 1: 0.357, 7: 0.027},
    6: {17: 0.559, 7: 0.310, 1: 0.112, 4: 0.008, 2: 0.005, 5: 0.003, 6: 0.001, 3: 0.001,
        25: 0.001},
    7: {7: 1.0},
    8: {1: 0.553, 7: 0.391, 2: 0.044, 4: 0.012},
}  # fmt: skip
# Share discharged home (1) falls with age; the other dispositions keep their real mix.
_HOME_BY_AGE = (0.90, 0.90, 0.85, 0.82, 0.77, 0.71, 0.64, 0.53, 0.37, 0.25)
_DISCHARGE_NOT_HOME = {3: 0.1371, 6: 0.1268, 18: 0.0363, 2: 0.0209, 22: 0.0196, 11: 0.0161,
                       5: 0.0116, 25: 0.0097, 4: 0.0080, 7: 0.0061, 23: 0.0040, 13: 0.0039,
                       14: 0.0037, 28: 0.0014, 8: 0.0011, 15: 0.0006, 24: 0.0005, 19: 0.0003,
                       20: 0.0002, 21: 0.0002, 9: 0.0002, 17: 0.0001, 16: 0.0001,
                       10: 0.0001}  # fmt: skip
_TIME_IN_HOSPITAL = (0.1396, 0.1693, 0.1745, 0.1368, 0.0979, 0.0741, 0.0576, 0.0431, 0.0295,
                     0.0230, 0.0182, 0.0142, 0.0119, 0.0102)  # fmt: skip
_PAYER = {None: 0.3956, "MC": 0.3188, "HM": 0.0617, "SP": 0.0492, "BC": 0.0457, "MD": 0.0347,
          "CP": 0.0249, "UN": 0.0241, "CM": 0.0190, "OG": 0.0102, "PO": 0.0058, "DM": 0.0054,
          "CH": 0.0014, "WC": 0.0013, "OT": 0.0009, "MP": 0.0008, "SI": 0.0005}  # fmt: skip
_SPECIALTY = {None: 0.4908, "InternalMedicine": 0.1438, "Emergency/Trauma": 0.0743,
              "Family/GeneralPractice": 0.0731, "Cardiology": 0.0526, "Surgery-General": 0.0305,
              "Nephrology": 0.0159, "Orthopedics": 0.0138, "Orthopedics-Reconstructive": 0.0121,
              "Radiologist": 0.0112, "Pulmonology": 0.0086, "Psychiatry": 0.0084,
              "Urology": 0.0067, "ObstetricsandGynecology": 0.0066,
              "Surgery-Cardiovascular/Thoracic": 0.0064, "Gastroenterology": 0.0055,
              "Surgery-Vascular": 0.0052, "Surgery-Neuro": 0.0046,
              "PhysicalMedicineandRehabilitation": 0.0038, "Oncology": 0.0034,
              "Pediatrics": 0.0025, "Hematology/Oncology": 0.0020, "Neurology": 0.0020,
              "Pediatrics-Endocrinology": 0.0016, "Otolaryngology": 0.0012}  # fmt: skip
_NUM_PROCEDURES = (0.4584, 0.2038, 0.1250, 0.0928, 0.0411, 0.0302, 0.0487)
_NUM_DIAGNOSES = {9: 0.4862, 5: 0.112, 8: 0.1043, 7: 0.1021, 6: 0.0998, 4: 0.0544, 3: 0.0279,
                  2: 0.0101, 1: 0.0022, 16: 0.0004, 10: 0.0002, 13: 0.0002, 11: 0.0001,
                  15: 0.0001, 12: 0.0001, 14: 0.0001}  # fmt: skip
# (mean, negative-binomial shape) of the prior-visit counts; the shape reproduces P(0).
_VISITS = {"number_outpatient": (0.37, 0.14), "number_emergency": (0.20, 0.12),
           "number_inpatient": (0.40, 0.40)}  # fmt: skip
_MAX_GLU = {"None": 0.9475, "Norm": 0.0255, ">200": 0.0146, ">300": 0.0124}
_A1C = {"None": 0.8328, ">8": 0.0807, "Norm": 0.0490, ">7": 0.0375}
# P(Steady), P(Up), P(Down) per medication; the rest is "No".
_MEDS = {
    "metformin": (0.1803, 0.0105, 0.0057), "repaglinide": (0.0136, 0.0011, 0.0004),
    "nateglinide": (0.0066, 0.0002, 0.0001), "chlorpropamide": (0.0008, 0.0001, 0.0),
    "glimepiride": (0.0459, 0.0032, 0.0019), "acetohexamide": (0.00001, 0.0, 0.0),
    "glipizide": (0.1116, 0.0076, 0.0055), "glyburide": (0.0911, 0.0080, 0.0055),
    "tolbutamide": (0.0002, 0.0, 0.0), "pioglitazone": (0.0686, 0.0023, 0.0012),
    "rosiglitazone": (0.0599, 0.0018, 0.0009), "acarbose": (0.0029, 0.0001, 0.0),
    "miglitol": (0.0003, 0.0, 0.0001), "troglitazone": (0.00003, 0.0, 0.0),
    "tolazamide": (0.0004, 0.0, 0.0), "examide": (0.0, 0.0, 0.0),
    "citoglipton": (0.0, 0.0, 0.0), "insulin": (0.3031, 0.1112, 0.1201),
    "glyburide-metformin": (0.0068, 0.0001, 0.0001), "glipizide-metformin": (0.0001, 0.0, 0.0),
    "glimepiride-pioglitazone": (0.00001, 0.0, 0.0),
    "metformin-rosiglitazone": (0.00002, 0.0, 0.0), "metformin-pioglitazone": (0.00001, 0.0, 0.0),
}  # fmt: skip
# Number of encounters per patient: ~30% of encounters belong to repeat patients.
_ENCOUNTERS_PER_PATIENT = {1: 0.86, 2: 0.095, 3: 0.028, 4: 0.01, 5: 0.004, 6: 0.002, 8: 0.001}

# --- ICD-9 codes: groups of (range, common codes) and their share per diagnosis position ----

_ICD_GROUPS: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "infectious": (1, 139, ("38", "8", "41", "70", "79", "53", "9", "42", "3", "112")),
    "neoplasm": (140, 239, ("162", "174", "153", "157", "189", "197", "198", "185", "200")),
    "endocrine": (240, 279, ("276", "272", "278", "244", "263", "274", "277", "251")),
    "blood": (280, 289, ("285", "280", "287", "284", "288")),
    "mental": (290, 319, ("296", "305", "311", "300", "298", "295", "303", "292", "290")),
    "nervous": (320, 389, ("345", "340", "357", "348", "331", "332", "386", "362", "365")),
    "circulatory": (390, 459, ("428", "414", "410", "427", "434", "435", "402", "403", "424",
                               "433", "401", "411", "425", "440", "413", "426", "436", "415",
                               "453", "443")),
    "respiratory": (460, 519, ("486", "491", "518", "493", "496", "492", "511", "466", "480")),
    "digestive": (520, 579, ("577", "562", "574", "560", "578", "558", "535", "550", "571")),
    "genitourinary": (580, 629, ("599", "584", "585", "590", "592", "593", "596", "586")),
    "pregnancy": (630, 679, ("648", "644", "642", "654", "658")),
    "skin": (680, 709, ("682", "707", "681", "680", "686")),
    "musculoskeletal": (710, 739, ("715", "722", "724", "730", "733", "721", "711", "728")),
    "symptoms": (780, 799, ("786", "780", "789", "787", "788", "784", "799", "790", "785")),
    "injury": (800, 999, ("996", "820", "998", "997", "824", "805", "823", "812", "850")),
}  # fmt: skip
_DIABETES_CODES = ("250", "250.8", "250.6", "250.7", "250.13", "250.02", "250.01", "250.11",
                   "250.12", "250.82", "250.83", "250.4", "250.22", "250.03", "250.42",
                   "250.92", "250.41", "250.1", "250.81", "250.5")  # fmt: skip
_V_CODES = ("V57", "V58", "V45", "V42", "V55", "V85", "V43", "V15", "V10", "V54", "V53", "V12")
_E_CODES = ("E878", "E885", "E888", "E849", "E932", "E942", "E935", "E947", "E879", "E884")
_DIAG_SHARES = {  # diag_1, diag_2, diag_3
    "circulatory": (0.303, 0.317, 0.314), "respiratory": (0.104, 0.104, 0.071),
    "digestive": (0.092, 0.040, 0.037), "diabetes": (0.087, 0.129, 0.180),
    "symptoms": (0.076, 0.047, 0.047), "injury": (0.070, 0.025, 0.020),
    "genitourinary": (0.051, 0.081, 0.066), "musculoskeletal": (0.050, 0.018, 0.020),
    "neoplasm": (0.034, 0.026, 0.019), "infectious": (0.028, 0.020, 0.020),
    "endocrine": (0.027, 0.083, 0.096), "skin": (0.025, 0.036, 0.026),
    "mental": (0.023, 0.027, 0.033), "nervous": (0.012, 0.013, 0.019),
    "blood": (0.011, 0.030, 0.026), "pregnancy": (0.007, 0.004, 0.003),
    "V": (0.016, 0.018, 0.038), "E": (0.0001, 0.007, 0.012),
}  # fmt: skip
_DIAG_MISSING = (0.0002, 0.0035, 0.014)

# --- the known risk model ------------------------------------------------------------------

_AGE_INDEX = {a: i for i, a in enumerate(AGE_BRACKETS)}
_TRANSFER_DISPOSITIONS = (2, 3, 4, 5, 6, 15, 22, 23, 24, 27, 28, 29, 30)
_HOSPICE_DISPOSITIONS = (13, 14)
# Expired patients cannot come back; hospice patients (13, 14) sometimes do in the real file.
EXPIRED_DISPOSITIONS = EXCLUDED_DISPOSITIONS - set(_HOSPICE_DISPOSITIONS)
_RISK_INTERCEPT = -3.37  # puts the mean P(<30) near the real 11% on generated data


def risk_logit(df: pd.DataFrame) -> np.ndarray:
    """Log-odds of ``<30`` under the known risk model, before expired patients are zeroed.

    NaN-safe (a missing value counts as "absent") so it also runs on real frames; the drift
    scenarios invert it to build concept drift.

    Args:
        df: Raw encounter frame with the schema's feature columns.

    Returns:
        Float array, one log-odds value per row.
    """

    def num(col: str) -> np.ndarray:
        return pd.to_numeric(df[col], errors="coerce").fillna(0).to_numpy(dtype=float)

    age = df["age"].map(_AGE_INDEX).fillna(6).to_numpy(dtype=float)
    disposition = num("discharge_disposition_id")
    diag = df["diag_1"].astype(str)
    diag_num = pd.to_numeric(diag, errors="coerce").to_numpy(dtype=float)
    circulatory = (diag_num >= 390) & (diag_num < 460)
    diabetes = diag.str.startswith("250").to_numpy()
    insulin_changed = df["insulin"].isin(("Up", "Down")).to_numpy()
    a1c_measured = df["A1Cresult"].astype(str).isin((">7", ">8", "Norm")).to_numpy()
    return (
        _RISK_INTERCEPT
        + 1.35 * np.log1p(np.minimum(num("number_inpatient"), 20))
        + 0.55 * np.log1p(np.minimum(num("number_emergency"), 20))
        + 0.09 * (np.clip(num("time_in_hospital"), 1, 14) - 4)
        + 0.15 * (age - 6)
        - 0.8 * (age <= 1)
        + 0.65 * np.isin(disposition, _TRANSFER_DISPOSITIONS)
        - 1.0 * np.isin(disposition, _HOSPICE_DISPOSITIONS)
        + 0.25 * circulatory
        + 0.55 * diabetes
        + 0.50 * insulin_changed
        - 0.40 * a1c_measured
    )


def risk_probability(df: pd.DataFrame) -> np.ndarray:
    """True P(readmitted == "<30") of the known risk model for each row of a raw frame.

    The model is logistic in: prior inpatient visits (strongest), prior emergency visits,
    length of stay, age, discharge disposition (transfers up, hospice down), a circulatory or
    diabetic primary diagnosis, an insulin dose change and a measured HbA1c (protective).
    Patients who expired (dispositions 11, 19, 20, 21) cannot be readmitted: probability 0.
    Works on real frames too (missing values count as "absent"), which drift scenarios use.

    Args:
        df: Raw encounter frame with the schema's feature columns.

    Returns:
        Float array of probabilities in [0, 1), one per row; in (0, 1) except expired rows.
    """
    p = 1.0 / (1.0 + np.exp(-risk_logit(df)))
    dispositions = pd.to_numeric(df["discharge_disposition_id"], errors="coerce")
    p[dispositions.isin(EXPIRED_DISPOSITIONS).to_numpy()] = 0.0
    return p


# --- generation ----------------------------------------------------------------------------


def _pick(rng: np.random.Generator, table: dict, n: int) -> np.ndarray:
    """Draw n values from a {value: weight} table into an object array (None stays None)."""
    keys = list(table)
    p = np.asarray(list(table.values()), dtype=float)
    out = np.empty(n, dtype=object)
    out[:] = [keys[i] for i in rng.choice(len(keys), size=n, p=p / p.sum())]
    return out


def _pick_int(rng: np.random.Generator, table: dict[int, float], n: int) -> np.ndarray:
    keys = np.asarray(list(table), dtype=np.int64)
    p = np.asarray(list(table.values()), dtype=float)
    return keys[rng.choice(len(keys), size=n, p=p / p.sum())]


def _patients(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Patient code (in order of first visit) and visit index of each encounter."""
    counts = _pick_int(rng, _ENCOUNTERS_PER_PATIENT, n)
    m = int(np.searchsorted(np.cumsum(counts), n) + 1)
    counts = counts[:m]
    counts[-1] -= counts.sum() - n
    # A patient's visits are spread at random over the whole period.
    owner = rng.permutation(np.repeat(np.arange(m), counts))
    codes, _ = pd.factorize(owner)
    visit = pd.Series(codes).groupby(codes).cumcount().to_numpy()
    return codes.astype(np.int64), visit, m


def _visits(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Correlated prior-visit counts: negative binomials tied by a Gaussian copula."""
    frailty = rng.standard_normal(n)
    out = {}
    for col, (mean, shape) in _VISITS.items():
        z = 0.6 * frailty + 0.8 * rng.standard_normal(n)
        u = np.clip(stats.norm.cdf(z), 1e-12, 1 - 1e-12)
        values = stats.nbinom.ppf(u, shape, shape / (shape + mean))
        out[col] = np.minimum(values, 80).astype(np.int64)
    return out


def _codes(rng: np.random.Generator, n: int, position: int) -> np.ndarray:
    """ICD-9 codes for one diagnosis position, in the raw file's spelling."""
    groups = list(_DIAG_SHARES)
    shares = np.asarray([_DIAG_SHARES[g][position] for g in groups])
    group = rng.choice(len(groups), size=n, p=shares / shares.sum())
    out = np.empty(n, dtype=object)
    for gi, name in enumerate(groups):
        idx = np.flatnonzero(group == gi)
        if not len(idx):
            continue
        if name == "diabetes":
            pool, lo, hi = _DIABETES_CODES, None, None
        elif name == "V":
            pool, lo, hi = _V_CODES, None, None
        elif name == "E":
            pool, lo, hi = _E_CODES, None, None
        else:
            lo, hi, pool = _ICD_GROUPS[name]
        # Zipf-like weights: a few codes dominate each chapter, as in the real file.
        weights = 1.0 / np.arange(1, len(pool) + 1)
        values = np.asarray(pool, dtype=object)[
            rng.choice(len(pool), size=len(idx), p=weights / weights.sum())
        ]
        if lo is not None:
            rare = rng.random(len(idx)) < 0.15
            values[rare] = rng.integers(lo, hi + 1, size=int(rare.sum())).astype(str)
        out[idx] = values
    out[rng.random(n) < _DIAG_MISSING[position]] = None
    return out


def _medications(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    statuses = np.asarray(["Steady", "Up", "Down", "No"], dtype=object)
    out = {}
    for med in MEDICATIONS:
        steady, up, down = _MEDS[med]
        cuts = np.cumsum([steady, up, down])
        out[med] = statuses[np.searchsorted(cuts, rng.random(n), side="right")]
    return out


def generate(n_rows: int, seed: int = 0, start_encounter_id: int = 100_000) -> pd.DataFrame:
    """Generate synthetic encounters with exactly the raw UCI schema and a known risk model.

    Args:
        n_rows: Number of encounters (rows), at least 1.
        seed: Seed of the numpy Generator; the same seed gives the identical frame.
        start_encounter_id: ``encounter_id`` of the first row; ids then increase strictly,
            in chronological order, with random gaps like the real file.

    Returns:
        Frame with the 50 columns of ``RAW_COLUMNS`` in order (ints as int64, strings as
        Python ``str`` in object columns, missing values as ``None`` only where the schema
        allows them), ``readmitted`` drawn from :func:`risk_probability`, and
        ``attrs["data_source"] == "synthetic"``.

    Raises:
        ValueError: If ``n_rows`` < 1 or ``start_encounter_id`` < 1.
    """
    if n_rows < 1:
        raise ValueError(f"n_rows must be at least 1, got {n_rows}")
    if start_encounter_id < 1:
        raise ValueError(f"start_encounter_id must be positive, got {start_encounter_id}")
    rng = np.random.default_rng(seed)
    n = int(n_rows)
    cols: dict[str, np.ndarray] = {}
    # The draws happen in this order: the same seed then gives the identical frame.
    patient, visit, m, age_idx = _who(rng, n, start_encounter_id, cols)
    stay = _admission(rng, n, age_idx, cols)
    _care(rng, (patient, m), stay, cols)
    _history(rng, n, visit, cols)
    _drugs(rng, n, cols)

    df = pd.DataFrame({c.name: cols[c.name] for c in RAW_COLUMNS if c.name != TARGET})
    for col in ("num_procedures", "number_diagnoses"):
        df[col] = df[col].astype(np.int64)
    df[TARGET] = _labels(rng, df)
    df.attrs["data_source"] = SYNTHETIC_MARKER
    return df


Columns = dict[str, np.ndarray]


def _who(
    rng: np.random.Generator, n: int, start_encounter_id: int, cols: Columns
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Encounter ids, patients and their demographics; returns who each row is."""
    gaps = rng.geometric(1 / 4000, size=n).astype(np.int64)
    gaps[0] = 0
    cols["encounter_id"] = start_encounter_id + np.cumsum(gaps)

    patient, visit, m = _patients(rng, n)
    # Patient numbers grow with the first visit, like registration numbers.
    cols["patient_nbr"] = (rng.integers(1, 3000, size=m).cumsum() + 100)[patient]
    cols["race"] = _pick(rng, _RACE, m)[patient]
    cols["gender"] = _pick(rng, _GENDER, m)[patient]
    age_idx = rng.choice(len(AGE_BRACKETS), size=m, p=np.asarray(_AGE) / sum(_AGE))[patient]
    cols["age"] = np.asarray(AGE_BRACKETS, dtype=object)[age_idx]
    weight = np.asarray(WEIGHT_BRACKETS, dtype=object)[
        rng.choice(len(WEIGHT_BRACKETS), size=n, p=np.asarray(_WEIGHT) / sum(_WEIGHT))
    ]
    weight[rng.random(n) < _WEIGHT_MISSING] = None
    cols["weight"] = weight
    return patient, visit, m, age_idx


def _admission(rng: np.random.Generator, n: int, age_idx: np.ndarray, cols: Columns) -> np.ndarray:
    """Admission type and source, discharge disposition and length of stay (returned)."""
    admission_type = _pick_int(rng, _ADMISSION_TYPE, n)
    source = np.zeros(n, dtype=np.int64)
    for t, table in _SOURCE_GIVEN_TYPE.items():
        idx = np.flatnonzero(admission_type == t)
        source[idx] = _pick_int(rng, table, len(idx))
    home = rng.random(n) < np.asarray(_HOME_BY_AGE)[age_idx]
    disposition = np.where(home, 1, _pick_int(rng, _DISCHARGE_NOT_HOME, n))
    cols["admission_type_id"] = admission_type
    cols["discharge_disposition_id"] = disposition.astype(np.int64)
    cols["admission_source_id"] = source
    stay = rng.choice(14, size=n, p=np.asarray(_TIME_IN_HOSPITAL) / sum(_TIME_IN_HOSPITAL)) + 1
    cols["time_in_hospital"] = stay.astype(np.int64)
    return stay


def _care(
    rng: np.random.Generator, patients: tuple[np.ndarray, int], stay: np.ndarray, cols: Columns
) -> None:
    """Payer, specialty, labs, procedures and drugs during the stay."""
    patient, m = patients
    n = len(stay)
    cols["payer_code"] = _pick(rng, _PAYER, m)[patient]
    cols["medical_specialty"] = _pick(rng, _SPECIALTY, n)
    # Longer stays mean more labs and drugs, as in the real data.
    labs = rng.normal(34 + 2.1 * stay, 18.5)
    cols["num_lab_procedures"] = np.clip(np.rint(labs), 1, 132).astype(np.int64)
    cols["num_procedures"] = rng.choice(
        7, size=n, p=np.asarray(_NUM_PROCEDURES) / sum(_NUM_PROCEDURES)
    )
    drug_mean = 8.5 + 1.7 * stay
    drugs = rng.poisson(drug_mean * rng.gamma(7.0, 1 / 7.0, size=n))
    cols["num_medications"] = np.clip(drugs, 1, 81).astype(np.int64)


def _history(rng: np.random.Generator, n: int, visit: np.ndarray, cols: Columns) -> None:
    """Earlier visits, diagnoses and lab results."""
    visits = _visits(rng, n)
    # Earlier encounters of the same patient in this data are prior inpatient visits.
    visits["number_inpatient"] = visits["number_inpatient"] + visit
    cols.update(visits)
    for position in range(3):
        cols[f"diag_{position + 1}"] = _codes(rng, n, position)
    cols["number_diagnoses"] = _pick_int(rng, _NUM_DIAGNOSES, n)
    cols["max_glu_serum"] = _pick(rng, _MAX_GLU, n)
    cols["A1Cresult"] = _pick(rng, _A1C, n)


def _drugs(rng: np.random.Generator, n: int, cols: Columns) -> None:
    """The 23 diabetes medications and the summary columns derived from them."""
    meds = _medications(rng, n)
    cols.update(meds)
    status = np.stack([meds[med] for med in MEDICATIONS])
    dose_changed = ((status == "Up") | (status == "Down")).any(axis=0)
    any_drug = (status != "No").any(axis=0)
    # "Ch" also covers switches between drugs, which leave no Up/Down trace.
    switched = any_drug & (rng.random(n) < 0.35)
    cols["change"] = np.where(dose_changed | switched, "Ch", "No").astype(object)
    cols["diabetesMed"] = np.where(any_drug, "Yes", "No").astype(object)


def _labels(rng: np.random.Generator, df: pd.DataFrame) -> np.ndarray:
    """Draw ``readmitted`` from the known model; ">30" shares part of the same risk."""
    p_early = risk_probability(df)
    linear = risk_logit(df) - _RISK_INTERCEPT
    # The intercept puts ">30" near the real 35%; a flatter slope makes it a weaker signal.
    p_late = 1.0 / (1.0 + np.exp(-(-0.94 + 0.6 * linear)))
    p_late[p_early == 0] = 0.0
    u = rng.random(len(df))
    labels = np.full(len(df), "NO", dtype=object)
    labels[u < p_early + (1 - p_early) * p_late] = ">30"
    labels[u < p_early] = "<30"
    return labels
