"""API clients and their bearer tokens: the token file's format, hashing and parsing.

A token file (a mounted Kubernetes Secret, ``HP_SERVE_TOKENS_FILE``, or the same text in
``HP_SERVE_TOKENS``) has one client per line::

    # client id   token hash (sha256 of the token)                                  scopes
    ward-7        sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 predict

Only hashes are stored: a leaked file does not leak a token. Scopes default to ``predict``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


# --------------------------------------------------------------------------- the clients in force

SCOPE_PREDICT = "predict"
SCOPE_RELOAD = "reload"
# A failed check's reason: the label of healthpredict_auth_failures_total.
MISSING, MALFORMED, UNKNOWN, SCOPE = "missing", "malformed", "unknown_token", "scope"
CONFIG_HINT = (
    "set HP_SERVE_TOKENS_FILE (a token file, e.g. a mounted Secret) or HP_SERVE_TOKENS (its "
    "text), made with `healthpredict api-token new`; or set HP_SERVE_AUTH=off to serve /predict "
    "without authentication (local demo only)"
)

log = logging.getLogger("healthpredict.serving")


class AuthConfigError(RuntimeError):
    """Authentication is on but cannot work as configured: the API must not start."""


def bearer_token(header: str | None) -> tuple[str | None, str | None]:
    """``(token, None)`` of an ``Authorization: Bearer <token>`` header, else ``(None, reason)``.

    The reason is :data:`MISSING` (no header) or :data:`MALFORMED` (another scheme, no token,
    or more than one word after the scheme).
    """
    if not header:
        return None, MISSING
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None, MALFORMED
    return token, None


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    # A Kubernetes Secret update swaps a symlink: os.stat follows it, so the inode changes.
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class TokenStore:
    """The API clients in force, from a token file (re-read when it changes) or fixed text.

    The file is checked with one ``stat`` at most every ``check_s`` seconds, on a request's
    path (no thread): between checks a request costs one clock read, one sha256 and one dict
    lookup. A changed file that is malformed or unreadable does not replace the clients in
    force: the error is logged (naming the line) and counted, and the last good set keeps
    working until a good file comes (a typo in a rotation must not lock every client out or
    let anyone in). A well-formed file with no clients is taken as it is: nobody is let in.

    Args:
        path: The token file (``HP_SERVE_TOKENS_FILE``).
        text: The token file's text (``HP_SERVE_TOKENS``; ``;`` also separates lines).
        check_s: Least time between two checks of the file.
        on_load: Called with the outcome (``ok``, ``invalid``, ``unreadable``) and the number of
            clients in force after every (re)load attempt: the metrics hook.

    Raises:
        AuthConfigError: Neither or both sources given, or the first load fails or finds no
            client: the API must not start like that.
    """

    def __init__(
        self,
        path: Path | None = None,
        text: str | None = None,
        check_s: float = 1.0,
        on_load: Callable[[str, int], None] | None = None,
    ) -> None:
        if path is not None and text is not None:
            raise AuthConfigError(
                "both HP_SERVE_TOKENS_FILE and HP_SERVE_TOKENS are set: set only one"
            )
        if path is None and text is None:
            raise AuthConfigError(
                f"authentication is on but no API clients are configured: {CONFIG_HINT}"
            )
        self.path = path
        self.source = str(path) if path is not None else "HP_SERVE_TOKENS"
        self._check_s = check_s
        self._on_load = on_load or (lambda outcome, n: None)
        self._next_check = 0.0
        self._signature: tuple[int, int, int, int] | None = None
        self._broken: str | None = None  # the error of the file as it is now, logged once
        if path is None:
            try:
                self.clients = parse_clients((text or "").replace(";", "\n"), self.source)
            except TokenFileError as exc:
                raise AuthConfigError(
                    f"{exc} (entries are separated by newlines or ';'; "
                    "`healthpredict api-token new` writes them)"
                ) from None
        else:
            try:
                st = os.stat(path)
                self.clients = parse_clients(path.read_text(), self.source)
            except OSError as exc:
                raise AuthConfigError(
                    f"HP_SERVE_TOKENS_FILE {path} cannot be read ({exc.strerror or exc}); "
                    f"{CONFIG_HINT}"
                ) from None
            except TokenFileError as exc:
                raise AuthConfigError(
                    f"HP_SERVE_TOKENS_FILE {exc}: fix the file (`healthpredict api-token new` "
                    "writes its lines) or point HP_SERVE_TOKENS_FILE at another"
                ) from None
            self._signature = _signature(st)
            self._next_check = time.monotonic() + check_s
        if not self.clients:
            raise AuthConfigError(f"{self.source} lists no client: {CONFIG_HINT}")
        self._on_load("ok", len(self.clients))
        log.info("API clients from %s: %s", self.source, ", ".join(sorted(self.client_ids())))

    def client_ids(self) -> list[str]:
        """The ids of the clients in force."""
        return [c.client_id for c in self.clients.values()]

    def refresh(self) -> None:
        """Re-read the token file if it changed and the last check is ``check_s`` old."""
        if self.path is None:
            return
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self._check_s
        try:
            signature = _signature(os.stat(self.path))
        except OSError as exc:
            self._failed("unreadable", f"{self.source} cannot be read ({exc.strerror or exc})")
            return
        if signature == self._signature:
            self._broken = None  # readable again (or still the version already judged)
            return
        try:
            clients = parse_clients(self.path.read_text(), self.source)
        except OSError as exc:
            self._failed("unreadable", f"{self.source} cannot be read ({exc.strerror or exc})")
            return
        except TokenFileError as exc:
            self._signature = signature  # logged and counted once per version of the file
            self._failed("invalid", str(exc))
            return
        self._signature, self._broken, self.clients = signature, None, clients
        self._on_load("ok", len(clients))
        if clients:
            log.info(
                "API clients reloaded from %s: %s",
                self.source,
                ", ".join(sorted(self.client_ids())),
            )
        else:
            log.warning("%s lists no client: every /predict is refused", self.source)

    def _failed(self, outcome: str, message: str) -> None:
        if outcome == "unreadable":  # checked every second: log and count it once
            if message == self._broken:
                return
            self._broken = message
        self._on_load(outcome, len(self.clients))
        log.error(
            "token file not reloaded: %s; the %d clients of the last good version stay in force",
            message,
            len(self.clients),
        )

    def authenticate(self, header: str | None) -> tuple[Client | None, str | None]:
        """``(client, None)`` for a known bearer token, else ``(None, reason)``."""
        self.refresh()
        token, reason = bearer_token(header)
        if token is None:
            return None, reason
        # A dict lookup by the sha256 of the token: its timing tells nothing usable about a
        # stored token (an attacker cannot steer the hash's bytes).
        client = self.clients.get(hash_token(token))
        return (client, None) if client is not None else (None, UNKNOWN)
