"""Load the real UCI "Diabetes 130-US hospitals" data from a zip, a CSV, S3 or the UCI site.

The zip is committed in the repository (:data:`BUNDLED_ZIP`, see ``data/uci/README.md``), so
``auto`` finds it in any clone; an install outside the repository has no bundled zip and uses
the cache or the download instead. The synthetic generator is never a silent fallback.

The CSV is found wherever it sits inside the zip (also in a zip nested in a zip), checked
against its published sha256 and read with the file's traps handled: ``?`` is missing, while
the literal ``None`` in ``max_glu_serum``/``A1Cresult`` means "not measured" and stays a category.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import requests

from healthpredict.core import storage
from healthpredict.core.settings import get_settings, project_root
from healthpredict.data.schema import RAW_COLUMNS

UCI_URL = (
    "https://archive.ics.uci.edu/static/public/296/"
    "diabetes+130-us+hospitals+for+years+1999-2008.zip"
)
CSV_NAME = "diabetic_data.csv"
CSV_SHA256 = "0689e7ec031237dc63031b938805c48377748761a3b26acab621567afa24df97"
CACHE_NAME = "uci-296-diabetes-130-us-hospitals.zip"
UCI_PAGE = "https://archive.ics.uci.edu/dataset/296 (doi 10.24432/C5230J)"
BUNDLED_ZIP_RELPATH = "data/uci/dataset_diabetes.zip"
BUNDLED_ZIP_SHA256 = "3a17a3b55b6dd4a1926703185c0ad8e2ed30bc8e2f9b927cdd1000b733d1de8e"
_TEXT_COLUMNS = {c.name: str for c in RAW_COLUMNS if c.kind in ("category", "code", "text")}
_MAX_NESTING = 3


class UCIDataError(ValueError):
    """The UCI data could not be found, fetched, unpacked or verified; the message says which."""


# The committed UCI zip, in the checkout (project_root); an install elsewhere has none there,
# and bundled_zip() then says None. Tests point it elsewhere (None: no bundled zip).
BUNDLED_ZIP: Path | None = project_root() / BUNDLED_ZIP_RELPATH


@dataclass(frozen=True)
class LoadedData:
    """A raw frame and where it came from."""

    frame: pd.DataFrame
    source: str  # what the user gave (path, URI, URL)
    csv_sha256: str
    data_source: str = "real"  # "real" or "synthetic"


def read_raw_csv(data: bytes | str | os.PathLike, *, source: str = "data") -> pd.DataFrame:
    """Parse raw encounter CSV bytes (or a local path / URI) with the UCI traps handled.

    Raises:
        UCIDataError: When the bytes are not UTF-8 text, empty, truncated (the last line cut
            short) or not a parsable CSV.
    """
    if not isinstance(data, bytes | bytearray):
        source = str(data)
        data = storage.read_bytes(data)
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        line = bytes(data[: exc.start]).count(b"\n") + 1
        raise UCIDataError(
            f"{source}: not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}, "
            f"line {line}); re-export the file as UTF-8 CSV"
        ) from exc
    if not text.strip():
        raise UCIDataError(f"{source}: the file is empty (no header, no rows)")
    _check_not_truncated(text, source)
    try:
        # "?" marks missing values; keep_default_na=False keeps the literal "None" category.
        return pd.read_csv(
            io.StringIO(text),
            keep_default_na=False,
            na_values=["?", ""],
            dtype=_TEXT_COLUMNS,
            low_memory=False,
        )
    except (pd.errors.ParserError, ValueError) as exc:
        raise UCIDataError(f"{source}: not a readable CSV: {exc}") from exc


def _check_not_truncated(text: str, source: str) -> None:
    """Refuse a file whose last line stops short of the header's fields with no line end.

    pandas would silently fill the missing fields of a cut-off last line with NaN.
    """
    if text.endswith(("\n", "\r")) or "\n" not in text:
        return
    header = text[: text.index("\n")].rstrip("\r")
    last = text[text.rindex("\n") + 1 :]
    n_header = len(next(csv.reader([header])))
    n_last = len(next(csv.reader([last]), []))
    if n_last < n_header:
        raise UCIDataError(
            f"{source}: truncated file: its last line (line {text.count(chr(10)) + 1}) stops "
            f"after {n_last} of {n_header} fields, with no line end (cut mid-line); copy or "
            "export the whole file again"
        )


def find_csv_in_zip(
    blob: bytes, *, name: str = CSV_NAME, source: str = "zip", _depth: int = 0
) -> bytes:
    """Return the bytes of ``name`` wherever it is in the zip, looking into nested zips too.

    Raises:
        UCIDataError: For a truncated/corrupt zip or when the file is nowhere inside.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            members = zf.namelist()
            for member in members:
                if Path(member).name.lower() == name.lower():
                    return zf.read(member)
            if _depth < _MAX_NESTING:
                for member in members:
                    if member.lower().endswith(".zip"):
                        try:
                            return find_csv_in_zip(
                                zf.read(member),
                                name=name,
                                source=f"{source}!{member}",
                                _depth=_depth + 1,
                            )
                        except UCIDataError:
                            continue
    except zipfile.BadZipFile as exc:
        raise UCIDataError(f"{source}: truncated or corrupt zip ({exc})") from exc
    except (zipfile.LargeZipFile, EOFError, OSError) as exc:
        raise UCIDataError(f"{source}: cannot unpack zip ({exc})") from exc
    raise UCIDataError(f"{source}: no {name} inside (members: {', '.join(members[:10])})")


def _fetch(source: str) -> bytes:
    if source.startswith(("http://", "https://")):
        return _download(source)
    try:
        return storage.read_bytes(source)
    except storage.StorageError as exc:
        raise UCIDataError(f"UCI data not found: {exc}") from exc


def _download(url: str) -> bytes:
    """Download once into the cache; later calls read the cached copy."""
    cache = Path(get_settings().cache_dir) / CACHE_NAME
    if cache.exists():
        return cache.read_bytes()
    try:
        resp = requests.get(url, timeout=(10, 300))
        resp.raise_for_status()
    except requests.RequestException as exc:
        raise UCIDataError(f"cannot download the UCI data from {url}: {exc}") from exc
    storage.write_bytes(cache, resp.content)
    return resp.content


def cached_zip() -> Path | None:
    """The downloaded UCI zip in the cache, if there is one."""
    path = Path(get_settings().cache_dir) / CACHE_NAME
    return path if path.exists() else None


def bundled_zip() -> Path | None:
    """The zip committed in the repository, checked against :data:`BUNDLED_ZIP_SHA256`.

    Returns:
        Its path, or None when it is absent (an install outside the repository).

    Raises:
        UCIDataError: The file is there but its sha256 differs (damaged or replaced).
    """
    if BUNDLED_ZIP is None or not BUNDLED_ZIP.is_file():
        return None
    digest = storage.sha256(BUNDLED_ZIP)
    if digest != BUNDLED_ZIP_SHA256:
        raise UCIDataError(
            f"{BUNDLED_ZIP}: the bundled UCI zip has sha256 {digest}, expected "
            f"{BUNDLED_ZIP_SHA256} (damaged or replaced; restore it with "
            f"`git checkout -- {BUNDLED_ZIP_RELPATH}`, or set HP_UCI_SOURCE to another copy)"
        )
    return BUNDLED_ZIP


def real_data_source() -> str | None:
    """Where a run that must use real data (benchmarks, samples) reads it, or None.

    ``HP_UCI_SOURCE`` when it names a path, ``s3://`` URI or URL; else the bundled zip, else
    the cached one (no download). ``auto`` and ``synthetic`` in the setting do not count.
    """
    source = get_settings().uci_source
    if source not in ("auto", "synthetic"):
        return source
    found = bundled_zip() or cached_zip()
    return str(found) if found else None


def load_auto() -> LoadedData:
    """The real data from the first place that has it: bundled zip, cache, then the UCI site.

    Raises:
        UCIDataError: The bundled zip is damaged, or no place has the data; the message says
            how to get it and that ``--source synthetic`` runs the offline generator instead.
    """
    bundled = bundled_zip()
    if bundled is not None:
        loaded = load_uci(bundled)
        # Shown in manifests and reports: the same on every clone, not this machine's path.
        return replace(loaded, source=BUNDLED_ZIP_RELPATH)
    cached = cached_zip()
    if cached is not None:
        return load_uci(cached)
    where = BUNDLED_ZIP or f"{BUNDLED_ZIP_RELPATH} (not in a repository checkout)"
    try:
        return load_uci(UCI_URL)
    except UCIDataError as exc:
        raise UCIDataError(
            f"no UCI data: the bundled zip {where} is absent, the cache "
            f"{Path(get_settings().cache_dir) / CACHE_NAME} is empty and the download failed "
            f"({exc}). Get the zip from {UCI_PAGE} and set HP_UCI_SOURCE (or --source) to its "
            "path, an s3:// URI or a URL; or run on the offline synthetic generator, not real "
            "patients, with `--source synthetic` (HP_UCI_SOURCE=synthetic)."
        ) from exc


def load_uci(source: str | os.PathLike, *, verify: bool = True) -> LoadedData:
    """Load the raw UCI encounters from a ``.zip``/``.csv`` path, an ``s3://`` URI or a URL.

    Args:
        source: Where the data is.
        verify: Check the CSV's sha256 against the published one (turn off only for samples).

    Raises:
        UCIDataError: Missing file, failed download, corrupt zip or checksum mismatch.
    """
    source = str(source)
    blob = _fetch(source)
    is_zip = blob[:4] == b"PK\x03\x04" or source.lower().endswith(".zip")
    csv_bytes = find_csv_in_zip(blob, source=source) if is_zip else blob
    digest = storage.sha256_bytes(csv_bytes)
    if verify and digest != CSV_SHA256:
        raise UCIDataError(
            f"{source}: {CSV_NAME} has sha256 {digest}, expected {CSV_SHA256} "
            "(a different or truncated file; pass verify=False for a sample on purpose)"
        )
    return LoadedData(read_raw_csv(csv_bytes, source=source), source, digest)
