"""A sweep's run directory: checked and held before anything expensive runs.

Opening one for a sweep checks that it can be written, takes an exclusive lock (a second sweep
into the same directory exits naming the holder instead of losing rows), removes the temporary
files a killed run left, and on ``--resume`` checks that the results.csv there is an nfebench
table written by the same config (compared through the config hash in metadata.json) unless the
user asks to extend it with another config.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from .provenance import config_hash
from .results import KEY_COLUMNS, drop_partial_line, read_results

__all__ = ["RunDirectory", "ensure_writable_directory"]


def ensure_writable_directory(directory: Path) -> None:
    """Create ``directory`` if needed and check that files can be written there; ValueError
    naming it otherwise (an existing file in its place included)."""
    import tempfile

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{str(directory)!r} exists and is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-"):
            pass
    except OSError as e:
        raise ValueError(f"cannot write to {str(directory)!r}: {e.strerror or e}") from None


class RunDirectory:
    """``with RunDirectory(path).open(config, resume, extend) as run:`` holds the lock; ``run.rows``
    are the rows already finished there (resume)."""

    LOCK = ".nfebench.lock"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows: List[Dict[str, Any]] = []
        self._lock_fd: Optional[int] = None

    def open(self, config: Dict[str, Any], resume: bool, extend: bool = False) -> "RunDirectory":
        ensure_writable_directory(self.path)
        self._lock()
        try:
            for stale in self.path.glob(".*.tmp"):  # left by a run killed mid-write
                stale.unlink(missing_ok=True)
            csv = self.path / "results.csv"
            if csv.exists():
                if not resume:
                    raise FileExistsError(f"{csv} exists; pass --resume to continue it or choose another --out")
                self.rows = self._finished_rows(csv, config, extend)
        except BaseException:
            self.close()
            raise
        return self

    def _finished_rows(self, csv: Path, config: Dict[str, Any], extend: bool) -> List[Dict[str, Any]]:
        try:
            table = read_results(csv)
        except ValueError as e:
            raise ValueError(f"cannot resume: {e}") from None
        missing = sorted(set(KEY_COLUMNS + ["status"]) - set(table.columns))
        if missing:
            raise ValueError(f"cannot resume: {str(csv)!r} is not an nfebench results table (no {', '.join(missing)} "
                             f"columns); choose another --out")
        previous, why = None, "an unknown config (no readable metadata.json)"
        try:
            previous = json.loads((self.path / "metadata.json").read_text()).get("config_hash")
            why = "another config" if previous else "an unknown config (its metadata.json has no config hash)"
        except (OSError, ValueError, AttributeError):
            pass
        if previous != config_hash(config) and not extend:
            raise ValueError(f"cannot resume {str(self.path)!r}: its results were written by {why}; pass "
                             f"--extend to add this config's cells to them, or choose another --out")
        if drop_partial_line(csv):  # a row cut short by a kill is not finished: its cell runs again
            table = read_results(csv)
        return table.to_dict("records")

    def _lock(self) -> None:
        import fcntl  # POSIX; imported here so that importing this module works everywhere

        fd = os.open(self.path / self.LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ValueError(f"run directory {str(self.path)!r} is in use by process {holder}; wait for it to finish "
                             f"or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the lock
            self._lock_fd = None

    def __enter__(self) -> "RunDirectory":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
