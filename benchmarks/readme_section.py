"""Rewriting a generated section of a text file (the README's tables) between its two marker
lines, atomically, so a table that a command produces is never edited by hand."""
from __future__ import annotations

from pathlib import Path

from .results import write_atomic

__all__ = ["replace_section", "publish_table"]


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


def publish_table(out_dir: Path, stem: str, table, text: str, readme=None, markers=None) -> None:
    """Write a measured table as ``<stem>.csv`` (a pandas DataFrame) and ``<stem>.md`` into
    ``out_dir``, print the markdown, and with ``readme`` put it between ``markers`` there."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"{stem}.csv", index=False)
    (out / f"{stem}.md").write_text(text + "\n")
    print(text)
    if readme:
        replace_section(Path(readme), *markers, text)
