"""The ``nll`` metric in a sweep: once per model and tolerance, against the mixtures' exact answer."""
from __future__ import annotations

import math

from benchmarks.config import parse_config
from benchmarks.sweep import run_sweep


def test_nll_on_a_mixture_is_shared_across_samplers_and_checked_against_the_exact_answer(tmp_path):
    config = parse_config({
        "run": {"nfe": [4, 8], "n_samples": 64, "batch_size": 64, "metrics": ["nll"], "reference": {"rtol": 1e-7}},
        "models": [{"name": "gmm:ring8", "schedule": "edm"}],
        "samplers": [{"sampler": "euler"}, {"sampler": "ddim"},
                     {"sampler": "rk45", "nfe": [400], "options": {"rtol": 1e-3, "atol": 1e-3}}],
    })
    df = run_sweep(config, tmp_path / "run", progress=False)
    assert (df["status"] == "ok").all()
    fixed = df[df["sampler"] != "rk45"]
    # A property of the model and the tolerance: the same figure (and cost) for every sampler and NFE.
    assert fixed["nll"].nunique() == 1 and fixed["nll_nfe"].nunique() == 1
    tight = fixed.iloc[0]
    assert math.isfinite(tight["nll"]) and tight["nll_per_dim"] == tight["nll"] / 2
    assert tight["nll_error"] < 1e-3  # rtol 1e-7 against the exact PF-ODE likelihood
    loose = df[df["sampler"] == "rk45"].iloc[0]  # rk45 cells use their own tolerance
    assert loose["nll_nfe"] < tight["nll_nfe"]
    assert loose["nll_error"] > tight["nll_error"]


def test_nll_on_a_trained_toy_model_has_no_exact_answer(tmp_path):
    config = parse_config({
        "run": {"nfe": [4], "n_samples": 32, "batch_size": 32, "metrics": ["nll"]},
        "models": [{"name": "toy2d-moons"}],
        "samplers": [{"sampler": "euler"}],
    })
    row = run_sweep(config, tmp_path / "run", progress=False).iloc[0]
    assert math.isfinite(row["nll"]) and row["nll_nfe"] > 0
    assert math.isnan(row["nll_error"])
