"""The README's and the docs pages' code blocks marked ``<!-- snippet: NAME -->``, for running
them verbatim. Snippet names are unique across the pages."""

from __future__ import annotations

import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
# The README and every page under docs/, checked alike by tests/test_readme.py.
PAGES = [README, *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
MARK = re.compile(r"<!-- snippet: ([\w-]+) -->")


def read(page: str) -> str:
    with open(page, encoding="utf-8") as f:
        return f.read()


def snippet_names(page: str) -> list[str]:
    """The names of the snippets ``page`` marks, in order."""
    return MARK.findall(read(page))


def snippet(name: str) -> str:
    """The source of the fenced block that follows ``<!-- snippet: name -->`` on any page."""
    for page in PAGES:
        found = re.search(rf"<!-- snippet: {re.escape(name)} -->\s*```(?:python|bash)\n(.*?)```",
                          read(page), re.S)
        if found is not None:
            return found.group(1)
    raise KeyError(f"no page ({', '.join(os.path.relpath(p, ROOT) for p in PAGES)}) has a "
                   f"snippet {name!r}")
