"""Rows are appended to results.csv as the lines pandas' to_csv writes for them (written with the
csv module, which is cheaper per row): on the rows of a sweep with ok, diverged and failed cells,
and on awkward values."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import benchmarks.sweep as sweep
from benchmarks.config import parse_config
from benchmarks.results import csv_line

HERE = Path(__file__).resolve().parent


def pandas_line(columns, row):
    return pd.DataFrame([row], columns=columns).to_csv(header=False, index=False)


def test_a_sweeps_rows_are_appended_as_pandas_writes_them(tmp_path, monkeypatch):
    sys.path.insert(0, str(HERE))
    appended = []
    real_append = sweep.append_csv_row

    def append(path, columns, row):
        appended.append((list(columns), dict(row)))
        real_append(path, columns, row)
    monkeypatch.setattr(sweep, "append_csv_row", append)
    config = parse_config({
        "run": {"nfe": [4, 8], "n_samples": 32, "batch_size": 16, "metrics": ["solver_error", "mmd"]},
        "models": [{"name": "python:engine_models:exploding"}, {"name": "python:engine_models:broken"},
                   {"name": "gmm:ring8", "label": "ring, \"quoted\""}],
        "samplers": [{"sampler": "euler"}, {"sampler": "ddim", "options": {"eta": 0.5}}],
    })
    sweep.run_sweep(config, tmp_path / "run", progress=False)
    assert {row["status"] for _, row in appended} == {"ok", "diverged", "failed"}
    for columns, row in appended:
        assert csv_line(columns, row) == pandas_line(columns, row)


AWKWARD = [0.1, 1e-5, 1e16, 123456789.123, 5e-324, -0.0, 1.0, float("nan"), float("inf"), -float("inf"), None,
           3, 2**63 - 1, True, False, np.float64(0.3), np.float32(0.1), np.int64(7), np.float64("nan"),
           "", "5", "NA", " spaced ", "a,b", 'q"x', "line\nbreak", "cr\rx", "é"]


@pytest.mark.parametrize("value", AWKWARD, ids=repr)
def test_awkward_values_are_written_as_pandas_writes_them(value):
    for columns, row in ((["c"], {"c": value}), (["a", "c", "b"], {"a": 1, "c": value, "b": "x"}),
                         (["a", "c"], {"a": value})):
        assert csv_line(columns, row) == pandas_line(columns, row)
