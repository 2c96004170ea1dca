"""Headless Chromium for the tests that open our offline HTML pages (gallery, model card)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install chromium)"
)


def dump_dom(url: str, profile: Path) -> tuple[str, str]:
    """The DOM Chromium builds for ``url`` and its log (console messages included)."""
    done = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
            "--dump-dom", url,
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def console_problems(stderr: str) -> list[str]:
    """Console messages and uncaught errors: our pages carry no scripts, so any is a problem."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


# ---- beyond the DOM: the page's network requests and a screenshot ---------------------------

_QUIET = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
)  # fmt: skip


def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [CHROMIUM, *_QUIET, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def dump_dom_with_requests(url: str, profile: Path) -> tuple[str, str, list[str]]:
    """:func:`dump_dom`, plus the network URLs the page asked for (from Chromium's net log).

    The browser's own background requests (updates, accounts) have no initiating origin and are
    left out: what remains was requested by the page (an offline page asks for none).
    """
    netlog = profile.parent / f"{profile.name}-netlog.json"
    done = _run(
        [f"--log-net-log={netlog}", "--enable-logging=stderr", "--v=0", "--dump-dom", url],
        profile,
    )
    return done.stdout, done.stderr, page_requests(netlog)


def page_requests(netlog: Path) -> list[str]:
    """URLs of the network requests a page started, read from a ``--log-net-log`` file."""
    import json

    text = netlog.read_text()
    try:
        log = json.loads(text)
    except json.JSONDecodeError:  # a log cut short at exit lacks its closing brackets
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        event["params"]["url"]
        for event in log.get("events", [])
        if event.get("type") == start
        and event.get("params", {}).get("initiator", "not an origin") != "not an origin"
    ]


def screenshot(url: str, out: Path, profile: Path, width: int = 1280, height: int = 1000) -> Path:
    """A PNG of the page at ``url`` as Chromium draws it in a ``width`` x ``height`` window."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(
        [f"--screenshot={out}", f"--window-size={width},{height}", "--hide-scrollbars", url],
        profile,
    )
    assert out.is_file() and out.stat().st_size > 0, f"no screenshot written at {out}"
    return out
