"""The UCI loader: both zip layouts, nested zips, S3, checksum and truncation errors."""

from __future__ import annotations

import io
import zipfile

import pytest

from healthpredict.core import storage
from healthpredict.data.uci import CSV_SHA256, UCIDataError, find_csv_in_zip, load_uci, read_raw_csv
from tests.conftest import REAL_ZIP_UCI_LAYOUT

SAMPLE = (
    "encounter_id,patient_nbr,race,max_glu_serum,A1Cresult,diag_1\r\n"
    "1,10,Caucasian,None,>8,250.83\r\n"
    "2,11,?,Norm,None,V57\r\n"
)


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_read_raw_csv_handles_the_traps():
    frame = read_raw_csv(SAMPLE.encode())
    assert frame["max_glu_serum"].tolist() == ["None", "Norm"]  # "None" stays a category
    assert frame["A1Cresult"].tolist() == [">8", "None"]
    assert frame["race"].isna().tolist() == [False, True]  # "?" is missing
    assert frame["diag_1"].tolist() == ["250.83", "V57"]  # codes stay text


def test_finds_csv_in_any_layout_and_nested_zip():
    csv = SAMPLE.encode()
    assert find_csv_in_zip(_zip({"diabetic_data.csv": csv})) == csv
    assert find_csv_in_zip(_zip({"a/b/diabetic_data.csv": csv, "a/IDs_mapping.csv": b"x"})) == csv
    nested = _zip({"readme.txt": b"hi", "inner/data.zip": _zip({"x/diabetic_data.csv": csv})})
    assert find_csv_in_zip(nested) == csv


def test_missing_member_and_truncated_zip_are_clear_errors():
    with pytest.raises(UCIDataError, match="no diabetic_data.csv inside"):
        find_csv_in_zip(_zip({"other.csv": b"x"}), source="x.zip")
    blob = _zip({"diabetic_data.csv": SAMPLE.encode() * 200})
    with pytest.raises(UCIDataError, match="truncated or corrupt"):
        find_csv_in_zip(blob[: len(blob) // 2], source="half.zip")


def test_checksum_mismatch_and_missing_file(tmp_path):
    path = tmp_path / "fake.zip"
    path.write_bytes(_zip({"diabetic_data.csv": SAMPLE.encode()}))
    with pytest.raises(UCIDataError, match=f"expected {CSV_SHA256}"):
        load_uci(path)
    assert len(load_uci(path, verify=False).frame) == 2
    with pytest.raises(UCIDataError, match="not found"):
        load_uci(tmp_path / "nope.zip")


def test_non_utf8_and_empty_are_clear_errors():
    with pytest.raises(UCIDataError, match="not UTF-8"):
        read_raw_csv(b"encounter_id\n\xff\xfe\n", source="bad.csv")
    with pytest.raises(UCIDataError, match="empty"):
        read_raw_csv(b"", source="empty.csv")


def test_loads_from_s3(s3_bucket):
    uri = f"{s3_bucket}/raw/sample.zip"
    storage.write_bytes(uri, _zip({"x/diabetic_data.csv": SAMPLE.encode()}))
    loaded = load_uci(uri, verify=False)
    assert loaded.source == uri and len(loaded.frame) == 2


@pytest.mark.realdata
def test_real_zips_both_layouts(real_zip):
    if not REAL_ZIP_UCI_LAYOUT.exists():
        pytest.skip("second real zip absent")
    a = load_uci(real_zip)
    b = load_uci(REAL_ZIP_UCI_LAYOUT)
    assert a.csv_sha256 == b.csv_sha256 == CSV_SHA256
    assert a.frame.shape == (101_766, 50)
    assert a.frame["patient_nbr"].nunique() == 71_518
    assert a.frame["readmitted"].value_counts().to_dict() == {
        "NO": 54_864,
        ">30": 35_545,
        "<30": 11_357,
    }
    assert (a.frame["max_glu_serum"] == "None").sum() == 96_420
