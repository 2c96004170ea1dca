"""The UCI loader: both zip layouts, nested zips, S3, checksum and truncation errors, and the
``auto`` source: the bundled zip first, then the cache, then the download, else a clear error
(never a silent synthetic fallback)."""

from __future__ import annotations

import io
import socket
import zipfile

import pytest
from typer.testing import CliRunner

from healthpredict.core import storage
from healthpredict.data import uci
from healthpredict.data.split import resolve_source
from healthpredict.data.uci import CSV_SHA256, UCIDataError, find_csv_in_zip, load_uci, read_raw_csv

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


def _uci_site_layout(real_zip, tmp_path):
    """The bundled zip re-packed the way the UCI site ships it: another folder, ``IDS_mapping``."""
    folder = "diabetes+130-us+hospitals+for+years+1999-2008"
    out = tmp_path / "uci-296-diabetes-130-us-hospitals.zip"
    with zipfile.ZipFile(real_zip) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        dst.writestr(f"{folder}/diabetic_data.csv", src.read("dataset_diabetes/diabetic_data.csv"))
        dst.writestr(f"{folder}/IDS_mapping.csv", src.read("dataset_diabetes/IDs_mapping.csv"))
    return out


@pytest.mark.realdata
def test_real_zips_both_layouts(real_zip, tmp_path):
    a = load_uci(real_zip)
    b = load_uci(_uci_site_layout(real_zip, tmp_path))
    assert a.csv_sha256 == b.csv_sha256 == CSV_SHA256
    assert a.frame.shape == (101_766, 50)
    assert a.frame["patient_nbr"].nunique() == 71_518
    assert a.frame["readmitted"].value_counts().to_dict() == {
        "NO": 54_864,
        ">30": 35_545,
        "<30": 11_357,
    }
    assert (a.frame["max_glu_serum"] == "None").sum() == 96_420


def _closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: a download that fails at once, offline."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/uci.zip"


@pytest.fixture
def offline(hp_env, monkeypatch):
    """An empty cache and a UCI URL that cannot answer; returns the cache folder."""
    cache = hp_env / "cache"
    monkeypatch.setenv("HP_CACHE_DIR", str(cache))
    monkeypatch.setattr(uci, "UCI_URL", _closed_port_url())
    from healthpredict.core.settings import get_settings

    get_settings.cache_clear()
    return cache


@pytest.mark.realdata
def test_auto_prefers_the_bundled_zip_over_the_cache(offline, real_zip):
    # A cached zip that is not the real data: reading it would fail the checksum.
    storage.write_bytes(offline / uci.CACHE_NAME, _zip({"x/diabetic_data.csv": SAMPLE.encode()}))
    loaded = resolve_source("auto")
    assert loaded.data_source == "real" and loaded.csv_sha256 == CSV_SHA256
    assert loaded.source == uci.BUNDLED_ZIP_RELPATH  # the same on every clone
    assert len(loaded.frame) == 101_766


def test_auto_refuses_a_damaged_bundled_zip_naming_it_and_both_digests(
    offline, real_zip, tmp_path, monkeypatch
):
    damaged = tmp_path / "data" / "uci" / "dataset_diabetes.zip"
    damaged.parent.mkdir(parents=True)
    blob = bytearray(real_zip.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    damaged.write_bytes(bytes(blob))
    monkeypatch.setattr(uci, "BUNDLED_ZIP", damaged)
    # A good cache is there, but a damaged bundled file is an error, not a reason to move on.
    storage.write_bytes(offline / uci.CACHE_NAME, real_zip.read_bytes())
    with pytest.raises(UCIDataError) as err:
        resolve_source("auto")
    message = str(err.value)
    assert str(damaged) in message and uci.BUNDLED_ZIP_SHA256 in message
    assert storage.sha256_bytes(bytes(blob)) in message


def test_auto_without_bundled_zip_uses_the_cache(offline, tmp_path, monkeypatch):
    monkeypatch.setattr(uci, "BUNDLED_ZIP", tmp_path / "absent.zip")
    storage.write_bytes(offline / uci.CACHE_NAME, _zip({"x/diabetic_data.csv": SAMPLE.encode()}))
    # The cache is read (and checked: this one is not the real file), not skipped.
    with pytest.raises(UCIDataError, match=f"{uci.CACHE_NAME}: diabetic_data.csv has sha256"):
        resolve_source("auto")


def test_auto_with_no_data_anywhere_is_an_error_naming_the_way_out(offline, tmp_path, monkeypatch):
    monkeypatch.setattr(uci, "BUNDLED_ZIP", tmp_path / "absent.zip")
    with pytest.raises(UCIDataError) as err:
        resolve_source("auto")
    message = str(err.value)
    assert "--source synthetic" in message and "HP_UCI_SOURCE" in message
    assert "absent.zip" in message and uci.UCI_URL in message
    # The command says the same and exits 1, with no traceback and no synthetic run.
    from healthpredict.cli import app

    result = CliRunner().invoke(app, ["data", "prepare", "--source", "auto"])
    assert result.exit_code == 1, result.output
    assert "--source synthetic" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "var" / "processed_data" / "manifest.json").exists()
