import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import linalg

from benchmarks.cli import main
from benchmarks.config import parse_config
from benchmarks.metrics import make_extractor, to_uint8_images
from benchmarks.sweep import run_sweep

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIMING = ["wall_s", "s_per_sample", "nfe_per_s", "forward_s", "overhead_frac", "peak_mem_mb"]


def env_with_tests_on_path():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")])
    return env


def cfg(text, tmp_path, name="cfg.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_diverged_and_failed_cells_are_rows_and_the_sweep_goes_on(tmp_path):
    sys.path.insert(0, str(HERE))
    config = parse_config({
        "run": {"nfe": [4, 8], "n_samples": 32, "batch_size": 16, "metrics": ["solver_error"]},
        "models": [{"name": "python:engine_models:exploding"}, {"name": "python:engine_models:broken"},
                   {"name": "gmm:ring8"}],
        "samplers": [{"sampler": "euler"}],
    })
    df = run_sweep(config, tmp_path / "run", progress=False).set_index(["model", "nfe_budget"])
    exploding = df.loc[("python:engine_models:exploding@vp_linear", 8)]
    assert exploding["status"] == "diverged" and exploding["diverged_at_nfe"] >= 2
    assert "non-finite" in exploding["error"]
    broken = df.loc[("python:engine_models:broken@vp_linear", 4)]
    assert broken["status"] == "failed" and "network exploded on purpose" in broken["error"]
    assert (df.loc["gmm:ring8@vp_linear"]["status"] == "ok").all()
    assert "## Cells that did not finish" in __import__("benchmarks.report", fromlist=["x"]).markdown_report(df.reset_index())


SLOW = """
[run]
name = "slow"
nfe = [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
seeds = [0, 1]
n_samples = 32
batch_size = 16
metrics = ["solver_error", "sliced_wasserstein"]

[[models]]
name = "python:engine_models:slow_ring8"
schedule = "edm"

[[samplers]]
sampler = "euler"

[[samplers]]
sampler = "euler_maruyama"
options = { grid = "uniform" }
"""


def _run_cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "benchmarks.cli", *args], cwd=ROOT, env=env_with_tests_on_path(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def test_resume_after_a_kill_gives_the_uninterrupted_table(tmp_path):
    config = cfg(SLOW, tmp_path)
    full = tmp_path / "full"
    assert _run_cli(["run", str(config), "--out", str(full), "--quiet"]).wait(timeout=300) == 0
    killed = tmp_path / "killed"
    proc = _run_cli(["run", str(config), "--out", str(killed), "--quiet"])
    csv = killed / "results.csv"
    deadline = time.time() + 120
    while time.time() < deadline:
        if csv.exists() and len(pd.read_csv(csv)) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = pd.read_csv(csv)
    assert 5 <= len(partial) < 40, "the kill must land mid-sweep"
    (killed / ".results.csv.left-by-a-kill.tmp").write_text("half a table")  # what a kill mid-write leaves
    assert _run_cli(["run", str(config), "--out", str(killed), "--resume", "--quiet"]).wait(timeout=300) == 0
    assert not list(killed.glob(".*.tmp"))  # the resume cleaned what the kill left
    a, b = pd.read_csv(full / "results.csv"), pd.read_csv(csv)
    assert len(b) == 40 and not b.duplicated(["model", "series", "nfe_budget", "seed"]).any()
    pd.testing.assert_frame_equal(a.drop(columns=TIMING), b.drop(columns=TIMING))


def test_two_rank_torchrun_equals_one_rank(tmp_path):
    text = SLOW.replace('name = "slow"', 'name = "dist"\nsave_samples = true').replace(
        "nfe = [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]", "nfe = [3, 9]").replace("n_samples = 32", "n_samples = 48")
    config = cfg(text, tmp_path)
    outs = {}
    for k in (1, 2):
        outs[k] = tmp_path / f"world{k}"
        res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={k}",
                              "-m", "benchmarks.cli", "run", str(config), "--out", str(outs[k]), "--quiet"],
                             cwd=ROOT, env=env_with_tests_on_path(), capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
    a, b = pd.read_csv(outs[1] / "results.csv"), pd.read_csv(outs[2] / "results.csv")
    assert len(a) == 8
    pd.testing.assert_frame_equal(a.drop(columns=TIMING), b.drop(columns=TIMING))
    assert json.loads((outs[2] / "metadata.json").read_text())["world_size"] == 2
    files = sorted(p.name for p in (outs[1] / "samples").glob("*.pt"))
    assert len(files) == 8
    for name in files:
        assert torch.equal(torch.load(outs[1] / "samples" / name), torch.load(outs[2] / "samples" / name))


# --- FID / KID --------------------------------------------------------------------------------
def frechet_distance_scipy(f1: np.ndarray, f2: np.ndarray) -> float:
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


IMAGE_FID = """
[run]
nfe = [2, 16]
n_samples = 256
batch_size = 64
metrics = ["fid", "kid"]
save_samples = true
reference = { extractor = "pixels", n_data = 256, cache_dir = "CACHE" }

[[models]]
name = "gmm:image3x8x8"
schedule = "edm"

[[samplers]]
sampler = "heun"
"""


def test_fid_through_torch_fidelity_equals_an_independent_frechet_distance(tmp_path):
    from score_models import zoo
    from benchmarks.metrics import REFERENCE_SEED

    config = cfg(IMAGE_FID.replace("CACHE", str(tmp_path / "cache")), tmp_path)
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 0
    df = pd.read_csv(out / "results.csv")
    assert set(df["status"]) == {"ok"} and df["fid"].notna().all() and df["kid"].notna().all()
    assert df.set_index("nfe_budget").loc[16, "fid"] < df.set_index("nfe_budget").loc[2, "fid"]
    # recompute the NFE=16 row by hand: pixel features of the saved samples vs the exact data
    samples = torch.load(next((out / "samples").glob("*_16_0.pt")))
    model = zoo.load("gmm:image3x8x8", schedule="edm")
    data = model.sample_data(256, generator=torch.Generator().manual_seed(REFERENCE_SEED), dtype=torch.float64)
    f = lambda x: (to_uint8_images(x).reshape(len(x), -1).double() / 255).numpy()
    expected = frechet_distance_scipy(f(samples), f(data.float()))
    assert abs(df.set_index("nfe_budget").loc[16, "fid"] - expected) < 1e-6 * max(1.0, expected)
    # and torch-fidelity's own calculate_metrics on the same images agrees
    import torch_fidelity

    from benchmarks.extractors import register_with_torch_fidelity

    register_with_torch_fidelity()

    class Images(torch.utils.data.Dataset):
        def __init__(self, x):
            self.x = to_uint8_images(x)

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i]

    tf = torch_fidelity.calculate_metrics(input1=Images(samples), input2=Images(data.float()), fid=True, cuda=False,
                                          feature_extractor="pixels", verbose=False, cache=False, batch_size=64)
    assert abs(tf["frechet_inception_distance"] - expected) < 1e-4 * max(1.0, expected)
    # the reference features were cached on disk, keyed by dataset, extractor and n
    assert len(list((tmp_path / "cache").glob("features-*.pt"))) == 1


def test_missing_inception_weights_offline_is_a_clear_error(monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as inc

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.delenv("NFEBENCH_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(inc, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"\[run.reference\] weights = \"PATH\" or in \$NFEBENCH_INCEPTION_WEIGHTS"):
        make_extractor({"extractor": "inception-v3-compat"}, torch.device("cpu"))
    with pytest.raises(ValueError, match="do not exist"):
        make_extractor({"extractor": "inception-v3-compat", "weights": "/nonexistent.pth"}, torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown feature extractor 'incept'; valid:"):
        make_extractor({"extractor": "incept"}, torch.device("cpu"))


def test_inception_loads_from_a_local_weights_path(tmp_path, monkeypatch):
    """The real loading path, with weights we make: a randomly initialised Inception saved to disk."""
    import torch_fidelity.feature_extractor_inceptionv3 as inc

    monkeypatch.setattr(inc, "load_state_dict_from_url", lambda *a, **k: None)
    monkeypatch.setattr(inc.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
    random_net = inc.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path / "inception.pth"
    torch.save(torch.nn.Module.state_dict(random_net), path)
    monkeypatch.undo()
    monkeypatch.setenv("NFEBENCH_INCEPTION_WEIGHTS", str(path))
    name, layer, extractor = make_extractor({}, torch.device("cpu"))
    assert (name, layer) == ("inception-v3-compat", "2048")
    feats = extractor(torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8))[0]
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
    ref = random_net.eval()(torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8))  # same architecture runs
    assert ref[0].shape == (1, 2048)


def test_compile_option_is_validated_and_compiles_the_right_module():
    from benchmarks.config import ConfigError
    from benchmarks.sweep import compile_network
    from score_models import zoo

    base = {"run": {"nfe": [4]}, "models": [{"name": "gmm:ring8"}], "samplers": [{"sampler": "euler"}]}
    with pytest.raises(ConfigError, match="\\[run\\] compile must be true or false, got 'yes'"):
        parse_config({**base, "run": {"nfe": [4], "compile": "yes"}})
    assert parse_config({**base, "run": {"nfe": [4], "compile": True}}).compile is True
    assert compile_network(zoo.load("gmm:ring8")) is False  # exact mixtures are not networks
    guided = zoo.load("digits-unet-cfg=2")
    assert compile_network(guided) and type(guided.base.net).__name__ == "OptimizedModule"


@pytest.mark.slow
def test_compiled_run_matches_eager(tmp_path):
    rows = {}
    for flag in (False, True):
        config = parse_config({
            "run": {"nfe": [4, 8], "n_samples": 256, "batch_size": 256, "metrics": ["sliced_wasserstein"],
                    "compile": flag},
            "models": [{"name": "toy2d-moons"}], "samplers": [{"sampler": "dpm_solver"}],
        })
        rows[flag] = run_sweep(config, tmp_path / str(flag), progress=False)
    assert (rows[True]["status"] == "ok").all()
    assert rows[True]["sliced_wasserstein"].to_numpy() == pytest.approx(rows[False]["sliced_wasserstein"].to_numpy(),
                                                                         abs=1e-4)


def test_a_float64_run_evaluates_trained_networks_in_float64(tmp_path):
    """[run] dtype = "float64" casts the network too (a float32 network fed float64 states fails),
    and its figures do not depend on the torch thread count."""
    config = parse_config({
        "run": {"nfe": [4], "n_samples": 64, "batch_size": 64, "dtype": "float64",
                "metrics": ["solver_error", "sliced_wasserstein"], "reference": {"cache_dir": str(tmp_path / "cache")}},
        "models": [{"name": "toy2d-moons"}, {"name": "toy2d-moons-cd", "nfe": [1]}],
        "samplers": [{"sampler": "euler"}, {"sampler": "consistency"}],
    })
    threads = torch.get_num_threads()
    try:
        rows = []
        for n in (1, 2):
            torch.set_num_threads(n)
            rows.append(run_sweep(config, tmp_path / f"run{n}", progress=False))
    finally:
        torch.set_num_threads(threads)
    assert (rows[0]["status"] == "ok").all() and len(rows[0]) == 2
    for column in ("solver_error", "sliced_wasserstein"):
        assert rows[0][column].tolist() == pytest.approx(rows[1][column].tolist(), rel=1e-12, nan_ok=True)
