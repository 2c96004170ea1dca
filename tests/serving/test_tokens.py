"""API client tokens without a server: the token file's store and ``healthpredict api-token``.

The store reads real files (a Kubernetes-style symlinked Secret among them); the CLI runs as
typer runs it. The live behaviour (401/403, rotation under load, logs) is in test_auth.py.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from healthpredict.cli import app
from healthpredict.serving import auth


def line(client: str, token: str, scopes=("predict",)) -> str:
    return auth.token_line(client, token, scopes) + "\n"


class Loads:
    """What the store reported: (outcome, clients in force) per (re)load."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def __call__(self, outcome: str, clients: int) -> None:
        self.seen.append((outcome, clients))


def test_bearer_token_parsing():
    assert auth.bearer_token("Bearer abc") == ("abc", None)
    assert auth.bearer_token("bearer   abc ") == ("abc", None)
    assert auth.bearer_token(None) == (None, auth.MISSING)
    assert auth.bearer_token("") == (None, auth.MISSING)
    for bad in ("Bearer", "Bearer ", "Basic abc", "Token abc", "Bearer a b", "abc"):
        assert auth.bearer_token(bad) == (None, auth.MALFORMED), bad


def test_store_from_text_and_its_checks():
    store = auth.TokenStore(text=line("a", "t1").strip() + ";" + line("b", "t2", ("reload",)))
    client, reason = store.authenticate("Bearer t2")
    assert reason is None and client.client_id == "b" and client.scopes == {"reload"}
    assert store.authenticate("Bearer t3") == (None, auth.UNKNOWN)
    assert store.authenticate("Bearer " + auth.hash_token("t1")) == (None, auth.UNKNOWN)
    with pytest.raises(auth.AuthConfigError, match="no API clients are configured"):
        auth.TokenStore()
    with pytest.raises(auth.AuthConfigError, match="set only one"):
        auth.TokenStore(path=Path("x"), text="y")
    with pytest.raises(auth.AuthConfigError, match="lists no client"):
        auth.TokenStore(text="# nobody yet\n")
    with pytest.raises(auth.AuthConfigError, match="HP_SERVE_TOKENS line 2: bad client id"):
        auth.TokenStore(text=line("a", "t1") + line("a", "t2").replace("a ", "a! ", 1))


def test_file_changes_are_picked_up_within_the_interval(tmp_path, caplog):
    """Re-read on change only, at most once per interval; a bad version keeps the last good."""
    path, loads = tmp_path / "tokens", Loads()
    path.write_text(line("a", "t1"))
    store = auth.TokenStore(path=path, check_s=3600, on_load=loads)
    path.write_text(line("b", "t2"))
    assert store.authenticate("Bearer t2") == (None, auth.UNKNOWN)  # not checked yet: no stat
    store._next_check = 0.0  # the interval passed
    assert store.authenticate("Bearer t2")[0].client_id == "b"
    assert store.authenticate("Bearer t1") == (None, auth.UNKNOWN)

    caplog.set_level(logging.ERROR, logger="healthpredict.serving")
    path.write_text(line("b", "t2") + "c sha256:0123 predict\n")
    for _ in range(3):  # the same broken version: logged and counted once
        store._next_check = 0.0
        assert store.authenticate("Bearer t2")[0].client_id == "b"

    def errors() -> list[logging.LogRecord]:  # the app may have set INFO on our loggers
        return [r for r in caplog.records if r.levelno >= logging.ERROR]

    [record] = errors()
    assert f"{path} line 2: the token must be stored as sha256:" in record.getMessage()
    assert "the 1 clients of the last good version stay in force" in record.getMessage()

    path.unlink()  # gone (or unreadable): the same, once
    for _ in range(2):
        store._next_check = 0.0
        assert store.authenticate("Bearer t2")[0].client_id == "b"
    assert len(errors()) == 2 and "cannot be read" in errors()[1].getMessage()

    path.write_text("")  # a well-formed file with no client: taken, nobody gets in
    store._next_check = 0.0
    assert store.authenticate("Bearer t2") == (None, auth.UNKNOWN)
    assert loads.seen == [("ok", 1), ("ok", 1), ("invalid", 1), ("unreadable", 1), ("ok", 0)]


def test_a_kubernetes_secret_swap_is_seen_through_the_symlinks(tmp_path):
    """The kubelet swaps ``..data``: the path is the same, the file behind it is another."""
    secret = tmp_path / "secret"
    secret.mkdir()
    for version, text in (("..v1", line("a", "t1")), ("..v2", line("a", "t9"))):
        (secret / version).mkdir()
        (secret / version / "tokens").write_text(text)
        os.utime(secret / version / "tokens", ns=(10**18, 10**18))  # same mtime and size
    (secret / "..data").symlink_to("..v1")
    (secret / "tokens").symlink_to("..data/tokens")
    store = auth.TokenStore(path=secret / "tokens", check_s=3600)
    assert store.authenticate("Bearer t1")[0].client_id == "a"
    (secret / "..tmp").symlink_to("..v2")
    os.replace(secret / "..tmp", secret / "..data")
    store._next_check = 0.0
    assert store.authenticate("Bearer t1") == (None, auth.UNKNOWN)
    assert store.authenticate("Bearer t9")[0].client_id == "a"


runner = CliRunner()


def test_cli_new_list_revoke(tmp_path):
    tokens = tmp_path / "secret" / "tokens"
    done = runner.invoke(app, ["api-token", "new", "--client", "ward-7", "--file", str(tokens)])
    assert done.exit_code == 0, done.output
    token = done.stdout.strip()
    assert token.startswith("hp_") and len(token) > 40 and "\n" not in token
    assert token not in tokens.read_text() and "shown only now" in done.stderr
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    client, _ = auth.TokenStore(path=tokens).authenticate(f"Bearer {token}")
    assert client.client_id == "ward-7" and client.scopes == {"predict"}

    again = runner.invoke(app, ["api-token", "new", "--client", "ward-7", "--file", str(tokens)])
    assert (
        again.exit_code == 1 and "already in" in again.stderr and "revoke it first" in again.stderr
    )
    ops = runner.invoke(
        app,
        [
            "api-token",
            "new",
            "--client",
            "ops",
            "--scopes",
            "predict,reload",
            "--file",
            str(tokens),
        ],
    )
    assert ops.exit_code == 0
    listed = runner.invoke(app, ["api-token", "list", "--file", str(tokens)])
    assert listed.stdout.splitlines() == ["ward-7 predict", "ops predict,reload"]

    tokens.write_text("# ward clients\n" + tokens.read_text())  # a person's comment survives
    gone = runner.invoke(app, ["api-token", "revoke", "--client", "ward-7", "--file", str(tokens)])
    assert gone.exit_code == 0, gone.output
    assert tokens.read_text().startswith("# ward clients\nops sha256:")
    assert auth.TokenStore(path=tokens).authenticate(f"Bearer {token}") == (None, auth.UNKNOWN)
    missing = runner.invoke(app, ["api-token", "revoke", "--client", "x", "--file", str(tokens)])
    assert missing.exit_code == 1 and "'x' is not in" in missing.stderr


def test_cli_refuses_bad_ids_and_scopes_and_prints_a_line_without_a_file():
    bad = runner.invoke(app, ["api-token", "new", "--client", "ward 7"])
    assert bad.exit_code == 1 and "client id 'ward 7'" in bad.stderr
    scope = runner.invoke(app, ["api-token", "new", "--client", "w", "--scopes", "admin"])
    assert scope.exit_code == 1 and "unknown: admin" in scope.stderr
    done = runner.invoke(app, ["api-token", "new", "--client", "w"])
    assert done.exit_code == 0
    assert auth.token_line("w", done.stdout.strip()) in done.stderr
