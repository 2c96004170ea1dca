"""The ``healthpredict`` command line: one typed command per pipeline stage."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    help="Health Predict: notebook-driven readmission-risk pipeline.", no_args_is_help=True
)
data_app = typer.Typer(help="Prepare and inspect the data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(stderr=True)


def _print_manifest(manifest: dict) -> None:
    from rich.table import Table

    if manifest.get("banner"):
        console.print(f"[bold white on red] {manifest['banner']} [/]")
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
        help="UCI zip/csv path, s3:// URI, URL, 'auto' or 'synthetic' (default: HP_UCI_SOURCE).",
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
    from healthpredict.config import get_settings
    from healthpredict.data.split import SplitParams, prepare

    params = SplitParams(initial_fraction, validation_fraction, test_fraction, target, seed)
    manifest = prepare(source, out_dir=out_dir, params=params, n_synthetic=n_synthetic)
    _print_manifest(manifest)
    typer.echo(out_dir or get_settings().processed_data)


if __name__ == "__main__":  # pragma: no cover
    app()
