"""API clients and their bearer tokens: the token file's format, hashing and parsing.

A token file (a mounted Kubernetes Secret, ``HP_SERVE_TOKENS_FILE``, or the same text in
``HP_SERVE_TOKENS``) has one client per line::

    # client id   token hash (sha256 of the token)                                  scopes
    ward-7        sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 predict

Only hashes are stored: a leaked file does not leak a token. Scopes default to ``predict``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

HASH_PREFIX = "sha256:"
DEFAULT_SCOPES = ("predict",)
CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


class TokenFileError(ValueError):
    """A token file line is malformed; the message names the line."""


@dataclass(frozen=True)
class Client:
    """One API client: its id (the metrics label), token hash and scopes."""

    client_id: str
    token_hash: str
    scopes: frozenset[str]


def hash_token(token: str) -> str:
    """``sha256:<hex>`` of a token, the form the token file stores."""
    return HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def token_line(client_id: str, token: str, scopes: tuple[str, ...] = DEFAULT_SCOPES) -> str:
    """The token file line of a client (without the newline).

    Raises:
        TokenFileError: The client id is not a short name of letters, digits, ``._-``.
    """
    if not CLIENT_ID.match(client_id):
        raise TokenFileError(f"client id {client_id!r}: use 1-64 letters, digits, '.', '_', '-'")
    return f"{client_id} {hash_token(token)} {','.join(scopes)}"


def parse_clients(text: str, source: str = "tokens") -> dict[str, Client]:
    """Clients of a token file, keyed by token hash.

    Raises:
        TokenFileError: A malformed line, a bad hash, or a client id or hash given twice.
    """
    clients: dict[str, Client] = {}
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        where = f"{source} line {number}"
        if len(fields) not in (2, 3):
            raise TokenFileError(f"{where}: expected '<client id> sha256:<hex> [scopes]'")
        client_id, token_hash = fields[0], fields[1].lower()
        if not CLIENT_ID.match(client_id):
            raise TokenFileError(f"{where}: bad client id {client_id!r}")
        if not _HASH.match(token_hash):
            raise TokenFileError(f"{where}: the token must be stored as sha256:<64 hex digits>")
        if client_id in seen or token_hash in clients:
            raise TokenFileError(f"{where}: client {client_id!r} or its token is listed twice")
        scopes = frozenset(fields[2].split(",")) if len(fields) == 3 else frozenset(DEFAULT_SCOPES)
        seen.add(client_id)
        clients[token_hash] = Client(client_id, token_hash, scopes)
    return clients
