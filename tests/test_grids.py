import math

import pytest
import torch

from score_models import EDM, VE, DiscreteVP, VPLinear
from solvers.grids import DISCRETE_GRIDS, GRIDS, check_grid, time_grid

#: Grids whose last level before sigma = 0 lies above t_min by construction.
_ENDS_ABOVE_T_MIN = ("sgm_uniform", "beta", "linear_quadratic", "simple", "ddim_uniform")


@pytest.mark.parametrize("grid", GRIDS)
def test_grids_are_float64_descending_and_pinned(schedule, grid):
    if grid in DISCRETE_GRIDS and schedule.num_train_timesteps is None:
        with pytest.raises(ValueError, match=f"grid '{grid}' picks training timesteps, and .* has none"):
            time_grid(schedule, 10, grid)
        return
    if grid == "shifted" and not 0 <= schedule.t_min < schedule.t_max <= 1:
        with pytest.raises(ValueError, match=r"grid 'shifted' shifts times in \[0, 1\]"):
            time_grid(schedule, 10, grid)
        return
    for to_zero in (True, False) if grid not in DISCRETE_GRIDS else (True,):
        times = time_grid(schedule, 10, grid, to_zero=to_zero)
        assert times.dtype == torch.float64 and times.numel() == 11
        sig = schedule.sigma_tilde(times)
        assert bool((sig[1:] < sig[:-1]).all())
        if grid != "ddim_uniform":
            assert float(times[0]) == schedule.t_max
        if to_zero:
            assert float(times[-1]) == schedule.t_data
            assert (float(times[-2]) > schedule.t_min) == (grid in _ENDS_ABOVE_T_MIN)
        else:
            assert float(times[-1]) == schedule.t_min


def test_edm_grid_is_karras_eq5():
    times = time_grid(EDM(), 18, "edm", rho=7.0)
    i = torch.arange(18, dtype=torch.float64)
    expected = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert torch.allclose(times[:-1], expected, rtol=1e-12) and float(times[-1]) == 0.0


def test_logsnr_and_uniform_spacings():
    s = VPLinear()
    lam = s.lambda_(time_grid(s, 9, "logsnr", to_zero=False))
    assert torch.allclose(torch.diff(lam), torch.full((9,), float(lam[1] - lam[0]), dtype=torch.float64), rtol=1e-9)
    t = time_grid(s, 4, "uniform", to_zero=False)
    assert torch.allclose(t, torch.linspace(1.0, 1e-3, 5, dtype=torch.float64))
    q = time_grid(s, 4, "quadratic", to_zero=False)
    assert torch.allclose(q, 1e-3 + (1 - 1e-3) * torch.linspace(1, 0, 5, dtype=torch.float64) ** 2)
    assert torch.equal(time_grid(s, 1, "edm"), torch.tensor([1.0, 0.0], dtype=torch.float64))

    custom = time_grid(s, 4, "uniform", t_max=0.5, t_min=0.1, to_zero=False)
    assert float(custom[0]) == 0.5 and float(custom[-1]) == 0.1


def test_grid_validation():
    s = DiscreteVP.linear()
    ok = torch.tensor([999.0, 500.0, 0.0, -1.0])
    assert torch.equal(check_grid(s, ok), ok.double())
    with pytest.raises(ValueError, match="from high noise to low noise"):
        check_grid(s, torch.tensor([0.0, 500.0]))
    with pytest.raises(ValueError, match="outside discrete_vp's valid range"):
        check_grid(s, torch.tensor([1200.0, 0.0]))
    with pytest.raises(ValueError, match="may only be the last"):
        check_grid(VE(), torch.tensor([1.0, -math.inf, -math.inf]))
    with pytest.raises(ValueError, match="1-D tensor"):
        check_grid(s, torch.tensor([3.0]))
    with pytest.raises(ValueError, match="need t_max > t_min"):
        time_grid(s, 5, "uniform", t_max=10.0, t_min=20.0)
    with pytest.raises(ValueError, match="rho must be > 0"):
        time_grid(s, 5, "edm", rho=0.0)


# --- named grids against k-diffusion's and the papers' formulas --------------------------------
@pytest.mark.parametrize("schedule", [EDM(), VPLinear()], ids=lambda s: s.name)
@pytest.mark.parametrize("grid, k_function, k_kwargs", [
    ("karras", "get_sigmas_karras", {"rho": 7.0}), ("exponential", "get_sigmas_exponential", {}),
    ("polyexponential", "get_sigmas_polyexponential", {"rho": 1.0}),
    ("polyexponential", "get_sigmas_polyexponential", {"rho": 2.5})])
def test_k_diffusion_grids_give_k_diffusions_sigmas(k_sampling, schedule, grid, k_function, k_kwargs):
    s_max, s_min = float(schedule.sigma_tilde(schedule.t_max)), float(schedule.sigma_tilde(schedule.t_min))
    for n in (1, 2, 7, 30):
        theirs = _in_float64(getattr(k_sampling, k_function), n, s_min, s_max, **k_kwargs)
        rho = {"rho": k_kwargs["rho"]} if grid == "polyexponential" else {}
        ours = schedule.sigma_tilde(time_grid(schedule, n, grid, **rho))
        assert torch.allclose(ours, theirs, rtol=1e-10, atol=0), (n, ours, theirs)


def _in_float64(function, *args, **kwargs):
    """k-diffusion builds its ramps with torch's default dtype: make that float64 for the call."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return function(*args, **kwargs)
    finally:
        torch.set_default_dtype(default)


def test_vp_grid_is_k_diffusions_on_the_vp_sdes_own_range(k_sampling):
    # k-diffusion's get_sigmas_vp steps evenly in the VP-SDE's time from 1 to eps_s: on a schedule
    # whose sigma~ range is the VP-SDE's own at those times, our vp grid gives the same sigmas.
    vp = VPLinear(beta_min=0.1, beta_max=20.0, t_min=1e-3, t_max=1.0)
    for n in (2, 9, 25):
        theirs = _in_float64(k_sampling.get_sigmas_vp, n, beta_d=19.9, beta_min=0.1, eps_s=1e-3)
        ours = vp.sigma_tilde(time_grid(vp, n, "vp"))
        assert torch.allclose(ours, theirs, rtol=1e-10, atol=0), (ours, theirs)


def test_kl_optimal_beta_sgm_uniform_follow_their_formulas():
    s = EDM()
    s_max, s_min = 80.0, 0.002
    u = torch.linspace(0, 1, 6, dtype=torch.float64)
    expected = torch.tan((1 - u) * math.atan(s_max) + u * math.atan(s_min))  # Sabour et al. 2024, eq. 16
    assert torch.allclose(time_grid(s, 6, "kl_optimal")[:-1], expected, rtol=1e-12)
    from scipy.stats import beta

    quantiles = beta.ppf(1 - torch.arange(8, dtype=torch.float64).numpy() / 8, 0.5, 0.7)
    expected = s.t_min + (s.t_max - s.t_min) * torch.from_numpy(quantiles)
    got = time_grid(s, 8, "beta", beta_a=0.5, beta_b=0.7)
    assert torch.allclose(got[:-1], expected, rtol=1e-12) and float(got[-1]) == 0.0
    vp = VPLinear()
    assert torch.allclose(time_grid(vp, 4, "sgm_uniform")[:-1], torch.linspace(1.0, 1e-3, 5, dtype=torch.float64)[:-1])
    assert torch.equal(time_grid(vp, 4, "normal"), time_grid(vp, 4, "uniform"))


def test_shifted_grid_is_sd3_time_shift_of_an_even_grid():
    """SD3's shift t' = s t / (1 + (s - 1) t) (Esser et al. 2024, sec. 5.3.2) of times evenly
    spaced between the unshifted ends; shift = 1 is the uniform grid."""
    from score_models import RectifiedFlow

    flow = RectifiedFlow(t_min=1e-3, t_max=1.0)
    for shift in (0.5, 3.0):
        got = time_grid(flow, 6, "shifted", shift=shift, t_min=0.02)
        unshifted_end = 0.02 / (shift - (shift - 1) * 0.02)
        even = torch.linspace(1.0, unshifted_end, 6, dtype=torch.float64)
        assert torch.allclose(got[:-1], shift * even / (1 + (shift - 1) * even), rtol=1e-14)
        assert float(got[0]) == 1.0 and float(got[-2]) == 0.02 and float(got[-1]) == 0.0
    assert torch.allclose(time_grid(flow, 6, "shifted"), time_grid(flow, 6, "uniform"), rtol=1e-14)
    later = time_grid(flow, 6, "shifted", shift=3.0)
    assert bool((later[1:-2] > time_grid(flow, 6, "uniform")[1:-2]).all())  # shift > 1: more steps at high noise


def test_comfyui_discrete_grids_pick_training_timesteps():
    s = DiscreteVP.linear(1000, 1e-4, 0.02)
    # simple: every (1000/N)-th of the 1000 training sigmas from the top; ddim_uniform: 1 + k*(1000//N)
    assert time_grid(s, 3, "simple").tolist() == [999.0, 666.0, 333.0, -1.0]
    assert time_grid(s, 7, "simple")[:-1].tolist() == [999 - int(i * 1000 / 7) for i in range(7)]
    assert time_grid(s, 7, "ddim_uniform")[:-1].tolist() == [1.0 + 142 * k for k in reversed(range(7))]
    with pytest.raises(ValueError, match="grid 'simple' ends at sigma = 0"):
        time_grid(s, 3, "simple", to_zero=False)


def test_linear_quadratic_is_linear_then_quadratic_and_continuous():
    s = VPLinear(t_min=1e-3, t_max=1.0)
    n, threshold = 10, 0.025
    frac = (time_grid(s, n, "linear_quadratic", lq_threshold=threshold)[:-1] - s.t_min) / (s.t_max - s.t_min)
    done = 1 - frac  # the fraction of the way done, 0 at the first level
    linear = torch.arange(n // 2, dtype=torch.float64) * threshold / (n // 2)
    assert torch.allclose(done[: n // 2], linear, atol=1e-12)
    second = torch.diff(done[n // 2:], n=2)  # constant second difference: quadratic
    assert torch.allclose(second, second[0].expand_as(second), rtol=1e-9)


def test_discard_penultimate_drops_the_level_before_zero():
    s = EDM()
    longer = time_grid(s, 6, "karras")
    got = time_grid(s, 5, "karras", discard_penultimate=True)
    assert torch.equal(got, torch.cat([longer[:-2], longer[-1:]])) and got.numel() == 6


def test_a_config_entry_with_grids_expands_to_one_series_per_grid(tmp_path):
    from benchmarks.config import ConfigError, load_config

    path = tmp_path / "c.toml"
    path.write_text('[[models]]\nname = "gmm:ring8"\n[[samplers]]\nsampler = "euler"\ngrids = ["karras", "beta"]\n'
                    'options = { beta_a = 0.5 }\n[[samplers]]\nsampler = "heun"\nlabel = "h"\ngrids = ["normal"]\n')
    config = load_config(path)
    assert [(s.key, s.options) for s in config.samplers] == [
        ("euler(beta_a=0.5,grid=karras)", {"beta_a": 0.5, "grid": "karras"}),
        ("euler(beta_a=0.5,grid=beta)", {"beta_a": 0.5, "grid": "beta"}),
        ("h[normal]", {"grid": "normal"})]
    path.write_text('[[models]]\nname = "gmm:ring8"\n[[samplers]]\nsampler = "euler"\ngrids = ["karras", "karass"]\n')
    with pytest.raises(ConfigError, match="option grid='karass' of sampler 'euler' is not valid; valid: 'uniform'"):
        load_config(path)


@pytest.mark.parametrize("name", ["default", "baseline", "full"])
def test_shipped_configs_parse(name):
    from benchmarks.config import load_config

    from conftest import ROOT

    config = load_config(ROOT / "benchmarks" / "configs" / f"{name}.toml")
    assert config.samplers and config.models
