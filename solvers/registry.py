"""The sampler registry: every sampler declared once, where it is defined, with its order, NFE
rule, stochasticity and options, validated when registered.

A sampler is a function ``fn(model, x_T, times, *, <options>, generator=None)`` decorated with
:func:`register`. Its keyword options (with their defaults) come from its signature; its NFE
count and convergence order are :class:`~solvers.rules.Rule` expressions, so the code that counts
and the text that ``nfebench list`` and the README print are one thing. Every module of the
:mod:`solvers.samplers` package is imported on first use, so a new sampler is one new file there.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch

from .options import Check, check_grid_value, check_value
from .rules import Rule

#: Options that build the time grid (see :func:`solvers.grids.time_grid`).
GRID_OPTIONS = ("grid", "rho", "t_min", "t_max", "to_zero", "spacing", "steps_offset", "discard_penultimate",
                "beta_a", "beta_b", "vp_beta_d", "vp_beta_min", "lq_threshold", "shift", "drop_last_timestep",
                "start_noise")
#: The grid options that shape the grid (as opposed to where it ends, to_zero, and how the noise
#: starts, start_noise): a grid the caller names replaces a model's declared shape as a whole.
GRID_SHAPE_OPTIONS = tuple(o for o in GRID_OPTIONS if o not in ("to_zero", "start_noise"))
#: Arguments every sampler function takes and that are not user options.
_POSITIONAL = ("model", "x_T", "times")
_PLUMBING = ("generator", "max_nfe", "stats")
#: Variables of an NFE rule besides the sampler's options: the number of steps (grid intervals)
#: and whether the grid ends at sigma = 0.
NFE_VARIABLES = ("N", "to_zero")

__all__ = ["SamplerSpec", "Alias", "register", "get", "available", "aliases", "GRID_OPTIONS", "NFE_VARIABLES",
           "REFERENCES"]

#: The implementations whose names ``known_as`` may give, in the order they are listed.
REFERENCES = ("k-diffusion", "ComfyUI", "diffusers")


@dataclass(frozen=True)
class Alias:
    """Another name for a sampler with some options fixed (k-diffusion's ``dpmpp_2m`` is
    ``dpm_solver`` with ``order=2``), and the names the reference implementations give it."""

    name: str
    options: Dict[str, Any] = field(default_factory=dict)
    known_as: Dict[str, str] = field(default_factory=dict)

RuleLike = Union[Rule, str, float, int, None]


@dataclass(frozen=True)
class SamplerSpec:
    """What the suite knows about a sampler (built by :func:`register`).

    - ``nfe``: the exact network-evaluation count of a fixed-step sampler over a grid of N
      intervals, a rule in N, to_zero and the options; None for an adaptive sampler, whose
      ``nfe`` budget is a cap.
    - ``order``: the convergence order the sampler reaches on the exact mixtures' PF-ODE with its
      default grid (a rule in the options); None where it is not a discretisation of the ODE.
      ``order_note`` says why it is below the method's nominal order where it is.
    - ``variants``: option sets besides the defaults that the registry-wide tests also run
      (counted NFE and, for deterministic ones, the fitted order).
    - ``exclusive``: the sampler runs only on models that name it in their ``native_samplers``
      (few-step students); sweeps pair them accordingly.
    - ``steps_option``: for a sampler whose evaluations are not a rule of the step count (NFE
      None) but which runs on a full grid, the option that gives the number of steps (ParaDiGMS's
      ``steps``); the grid is built from it and the grid options, and ``nfe`` is a cap.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    order: Optional[Rule]
    stochastic: bool
    nfe: Optional[Rule]
    paper: str
    summary: str
    order_note: str = ""
    nfe_note: str = ""
    default_grid: str = "edm"
    grid_options: Tuple[str, ...] = GRID_OPTIONS
    defaults: Dict[str, Any] = field(default_factory=dict)
    stochastic_if: Optional[Rule] = None
    variants: Tuple[Dict[str, Any], ...] = ()
    reports_stats: bool = False  # the function takes stats= and fills it
    exclusive: bool = False
    checks: Dict[str, Check] = field(default_factory=dict)
    requires: Tuple[Tuple[Rule, str], ...] = ()
    known_as: Dict[str, str] = field(default_factory=dict)  # reference implementation -> its name
    aliases: Tuple[Alias, ...] = ()
    alias_of: Optional[str] = None  # set on an alias's spec: the sampler it runs
    fixed: Dict[str, Any] = field(default_factory=dict)  # the options an alias sets
    steps_option: Optional[str] = None

    @property
    def adaptive(self) -> bool:
        return self.nfe is None

    @property
    def options(self) -> Tuple[str, ...]:
        return tuple(self.grid_options) + tuple(self.defaults)

    def check_options(self, options: Dict[str, Any], tensor_grid_allowed: bool = True) -> None:
        """ValueError for an unknown option, a value of the wrong type or out of its declared range,
        or options that break a declared cross-option rule; nothing runs before this passes."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for sampler {self.name!r}; valid: "
                             f"{', '.join(self.defaults) or 'none'}; grid options: {', '.join(self.grid_options) or 'none'}")
        for name, value in options.items():
            if name in self.fixed and not _same_value(value, self.fixed[name]):
                raise ValueError(f"option {name}={value!r} conflicts with alias {self.name!r}, which is "
                                 f"{self.alias_of} with {_options_text(self.fixed)}; use {self.alias_of} to set {name}")
        for name, value in options.items():
            if name in self.grid_options:
                check_grid_value(self.name, name, value, tensor_grid_allowed)
            else:
                check_value(self.name, name, value, self.defaults[name], self.checks.get(name))
        values = self.with_defaults(options)
        for rule, message in self.requires:
            if not rule(values):
                raise ValueError(f"sampler {self.name!r}: {message} (got "
                                 f"{', '.join(f'{k}={values[k]!r}' for k in sorted(rule.names))})")

    def with_defaults(self, options: Dict[str, Any]) -> Dict[str, Any]:
        return {**self.defaults, **{k: v for k, v in {**self.fixed, **options}.items() if k in self.defaults}}

    def with_fixed(self, options: Dict[str, Any]) -> Dict[str, Any]:
        """``options`` plus the ones an alias fixes (what the sampler function receives)."""
        return {**self.fixed, **options}

    def is_stochastic(self, options: Dict[str, Any]) -> bool:
        return self.stochastic or bool(self.stochastic_if and self.stochastic_if(self.with_defaults(options)))

    def order_of(self, options: Dict[str, Any]) -> Optional[float]:
        return None if self.order is None else self.order(self.with_defaults(options))

    def grid_settings(self, options: Dict[str, Any], model: Any = None) -> Dict[str, Any]:
        """The grid options in ``options`` over the ones the model declares (``grid_defaults``:
        a consistency model's chain ends at sigma_min, not 0; a diffusers pipeline's scheduler
        spaces its timesteps), restricted to this sampler's. A grid or spacing the caller names
        replaces the model's whole grid shape (its grid or spacing and their parameters); where
        the grid ends and how the noise starts still default to the model's."""
        declared = dict(getattr(model, "grid_defaults", {}) if model is not None else {})
        given = {**self.fixed, **options}
        if "grid" in given or "spacing" in given:
            declared = {k: v for k, v in declared.items() if k not in GRID_SHAPE_OPTIONS}
        merged = {**declared, **given}
        return {k: merged[k] for k in self.grid_options if k in merged}

    def ends_at_data(self, options: Dict[str, Any], model: Any = None) -> bool:
        """Whether the grid this sampler gets with these options (on this model) ends at sigma = 0."""
        return bool(self.grid_settings(options, model).get("to_zero", True))

    def count(self, n_steps: int, ends_at_data: bool, options: Dict[str, Any]) -> int:
        """Exact NFE over a grid of n_steps intervals."""
        if self.nfe is None:
            raise ValueError(f"{self.name} is adaptive: its NFE is counted, not given by a rule")
        return int(self.nfe({"N": n_steps, "to_zero": ends_at_data, **self.with_defaults(options)}))

    def steps_for_budget(self, nfe: int, ends_at_data: bool, options: Optional[Dict[str, Any]] = None) -> int:
        """The most steps whose counted NFE stays within ``nfe`` (ValueError below the minimum).
        Bisection over the step count: the rule is strictly increasing in N (checked at registration)."""
        options = options or {}
        minimum = self.count(1, ends_at_data, options)
        if nfe < minimum:
            raise ValueError(f"{self.name} needs nfe >= {minimum} (got {nfe}); its rule: NFE = {self.nfe}")
        low, high = 1, 2  # count(low) <= nfe < count(high)
        while self.count(high, ends_at_data, options) <= nfe:
            low, high = high, 2 * high
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if self.count(mid, ends_at_data, options) <= nfe else (low, mid)
        return low


_REGISTRY: Dict[str, SamplerSpec] = {}
_LOADED = False


def _as_rule(value: RuleLike, variables, what: str) -> Optional[Rule]:
    if value is None or isinstance(value, Rule):
        return value
    return Rule(str(value), variables, what)


def register(name: str, *, order: RuleLike, stochastic: bool, nfe: RuleLike, paper: str, order_note: str = "",
             nfe_note: str = "", default_grid: str = "edm", grid_options: Tuple[str, ...] = GRID_OPTIONS,
             stochastic_if: RuleLike = None, variants: Tuple[Dict[str, Any], ...] = (),
             exclusive: bool = False, checks: Optional[Dict[str, Check]] = None,
             requires: Optional[Dict[str, str]] = None, known_as: Optional[Dict[str, str]] = None,
             aliases: Tuple[Alias, ...] = (), steps_option: Optional[str] = None) -> Callable:
    """Decorator declaring a sampler ``fn(model, x_T, times, *, <options>, generator=None)``.

    ``nfe``: rule text in N (steps), to_zero and the options, e.g. ``"2*N - 1 if to_zero else
    2*N"``; None for an adaptive sampler (which must accept ``max_nfe=``). ``order``: a number or
    rule text in the options; None where there is no convergence order. ``stochastic_if``: rule
    text in the options. Keyword parameters of ``fn`` other than generator/max_nfe/stats become
    its options, typed by their defaults; ``checks`` gives an option's range or choices
    (:mod:`solvers.options`) and ``requires`` maps rule text over the options to the message shown
    when it fails. Registration checks the signature, the rules, the checks, the variants and that
    the NFE rule is >= 1 and strictly increasing in N. ``known_as`` maps a reference implementation
    (:data:`REFERENCES`) to its name for this sampler; each :class:`Alias` is registered as a name
    of its own that runs this sampler with its options fixed (an explicit conflicting option is an
    error).
    """

    def wrap(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if name in _REGISTRY:
            raise ValueError(f"sampler {name!r} is registered twice")
        params = inspect.signature(fn).parameters
        if tuple(params)[:3] != _POSITIONAL:
            raise TypeError(f"{fn.__name__} must take (model, x_T, times, *, ...) first")
        if "generator" not in params:
            raise TypeError(f"{fn.__name__} must accept generator= (randomness only through it)")
        defaults = {}
        for p in list(params.values())[3:]:
            if p.name in _PLUMBING:
                continue
            if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.default is inspect.Parameter.empty:
                raise TypeError(f"{fn.__name__}: option {p.name!r} must be keyword-only with a default")
            defaults[p.name] = p.default
        clash = set(defaults) & set(GRID_OPTIONS)
        if clash:
            raise TypeError(f"{fn.__name__}: options {sorted(clash)} clash with grid options")
        if nfe is None and "max_nfe" not in params:
            raise TypeError(f"adaptive sampler {name!r} must accept max_nfe=")
        if steps_option is not None and (nfe is not None or type(defaults.get(steps_option)) is not int):
            raise TypeError(f"{name}: steps_option {steps_option!r} must name an int option of a sampler whose NFE "
                            f"is counted (nfe=None)")
        if not (fn.__doc__ or "").strip():
            raise TypeError(f"{fn.__name__} needs a docstring (its first sentence is the sampler's summary)")
        for variant in variants:
            unknown = set(variant) - set(defaults) - set(GRID_OPTIONS)
            if unknown:
                raise ValueError(f"{name}: variant {variant} names unknown options {sorted(unknown)}")
        if set(checks or {}) - set(defaults):
            raise ValueError(f"{name}: checks for unknown options {sorted(set(checks) - set(defaults))}")
        spec = SamplerSpec(
            name, fn, _as_rule(order, defaults, f"{name} order"), stochastic,
            _as_rule(nfe, tuple(defaults) + NFE_VARIABLES, f"{name} NFE rule"), paper,
            summary=_summary(fn), order_note=order_note, nfe_note=nfe_note, default_grid=default_grid,
            grid_options=tuple(grid_options), defaults=defaults,
            stochastic_if=_as_rule(stochastic_if, defaults, f"{name} stochastic_if"), variants=tuple(variants),
            reports_stats="stats" in params, exclusive=exclusive, checks=dict(checks or {}),
            requires=tuple((Rule(text, defaults, f"{name} requirement"), message)
                           for text, message in (requires or {}).items()),
            known_as=_check_known_as(name, known_as or {}), aliases=tuple(aliases), steps_option=steps_option)
        for options in ({},) + spec.variants + tuple(a.options for a in spec.aliases):
            spec.check_options(options)  # the defaults, every variant and every alias are valid options
        if not spec.adaptive:
            for options in ({},) + spec.variants:
                for ends in (True, False):
                    counts = [spec.count(n, ends, options) for n in range(1, 7)]
                    if counts[0] < 1 or any(b <= a for a, b in zip(counts, counts[1:])):
                        raise ValueError(f"{name}: NFE rule {spec.nfe} must be >= 1 and strictly increasing in N, "
                                         f"got {counts} with options {options}")
        _REGISTRY[name] = spec
        for alias in spec.aliases:
            if alias.name in _REGISTRY:
                raise ValueError(f"alias {alias.name!r} of {name} is already registered")
            _REGISTRY[alias.name] = replace(spec, name=alias.name, alias_of=name, fixed=dict(alias.options),
                                            known_as=_check_known_as(alias.name, alias.known_as), aliases=(),
                                            variants=())
        return fn

    return wrap


def _check_known_as(name: str, known_as: Dict[str, str]) -> Dict[str, str]:
    unknown = sorted(set(known_as) - set(REFERENCES))
    if unknown:
        raise ValueError(f"{name}: known_as names unknown references {unknown}; valid: {', '.join(REFERENCES)}")
    return dict(known_as)


def _same_value(a: Any, b: Any) -> bool:
    """Equal, with 1 and 1.0 the same number but True never the number 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _options_text(options: Dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in options.items()) or "its defaults"


def _summary(fn: Callable) -> str:
    """The first sentence of a docstring, on one line."""
    text = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())
    end = text.find(". ")
    return text if end < 0 else text[:end + 1]


def _load_samplers() -> None:
    """Import every module of solvers.samplers once: each registers its samplers as it loads."""
    global _LOADED
    if _LOADED:
        return
    from . import samplers

    for module in pkgutil.iter_modules(samplers.__path__):
        importlib.import_module(f"{samplers.__name__}.{module.name}")
    _LOADED = True


def available() -> list[str]:
    """Names of all registered samplers (aliases not included), sorted."""
    _load_samplers()
    return sorted(name for name, spec in _REGISTRY.items() if spec.alias_of is None)


def aliases() -> list[str]:
    """Names of all registered aliases, sorted."""
    _load_samplers()
    return sorted(name for name, spec in _REGISTRY.items() if spec.alias_of is not None)


def get(name: str) -> SamplerSpec:
    """The :class:`SamplerSpec` of a registered sampler or alias (ValueError naming the valid ones)."""
    _load_samplers()
    if name not in _REGISTRY:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
