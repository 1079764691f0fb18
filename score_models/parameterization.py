"""A network plus a schedule plus a prediction type: the object every sampler drives.

Every prediction type is an invertible linear map of (x0, eps) given x_t = alpha x0 + sigma eps:

=========  ===========================================  ==================================
kind       network output                               reference
=========  ===========================================  ==================================
eps        eps                                          Ho et al. 2020
x0         x0 = E[x0 | x_t] (the denoiser D)            Karras et al. 2022
v          alpha eps - sigma x0                         Salimans & Ho 2022, sec. 4
score      grad log p_t(x) = -eps / sigma               Song et al. 2021
flow       dx_t/dt = alpha' x0 + sigma' eps             Lipman et al. 2023; Liu et al. 2023
=========  ===========================================  ==================================

``split`` turns an output into (x0, eps) and ``combine`` turns (x0, eps) into an output; both
are exact for any alpha, sigma (v uses alpha^2 + sigma^2, so it works off VP schedules too).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Dict, Iterator, Tuple

import torch

from .schedules import Schedule, TimeLike, as_time

PREDICTIONS = ("eps", "x0", "v", "score", "flow")

__all__ = ["DiffusionModel", "PREDICTIONS", "split", "combine", "Coefficients", "per_sample"]


def per_sample(values: torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """A float64 time-coefficient as a Python float (scalar t) or as a tensor in ``like``'s
    dtype and device shaped [B, 1, ...] to broadcast over a batch (per-sample t)."""
    if values.dim() == 0:
        return float(values)
    return values.reshape((-1,) + (1,) * (like.dim() - 1)).to(device=like.device, dtype=like.dtype)


class Coefficients:
    """alpha, sigma and their time derivatives at t, as Python floats (scalar t) or as float64
    tensors shaped to broadcast over a batch (per-sample t); cast to the state's dtype on use."""

    __slots__ = ("alpha", "sigma", "dalpha", "dsigma")

    def __init__(self, schedule: Schedule, t: TimeLike, like: torch.Tensor, derivatives: bool = False):
        tt = as_time(t)
        values = [schedule.alpha(tt), schedule.sigma(tt)]
        if derivatives:
            values += [schedule.dalpha_dt(tt), schedule.dsigma_dt(tt)]
        values = [per_sample(v, like) for v in values]
        self.alpha, self.sigma = values[0], values[1]
        self.dalpha, self.dsigma = (values[2], values[3]) if derivatives else (None, None)


def _check_kind(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")


def split(prediction: str, out: torch.Tensor, x: torch.Tensor, c: Coefficients) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) implied by a network output of the given kind at state x."""
    _check_kind(prediction)
    a, s = c.alpha, c.sigma
    if prediction == "eps":
        return (x - s * out) / a, out
    if prediction == "x0":
        return out, (x - a * out) / s
    if prediction == "v":
        norm = a * a + s * s
        return (a * x - s * out) / norm, (s * x + a * out) / norm
    if prediction == "score":
        return (x + s * s * out) / a, -s * out
    # flow: solve [a s; a' s'] [x0; eps] = [x; u]
    det = a * c.dsigma - s * c.dalpha
    return (c.dsigma * x - s * out) / det, (a * out - c.dalpha * x) / det


def combine(prediction: str, x0: torch.Tensor, eps: torch.Tensor, c: Coefficients) -> torch.Tensor:
    """The network output of the given kind that corresponds to (x0, eps)."""
    _check_kind(prediction)
    a, s = c.alpha, c.sigma
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return a * eps - s * x0
    if prediction == "score":
        return -eps / s
    return c.dalpha * x0 + c.dsigma * eps


class _Counter:
    """Shared between a model and its conditioned views, so all network calls add up. ``stacked``:
    how many evaluations the current network call holds (see DiffusionModel.stacked)."""

    __slots__ = ("nfe", "passes", "depth", "stacked")

    def __init__(self) -> None:
        self.nfe = 0
        self.passes = 0
        self.depth = 0
        self.stacked = 1


class DiffusionModel:
    """Wrap ``net(x, t, **cond)`` (t in the schedule's own units) as a diffusion model.

    Gives eps, x0, v, score and flow predictions at (x, t), the denoiser D(x~, sigma~) in the
    scaled space x~ = x/alpha, sigma~ = sigma/alpha (Karras et al. 2022, sec. 2-4) and the
    probability-flow ODE drift dx/dt = f x + g^2 eps / (2 sigma) (Song et al. 2021, eq. 13).
    Every call of the network is counted in ``nfe`` (one per batched call); ``reset_nfe()``
    zeroes it. Conditioning (e.g. ``class_labels=y``) passes through as keyword arguments, or
    is bound once with :meth:`with_condition`.

    A model also says how it is meant to be sampled, for the samplers and sweeps to read rather
    than inspect its type: ``native_samplers`` (a few-step student is run only by these, and they
    run only models that name them), ``own_grid`` (a model trained for one fixed grid returns it),
    ``grid_defaults`` (grid options it prefers, e.g. where its chain ends) and ``denoised_sigma``
    (the noise level sigma~ of its x0-prediction: 0 for a denoiser).
    """

    native_samplers: Tuple[str, ...] = ()
    grid_defaults: Dict[str, Any] = {}
    denoised_sigma: float = 0.0

    def __init__(self, net: Callable[..., torch.Tensor], schedule: Schedule, prediction: str = "eps",
                 sample_shape: Tuple[int, ...] | None = None, learned_variance: bool = False):
        _check_kind(prediction)
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a score_models Schedule, got {type(schedule).__name__}")
        self.net = net
        self.schedule = schedule
        self.prediction = prediction
        #: the network also outputs variance interpolation values v in [-1, 1] as extra channels
        #: (Nichol & Dhariwal 2021, "learned_range"): output = cat([prediction, v], dim=1)
        self.learned_variance = learned_variance
        #: shape of one sample (without batch), when known; benchmarks draw noise of this shape
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else None
        self._counter = _Counter()
        self._bound: dict[str, Any] = {}
        # dtype the network's time input is cast to; None = the state's dtype.
        self.net_time_dtype: torch.dtype | None = None
        #: reuse schedule coefficients and network time inputs for repeated scalar times (a
        #: sampler's grid): the loop then does no schedule arithmetic and no host-to-device
        #: copies per step. Results are identical either way (see benchmarks/perf/overhead.py).
        self.cache_times = True
        self._coefficient_cache: dict = {}
        self._time_input_cache: dict = {}

    @classmethod
    def from_denoiser(cls, fn: Callable[..., torch.Tensor], sigma_min: float, sigma_max: float,
                      sigma_data: float = 0.5, sample_shape: Tuple[int, ...] | None = None) -> "DiffusionModel":
        """Wrap a denoiser D(x, sigma) (k-diffusion's / EDM's interface) as an EDM-schedule
        x0-prediction model (see :func:`score_models.denoiser.from_denoiser`)."""
        from .denoiser import from_denoiser

        return from_denoiser(fn, sigma_min, sigma_max, sigma_data=sigma_data, sample_shape=sample_shape)

    def own_grid(self, n_steps: int) -> torch.Tensor | None:
        """The n_steps + 1 times this model must be sampled on, if it fixes them (None: any grid)."""
        return None

    # --- counting ------------------------------------------------------------------------
    @property
    def nfe(self) -> int:
        """Network evaluations since creation or the last :meth:`reset_nfe`."""
        return self._counter.nfe

    @property
    def network_passes(self) -> int:
        """Forward passes of the network, in units of one pass over the batch (equals ``nfe``
        except for wrappers such as classifier-free guidance, which costs 2 per evaluation)."""
        return self._counter.passes

    @property
    def sequential_depth(self) -> int:
        """Network calls made one after another: ``nfe`` for a sampler that evaluates one state
        at a time, fewer where evaluations are stacked into one call (:meth:`stacked`)."""
        return self._counter.depth

    @contextlib.contextmanager
    def stacked(self, evaluations: int) -> Iterator[None]:
        """Count each network call inside as ``evaluations`` evaluations (and passes) made at
        once: for a sampler that stacks that many states, each a batch of its own, into one call
        (ParaDiGMS evaluates a window of steps in parallel). Depth still grows by one per call."""
        if not isinstance(evaluations, int) or evaluations < 1:
            raise ValueError(f"stacked evaluations must be a whole number >= 1, got {evaluations!r}")
        previous, self._counter.stacked = self._counter.stacked, evaluations
        try:
            yield
        finally:
            self._counter.stacked = previous

    def count_replayed(self, nfe: int, passes: int, depth: int) -> None:
        """Add the evaluations of a recorded call replayed without Python (a CUDA graph: the
        wrapper counted them once, while the call was captured)."""
        self._counter.nfe += nfe
        self._counter.passes += passes
        self._counter.depth += depth

    def reset_nfe(self) -> None:
        self._counter.nfe = 0
        self._counter.passes = 0
        self._counter.depth = 0

    def to(self, device: torch.device | str) -> "DiffusionModel":
        """Move the network (if it is a torch Module) to ``device``; returns self."""
        if isinstance(self.net, torch.nn.Module):
            self.net.to(device)
        return self

    def with_condition(self, **cond: Any) -> "DiffusionModel":
        """A view of this model with conditioning bound (shares the network and the NFE count)."""
        view = copy.copy(self)
        view._bound = {**self._bound, **cond}
        return view

    # --- the one place the network is called ---------------------------------------------
    def _scalar_key(self, t: TimeLike) -> float | None:
        if not self.cache_times:
            return None
        if isinstance(t, float):
            return t
        if isinstance(t, torch.Tensor) and t.dim() == 0 and t.device.type == "cpu":
            return float(t)
        return None

    def coefficients(self, t: TimeLike, like: torch.Tensor, derivatives: bool = False) -> Coefficients:
        """:class:`Coefficients` at t, cached for scalar times."""
        key = self._scalar_key(t)
        if key is None:
            return Coefficients(self.schedule, t, like, derivatives)
        cached = self._coefficient_cache.get((key, derivatives))
        if cached is None:
            if len(self._coefficient_cache) > 4096:
                self._coefficient_cache.clear()
            cached = self._coefficient_cache[(key, derivatives)] = Coefficients(self.schedule, key, like, derivatives)
        return cached

    def _time_input(self, t: TimeLike, x: torch.Tensor) -> torch.Tensor:
        dtype = self.net_time_dtype or x.dtype
        key = self._scalar_key(t)
        if key is not None:
            cache_key = (key, x.shape[0], x.device, dtype)
            cached = self._time_input_cache.get(cache_key)
            if cached is not None:
                return cached
        t_net = self.schedule.net_input(as_time(t)).to(device=x.device, dtype=dtype)
        if t_net.dim() == 0:
            t_net = t_net.expand(x.shape[0])
        if key is not None:
            if len(self._time_input_cache) > 4096:
                self._time_input_cache.clear()
            self._time_input_cache[cache_key] = t_net
        return t_net

    def raw(self, x: torch.Tensor, t: TimeLike, **cond: Any) -> torch.Tensor:
        """The network's own output at (x, t); counts one NFE."""
        t_net = self._time_input(t, x)
        self._counter.nfe += self._counter.stacked
        self._counter.passes += self._counter.stacked
        self._counter.depth += 1
        return self.net(x, t_net, **{**self._bound, **cond})

    def _output(self, x: torch.Tensor, t: TimeLike, **cond: Any) -> Tuple[torch.Tensor, torch.Tensor | None]:
        out = self.raw(x, t, **cond)
        if not self.learned_variance:
            return out, None
        pred, v = out.chunk(2, dim=1)
        return pred, v

    def x0_and_eps(self, x: torch.Tensor, t: TimeLike, **cond: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        """(E[x0 | x_t], E[eps | x_t]) from one network evaluation."""
        c = self.coefficients(t, x, derivatives=self.prediction == "flow")
        return split(self.prediction, self._output(x, t, **cond)[0], x, c)

    def x0_eps_and_variance(self, x: torch.Tensor, t: TimeLike, **cond: Any
                            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x0, eps, v) from one evaluation of a network with learned variance (v in [-1, 1])."""
        if not self.learned_variance:
            raise ValueError("this model has no learned variance (create it with learned_variance=True)")
        pred, v = self._output(x, t, **cond)
        c = self.coefficients(t, x, derivatives=self.prediction == "flow")
        return (*split(self.prediction, pred, x, c), v)

    def predict(self, kind: str, x: torch.Tensor, t: TimeLike, **cond: Any) -> torch.Tensor:
        """Prediction of any kind in :data:`PREDICTIONS` from one network evaluation."""
        _check_kind(kind)
        out = self._output(x, t, **cond)[0]
        if kind == self.prediction:
            return out
        c = self.coefficients(t, x, derivatives="flow" in (kind, self.prediction))
        return combine(kind, *split(self.prediction, out, x, c), c)

    def eps(self, x: torch.Tensor, t: TimeLike, **cond: Any) -> torch.Tensor:
        return self.predict("eps", x, t, **cond)

    def x0(self, x: torch.Tensor, t: TimeLike, **cond: Any) -> torch.Tensor:
        return self.predict("x0", x, t, **cond)

    def v(self, x: torch.Tensor, t: TimeLike, **cond: Any) -> torch.Tensor:
        return self.predict("v", x, t, **cond)

    def score(self, x: torch.Tensor, t: TimeLike, **cond: Any) -> torch.Tensor:
        return self.predict("score", x, t, **cond)

    def flow(self, x: torch.Tensor, t: TimeLike, **cond: Any) -> torch.Tensor:
        return self.predict("flow", x, t, **cond)

    def denoiser(self, x_tilde: torch.Tensor, sigma_tilde: TimeLike, **cond: Any) -> torch.Tensor:
        """D(x~, sigma~) = E[x0 | x~] in the scaled space (Karras et al. 2022, eq. 3 onwards)."""
        t = self.schedule.t_from_sigma_tilde(sigma_tilde)
        alpha = self.coefficients(t, x_tilde).alpha
        return self.x0(alpha * x_tilde, t, **cond)

    def ode_drift(self, x: torch.Tensor, t: TimeLike, **cond: Any) -> torch.Tensor:
        """Probability-flow ODE dx/dt = f(t) x + g(t)^2 eps / (2 sigma(t)) (Song et al. 2021, eq. 13)."""
        tt = as_time(t)
        f = per_sample(self.schedule.f(tt), x)
        half_g2_over_sigma = per_sample(0.5 * self.schedule.g2(tt) / self.schedule.sigma(tt), x)
        return f * x + half_g2_over_sigma * self.eps(x, t, **cond)

    def __repr__(self) -> str:
        return f"DiffusionModel(prediction={self.prediction!r}, schedule={self.schedule!r})"
