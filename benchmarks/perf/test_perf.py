"""pytest-benchmark suite (not part of the default test run):

    python -m pytest benchmarks/perf --benchmark-json=perf.json           # measure, save JSON
    pytest-benchmark compare perf-old.json perf.json --fail=mean:25%       # gate on a saved run

Each group holds a sampler's run at 20 NFE next to 20 bare forward passes of the same network
at the same batch, so their ratio is the loop's own overhead, measured side by side.
"""
import pytest
import torch

import solvers
from benchmarks.perf.overhead import fixed_step_samplers
from score_models import zoo

NFE = 20
CASES = {"toy2d-moons": 4096, "digits-unet": 256}
SAMPLERS = [name for name in fixed_step_samplers() if solvers.get(name).count(1, True, {}) <= NFE]


@pytest.fixture(scope="module", params=list(CASES))
def setup(request):
    model = zoo.load(request.param)
    batch = CASES[request.param]
    noise = torch.randn((batch,) + model.sample_shape, generator=torch.Generator().manual_seed(0))
    return request.param, model, noise


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampler(benchmark, setup, sampler):
    name, model, noise = setup
    benchmark.group = f"{name} {sampler}"
    with torch.inference_mode():
        out = benchmark.pedantic(solvers.sample, args=(sampler, model, noise), kwargs={"nfe": NFE},
                                 rounds=3, warmup_rounds=1)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_bare_forwards(benchmark, setup, sampler):
    name, model, noise = setup
    benchmark.group = f"{name} {sampler}"
    spec = solvers.get(sampler)
    count = spec.count(spec.steps_for_budget(NFE, True), True, {})
    t = torch.full((noise.shape[0],), 0.5 * (model.schedule.t_min + model.schedule.t_max))

    def forwards():
        for _ in range(count):
            model.net(noise, t)

    with torch.inference_mode():
        benchmark.pedantic(forwards, rounds=3, warmup_rounds=1)
