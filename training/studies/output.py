"""How every study hands over its figures: the JSON a later step or a reader loads, and the
markdown table a person reads (printed, and saved beside the JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_study(result: Any, out: Path, table: str | None = None) -> Path:
    """result as indented JSON at out (numpy scalars as floats); table, when given, printed and
    written to out's .md twin. Returns out."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    if table is not None:
        out.with_suffix(".md").write_text(table)
        print(table, flush=True)
    return out
