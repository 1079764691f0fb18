"""The run's time budget, the harness's shortcuts (appended rows, one forward probe per model and
batch shape) and ``--jobs``: each leaves the results exactly as they were."""
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import budget as budget_module
from benchmarks.budget import TimeBudget, budget_table
from benchmarks.cli import main
from benchmarks.config import parse_config
from benchmarks.report import metric_columns
from benchmarks.results import RESULT_COLUMNS, read_results
from benchmarks.sweep import run_sweep

QUALITY = ["solver_error", "sliced_wasserstein", "mmd"]
EXACT = ["model", "series", "nfe_budget", "seed", "status", "nfe", "network_passes", "n_samples"] + QUALITY


def small_config(**run):
    """Exact mixtures and a trained network, a deterministic and a stochastic sampler, two seeds
    and two batches per cell (a loose rk45 reference keeps the network's solver_error cheap)."""
    return parse_config({
        "run": {"nfe": [3, 6], "seeds": [0, 1], "n_samples": 32, "batch_size": 16, "device": "cpu",
                "metrics": QUALITY, "reference": {"rtol": 1e-2}, **run},
        "models": [{"name": "gmm:ring8"}, {"name": "toy2d-moons"}],
        "samplers": [{"sampler": "heun", "options": {"grid": "edm"}}, {"sampler": "ddpm"}],
    })


class FakeClock:
    def __init__(self, *times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)


def test_a_phase_keeps_its_own_time_and_nested_phases_are_not_counted_twice(monkeypatch):
    budget = TimeBudget()
    monkeypatch.setattr(budget_module.time, "perf_counter", FakeClock(0.0, 1.0, 3.0, 4.0, 4.5, 10.0))
    with budget.phase("metric:fid"):          # 0 .. 10
        with budget.phase("feature_extraction"):  # 1 .. 3
            pass
        with budget.phase("feature_extraction"):  # 4 .. 4.5
            pass
    assert budget.snapshot() == {"metric:fid": 7.5, "feature_extraction": 2.5}
    budget.move("metric:fid", "sampler_loop", 100.0)  # never more than the source holds
    assert budget.snapshot() == {"feature_extraction": 2.5, "sampler_loop": 7.5}
    rows = budget_table(budget.snapshot(), elapsed=20.0)
    assert [r["phase"] for r in rows] == ["sampler_loop", "feature_extraction", "other"]
    assert rows[-1]["seconds"] == 10.0 and rows[-1]["share"] == 0.5


def test_metadata_records_where_the_time_went(tmp_path, monkeypatch):
    config = tmp_path / "run.toml"
    config.write_text("""
[run]
nfe = [3, 6]
n_samples = 32
batch_size = 16
device = "cpu"
metrics = ["solver_error", "sliced_wasserstein"]
reference = { rtol = 1e-2 }
[[models]]
name = "gmm:ring8"
[[models]]
name = "toy2d-moons"
[[samplers]]
sampler = "heun"
""")
    assert main(["run", str(config), "--out", str(tmp_path / "run"), "--quiet", "--no-html"]) == 0
    meta = json.loads((tmp_path / "run" / "metadata.json").read_text())
    df = read_results(tmp_path / "run" / "results.csv")
    budget = meta["time_budget"]
    phases = budget["phases"]
    for name in ("startup", "setup", "forward_probe", "network_forwards", "reference_solutions",
                 "metric:solver_error", "metric:sliced_wasserstein", "sample_previews", "result_writing", "plotting",
                 "report"):
        assert phases.get(name, 0) > 0, name
    assert sum(phases.values()) <= budget["elapsed_s"]
    ok = df[df["status"] == "ok"]
    assert budget["cells_run"] == len(df) and budget["cells_sampling_s"] == pytest.approx(ok["wall_s"].sum(), rel=1e-12)
    assert budget["sampling_share"] == pytest.approx(budget["cells_sampling_s"] / budget["elapsed_s"])
    # The network's share of sampling is the counted NFE times the probed forward time, at most all of
    # it (a probe taken while the machine was busier can exceed the sampling it estimates).
    batches = 2  # 32 samples in batches of 16; ``nfe`` is per batch
    assert phases["network_forwards"] <= (batches * ok["nfe"] * ok["forward_s"]).sum() * (1 + 1e-9)
    assert phases["network_forwards"] + phases.get("sampler_loop", 0.0) >= budget["cells_sampling_s"]


def test_forward_probe_runs_once_per_model_and_batch_shape(tmp_path, monkeypatch):
    import benchmarks.sweep.execute as execute

    probes = []
    real = execute.median_seconds
    monkeypatch.setattr(execute, "median_seconds", lambda fn, device, **kw: probes.append(1) or real(fn, device, **kw))
    df = run_sweep(small_config(), tmp_path / "run", progress=False)
    assert len(probes) == df["model"].nunique()  # one batch shape per model here
    assert (df.groupby("model")["forward_s"].nunique() == 1).all()


def test_rows_are_appended_and_a_row_cut_short_by_a_kill_runs_again(tmp_path, monkeypatch):
    import benchmarks.sweep as sweep

    writes = []
    real_write = sweep.write_atomic
    monkeypatch.setattr(sweep, "write_atomic", lambda path, text: writes.append(Path(path).name) or real_write(path, text))
    cfg = small_config()
    full = run_sweep(cfg, tmp_path / "full", progress=False)
    # results.csv: the header once and the sorted table at the end, every row in between appended
    assert writes.count("results.csv") == 2
    assert (tmp_path / "full" / "results.csv").read_text() == full.to_csv(index=False)

    # A run killed after 5 rows and in the middle of writing the 6th: resume finishes it exactly.
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copy(tmp_path / "full" / "metadata.json", killed / "metadata.json")
    lines = (tmp_path / "full" / "results.csv").read_text().splitlines(keepends=True)
    (killed / "results.csv").write_text("".join(lines[:6]) + lines[6][: len(lines[6]) // 2])
    resumed = run_sweep(cfg, killed, resume=True, progress=False)
    assert len(resumed) == len(full)
    pd.testing.assert_frame_equal(resumed[EXACT], full[EXACT])


def test_jobs_give_the_rows_one_process_gives(tmp_path):
    cfg = small_config()
    one = run_sweep(cfg, tmp_path / "one", progress=False)
    two = run_sweep(cfg, tmp_path / "two", progress=False, jobs=2)
    assert list(two.columns) == list(one.columns)
    assert set(metric_columns(one)) >= set(QUALITY) and (one["status"] == "ok").all()
    pd.testing.assert_frame_equal(two[EXACT], one[EXACT])  # exactly, not approximately
    assert read_results(tmp_path / "two" / "results.csv")[EXACT].equals(read_results(tmp_path / "one" / "results.csv")[EXACT])
    budget = json.loads((tmp_path / "two" / "metadata.json").read_text())["time_budget"]
    assert budget["jobs"] == 2 and budget["phases"]["network_forwards"] > 0  # the workers' budgets came back


def test_the_workers_render_the_plots_and_grids_one_process_renders(tmp_path):
    """--jobs keeps its workers for the plots and sample grids: the same PNG bytes as rendered
    in one process, and their time booked in the run's budget."""
    from benchmarks.budget import BUDGET
    from benchmarks.parallel import Workers
    from benchmarks.report import plot_jobs, render_plot, render_plots
    from benchmarks.sample_grids import grid_jobs, render_grid, render_sample_grids

    cfg = small_config()
    with Workers(cfg, 2) as workers:
        df = run_sweep(cfg, tmp_path / "run", progress=False, jobs=2, workers=workers)
        before = BUDGET.snapshot().get("plotting", 0.0)
        plots = workers.submit("plotting", render_plot, plot_jobs(df))()
        grids_done = workers.submit("plotting", render_grid, grid_jobs(tmp_path / "run", df))
        grids = [(m, png) for m, png in grids_done() if png is not None]
        assert BUDGET.snapshot().get("plotting", 0.0) > before
    models = list(dict.fromkeys(df["model"]))
    assert len(models) == 2 and [(m, metric) for m, metric, _ in plots] == [(m, metric) for m in models for metric in QUALITY]
    assert plots == render_plots(df)
    assert [m for m, _ in grids] == models and grids == render_sample_grids(tmp_path / "run", df)


def test_workers_are_dealt_the_cells_one_model_at_a_time():
    """Every cell once, each model's cells in their own order, the models taking turns."""
    from benchmarks.sweep.cells import expand_cells
    from benchmarks.parallel import interleave_models

    cells, _ = expand_cells(parse_config({
        "run": {"nfe": [2, 4, 8]},
        "models": [{"name": "gmm:ring8"}, {"name": "gmm:mix16d", "nfe": [4]}, {"name": "toy2d-moons"}],
        "samplers": [{"sampler": "euler"}, {"sampler": "heun"}],
    }))
    dealt = interleave_models(cells)
    assert sorted(c.key for c in dealt) == sorted(c.key for c in cells)
    for model in {c.model.key for c in cells}:
        assert [c for c in dealt if c.model.key == model] == [c for c in cells if c.model.key == model]
    assert len({c.model.key for c in dealt[:3]}) == 3  # the first round: one cell of each model
    assert interleave_models([]) == []


def test_jobs_workers_share_one_forward_probe_per_model(tmp_path):
    df = run_sweep(small_config(), tmp_path / "run", progress=False, jobs=2)
    assert (df.groupby("model")["forward_s"].nunique() == 1).all()


def test_a_bad_config_with_jobs_is_one_line_and_exit_2(tmp_path, capfd):
    """The workers start before the parent has read the config: they read it too and keep
    their error to themselves, so the parent's one-line refusal is all that is printed."""
    config = tmp_path / "bad.toml"
    config.write_text('[run]\nnfe = [4]\n[[models]]\nname = "gmm:ring8"\n[[samplers]]\nsampler = "eulr"\n')
    assert main(["run", str(config), "--out", str(tmp_path / "run"), "--jobs", "2", "--quiet"]) == 2
    err = capfd.readouterr().err
    assert "unknown sampler 'eulr'" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_jobs_must_be_positive(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('[run]\nnfe = [4]\n[[models]]\nname = "gmm:ring8"\n[[samplers]]\nsampler = "euler"\n')
    assert main(["run", str(config), "--out", str(tmp_path / "run"), "--jobs", "0", "--quiet"]) == 2
    assert "--jobs must be a positive number" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_reference_solutions_are_solved_once_and_read_back_from_disk(tmp_path, monkeypatch):
    from benchmarks.metrics.solver_error import SolverError

    cfg = small_config(reference={"rtol": 1e-2, "cache_dir": str(tmp_path / "cache")})
    first = run_sweep(cfg, tmp_path / "first", progress=False)
    saved = sorted((tmp_path / "cache" / "solutions").glob("solution-*.pt"))
    # one per model x seed x batch: 2 models, 2 seeds, 2 batches (the samplers and NFE share them)
    assert len(saved) == 8

    def must_not_solve(self, *args):
        raise AssertionError("a reference solution was solved again")

    monkeypatch.setattr(SolverError, "_solve", must_not_solve)
    second = run_sweep(cfg, tmp_path / "second", progress=False)
    pd.testing.assert_frame_equal(first[EXACT], second[EXACT])
    # a damaged file is solved again, not a failed cell
    saved[0].write_bytes(b"not a tensor file")
    monkeypatch.undo()
    third = run_sweep(cfg, tmp_path / "third", progress=False)
    pd.testing.assert_frame_equal(first[EXACT], third[EXACT])


def test_the_reference_side_of_each_distance_is_computed_once_per_model(tmp_path, monkeypatch):
    from benchmarks.metrics import distances

    calls = []
    for cls in (distances.MMD, distances.SlicedWasserstein):
        real = cls.reference
        monkeypatch.setattr(cls, "reference", staticmethod(lambda y, real=real, cls=cls: calls.append(cls) or real(y)))
    df = run_sweep(small_config(), tmp_path / "run", progress=False)
    assert len(df) == 16 and calls.count(distances.MMD) == 2 and calls.count(distances.SlicedWasserstein) == 2


def test_mmd_and_sliced_w2_equal_their_definitions():
    import itertools
    import math

    import numpy as np
    import torch

    from benchmarks.metrics.distances import mmd_rbf, sliced_wasserstein

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 3, generator=g, dtype=torch.float64), torch.randn(12, 3, generator=g, dtype=torch.float64) + 0.3
    X, Y = x.numpy(), y.numpy()
    # the bandwidth is torch.median's median: the lower middle value of an even count
    distances_yy = sorted(np.linalg.norm(Y[i] - Y[j]) for i, j in itertools.combinations(range(12), 2))
    h = distances_yy[(len(distances_yy) - 1) // 2]
    k = lambda a, b: math.exp(-np.sum((a - b) ** 2) / (2 * h * h))
    pairs = [(i, j) for i in range(12) for j in range(12) if i != j]
    expected = (sum(k(X[i], X[j]) for i, j in pairs) / len(pairs) + sum(k(Y[i], Y[j]) for i, j in pairs) / len(pairs)
                - 2 * np.mean([k(a, b) for a in X for b in Y]))
    assert mmd_rbf(x, y) == pytest.approx(expected, rel=1e-12)
    dirs = torch.randn(3, 128, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    per_direction = [np.mean((np.sort(X @ d) - np.sort(Y @ d)) ** 2) for d in dirs.numpy().T]
    assert sliced_wasserstein(x, y) == pytest.approx(math.sqrt(np.mean(per_direction)), rel=1e-12)
