"""``nfebench likelihood``: the JSON record against the exact answer, and bad input refused
(exit 2, one line, nothing written)."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from benchmarks.cli import main
from benchmarks.metrics.nll import exact_ode_log_likelihood
from score_models import zoo


@pytest.fixture
def ring8_points(tmp_path):
    mixture = zoo.load("gmm:ring8", schedule="edm")
    x = mixture.sample_data(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    path = tmp_path / "points.pt"
    torch.save(x, path)
    return mixture, x, path


def test_the_record_matches_the_exact_likelihood(tmp_path, ring8_points, capsys):
    mixture, x, path = ring8_points
    out = tmp_path / "result.json"
    code = main(["likelihood", "gmm:ring8", "--schedule", "edm", "--input", str(path), "--rtol", "1e-7",
                 "--out", str(out)])
    assert code == 0 and "nats per sample" in capsys.readouterr().out
    record = json.loads(out.read_text())
    exact = exact_ode_log_likelihood(mixture, x)
    assert max(abs(a - b) for a, b in zip(record["log_likelihood"], exact.tolist())) < 1e-3
    assert record["nll"] == pytest.approx(-float(exact.mean()), abs=1e-3)
    assert record["nll_per_dim"] == pytest.approx(record["nll"] / 2)
    assert record["cost"]["nfe"] > 0 and record["cost"]["vjps"] == 2 * record["cost"]["nfe"]
    assert record["divergence"] == "exact" and record["atol"] == 1e-7


def test_hutchinson_is_seeded(tmp_path, ring8_points, capsys):
    _, _, path = ring8_points
    runs = []
    for seed in (1, 1, 2):
        assert main(["likelihood", "gmm:ring8", "--input", str(path), "--divergence", "hutchinson", "--n-probes", "2",
                     "--seed", str(seed)]) == 0
        runs.append(json.loads(capsys.readouterr().out)["log_likelihood"])
    assert runs[0] == runs[1] and runs[0] != runs[2]


def _save(tmp_path, value, name="bad.pt"):
    path = tmp_path / name
    torch.save(value, path)
    return str(path)


@pytest.mark.parametrize("make_args,message", [
    (lambda p, t: ["--input", str(t / "missing.pt")], "is not a file"),
    (lambda p, t: ["--input", _save(t, {"x": torch.zeros(2, 2)})], "holds a dict"),
    (lambda p, t: ["--input", _save(t, argparse.Namespace(x=1))], "not a tensor saved by torch.save"),
    (lambda p, t: ["--input", _save(t, torch.zeros(2, 3))], r"needs \[B, 2\]"),
    (lambda p, t: ["--input", _save(t, torch.tensor([[0.0, float("nan")]]))], "NaN"),
    (lambda p, t: ["--input", p, "--divergence", "hutch"], "valid: exact, hutchinson"),
    (lambda p, t: ["--input", p, "--divergence", "hutchinson", "--n-probes", "0"], "n_probes"),
    (lambda p, t: ["--input", p, "--rtol", "-1"], "--rtol"),
    (lambda p, t: ["--input", p, "--out", str(t / "no" / "such" / "dir.json")], "does not exist"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, ring8_points, capsys, make_args, message):
    _, _, path = ring8_points
    out = tmp_path / "result.json"
    args = make_args(str(path), tmp_path)
    if "--out" not in args:
        args += ["--out", str(out)]
    assert main(["likelihood", "gmm:ring8", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nfebench: error:") and len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err), err
    assert not out.exists()


@pytest.mark.parametrize("data_range", [(-1.0, 1.0), (-2.0, 2.0)])
def test_bits_per_dim_is_the_exact_likelihood_of_the_dequantised_images(tmp_path, capsys, data_range):
    """--bits-per-dim on an image model whose network is an exact mixture: -log p / (D ln 2)
    - log2(high - low) + 8 of the images dequantised with the same seed, p the exact PF-ODE
    likelihood."""
    import math
    import sys
    from pathlib import Path

    from score_models.likelihood import dequantize_images
    from score_models.schedules import VPLinear

    sys.path.insert(0, str(Path(__file__).parent))
    import engine_models

    model = engine_models.image_mixture(VPLinear())
    x = model.sample_data(6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    images = (((x + 1) / 2).clamp(0, 1) * 255).round().to(torch.uint8)
    path = tmp_path / "images.pt"
    torch.save(images, path)
    lo, hi = data_range
    code = main(["likelihood", "python:engine_models:image_mixture", "--input", str(path), "--bits-per-dim",
                 "--data-range", str(lo), str(hi), "--rtol", "1e-5", "--seed", "3"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    points = dequantize_images(images, data_range, generator=torch.Generator().manual_seed(3))
    expected = -exact_ode_log_likelihood(model.exact, points) / (16 * math.log(2)) - math.log2(hi - lo) + 8
    # the CLI scores images in float32 (the network's dtype): about 1e-4 relative at rtol 1e-5
    assert record["per_sample_bits_per_dim"] == pytest.approx(expected.tolist(), abs=1e-3)
    assert record["bits_per_dim"] == pytest.approx(float(expected.mean()), abs=1e-3)
    assert record["data_range"] == [lo, hi] and record["cost"]["nfe"] > 0


@pytest.mark.parametrize("args,message", [
    (["--data-range", "-1", "1"], "applies to --bits-per-dim only"),
    (["--bits-per-dim", "--data-range", "1", "-1"], "HIGH > LOW"),
])
def test_bad_data_range_exits_2(tmp_path, ring8_points, capsys, args, message):
    _, _, path = ring8_points
    out = tmp_path / "result.json"
    assert main(["likelihood", "gmm:ring8", "--input", str(path), "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err and not out.exists()
