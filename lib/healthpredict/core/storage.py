"""One API for bytes, text, CSV, JSON and Parquet at local paths and ``s3://`` URIs.

S3 goes through boto3 and honours ``HP_S3_ENDPOINT_URL`` (MinIO, LocalStack, moto) and the
usual AWS environment variables. Local writes are atomic (temporary file + rename) so a crash
never leaves a half-written file behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd

from healthpredict.core.settings import get_settings


class StorageError(OSError):
    """A read or write failed; the message names the URI and the cause."""


def is_s3(uri: str | os.PathLike) -> bool:
    """Whether ``uri`` points at S3."""
    return str(uri).startswith("s3://")


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a local path or an ``s3://`` URI."""
    base = str(base)
    if is_s3(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def _split(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise StorageError(f"{uri}: an S3 URI needs a bucket, like s3://bucket/key")
    return parsed.netloc, parsed.path.lstrip("/")


S3_MAX_ATTEMPTS = 5


@lru_cache(maxsize=4)
def _client(endpoint_url: str | None):
    # boto3 + botocore cost ~0.5 s to import (measured): only when S3 is used
    import boto3
    from botocore.config import Config

    # Bounded retries with backoff: a flaky endpoint is retried, a dead one fails in seconds.
    cfg = Config(
        retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
    )
    return boto3.client("s3", endpoint_url=endpoint_url, config=cfg)


def _cause(exc: Exception) -> str:
    """The exception's text, plus what to check when the S3 endpoint could not be reached."""
    # boto3 + botocore cost ~0.5 s to import (measured): only when S3 is used
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, BotoConnectionError):
        endpoint = get_settings().s3_endpoint_url or "AWS S3"
        return (
            f"{exc}; the S3 endpoint ({endpoint}) did not answer {S3_MAX_ATTEMPTS} attempts with "
            "backoff: check that it is running and that HP_S3_ENDPOINT_URL points at it"
        )
    return str(exc)


def s3_client():
    """The boto3 S3 client for the configured endpoint (cached per endpoint)."""
    return _client(get_settings().s3_endpoint_url)


def read_bytes(uri: str | os.PathLike) -> bytes:
    """Read a whole object or file."""
    uri = str(uri)
    try:
        if is_s3(uri):
            bucket, key = _split(uri)
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return Path(uri).read_bytes()
    except FileNotFoundError as exc:
        raise StorageError(f"{uri}: no such file") from exc
    except Exception as exc:
        if _is_s3_missing(exc):
            raise StorageError(f"{uri}: no such object") from exc
        if isinstance(exc, StorageError):
            raise
        cause = _cause(exc) if is_s3(uri) else str(exc)
        raise StorageError(f"{uri}: read failed: {cause}") from exc


def write_bytes(uri: str | os.PathLike, data: bytes) -> str:
    """Write bytes atomically (local: temp file + rename; S3: a single PUT). Returns the URI."""
    uri = str(uri)
    try:
        if is_s3(uri):
            bucket, key = _split(uri)
            s3_client().put_object(Bucket=bucket, Key=key, Body=data)
            return uri
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return uri
    except StorageError:
        raise
    except Exception as exc:
        cause = _cause(exc) if is_s3(uri) else str(exc)
        raise StorageError(f"{uri}: write failed: {cause}") from exc


def _is_s3_missing(exc: Exception) -> bool:
    code = (
        getattr(exc, "response", {}).get("Error", {}).get("Code")
        if hasattr(exc, "response")
        else None
    )
    return code in ("NoSuchKey", "404", "NotFound")


def exists(uri: str | os.PathLike) -> bool:
    """Whether a file or object exists."""
    uri = str(uri)
    if not is_s3(uri):
        return Path(uri).exists()
    bucket, key = _split(uri)
    try:
        s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except Exception as exc:
        if _is_s3_missing(exc):
            return False
        raise StorageError(f"{uri}: cannot check existence: {_cause(exc)}") from exc


def delete(uri: str | os.PathLike) -> None:
    """Remove a file or object; missing is fine."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = _split(uri)
        s3_client().delete_object(Bucket=bucket, Key=key)
    else:
        Path(uri).unlink(missing_ok=True)


def list_uris(prefix: str | os.PathLike) -> list[str]:
    """All files below a folder or S3 prefix, sorted."""
    prefix = str(prefix)
    if not is_s3(prefix):
        root = Path(prefix)
        return sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.exists() else []
    bucket, key = _split(prefix)
    key = key.rstrip("/") + "/" if key else ""
    out: list[str] = []
    for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
        out.extend(f"s3://{bucket}/{o['Key']}" for o in page.get("Contents", []))
    return sorted(out)


def read_text(uri: str | os.PathLike, encoding: str = "utf-8") -> str:
    """Read a text file."""
    return read_bytes(uri).decode(encoding)


def write_text(uri: str | os.PathLike, text: str) -> str:
    """Write a UTF-8 text file atomically."""
    return write_bytes(uri, text.encode("utf-8"))


def read_json(uri: str | os.PathLike) -> Any:
    """Read a JSON document."""
    return json.loads(read_bytes(uri))


def write_json(uri: str | os.PathLike, obj: Any) -> str:
    """Write a JSON document (indented, keys in insertion order) atomically."""
    return write_text(uri, json.dumps(obj, indent=2, default=str) + "\n")


def read_csv(uri: str | os.PathLike, **kwargs: Any) -> pd.DataFrame:
    """Read a CSV into pandas (``kwargs`` go to :func:`pandas.read_csv`)."""
    return pd.read_csv(io.BytesIO(read_bytes(uri)), **kwargs)


def write_csv(uri: str | os.PathLike, df: pd.DataFrame) -> str:
    """Write a frame as CSV without the index, atomically."""
    return write_bytes(uri, df.to_csv(index=False).encode("utf-8"))


def read_parquet(uri: str | os.PathLike) -> pd.DataFrame:
    """Read a Parquet file."""
    return pd.read_parquet(io.BytesIO(read_bytes(uri)))


def write_parquet(uri: str | os.PathLike, df: pd.DataFrame) -> str:
    """Write a frame as Parquet, atomically."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return write_bytes(uri, buf.getvalue())


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256(uri: str | os.PathLike) -> str:
    """Hex sha256 of a file or object (local files are streamed)."""
    uri = str(uri)
    if is_s3(uri):
        return sha256_bytes(read_bytes(uri))
    h = hashlib.sha256()
    try:
        with open(uri, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except FileNotFoundError as exc:
        raise StorageError(f"{uri}: no such file") from exc
    return h.hexdigest()
