"""Rewriting a generated section of a text file (the README's tables) between its two marker
lines, atomically, so a table that a command produces is never edited by hand."""
from __future__ import annotations

from pathlib import Path

from .results import write_atomic

__all__ = ["replace_section"]


def replace_section(path: Path, begin: str, end: str, body: str) -> bool:
    """Put ``body`` between the lines ``begin`` and ``end`` of the file at ``path`` (ValueError
    naming both markers when either is missing); True when the file changed."""
    path = Path(path)
    text = path.read_text()
    if begin not in text or end not in text:
        raise ValueError(f"{str(path)!r} has no generated-section markers {begin!r} ... {end!r}")
    head, rest = text.split(begin, 1)
    new = head + begin + "\n" + body.rstrip("\n") + "\n" + end + rest.split(end, 1)[1]
    if new != text:
        write_atomic(path, new)
    return new != text
