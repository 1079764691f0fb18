"""Registry-wide tests: every registered sampler (and every variant it declares) is covered here
without being named, so a new sampler is tested the moment its module registers it.

- counted NFE equals its declared rule, and the budget-to-steps inversion picks the most steps;
- deterministic samplers converge at the order they declare on the exact mixture;
- every sampler runs from a sweep config naming it;
- the README's sampler table is the one the registry renders;
- registration refuses malformed declarations.
"""
import math

import pytest
import torch

import solvers
from benchmarks.cli import main
from benchmarks.config import parse_config
from benchmarks.convergence import measured_order, order_cases
from benchmarks.sweep import run_sweep, runs_on
from score_models import NFEBudgetExceeded, zoo
from solvers import catalogue
from solvers.rules import Rule

from conftest import ROOT


def _native_models(name):
    """The shipped models a sampler runs on in a sweep: its students if it is exclusive."""
    if not solvers.get(name).exclusive:
        return ["gmm:ring8"]
    return [m for m in zoo.STUDENTS if runs_on(name, zoo.load(m))][:2]


def _cases():
    return [(name, dict(variant)) for name in solvers.available() for variant in ({},) + solvers.get(name).variants]


def _ids(case):
    name, options = case
    return name + "".join(f"-{k}={v}" for k, v in options.items())


# --- counted NFE equals the declared rule -------------------------------------------------------
@pytest.mark.parametrize("case", _cases(), ids=_ids)
def test_counted_nfe_equals_the_declared_rule(case):
    name, options = case
    spec = solvers.get(name)
    for model_name in _native_models(name):
        model = zoo.load(model_name) if model_name in zoo.STUDENTS else zoo.load(model_name, schedule="vp_linear")
        noise = torch.randn((8,) + model.sample_shape, generator=torch.Generator().manual_seed(0))
        endings = (True, False) if "to_zero" in spec.grid_options else (None,)
        for to_zero in endings:
            grid = {} if to_zero is None else {"to_zero": to_zero}
            ends = spec.ends_at_data({**options, **grid}, model)
            for budget in (1, 2, 3, 7, 10, 25):
                stats, start = {}, model.nfe
                try:
                    with torch.inference_mode():
                        solvers.sample(name, model, noise, nfe=budget, generator=torch.Generator().manual_seed(0),
                                       stats=stats, **options, **grid)
                except (ValueError, NFEBudgetExceeded):
                    # Below the minimum, a student's other step counts, or an adaptive solve that
                    # needs more: nothing over budget ran.
                    assert model.nfe - start <= budget
                    continue
                assert stats["nfe"] == model.nfe - start <= budget
                if not spec.adaptive:
                    assert stats["nfe"] == spec.count(stats["n_steps"], ends, options), (budget, stats)
                    best = max(n for n in range(1, budget + 1) if spec.count(n, ends, options) <= budget)
                    assert stats["n_steps"] == best


def test_budget_inversion_is_logarithmic_and_exact():
    spec = solvers.get("pndm")
    for nfe in (12, 13, 1000, 99_999):
        n = spec.steps_for_budget(nfe, True)
        assert spec.count(n, True, {}) <= nfe < spec.count(n + 1, True, {})
    calls = []
    heun = solvers.get("heun")
    original = heun.nfe

    class Counting:
        text = original.text

        def __call__(self, values):
            calls.append(values["N"])
            return original(values)

    object.__setattr__(heun, "nfe", Counting())
    try:
        assert heun.steps_for_budget(solvers.MAX_NFE, True) == (solvers.MAX_NFE + 1) // 2
    finally:
        object.__setattr__(heun, "nfe", original)
    assert len(calls) < 60  # bisection, not a walk over 50,000 step counts


# --- declared orders against the exact mixture ---------------------------------------------------
@pytest.mark.parametrize("case", order_cases(), ids=_ids)
def test_fitted_order_matches_the_declared_order(case):
    """Fitted order within [declared - 0.25, declared + 1]: a sampler that loses order fails; one
    that beats a conservative declaration (warm-up error with a small constant) may not by a lot."""
    name, options = case
    result = measured_order(name, options)
    errors = result["errors"]
    assert all(b < a for a, b in zip(errors, errors[1:])), result
    assert result["declared"] - 0.25 <= result["order"] <= result["declared"] + 1.0, result


def test_every_deterministic_sampler_with_an_order_is_order_tested():
    covered = {name for name, _ in order_cases()}
    for name in solvers.available():
        spec = solvers.get(name)
        if spec.order is not None and not spec.stochastic:
            assert name in covered, f"{name} declares an order but no order test runs it"


# --- every sampler runs from a config ------------------------------------------------------------
def test_every_sampler_runs_from_a_config_naming_it(tmp_path):
    names = solvers.available()
    students = sorted({m for name in names for m in _native_models(name) if m in zoo.STUDENTS})
    config = parse_config({
        "run": {"nfe": [4], "n_samples": 8, "batch_size": 8, "metrics": ["solver_error"]},
        "models": [{"name": "gmm:ring8", "schedule": "edm"}]
                  + [{"name": m, **({"nfe": [zoo.load(m).steps]} if hasattr(zoo.load(m), "steps") else {})}
                     for m in students],
        # a series' own nfe where the default 4 is too few; students take their own (model nfe)
        "samplers": [{"sampler": name, **({"nfe": [500]} if spec.adaptive else
                                          {"nfe": [spec.count(1, True, {})]} if spec.count(1, True, {}) > 4 else {})}
                     for name, spec in ((n, solvers.get(n)) for n in names)],
    })
    df = run_sweep(config, tmp_path / "run", progress=False)
    assert set(df["sampler"]) == set(names)
    assert (df["status"] == "ok").all(), df[df["status"] != "ok"][["model", "sampler", "nfe_budget", "error"]]


# --- the catalogue -------------------------------------------------------------------------------
def test_readme_sampler_table_is_the_registry():
    readme = (ROOT / "README.md").read_text()
    assert catalogue.markdown_table() in readme, "run: nfebench list --readme README.md"
    for name in solvers.available():
        assert f"| `{name}` |" in readme


def test_list_prints_each_rule_as_declared(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in solvers.available():
        spec = solvers.get(name)
        assert name in out and (spec.nfe is None or f"NFE = {spec.nfe}" in out)
    assert main(["list", "--markdown"]) == 0
    assert capsys.readouterr().out.strip() == catalogue.markdown_table()


# --- registration checks -------------------------------------------------------------------------
def _sampler(model, x_T, times, *, generator=None):
    """A stand-in."""
    return x_T


def test_registration_refuses_malformed_declarations():
    for name in solvers.available():
        spec = solvers.get(name)
        assert spec.paper and spec.summary and (spec.nfe is not None or spec.adaptive)
    with pytest.raises(ValueError, match="registered twice"):
        solvers.register("euler", order=1, stochastic=False, nfe="N", paper="x")(_sampler)
    with pytest.raises(TypeError, match="keyword-only with a default"):
        solvers.register("bad_sampler", order=1, stochastic=False, nfe="N", paper="x")(
            lambda model, x_T, times, k, *, generator=None: x_T)
    with pytest.raises(ValueError, match="strictly increasing"):
        solvers.register("bad_rule", order=1, stochastic=False, nfe="1", paper="x")(_sampler)
    with pytest.raises(ValueError, match="uses 'steps'; it may use N, to_zero"):
        solvers.register("bad_name", order=1, stochastic=False, nfe="steps", paper="x")(_sampler)
    with pytest.raises(ValueError, match="variant .* names unknown options"):
        solvers.register("bad_variant", order=1, stochastic=False, nfe="N", paper="x", variants=({"eta": 1},))(_sampler)
    with pytest.raises(TypeError, match="needs a docstring"):
        solvers.register("no_doc", order=1, stochastic=False, nfe="N", paper="x")(
            lambda model, x_T, times, *, generator=None: x_T)
    for bad in ("bad_sampler", "bad_rule", "bad_name", "bad_variant", "no_doc"):
        assert bad not in solvers.available()


@pytest.mark.parametrize("text,message", [
    ("__import__('os')", "calls something other than min or max"),
    ("N.__class__", "uses Attribute"),
    ("[N for N in ()]", "uses ListComp"),
    ("N +", "is not an expression"),
])
def test_rules_are_arithmetic_only(text, message):
    with pytest.raises(ValueError, match=message):
        Rule(text, ["N"])
    rule = Rule("2*N - 1 if to_zero else max(N, 3)", ["N", "to_zero"])
    assert rule({"N": 4, "to_zero": True}) == 7 and rule({"N": 1, "to_zero": False}) == 3
    assert str(rule) == "2*N - 1 if to_zero else max(N, 3)" and not math.isnan(rule({"N": 2, "to_zero": 0}))
