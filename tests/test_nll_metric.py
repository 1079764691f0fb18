"""The ``nll`` metric in a sweep: once per model and tolerance, against the mixtures' exact answer."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.config import parse_config
from benchmarks.metrics import REFERENCE_SEED
from benchmarks.metrics.nll import exact_ode_log_likelihood
from benchmarks.sweep import run_sweep
from score_models import zoo
from score_models.likelihood import dequantize_images
from score_models.schedules import VPLinear


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


def test_nll_on_an_image_model_is_bits_per_dim_of_its_dequantised_data(tmp_path):
    """Against the exact likelihood of the same dequantised points (the model's network is an
    exact mixture): bits/dim = -log p / (D ln 2) - log2(2) + 8 for data in [-1, 1]."""
    sys.path.insert(0, str(Path(__file__).parent))
    import engine_models

    config = parse_config({
        # rtol 1e-5: image models are scored in float32, whose round-off a tighter tolerance only chases
        "run": {"nfe": [4], "n_samples": 32, "batch_size": 32, "metrics": ["nll"], "reference": {"rtol": 1e-5}},
        "models": [{"name": "python:engine_models:image_mixture", "schedule": "vp_linear"}],
        "samplers": [{"sampler": "euler"}],
    })
    row = run_sweep(config, tmp_path / "run", progress=False).iloc[0]
    model = engine_models.image_mixture(VPLinear())
    x = model.sample_data(32, generator=torch.Generator().manual_seed(REFERENCE_SEED), dtype=torch.float64)
    points = dequantize_images(((x + 1) / 2).clamp(0, 1), (-1.0, 1.0), generator=torch.Generator().manual_seed(REFERENCE_SEED))
    expected = -exact_ode_log_likelihood(model.exact, points) / (16 * math.log(2)) - 1 + 8
    assert row["nll"] == pytest.approx(float(expected.mean()), abs=2e-4)
    assert row["nll_per_dim"] == row["nll"] and row["nll_nfe"] > 0 and math.isnan(row["nll_error"])


def test_nll_divergence_probes_and_data_range_come_from_the_reference_table(tmp_path):
    """[run.reference] divergence / n_probes on a mixture (Hutchinson within a few standard
    errors of the exact answer), and a model's data_range for bits/dim of an image model."""
    sys.path.insert(0, str(Path(__file__).parent))
    import engine_models

    config = parse_config({
        "run": {"nfe": [4], "n_samples": 64, "batch_size": 64, "metrics": ["nll"],
                "reference": {"rtol": 1e-6, "divergence": "hutchinson", "n_probes": 4}},
        "models": [{"name": "gmm:ring8", "schedule": "edm"},
                   {"name": "python:engine_models:image_mixture", "schedule": "vp_linear",
                    "reference": {"data_range": [-2.0, 2.0], "divergence": "exact"}}],
        "samplers": [{"sampler": "euler"}],
    })
    df = run_sweep(config, tmp_path / "run", progress=False)
    ring = df[df["model"].str.startswith("gmm:ring8")].iloc[0]
    image = df[df["model"].str.startswith("python:")].iloc[0]
    mixture = zoo.load("gmm:ring8", schedule="edm")
    data = mixture.sample_data(64, generator=torch.Generator().manual_seed(REFERENCE_SEED), dtype=torch.float64)
    exact = -float(exact_ode_log_likelihood(mixture, data).mean())
    # Hutchinson with 4 Rademacher probes per point: each point's estimate is off by about
    # 0.4 nats (0.8 with one probe), far above rtol 1e-6, but the mean over 64 points is unbiased
    # with a standard error near 0.05
    assert ring["nll_error"] > 0.05
    assert ring["nll"] == pytest.approx(exact, abs=0.25)
    model = engine_models.image_mixture(VPLinear())
    x = model.sample_data(64, generator=torch.Generator().manual_seed(REFERENCE_SEED), dtype=torch.float64)
    points = dequantize_images(((x + 2) / 4).clamp(0, 1), (-2.0, 2.0), generator=torch.Generator().manual_seed(REFERENCE_SEED))
    expected = -exact_ode_log_likelihood(model.exact, points) / (16 * math.log(2)) - 2 + 8
    assert image["nll"] == pytest.approx(float(expected.mean()), abs=2e-4)


@pytest.mark.parametrize("reference,message", [
    ({"divergence": "hutch"}, "valid: auto, exact, hutchinson"),
    ({"n_probes": 0}, "n_probes must be a positive integer"),
    ({"data_range": [1.0, -1.0]}, "data_range must be"),
    ({"data_range": "01"}, "data_range must be"),
])
def test_bad_likelihood_settings_are_refused(reference, message):
    from benchmarks.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_config({"run": {"nfe": [4], "metrics": ["nll"], "reference": reference},
                      "models": [{"name": "gmm:ring8"}], "samplers": [{"sampler": "euler"}]})
