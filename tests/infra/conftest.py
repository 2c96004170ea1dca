"""Shared pieces of the infrastructure tests: the parsed Terraform, and the external checkers.

The checkers (checkov, docker-compose, shellcheck) live in ``.venv-tools`` (``make tools``),
apart from the project venv whose pins they would fight; ``terraform`` is used when it is on
PATH. A test that needs one of them skips, naming the missing tool, when it is absent.
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IAC = ROOT / "iac"
TOOLS_BIN = ROOT / ".venv-tools" / "bin"


def parse_hcl(path: Path) -> dict:
    """Parse one HCL file into plain Python values (quotes stripped, no block markers)."""
    import hcl2

    options = hcl2.SerializationOptions(
        strip_string_quotes=True, explicit_blocks=False, with_comments=False
    )
    with path.open(encoding="utf-8") as handle:
        return hcl2.load(handle, serialization_options=options)


def find_tool(name: str) -> str | None:
    """Path of a checker: ``.venv-tools/bin`` first, then PATH; None when neither has it."""
    candidate = TOOLS_BIN / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(name)


def tool_env(home: Path) -> dict[str, str]:
    """A small, predictable environment for the checkers, kept off the network.

    A checker inherits nothing from the developer's or CI's environment that could change
    its answer (an exported HP_BUCKET would override .env.example for docker-compose), and
    phoning home (Terraform's checkpoint, checkov's update and guideline look-ups) is off.
    """
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "CHECKPOINT_DISABLE": "1",
        "TF_CLI_CONFIG_FILE": os.devnull,
        "TF_IN_AUTOMATION": "1",
        "TF_INPUT": "0",
        "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",
        "BC_SKIP_MAPPING": "TRUE",
    }


@pytest.fixture(scope="session")
def iac() -> dict[str, dict]:
    """Every ``iac/*.tf`` merged by block kind.

    ``resource`` and ``data`` map ``type -> name -> body``; ``variable`` and ``output`` map
    ``name -> body``; ``locals`` is one mapping; ``terraform`` and ``provider`` are lists.
    """
    merged: dict[str, dict] = {
        "resource": defaultdict(dict),
        "data": defaultdict(dict),
        "variable": {},
        "output": {},
        "locals": {},
        "terraform": [],
        "provider": [],
    }
    for path in sorted(IAC.glob("*.tf")):
        parsed = parse_hcl(path)
        for kind in ("resource", "data"):
            for block in parsed.get(kind, []):
                for type_, named in block.items():
                    for name, body in named.items():
                        assert name not in merged[kind][type_], f"{kind} {type_}.{name} twice"
                        merged[kind][type_][name] = body
        for kind in ("variable", "output"):
            for block in parsed.get(kind, []):
                merged[kind].update(block)
        for block in parsed.get("locals", []):
            merged["locals"].update(block)
        merged["terraform"].extend(parsed.get("terraform", []))
        merged["provider"].extend(parsed.get("provider", []))
    return merged


@pytest.fixture(scope="session")
def hcl():
    """The HCL parser of these tests, for files outside ``iac/*.tf``."""
    return parse_hcl


@pytest.fixture(scope="session")
def tool():
    """``tool(name)``: path of a checker, or a skip naming it and how to install it."""

    def _require(name: str) -> str:
        path = find_tool(name)
        if path is None:
            how = "on PATH" if name == "terraform" else "(run `make tools`)"
            pytest.skip(f"{name} is not installed {how}")
        return path

    return _require


@pytest.fixture(scope="session")
def checker_env(tmp_path_factory) -> dict[str, str]:
    """Environment for the checker runs, with a throw-away HOME."""
    return tool_env(tmp_path_factory.mktemp("checker-home"))
