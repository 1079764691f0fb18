"""Optimised time grids (solvers.optimize_grid): the dynamic programmes against the known optimum
of a single Gaussian, the exact method against its start, the AYS interpolation against the
published schedules, determinism, bad input, and the `nfebench grid` command."""
import itertools
import json
import math

import numpy as np
import pytest
import torch

import solvers
from benchmarks.cli import main
from score_models import EDM, zoo
from score_models.analytic import GaussianMixture
from solvers.optimized_grids import loglinear_interp
from solvers.optimized_grids.ays import PUBLISHED_SCHEDULES, interval_weight_mass, klub_estimator, klub_schedule
from solvers.optimized_grids.dp import median_path
from solvers.optimized_grids.paths import cheapest_path
from solvers.optimized_grids.problem import fine_grid, make_problem

SPREAD = 0.5  # the data std of the single Gaussian


def single_gaussian():
    """N(0, SPREAD^2) in 1-D on the EDM schedule: the PF-ODE is linear, x(sigma) ~ sqrt(s^2 + sigma^2)."""
    return GaussianMixture([[0.0]], SPREAD, schedule=EDM())


def euler_factor(s_from: float, s_to: float) -> float:
    """Euler's step of dx/dsigma = x sigma/(s^2 + sigma^2) as a factor of x (closed form)."""
    return 1.0 + (s_to - s_from) * s_from / (SPREAD**2 + s_from**2)


def true_factor(s_from: float, s_to: float) -> float:
    return math.sqrt(SPREAD**2 + s_to**2) / math.sqrt(SPREAD**2 + s_from**2)


def all_paths(m: int, n_steps: int):
    for inner in itertools.combinations(range(1, m - 1), n_steps - 1):
        yield [0, *inner, m - 1]


def fine_sigmas(model, sampler, nfe, fine_steps):
    problem = make_problem(model, sampler, nfe)
    return problem, fine_grid(problem, fine_steps).tolist()  # EDM: sigma = t


@pytest.mark.parametrize("nfe", [2, 3])
def test_dp_recovers_the_optimal_euler_grid_of_a_single_gaussian(nfe):
    # Euler's endpoint is x_T prod(factors) and undershoots the truth on every step (sqrt(s^2 +
    # sigma^2) is convex), so the least endpoint error over all fine-grid paths is a closed form
    # enumerated here; the DP must find exactly that path.
    model = single_gaussian()
    problem, sig = fine_sigmas(model, "euler", nfe, 7)
    best = min(all_paths(len(sig), nfe), key=lambda p: abs(
        math.prod(euler_factor(sig[a], sig[b]) for a, b in zip(p[:-1], p[1:])) - true_factor(sig[0], 0.0)))
    times = solvers.optimize_grid(model, "euler", nfe, "dp", settings={"teacher_steps": 7, "n_samples": 8})
    assert times.tolist() == [sig[i] for i in best]


@pytest.mark.parametrize("nfe", [2, 3])
@pytest.mark.parametrize("coeff", [None, 1.0])
def test_gits_finds_the_least_total_one_step_error_of_a_single_gaussian(nfe, coeff):
    # GITS's cost of i -> j: |x_j - Euler(x_i)| on the exact trajectory = |x_T|/r_T (r_j - r_i f_ij)
    # with r = sqrt(s^2 + sigma^2): a closed form; the least discounted sum over all paths (the
    # k-th step weighed by coeff^k, the authors' default coeff 1.15) is enumerated.
    model = single_gaussian()
    problem, sig = fine_sigmas(model, "euler", nfe, 7)
    r = [math.sqrt(SPREAD**2 + s**2) for s in sig]
    weight = 1.15 if coeff is None else coeff
    def total(p):
        return sum(weight**k * (r[b] - r[a] * euler_factor(sig[a], sig[b])) for k, (a, b) in enumerate(zip(p[:-1], p[1:])))
    best = min(all_paths(len(sig), nfe), key=total)
    settings = {"fine_steps": 7, "n_samples": 8, **({} if coeff is None else {"coeff": coeff})}
    times = solvers.optimize_grid(model, "euler", nfe, "gits", settings=settings)
    assert times.tolist() == [sig[i] for i in best]


def test_cheapest_path_matches_enumeration_on_random_costs():
    rng = np.random.default_rng(3)
    cost = np.triu(rng.random((9, 9)), 1)
    for n, coeff in itertools.product((1, 2, 4, 8), (1.0, 1.15, 0.7)):
        best = min(all_paths(9, n), key=lambda p: sum(coeff**k * cost[a, b] for k, (a, b) in enumerate(zip(p[:-1], p[1:]))))
        assert cheapest_path(cost, n, coeff) == best


def test_exact_never_worse_than_its_start():
    model = GaussianMixture([[-1.0, 0.0], [1.5, 0.5]], [0.3, 0.5], schedule=EDM())
    stats = {}
    settings = {"n_samples": 16, "max_evaluations": 40, "searches": 1, "fine_steps": 6, "teacher_steps": 5}
    times = solvers.optimize_grid(model, "dpm_solver", 4, "exact", settings=settings, stats=stats)
    assert stats["optimized_error"] <= stats["start_error"]
    # re-measured independently with solvers.sample on the optimiser's own noise and the exact
    # solution: no worse than any fixed grid it starts from
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    truth = model.exact_ode_solution(model.schedule.prior_std * noise, rtol=1e-9, atol=1e-9)
    def err(grid):
        return float((solvers.sample("dpm_solver", model, noise, nfe=4, grid=grid) - truth).pow(2).mean().sqrt())
    starts = [solvers.time_grid(model.schedule, 4, g) for g in ("edm", "logsnr", "uniform")]
    assert err(times) <= min(map(err, starts)) + 1e-12
    assert stats["optimizer_nfe"] > 0 and stats["optimizer_seconds"] >= 0


@pytest.mark.parametrize("name", sorted(PUBLISHED_SCHEDULES))
def test_ays_interpolation_reproduces_the_published_schedule(name):
    published = np.array(PUBLISHED_SCHEDULES[name])
    np.testing.assert_allclose(loglinear_interp(published, 11), published, rtol=1e-14)
    doubled = loglinear_interp(published, 21)
    np.testing.assert_allclose(doubled[::2], published, rtol=1e-13)
    # halfway between two published levels, log-linear means the geometric mean
    np.testing.assert_allclose(doubled[1::2], np.sqrt(published[:-1] * published[1:]), rtol=1e-13)
    five = loglinear_interp(published, 6)
    assert math.isclose(five[0], published[0], rel_tol=1e-14) and math.isclose(five[-1], published[-1], rel_tol=1e-14)
    assert np.all(np.diff(five) < 0)


def test_ays_importance_mass_is_the_integral_of_its_density():
    from scipy.integrate import quad

    c = 0.5
    for lo, hi in [(0.002, 0.01), (0.1, 0.5), (3.0, 80.0), (50.0, 157.0)]:
        def density(t):
            return t**-3 * (1 / (t * t + c * c) - 1 / (hi * hi + c * c))
        exact, _ = quad(density, lo, hi, limit=200, points=np.geomspace(lo, hi, 12)[1:-1], epsrel=1e-12)
        assert math.isclose(interval_weight_mass(lo, hi), exact, rel_tol=1e-9)


@pytest.mark.parametrize("interval", [(0.1, 0.5), (0.002, 0.05), (2.0, 80.0)])
def test_ays_klub_estimate_matches_the_gaussian_closed_form(interval):
    # Lemma 3.3: for data N(0, c^2) and the ideal denoiser, E||D(x_t, t) - D(x_hi, t_hi)||^2 =
    # c^4 (1/(t^2 + c^2) - 1/(t_hi^2 + c^2)) per dimension, so the interval's KLUB is c^4 Z exactly
    # (c = SPREAD = 0.5, the importance density's own c); the Monte Carlo estimate must agree.
    model = single_gaussian()
    estimator = klub_estimator(make_problem(model, "euler", 5), n_data=4000, seed=0)
    lo, hi = interval
    assert math.isclose(estimator("slot", lo, hi), SPREAD**4 * interval_weight_mass(lo, hi), rel_tol=0.08)


def test_ays_search_lowers_the_exact_klub_of_a_single_gaussian():
    # The coordinate search starts from EDM rho = 7 and never raises its own estimate; on a single
    # Gaussian the schedule's true KLUB is a closed form (c^4 sum of the intervals' Z), which must
    # fall well below EDM's.
    model = single_gaussian()
    problem = make_problem(model, "euler", 5)
    levels, info = klub_schedule(problem, 10, n_data=64, sweeps=4, subdivisions=0)
    def exact(lv):
        return SPREAD**4 * sum(interval_weight_mass(lv[k + 1], lv[k]) for k in range(len(lv) - 1))
    edm = model.schedule.sigma_tilde(solvers.time_grid(model.schedule, 10, "edm", to_zero=False)).numpy()
    assert info["klub_optimized"] <= info["klub_initial"]
    assert levels[0] == edm[0] and levels[-1] == edm[-1] and np.all(np.diff(levels) < 0)
    assert exact(levels) < 0.5 * exact(edm)


def test_ays_refinement_keeps_the_coarse_levels():
    model = single_gaussian()
    coarse, _ = klub_schedule(make_problem(model, "euler", 5), 10, n_data=16, sweeps=1, subdivisions=0)
    fine, _ = klub_schedule(make_problem(model, "euler", 5), 10, n_data=16, sweeps=1, subdivisions=2)
    assert fine.size == 41 and np.all(np.diff(fine) < 0)
    np.testing.assert_array_equal(fine[::4], coarse)


def test_dp_median_path_is_the_authors_median():
    assert median_path([[3, 7, 20], [5, 9, 20], [4, 12, 20], [8, 10, 20]]) == [4, 9, 20]  # (4+5)//2, (9+10)//2
    assert median_path([[3, 7, 20]]) == [3, 7, 20]
    assert median_path([[1, 2, 9], [3, 5, 9], [2, 8, 9]]) == [1, 3, 9]  # odd count: the two middle ones below n//2
    with pytest.raises(ValueError, match="equal length"):
        median_path([[1, 2], [1, 2, 3]])


def test_ays_grid_is_decreasing_and_interpolated_from_its_base():
    model = single_gaussian()
    stats = {}
    times = solvers.optimize_grid(model, "euler", 5, "ays", settings={"n_data": 16, "sweeps": 1}, stats=stats)
    sig = model.schedule.sigma_tilde(times[:-1]).numpy()
    # the published schedules' n-step use: n + 1 interpolated levels, the last one replaced by sigma = 0
    np.testing.assert_allclose(sig, loglinear_interp(stats["base_levels"], 6)[:-1], rtol=1e-9)
    assert times[-1] == model.schedule.t_data


@pytest.mark.parametrize("method, settings", [("gits", {"fine_steps": 6, "n_samples": 8}),
                                              ("dp", {"teacher_steps": 6, "n_samples": 8}),
                                              ("ays", {"n_data": 8, "sweeps": 1, "subdivisions": 1})])
def test_same_arguments_same_grid(method, settings):
    model = single_gaussian()
    a = solvers.optimize_grid(model, "heun", 5, method, settings=settings, seed=3)
    solvers.optimized_grids.ays._BASE_SCHEDULES.clear()  # recompute AYS's shared schedule too
    b = solvers.optimize_grid(model, "heun", 5, method, settings=settings, seed=3)
    assert a.dtype == torch.float64 and torch.equal(a, b)
    assert solvers.sample("heun", model, torch.randn(4, 1, dtype=torch.float64), grid=a).shape == (4, 1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(sampler="euler", nfe=5, method="best"), "unknown grid optimisation method 'best'"),
    (dict(sampler="euler", nfe=0, method="gits"), "nfe must lie in 1.."),
    (dict(sampler="euler_ancestral", nfe=5, method="dp"), "stochastic"),
    (dict(sampler="euler", nfe=5, method="gits", grid="edm"), "drop the grid option"),
    (dict(sampler="dpm_adaptive", nfe=20, method="gits"), "chooses its own steps"),
])
def test_bad_input_is_a_clear_error(kwargs, match):
    model = zoo.load("gmm:ring8", schedule="vp_linear")
    with pytest.raises(ValueError, match=match):
        solvers.optimize_grid(model, **kwargs)


def test_exact_needs_a_known_solution():
    with pytest.raises(ValueError, match="method 'exact' needs a model whose exact PF-ODE solution is known"):
        solvers.optimize_grid(zoo.load("toy2d-moons"), "euler", 5, "exact")


def test_cli_grid_writes_json(tmp_path):
    out = tmp_path / "grid.json"
    assert main(["grid", "gmm:ring8", "--sampler", "euler", "--nfe", "3", "--method", "gits", "--out", str(out),
                 "--setting", "fine_steps=8", "--setting", "n_samples=4"]) == 0
    record = json.loads(out.read_text())
    assert len(record["times"]) == 4 and record["times"][0] == 1.0 and record["times"][-1] == 0.0
    assert record["cost"]["optimizer_nfe"] > 0


@pytest.mark.parametrize("args", [
    ["gmm:ring8", "--sampler", "euler", "--nfe", "5", "--method", "best"],
    ["toy2d-moons", "--sampler", "euler", "--nfe", "5", "--method", "exact"],
    ["gmm:ring8", "--sampler", "euler", "--nfe", "0", "--method", "gits"],
    ["gmm:ring8", "--sampler", "euler", "--nfe", "5", "--method", "gits", "--setting", "fine_steps=two"],
])
def test_cli_grid_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, args):
    out = tmp_path / "grid.json"
    assert main(["grid", *args, "--out", str(out)]) == 2
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert capsys.readouterr().err.startswith("nfebench: error:")


def sweep_config(tmp_path, grid, model="gmm:ring8", sampler="euler", nfe="[3]"):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f"""
[run]
name = "grids"
nfe = {nfe}
n_samples = 16
metrics = ["solver_error"]
grid_optimizer = {{ n_samples = 8, fine_steps = 8, max_evaluations = 20, sweeps = 1 }}
reference = {{ cache_dir = "{tmp_path / 'cache'}" }}
[[models]]
name = "{model}"
[[samplers]]
sampler = "{sampler}"
options = {{ grid = "{grid}" }}
""")
    return cfg


@pytest.mark.slow
def test_sweep_runs_optimized_and_file_grids_and_reports_the_cost(tmp_path):
    import pandas as pd

    model = zoo.load("gmm:ring8", schedule="vp_linear")
    given = solvers.time_grid(model.schedule, 3, "logsnr")
    (tmp_path / "g.json").write_text(json.dumps({"times": given.tolist()}))
    cfg = sweep_config(tmp_path, "optimized:gits")
    cfg.write_text(cfg.read_text() + f"""
[[samplers]]
sampler = "euler"
label = "euler-file"
options = {{ grid = "file:{tmp_path / 'g.json'}" }}
""")
    assert main(["run", str(cfg), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    grids = json.loads((tmp_path / "a" / "metadata.json").read_text())["optimized_grids"]
    assert len(grids) == 1 and not grids[0]["cached"] and grids[0]["cost"]["optimizer_nfe"] > 0
    # the cached grid is what optimize_grid gives for the same settings
    expected = solvers.optimize_grid(model, "euler", 3, "gits", settings={"n_samples": 8, "fine_steps": 8})
    assert grids[0]["times"] == expected.tolist()
    rows = pd.read_csv(tmp_path / "a" / "results.csv").set_index("series")
    assert set(rows["status"]) == {"ok"} and set(rows["nfe"]) == {3}
    # the file grid's row is the error of that very grid: re-measured with solvers.sample
    from benchmarks.sweep.cells import batch_generator

    noise = torch.randn(16, 2, generator=batch_generator(0, 0, 0))
    x = solvers.sample("euler", model, noise, grid=given).double()
    truth = model.exact_ode_solution(model.schedule.prior_std * noise.double(), rtol=1e-9, atol=1e-9)
    assert math.isclose(rows.loc["euler-file", "solver_error"], float((x - truth).pow(2).mean().sqrt()), rel_tol=1e-4)


@pytest.mark.slow
def test_sweep_reuses_the_cached_grid(tmp_path):
    cfg = sweep_config(tmp_path, "optimized:gits")
    for run in ("a", "b"):
        assert main(["run", str(cfg), "--out", str(tmp_path / run), "--quiet"]) == 0
    first, second = (json.loads((tmp_path / r / "metadata.json").read_text())["optimized_grids"] for r in "ab")
    assert [g["cached"] for g in first + second] == [False, True]
    assert first[0]["times"] == second[0]["times"]


@pytest.mark.parametrize("grid, model, sampler, nfe, match", [
    ("optimized:best", "gmm:ring8", "euler", "[3]", "unknown method 'best'"),
    ("optimized:exact", "toy2d-moons", "euler", "[3]", "needs a model whose exact PF-ODE solution is known"),
    ("optimized:gits", "gmm:ring8", "euler", "[0, 4]", "nfe"),
    ("file:{tmp}/up.json", "gmm:ring8", "euler", "[3]", "from high noise to low noise"),
    ("file:{tmp}/out.json", "gmm:ring8", "euler", "[3]", "outside"),
    ("file:{tmp}/long.json", "gmm:ring8", "euler", "[2]", "needs 3 NFE, more than the budget nfe=2"),
    ("file:{tmp}/missing.json", "gmm:ring8", "euler", "[3]", "does not exist"),
])
def test_sweep_bad_grid_exits_2_and_writes_nothing(tmp_path, capsys, grid, model, sampler, nfe, match):
    (tmp_path / "up.json").write_text(json.dumps([0.1, 0.5, 1.0, 0.0]))
    (tmp_path / "out.json").write_text(json.dumps([5.0, 0.5, 0.1, 0.0]))
    (tmp_path / "long.json").write_text(json.dumps([1.0, 0.5, 0.1, 0.0]))
    cfg = sweep_config(tmp_path, grid.format(tmp=tmp_path), model, sampler, nfe)
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nfebench: error:") and match in err, err
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_grid_tables_share_of_the_exact_gain():
    import pandas as pd

    from benchmarks.grid_tables import _grid_of, _sampler_of, _shares

    assert _grid_of("dpm_solver++(2M)[optimized:gits]") == "gits" and _grid_of("euler(grid=edm)") == "edm"
    assert _sampler_of("dpm_solver++(2M)[optimized:gits]") == "dpm_solver++(2M)"
    # EDM error 4, exact 2: a method at 3 recovers half the gain, one at 5 is worse than EDM (-0.5)
    rows = [("m", "euler", g, 5, v) for g, v in (("edm", 4.0), ("exact", 2.0), ("gits", 3.0), ("ays", 5.0), ("dp", 2.0))]
    df = pd.DataFrame(rows, columns=["model", "sampler_label", "grid", "nfe_budget", "value"])
    share = _shares(df).iloc[0]
    assert (share["gits"], share["ays"], share["dp"]) == ("0.5 (1)", "-0.5 (1)", "1 (1)")
