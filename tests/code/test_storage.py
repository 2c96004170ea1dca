"""Storage round-trips on local paths and through a real S3 HTTP endpoint (moto server)."""

from __future__ import annotations

import pandas as pd
import pytest

from healthpredict.core import storage


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_bucket") + "/prefix"


def test_bytes_json_csv_parquet_round_trip(root):
    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    storage.write_bytes(storage.join(root, "raw.bin"), b"\x00\x01hello")
    storage.write_json(storage.join(root, "doc.json"), {"k": [1, 2], "n": None})
    storage.write_csv(storage.join(root, "t.csv"), frame)
    storage.write_parquet(storage.join(root, "sub", "t.parquet"), frame)

    assert storage.read_bytes(storage.join(root, "raw.bin")) == b"\x00\x01hello"
    assert storage.read_json(storage.join(root, "doc.json")) == {"k": [1, 2], "n": None}
    pd.testing.assert_frame_equal(storage.read_csv(storage.join(root, "t.csv")), frame)
    pd.testing.assert_frame_equal(
        storage.read_parquet(storage.join(root, "sub", "t.parquet")), frame
    )
    listed = storage.list_uris(root)
    assert sorted(u.rsplit("/", 1)[-1] for u in listed) == [
        "doc.json",
        "raw.bin",
        "t.csv",
        "t.parquet",
    ]
    assert storage.sha256(storage.join(root, "raw.bin")) == storage.sha256_bytes(b"\x00\x01hello")


def test_exists_delete_and_missing(root):
    uri = storage.join(root, "gone.txt")
    assert not storage.exists(uri)
    storage.write_text(uri, "hi")
    assert storage.exists(uri) and storage.read_text(uri) == "hi"
    storage.delete(uri)
    assert not storage.exists(uri)
    with pytest.raises(storage.StorageError, match="gone.txt"):
        storage.read_bytes(uri)


def test_local_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a" / "b.json"
    storage.write_json(target, {"x": 1})
    storage.write_json(target, {"x": 2})
    assert storage.read_json(target) == {"x": 2}
    assert [p.name for p in target.parent.iterdir()] == ["b.json"]


def test_s3_uri_without_bucket_is_a_clear_error():
    with pytest.raises(storage.StorageError, match="needs a bucket"):
        storage.read_bytes("s3:///key")


def test_join_keeps_s3_scheme():
    assert storage.join("s3://b/p/", "x", "/y.csv") == "s3://b/p/x/y.csv"
