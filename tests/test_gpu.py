"""Every CUDA path: CUDA-event timing against the host clock, peak memory, CUDA graphs, the sweep
on a GPU with torch.compile and graphs, and nccl under torchrun. Where no GPU is present these
skip (the CPU-side refusals are tested everywhere)."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import solvers
from benchmarks.config import ConfigError, parse_config
from benchmarks.sweep import run_sweep
from benchmarks.timing import PeakMemory, Stopwatch
from score_models import zoo
from solvers.cuda_graph import GraphedSampler, graph_refusal

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

#: fixed-step deterministic samplers of several families (single-step, multistep, predictor-corrector)
GRAPHABLE = ["euler", "heun", "ddim", "dpm_solver", "ipndm", "plms", "unipc", "deis"]


def tiny_sweep(tmp_path: Path, **run):
    return parse_config({
        "run": {"nfe": [4, 8], "n_samples": 64, "batch_size": 32, "metrics": ["sliced_wasserstein"], **run},
        "models": [{"name": "toy2d-moons"}],
        "samplers": [{"sampler": "dpm_solver", "options": {"order": 2}}, {"sampler": "ddpm"}],
    })


# --- everywhere ----------------------------------------------------------------------------------
def test_graph_refusals_name_the_reason():
    cuda = torch.device("cuda")
    assert "CUDA device" in graph_refusal("euler", {}, torch.device("cpu"))
    assert "deterministic" in graph_refusal("ddpm", {}, cuda)
    assert "fixed-step" in graph_refusal("rk45", {}, cuda)
    assert "deterministic" in graph_refusal("ddim", {"eta": 1.0}, cuda)
    assert graph_refusal("ddim", {}, cuda) is None and graph_refusal("dpm_solver", {"order": 3}, cuda) is None
    with pytest.raises(ValueError, match="needs a CUDA device"):
        GraphedSampler("euler", zoo.load("toy2d-moons"), torch.zeros(4, 2), nfe=4)


def test_cuda_graph_flag_is_validated_and_runs_eagerly_off_cuda(tmp_path):
    with pytest.raises(ConfigError, match="cuda_graph must be true or false"):
        tiny_sweep(tmp_path, cuda_graph="yes")
    eager = run_sweep(tiny_sweep(tmp_path, device="cpu"), tmp_path / "eager", progress=False)
    flagged = run_sweep(tiny_sweep(tmp_path, device="cpu", cuda_graph=True), tmp_path / "flagged", progress=False)
    assert (flagged.status == "ok").all()
    pd.testing.assert_series_equal(eager.sliced_wasserstein, flagged.sliced_wasserstein)


# --- on a GPU ------------------------------------------------------------------------------------
@needs_cuda
def test_cuda_events_agree_with_the_host_clock():
    a = torch.randn(4096, 4096, device="cuda")
    for _ in range(3):
        a @ a
    with Stopwatch(torch.device("cuda")) as sw:
        for _ in range(50):
            a = torch.tanh(a @ a)
    assert sw.seconds > 0.005
    assert abs(sw.wall_seconds / sw.seconds - 1) < 0.1, (sw.seconds, sw.wall_seconds)
    # a host sleep inside the block shows on both clocks: events measure the stream's time span
    with Stopwatch(torch.device("cuda")) as slept:
        time.sleep(0.2)
    assert slept.seconds == pytest.approx(0.2, rel=0.1) and slept.wall_seconds == pytest.approx(0.2, rel=0.1)


@needs_cuda
def test_peak_memory_sees_an_allocation_of_known_size():
    with PeakMemory(torch.device("cuda")) as mem:
        block = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
        del block
    assert 256 <= mem.mb < 256 + 64


@needs_cuda
@pytest.mark.parametrize("name", GRAPHABLE)
def test_a_graph_replays_the_eager_call_with_the_same_counts(name):
    model = zoo.load("digits-unet").to("cuda")
    noise = torch.randn((8,) + model.sample_shape, generator=torch.Generator().manual_seed(0)).cuda()
    other = torch.randn((8,) + model.sample_shape, generator=torch.Generator().manual_seed(1)).cuda()
    with torch.inference_mode():
        eager_stats, graph_stats = {}, {}
        eager = solvers.sample(name, model, other, nfe=10, stats=eager_stats)
        graphed = GraphedSampler(name, model, noise, nfe=10)
        before = model.nfe
        replayed = graphed(other, stats=graph_stats)  # new noise: the graph reads its input buffer
        assert model.nfe - before == eager_stats["nfe"]
    assert graph_stats == eager_stats
    assert torch.allclose(replayed, eager, rtol=1e-4, atol=1e-4), float((replayed - eager).abs().max())
    with pytest.raises(ValueError, match="captured for noise"):
        graphed(other[:4])
    with pytest.raises(ValueError, match="NaN"):
        graphed(torch.full_like(other, float("nan")))


@needs_cuda
def test_sweep_on_cuda_with_compile_and_graphs_matches_the_eager_sweep(tmp_path):
    eager = run_sweep(tiny_sweep(tmp_path, device="cuda"), tmp_path / "eager", progress=False)
    fast = run_sweep(tiny_sweep(tmp_path, device="cuda", compile=True, cuda_graph=True), tmp_path / "fast",
                     progress=False)
    assert (eager.status == "ok").all() and (fast.status == "ok").all()
    assert (fast.device.str.startswith("cuda")).all() and (fast.peak_mem_mb > 0).all()
    assert (fast.nfe == eager.nfe).all()
    pd.testing.assert_series_equal(eager.sliced_wasserstein, fast.sliced_wasserstein, rtol=1e-3)
    meta = json.loads((tmp_path / "fast" / "metadata.json").read_text())
    assert meta["config"]["cuda_graph"] is True
    assert "cuda_graph_capture" in meta["time_budget"]["phases"]


@needs_cuda
def test_torchrun_on_nccl_gives_the_single_process_rows(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('[run]\nnfe = [4]\nn_samples = 64\nbatch_size = 32\ndevice = "cuda"\n'
                      'metrics = ["sliced_wasserstein"]\n[[models]]\nname = "toy2d-moons"\n'
                      '[[samplers]]\nsampler = "dpm_solver"\n')
    single = run_sweep(parse_config_file(config), tmp_path / "single", progress=False)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
                          "-m", "benchmarks.cli", "run", str(config), "--out", str(tmp_path / "nccl"), "--quiet"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ranked = pd.read_csv(tmp_path / "nccl" / "results.csv")
    assert ranked.sliced_wasserstein.tolist() == pytest.approx(single.sliced_wasserstein.tolist(), rel=1e-5)
    meta = json.loads((tmp_path / "nccl" / "metadata.json").read_text())
    assert meta["world_size"] == 1 and meta["distributed_backend"] == "nccl"


def parse_config_file(path: Path):
    from benchmarks.config import load_config

    return load_config(path)
