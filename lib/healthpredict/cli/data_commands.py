"""``healthpredict data``: load, validate and split the encounters, and say which data a run is on."""

from __future__ import annotations

import typer

from healthpredict.cli.output import console, print_error
from healthpredict.core import layout

data_app = typer.Typer(help="Prepare and inspect the data.", no_args_is_help=True)


def print_data_source(manifest: dict) -> None:
    """One line saying which data the run is on: the red banner when synthetic."""
    if manifest.get("banner"):
        console.print(f"[bold white on red] {manifest['banner']} [/]")
        return
    console.print(
        f"data: [bold]{manifest['data_source']}[/] UCI Diabetes 130-US hospitals, "
        f"{manifest['source_rows']:,} rows, CSV sha256 {manifest['source_csv_sha256'][:12]}…, "
        f"from {manifest['source']}",
        highlight=False,
    )


def prepare_or_exit(source: str | None, **kwargs) -> dict:
    """:func:`~healthpredict.data.split.prepare`, or exit 1 with the data error's message."""
    from healthpredict.data.split import prepare
    from healthpredict.data.uci import UCIDataError

    try:
        return prepare(source, **kwargs)
    except UCIDataError as exc:
        print_error(exc)
        raise typer.Exit(1) from None


def print_manifest(manifest: dict) -> None:
    """The data line, then one table row per split (rows, patients, target rate, ids, sha256)."""
    from rich.table import Table

    print_data_source(manifest)
    table = Table(title=f"Prepared data ({manifest['data_source']}: {manifest['source']})")
    for col in ("split", "rows", "patients", "target rate", "encounter ids", "sha256"):
        table.add_column(
            col, justify="right" if col in ("rows", "patients", "target rate") else "left"
        )
    for name, info in manifest["splits"].items():
        table.add_row(
            name,
            f"{info['rows']:,}",
            f"{info['patients']:,}",
            f"{info['target_rate']:.3f}",
            f"{info['first_encounter_id']}..{info['last_encounter_id']}",
            info["sha256"][:12],
        )
    console.print(table)


@data_app.command("prepare")
def data_prepare(
    source: str = typer.Option(
        None,
        help="UCI zip/csv path, s3:// URI, URL, 'auto' (the zip bundled in the repository, "
        "else the cache, else the download) or 'synthetic' (default: HP_UCI_SOURCE).",
    ),
    out_dir: str = typer.Option(
        None, help="Destination folder or s3:// URI (default: <storage>/processed_data)."
    ),
    target: str = typer.Option("<30", help="Label: '<30' (readmitted within 30 days) or 'any'."),
    initial_fraction: float = typer.Option(
        0.2, help="Share of the earliest encounters used for the initial model."
    ),
    validation_fraction: float = typer.Option(
        0.15, help="Share of the initial period (by patient) for validation."
    ),
    test_fraction: float = typer.Option(
        0.15, help="Share of the initial period (by patient) for the test split."
    ),
    seed: int = typer.Option(42, help="Seed of the patient-grouped split."),
    n_synthetic: int = typer.Option(30_000, help="Rows to generate when the source is synthetic."),
) -> None:
    """Load, validate and split the encounters; write four CSVs and manifest.json."""
    from healthpredict.data.split import SplitParams

    params = SplitParams(initial_fraction, validation_fraction, test_fraction, target, seed)
    manifest = prepare_or_exit(source, out_dir=out_dir, params=params, n_synthetic=n_synthetic)
    print_manifest(manifest)
    typer.echo(out_dir or layout.processed_data())
