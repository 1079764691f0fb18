"""The results table: its columns, reading it back, and writing files atomically.

One row per cell (model x sampler series x NFE budget x seed). ``report`` and ``cli`` read
tables through :func:`read_results`; every file nfebench writes goes through
:func:`write_atomic` (or :func:`write_bytes_atomic`), so a reader sees the old or the new
content, never half of it."""
from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Union

import numpy as np
import pandas as pd

__all__ = ["ResultRow", "RESULT_COLUMNS", "KEY_COLUMNS", "TEXT_COLUMNS", "read_results", "write_atomic",
           "write_bytes_atomic", "safe_file_name", "csv_line", "append_csv_row", "drop_partial_line"]

NAN = math.nan


@dataclass
class ResultRow:
    """One cell's row: what ran, what it cost (counted NFE, network passes, sequential depth (the
    network calls made one after another: below NFE where a sampler stacks evaluations), wall
    time, one forward's time, the loop's own share, peak memory), how it ended (status ok /
    diverged / failed, with the error and the NFE where NaN first appeared) and its metric columns."""

    model: str
    schedule: str = ""
    sampler: str = ""
    series: str = ""
    options: str = "{}"
    nfe_budget: int = 0
    nfe: float = NAN
    network_passes: float = NAN
    sequential_depth: float = NAN
    n_samples: int = 0
    seed: int = 0
    wall_s: float = NAN
    s_per_sample: float = NAN
    nfe_per_s: float = NAN
    forward_s: float = NAN
    overhead_frac: float = NAN
    peak_mem_mb: float = NAN
    device: str = ""
    dtype: str = ""
    status: str = "ok"
    error: str = ""
    diverged_at_nfe: float = NAN
    metrics: Dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        """The row as the results table holds it (metric columns after the fixed ones)."""
        row = asdict(self)
        return {**{k: v for k, v in row.items() if k != "metrics"}, **row["metrics"]}


#: The fixed columns of results.csv, in order (metric columns follow).
RESULT_COLUMNS = [f.name for f in fields(ResultRow) if f.name != "metrics"]
#: The columns that identify a cell.
KEY_COLUMNS = ["model", "series", "nfe_budget", "seed"]


#: Columns read back as text whatever they look like: a label "5", "NA" or "1e-3" stays a label.
TEXT_COLUMNS = ["model", "schedule", "sampler", "series", "options", "device", "dtype", "status", "error"]


def read_results(path: Path) -> pd.DataFrame:
    """A results.csv as written by a sweep: identifying columns as text, the others as numbers
    (empty = NaN). ValueError naming the file when it is not a CSV table."""
    import csv

    try:
        header = list(pd.read_csv(path, nrows=0).columns)
        text = [c for c in header if c in TEXT_COLUMNS]
        return pd.read_csv(path, dtype={c: str for c in text}, keep_default_na=False,
                           na_values={c: [""] for c in header if c not in text})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{str(path)!r} is not a results table (a CSV file): {' '.join(str(e).split())[:200]}") from None


def safe_file_name(text: str, keep: str = "-_.=", limit: int = 150) -> str:
    """``text`` as one file name: characters other than letters, digits and ``keep`` become '_',
    and a long name is cut and made distinct again with a hash of the whole."""
    import hashlib

    name = "".join(ch if ch.isalnum() or ch in keep else "_" for ch in text)
    if len(name) > limit:
        name = f"{name[:limit - 30]}_{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    return name


def _new_file_mode() -> int:
    """The mode the user's umask gives a new file (mkstemp's own files are 0600)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write_bytes_atomic(path: Path, data: Union[bytes, str]) -> None:
    """Write a file so that readers see the old or the new content, never half of it; it gets
    the mode any new file gets under the user's umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, _new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_atomic(path: Path, text: str) -> None:
    """Write a text file atomically (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, text)


def csv_line(columns: List[str], row: Dict[str, Any]) -> str:
    """``row`` as one line of a CSV table whose header is ``columns``, the line pandas' to_csv
    writes for it (tested on the rows of a sweep and on awkward values): values as str() gives
    them (repr for floats), NaN and missing values empty, quoting where needed. Built with the
    csv module: a one-row DataFrame took 2.6 ms a row, in the process that collects the rows
    while the workers sample."""
    buffer = io.StringIO()
    fields = [_csv_field(row.get(column)) for column in columns]
    # A lone empty field would make a blank line: csv and pandas both write it quoted.
    csv.writer(buffer, lineterminator=os.linesep).writerow(fields)
    return buffer.getvalue()


def _csv_field(value: Any) -> Any:
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return ""
    return value


def append_csv_row(path: Path, columns: List[str], row: Dict[str, Any]) -> None:
    """Append one row to a CSV table whose header is ``columns`` (:func:`csv_line`): one
    ``write`` of one whole line on a file opened for appending, so the table grows by a row, not
    by a rewrite of all rows. A line cut short by a crash has no newline yet;
    :func:`drop_partial_line` removes it on resume."""
    line = csv_line(columns, row).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        written = 0
        while written < len(line):
            written += os.write(fd, line[written:])
    finally:
        os.close(fd)


def drop_partial_line(path: Path) -> bool:
    """Cut a file back to its last newline (the row a killed run was appending); True if it did."""
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return False
        f.truncate(data.rfind(b"\n") + 1)
        return True
