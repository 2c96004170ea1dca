"""Screenshots of the sample's pages in headless Chromium, and their fingerprints.

A page is shown through a copy with a ``<base>`` pointing at its folder (so its links and
images resolve) and a small script that waits for the target, brings it to the top under a
title banner and outlines it. The script moves the body with a transform, not by scrolling:
headless Chromium's ``--screenshot`` paints a scrolled page blank.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

from .sections import COMMANDS, Target

WIDTH, HEIGHT = 1280, 720
# The fingerprint: the frame shrunk to 48x27 grey levels (what the test compares frames by).
FINGERPRINT_SIZE = (48, 27)
BANNER_PX = 52
# Virtual time for the page's own scripts (Evidently renders its report in the browser).
VIRTUAL_TIME_MS = 8000

_SCRIPT = """
<style>
.hp-walk-mark { outline: 4px solid #e8590c !important; outline-offset: 6px; }
#hp-walk-banner { position: fixed; left: 0; top: 0; right: 0; height: %(banner)dpx;
  z-index: 2147483647; background: #1f2d3d; color: #fff; display: flex; align-items: center;
  padding: 0 24px; font: 600 24px/1 system-ui, sans-serif; box-sizing: border-box; }
#hp-walk-banner span { color: #f59f00; margin-right: 16px; }
</style>
<script>
(() => {
  const target = %(target)s, banner = %(banner)d;
  function mark(text, colour) {
    const bar = document.createElement("div");
    bar.id = "hp-walk-banner";
    bar.innerHTML = %(label)s;
    if (colour) { bar.style.background = colour; bar.textContent = text; }
    document.documentElement.appendChild(bar);
  }
  function find() {
    if (!target) return document.body;
    return [...document.querySelectorAll(target.selector)].find(
      (e) => target.text === null || e.textContent.trim().startsWith(target.text));
  }
  let tries = 0;
  function place() {
    const el = find();
    if (!el) {
      if (++tries < 60) return setTimeout(place, 100);
      return mark("walkthrough: target not found: " + JSON.stringify(target), "#c92a2a");
    }
    if (target) {
      el.classList.add("hp-walk-mark");
      const y = el.getBoundingClientRect().top - banner - 20;
      document.body.style.transform = "translateY(" + (-Math.max(0, y)) + "px)";
    } else {
      document.body.style.marginTop = banner + "px";
    }
    mark();
  }
  window.addEventListener("load", () => setTimeout(place, 50));
})();
</script>
"""


def chromium() -> str:
    """The Chromium binary.

    Raises:
        FileNotFoundError: None is installed.
    """
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise FileNotFoundError("chromium not found: apt-get install chromium")
    return found


def _precheck(page: Path, target: Target | None) -> None:
    """Fail before any screenshot when a static page lacks the narrated heading."""
    if not page.is_file():
        raise FileNotFoundError(f"page {page} not found")
    if target is None:
        return
    source = page.read_text(errors="replace")
    if target.selector.startswith("#"):
        present = f'id="{target.selector[1:]}"' in source
    else:
        present = target.text is None or html.escape(target.text, quote=False) in source
    if not present:
        raise ValueError(f"{page}: no {target.selector} {target.text!r} to show")


def banner(number: int, total: int, title: str) -> str:
    """The banner's HTML: the section's number and title."""
    return f"<span>{number} / {total}</span>{html.escape(title)}"


def staged_page(page: Path, target: Target | None, label: str, work: Path, name: str) -> Path:
    """A copy of ``page`` to screenshot, in ``work`` as ``name``.html.

    It resolves links against ``page``'s folder and shows ``target`` under a banner with the
    HTML ``label``.
    """
    _precheck(page, target)
    inject = f'<base href="{page.parent.resolve().as_uri()}/">' + _SCRIPT % {
        "target": json.dumps(target and {"selector": target.selector, "text": target.text}),
        "banner": BANNER_PX,
        "label": json.dumps(label),
    }
    source = page.read_text(errors="replace")
    head = re.search(r"<head(?:\s[^>]*)?>", source, flags=re.IGNORECASE)
    at = head.end() if head else 0
    staged = work / f"{name}.html"
    staged.write_text(source[:at] + inject + source[at:])
    return staged


def closing_card(work: Path, title: str) -> Path:
    """The last section's page: the commands that run the product (drawn, not from the run)."""
    rows = "".join(
        f"<tr><td><code>{html.escape(cmd)}</code></td><td>{html.escape(what)}</td></tr>"
        for cmd, what in COMMANDS
    )
    page = work / "closing_card.html"
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>How to run it</title><style>"
        "body{font:22px/1.5 system-ui,sans-serif;margin:90px 80px;color:#1f2d3d}"
        "h1{font-size:40px;margin:0 0 28px}"
        "td{padding:10px 28px 10px 0;vertical-align:top;white-space:nowrap}"
        "td+td{white-space:normal}"
        "code{font:600 24px monospace;background:#f1f3f5;padding:4px 10px;border-radius:4px}"
        f"</style></head><body><h1>{html.escape(title)}</h1><table>{rows}</table>"
        "<p>Airflow 3 DAGs run the same steps as the local loop; see README.md.</p>"
        "</body></html>"
    )
    return page


def screenshot(staged: Path, out: Path, profile: Path) -> None:
    """A ``WIDTH`` x ``HEIGHT`` screenshot of ``staged`` into ``out`` (PNG).

    Raises:
        RuntimeError: Chromium failed or wrote no image.
    """
    done = subprocess.run(
        [
            chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", "--force-device-scale-factor=1", f"--user-data-dir={profile}",
            f"--window-size={WIDTH},{HEIGHT}", f"--virtual-time-budget={VIRTUAL_TIME_MS}",
            f"--screenshot={out}", staged.as_uri(),
        ],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"chromium could not screenshot {staged}: {done.stderr[-1500:]}")


def fingerprint(image: Path) -> bytes:
    """The image shrunk to ``FINGERPRINT_SIZE`` grey levels (area average), by ffmpeg."""
    w, h = FINGERPRINT_SIZE
    done = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(image), "-vf",
         f"scale={w}:{h}:flags=area,format=gray", "-f", "rawvideo", "-"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    if done.returncode != 0 or len(done.stdout) != w * h:
        raise RuntimeError(f"ffmpeg could not fingerprint {image}: {done.stderr[-800:]!r}")
    return done.stdout


def encode_fingerprint(raw: bytes) -> str:
    """A fingerprint as the manifest stores it (base64)."""
    return base64.b64encode(raw).decode("ascii")
