"""Running a deployment and checking it: the commands of :mod:`healthpredict.mlops.deploy`.

:func:`run_commands` executes the argv lists (or, in a dry run, only records them) and
:func:`verify_model_info` asks the running API which model it serves. Every check fails closed:
a missing tool, a non-zero exit, an unreachable API or a wrong version raises
:class:`DeploymentError` with the command or URL in the message.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests

# The bearer token verify_model_info sends when set (never a DAG param: params are stored).
TOKEN_ENV = "HP_API_TOKEN"
# /model-info field names tried in order (the serving app's own name first).
VERSION_KEYS = ("version", "model_version")


class DeploymentError(RuntimeError):
    """A deployment command or check failed; the message names the command or URL."""


def run_commands(
    commands: Sequence[Sequence[str]],
    *,
    dry_run: bool,
    cwd: str | Path | None = None,
    timeout: float = 1800,
    log=print,
) -> list[dict[str, Any]]:
    """Run commands one after the other, stopping at the first failure; or only record them.

    Args:
        commands: argv lists.
        dry_run: Print and record the commands without running anything.
        cwd: Working folder of the commands (the project root for ``docker build .``).
        timeout: Seconds each command may take.
        log: Where progress lines go (the task log).

    Returns:
        One record per command: ``argv``, ``display`` (shell-quoted), ``dry_run``, and for a
        real run ``returncode`` and ``seconds``.

    Raises:
        DeploymentError: A command is not installed, timed out or exited non-zero (the
            message holds the command and the end of its output).
    """
    records = []
    for argv in commands:
        argv = [str(a) for a in argv]
        record: dict[str, Any] = {"argv": argv, "display": shlex.join(argv), "dry_run": dry_run}
        if dry_run:
            log(f"[dry run] {record['display']}")
            records.append(record)
            continue
        log(f"$ {record['display']}")
        start = time.monotonic()
        try:
            done = subprocess.run(
                argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
            )
        except FileNotFoundError:
            raise DeploymentError(f"{argv[0]} is not installed or not on PATH") from None
        except subprocess.TimeoutExpired:
            raise DeploymentError(f"timed out after {timeout:.0f} s: {record['display']}") from None
        record.update(returncode=done.returncode, seconds=round(time.monotonic() - start, 3))
        output = (done.stdout or "") + (done.stderr or "")
        if output.strip():
            log(output.rstrip())
        if done.returncode != 0:
            tail = "\n".join(output.strip().splitlines()[-15:])
            raise DeploymentError(
                f"exit code {done.returncode}: {record['display']}" + (f"\n{tail}" if tail else "")
            )
        records.append(record)
    return records


def reported_version(body: Any) -> str | None:
    """The model version a ``/model-info`` body reports (see :data:`VERSION_KEYS`), or None."""
    if not isinstance(body, dict):
        return None
    for key in VERSION_KEYS:
        if body.get(key) is not None:
            return str(body[key])
    nested = body.get("model")
    return reported_version(nested) if isinstance(nested, dict) else None


def verify_model_info(
    api_url: str,
    expected_version: str | int,
    timeout: float = 60,
    *,
    model_name: str | None = None,
    token: str | None = None,
) -> dict:
    """Wait until the API at ``api_url`` reports ``expected_version`` on ``GET /model-info``.

    Connection errors, server errors and a different version are retried until ``timeout``
    seconds have passed (a rollout may still be swapping pods); then the last problem is
    raised. A client error (4xx) fails at once: the URL is wrong.

    Args:
        api_url: Base URL of the API (``http://127.0.0.1:8000``).
        expected_version: Registry version the API must serve.
        timeout: Seconds to keep trying.
        model_name: When given, the reported ``name`` must be this registered model too.
        token: Bearer token sent with the request (default: ``HP_API_TOKEN`` if set).

    Returns:
        The ``/model-info`` body.

    Raises:
        DeploymentError: The API was unreachable, answered with an error or no version, or
            kept reporting another version.
    """
    url = api_url.rstrip("/") + "/model-info"
    expected = str(expected_version)
    token = token or os.environ.get(TOKEN_ENV) or None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + timeout
    problem = "no request was made"
    while True:
        remaining = deadline - time.monotonic()
        try:
            response = requests.get(url, headers=headers, timeout=max(1.0, min(10.0, remaining)))
        except requests.RequestException as exc:
            problem = f"{url} is unreachable: {type(exc).__name__}: {exc}"
        else:
            if 400 <= response.status_code < 500:
                raise DeploymentError(
                    f"{url} answered HTTP {response.status_code}: {response.text[:300]}"
                )
            if response.status_code >= 500:
                problem = f"{url} answered HTTP {response.status_code}: {response.text[:300]}"
            else:
                try:
                    body = response.json()
                except json.JSONDecodeError:
                    raise DeploymentError(
                        f"{url} did not answer JSON: {response.text[:300]}"
                    ) from None
                version = reported_version(body)
                if version is None:
                    raise DeploymentError(
                        f"{url} reports no model version (looked for {', '.join(VERSION_KEYS)}): "
                        f"{json.dumps(body)[:300]}"
                    )
                name = body.get("name") or body.get("model_name")
                if model_name and name and name != model_name:
                    raise DeploymentError(f"{url} serves model {name!r}, expected {model_name!r}")
                if version == expected:
                    return body
                problem = f"{url} serves model version {version}, expected {expected}"
        if time.monotonic() + 1 > deadline:
            raise DeploymentError(f"{problem} (gave up after {timeout:.0f} s)")
        time.sleep(1)
