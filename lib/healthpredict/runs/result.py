"""What a notebook run hands back to its caller: where it lives, what it recorded, how it went."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from healthpredict.core import layout, storage


@dataclass
class RunResult:
    """Outcome of :func:`healthpredict.runs.run`: where the run lives, what it recorded, status.

    Attributes:
        run_dir: Folder or ``s3://`` prefix holding the run's files.
        notebook: Notebook name (file stem, e.g. ``"01_eda"``).
        status: ``"succeeded"`` or ``"failed"``.
        scraps: Values the notebook recorded (see :mod:`healthpredict.runs.scraps`).
        provenance: Content of ``run.json``.
        html: URI of the HTML rendering.
        ipynb: URI of the executed notebook.
        reused: True when an earlier identical run was returned instead of executing.
    """

    run_dir: str
    notebook: str
    status: str
    scraps: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    html: str = ""
    ipynb: str = ""
    reused: bool = False

    @property
    def succeeded(self) -> bool:
        """Whether the run succeeded."""
        return self.status == "succeeded"

    @property
    def run_json(self) -> str:
        """URI of the run's ``run.json``."""
        return storage.join(self.run_dir, layout.RUN_JSON)

    @classmethod
    def from_provenance(cls, prov: Mapping[str, Any], reused: bool = False) -> RunResult:
        """Build a result from a ``run.json`` document."""
        return cls(
            run_dir=prov["run_dir"],
            notebook=prov["notebook"],
            status=prov["status"],
            scraps=dict(prov.get("scraps") or {}),
            provenance=dict(prov),
            html=prov.get("html", ""),
            ipynb=prov.get("ipynb", ""),
            reused=reused,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-safe)."""
        return asdict(self)
