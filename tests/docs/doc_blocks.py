"""Code blocks of a Markdown page, by language: what the docs tests run."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def blocks(page: str, language: str) -> list[str]:
    """Every fenced block of `language` in docs/`page`, in order."""
    text = (DOCS / page).read_text()
    return [m.group(1) for m in re.finditer(rf"^```{language}\n(.*?)^```$", text, re.M | re.S)]
