"""The README's code blocks marked ``<!-- snippet: NAME -->``, for running them verbatim."""

from __future__ import annotations

import os
import re

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def snippet(name: str) -> str:
    """The source of the fenced block that follows ``<!-- snippet: name -->``."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    found = re.search(rf"<!-- snippet: {re.escape(name)} -->\s*```(?:python|bash)\n(.*?)```",
                      text, re.S)
    if found is None:
        raise KeyError(f"README.md has no snippet {name!r}")
    return found.group(1)
