"""API client tokens: ``healthpredict api-token new | revoke | list``.

A token is shown once, when it is made; the token file keeps only its sha256 (the format of
:mod:`healthpredict.serving.auth`), so the file can be handed to the cluster as a Secret. The
token goes alone to stdout (``TOKEN=$(healthpredict api-token new ...)``); what a person reads
goes to stderr.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

import typer

from healthpredict.cli.output import console, print_error
from healthpredict.serving import auth

token_app = typer.Typer(
    help="Bearer tokens of the API's clients (the token file HP_SERVE_TOKENS_FILE reads).",
    no_args_is_help=True,
)
TOKEN_PREFIX = "hp_"  # recognisable by secret scanners and by a person reading a config
KNOWN_SCOPES = (auth.SCOPE_PREDICT, auth.SCOPE_RELOAD)

CLIENT = typer.Option(..., "--client", help="Client id: 1-64 letters, digits, '.', '_', '-'.")
FILE = typer.Option(
    None,
    "--file",
    help="Token file to append the client's hash line to (created, mode 600, if missing).",
)

FILE_REQUIRED = typer.Option(..., "--file", help="The token file.")


def _clients(path: Path) -> dict[str, auth.Client]:
    """The clients of a token file (none if it does not exist), keyed by client id."""
    if not path.exists():
        return {}
    return {c.client_id: c for c in auth.parse_clients(path.read_text(), str(path)).values()}


def _fail(exc: BaseException) -> typer.Exit:
    print_error(exc)
    return typer.Exit(1)


@token_app.command("new")
def new_command(
    client: str = CLIENT,
    scopes: str = typer.Option(
        auth.SCOPE_PREDICT,
        "--scopes",
        help=f"Comma-separated scopes: {', '.join(KNOWN_SCOPES)}.",
    ),
    file: Path | None = FILE,
) -> None:
    """Make a client's token: print it once (stdout) and its hash line; append it to --file.

    Refuses a client id the file already holds (revoke it first: one token per client).
    """
    wanted = tuple(s.strip() for s in scopes.split(",") if s.strip())
    unknown = sorted(set(wanted) - set(KNOWN_SCOPES))
    try:
        if not wanted or unknown:
            raise ValueError(
                f"--scopes {scopes!r}: use one or more of {', '.join(KNOWN_SCOPES)}"
                + (f" (unknown: {', '.join(unknown)})" if unknown else "")
            )
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        line = auth.token_line(client, token, wanted)
        if file is not None:
            if client in _clients(file):
                raise ValueError(
                    f"client {client!r} is already in {file}: revoke it first "
                    f"(healthpredict api-token revoke --client {client} --file {file})"
                )
            _append(file, line)
    except (ValueError, OSError) as exc:  # TokenFileError is a ValueError
        raise _fail(exc) from None
    typer.echo(token)
    where = f"appended to {file}" if file is not None else "add it to the token file"
    console.print(
        f"The token of {client!r} is above: it is shown only now; give it to the client.\n"
        f"Its line ({where}):\n{line}",
        markup=False,
        highlight=False,
    )


@token_app.command("revoke")
def revoke_command(
    client: str = CLIENT,
    file: Path = FILE_REQUIRED,
) -> None:
    """Remove a client's line from the token file (a running API drops it within a second)."""
    try:
        if client not in _clients(file):
            raise ValueError(f"client {client!r} is not in {file}")
        kept = [
            raw
            for raw in file.read_text().splitlines(keepends=True)
            if (raw.split("#", 1)[0].split() or [None])[0] != client
        ]
        _replace(file, "".join(kept))
    except (ValueError, OSError) as exc:
        raise _fail(exc) from None
    console.print(f"revoked {client!r} in {file}", markup=False, highlight=False)


@token_app.command("list")
def list_command(
    file: Path = FILE_REQUIRED,
) -> None:
    """The clients of a token file and their scopes (one per line, on stdout)."""
    try:
        clients = _clients(file)
    except (ValueError, OSError) as exc:
        raise _fail(exc) from None
    for client in clients.values():
        typer.echo(f"{client.client_id} {','.join(sorted(client.scopes))}")


def _append(path: Path, line: str) -> None:
    """Append a line, starting a new line if the file does not end with one."""
    text = path.read_text() if path.exists() else ""
    _replace(path, text + ("\n" if text and not text.endswith("\n") else "") + line + "\n")


def _replace(path: Path, text: str) -> None:
    """Write the token file whole (temporary file + rename): a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
