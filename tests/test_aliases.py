"""Aliases: another name for a sampler with options fixed, as the reference implementations name it."""
import pytest
import torch

import solvers
from benchmarks.cli import main
from score_models import zoo


def test_every_alias_runs_its_sampler_with_its_options():
    model = zoo.load("gmm:ring8", schedule="edm")
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert solvers.aliases(), "no aliases registered"
    for alias in solvers.aliases():
        spec = solvers.get(alias)
        target = solvers.get(spec.alias_of)
        assert alias not in solvers.available() and spec.alias_of in solvers.available()
        assert set(spec.fixed) <= set(target.options) and spec.known_as
        if target.exclusive:
            continue
        nfe = max(target.count(4, True, spec.fixed), 4)
        got = solvers.sample(alias, model, noise, nfe=nfe, generator=torch.Generator().manual_seed(3))
        want = solvers.sample(spec.alias_of, model, noise, nfe=nfe, generator=torch.Generator().manual_seed(3),
                              **spec.fixed)
        assert torch.equal(got, want), alias


def test_an_alias_refuses_a_conflicting_option_and_accepts_the_same_value():
    model = zoo.load("gmm:ring8", schedule="edm")
    noise = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"option order=3 conflicts with alias 'dpmpp_2m', which is dpm_solver with "
                                         r"order=2, algorithm='dpmsolver\+\+'; use dpm_solver to set order"):
        solvers.sample("dpmpp_2m", model, noise, nfe=8, order=3)
    solvers.sample("dpmpp_2m", model, noise, nfe=8, order=2)
    solvers.sample("res_multistep_ancestral", model, noise, nfe=8, eta=1)  # 1 is the alias's 1.0


def test_conflicting_alias_option_in_a_config_exits_2_and_writes_nothing(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('[[models]]\nname = "gmm:ring8"\n[[samplers]]\nsampler = "dpmpp_2m"\noptions = { order = 3 }\n'
                      'nfe = [8]\n')
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "conflicts with alias 'dpmpp_2m'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_list_shows_aliases_and_reference_names(capsys):
    main(["list"])
    out = capsys.readouterr().out
    assert "alias: dpmpp_2m = dpm_solver with order=2, algorithm='dpmsolver++' (k-diffusion sample_dpmpp_2m; " \
           "ComfyUI dpmpp_2m; diffusers DPMSolverMultistepScheduler(solver_order=2))" in out
    assert "known as: k-diffusion sample_euler; ComfyUI euler; diffusers EulerDiscreteScheduler" in out
