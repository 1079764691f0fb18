import math

import pytest
import torch

from score_models import EDM, VE, DiscreteVP, VPLinear
from solvers.grids import DISCRETE_GRIDS, GRIDS, check_grid, time_grid

#: Grids whose last level before sigma = 0 lies above t_min by construction.
_ENDS_ABOVE_T_MIN = ("sgm_uniform", "beta", "simple", "ddim_uniform")


@pytest.mark.parametrize("grid", GRIDS)
def test_grids_are_float64_descending_and_pinned(schedule, grid):
    if grid in DISCRETE_GRIDS and schedule.num_train_timesteps is None:
        with pytest.raises(ValueError, match=f"grid '{grid}' picks training timesteps, and .* has none"):
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
