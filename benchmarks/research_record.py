"""``docs/research.json``: one file, one key per research question (docs/research.md); each benchmark rewrites only
its own key, so the questions can be re-run one at a time."""

from __future__ import annotations

import json
from pathlib import Path

RESEARCH_JSON = Path(__file__).resolve().parents[1] / "docs" / "research.json"


def record(key: str, result: dict, path: Path = RESEARCH_JSON) -> None:
    """Store ``result`` under ``key`` in ``path``, keeping the other questions' results."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = result
    path.write_text(json.dumps(data, indent=1) + "\n")
