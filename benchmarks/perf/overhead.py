"""Sampler-loop overhead and speed against diffusers, measured side by side in one process.

    python -m benchmarks.perf.overhead [--nfe 20] [--repeats 5] [--out DIR]

Also: rk45 next to torchdiffeq.odeint called directly and scipy's solve_ivp on the same ODE and
tolerance, the measured effect of the loop options (autograd mode, time-input cache) and of
torch.compile of the network.

For each fixed-step sampler, on the shipped digits UNet (batch 256) and a toy2d MLP (batch 4096):
wall time of solvers.sample at N NFE over N x the wall time of one network forward at the same
batch (the loop's own cost is what exceeds 1). Then the same network and NFE through diffusers'
scheduler loops (DDIM, PNDM, Euler, Heun, DPM-Solver++ 2M) next to ours. Repeats are interleaved
(ours, theirs, forward) so machine noise hits all sides alike; medians are reported.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

import solvers
from benchmarks.timing import Stopwatch, median_seconds, resolve_device
from score_models import zoo

__all__ = ["overhead_table", "diffusers_table", "rk45_table", "options_table", "compile_table", "median_time"]

def fixed_step_samplers() -> List[str]:
    """Every registered sampler with a fixed-step NFE rule that runs on any model (the exclusive
    ones need their students; the distilled one is DDIM's loop, the consistency one a plain
    evaluation loop)."""
    return [name for name in solvers.available() if not solvers.get(name).adaptive and not solvers.get(name).exclusive]


def median_time(fn: Callable[[], object], repeats: int, device: torch.device = torch.device("cpu")) -> float:
    """Median time over ``repeats`` calls after a warm-up (CUDA events on a GPU, else the CPU clock)."""
    return median_seconds(fn, device, repeats)


def _models(device: torch.device) -> Dict[str, tuple]:
    return {"digits-unet (batch 256)": (zoo.load("digits-unet").to(device), 256),
            "toy2d-moons MLP (batch 4096)": (zoo.load("toy2d-moons").to(device), 4096)}


def _noise(model, batch: int, device: torch.device) -> torch.Tensor:
    return torch.randn((batch,) + model.sample_shape, generator=torch.Generator().manual_seed(0)).to(device)


def overhead_table(nfe: int = 20, repeats: int = 5, samplers: Optional[Sequence[str]] = None,
                   device: torch.device = torch.device("cpu")) -> List[Dict]:
    """Per sampler: sampling time over (counted NFE x one forward), with the device's clock
    (CUDA events on a GPU) and the host's wall clock side by side; on a GPU also the time of the
    same call replayed as a CUDA graph (solvers.GraphedSampler) where the sampler qualifies."""
    from solvers.cuda_graph import GraphedSampler, graph_refusal

    samplers = fixed_step_samplers() if samplers is None else samplers
    rows = []
    for label, (model, batch) in _models(device).items():
        noise = _noise(model, batch, device)
        t_mid = torch.full((batch,), 0.5 * (model.schedule.t_min + model.schedule.t_max), device=device)
        for name in samplers:
            stats: Dict = {}
            with torch.inference_mode():
                eager = solvers.sample(name, model, noise, nfe=nfe, stats=stats, generator=torch.Generator().manual_seed(0))
            counted = stats["nfe"]
            graphed = None
            if graph_refusal(name, {}, device) is None:
                with torch.inference_mode():
                    graphed = GraphedSampler(name, model, noise, nfe=nfe)
            sample_times, wall_times, forward_times, graph_times = [], [], [], []
            with torch.inference_mode():
                for round_ in range(repeats + 1):  # interleaved; the first round warms up
                    with Stopwatch(device) as sw:
                        solvers.sample(name, model, noise, nfe=nfe, generator=torch.Generator().manual_seed(0))
                    with Stopwatch(device) as fw:
                        for _ in range(counted):
                            model.net(noise, t_mid)
                    if graphed is not None:
                        with Stopwatch(device) as gw:
                            replayed = graphed(noise)
                    if round_:
                        sample_times.append(sw.seconds)
                        wall_times.append(sw.wall_seconds)
                        forward_times.append(fw.seconds)
                        if graphed is not None:
                            graph_times.append(gw.seconds)
            s, f = statistics.median(sample_times), statistics.median(forward_times)
            row = dict(model=label, sampler=name, nfe=counted, sample_s=s, forwards_s=f, ratio=s / f,
                       wall_over_event=statistics.median(wall_times) / s)
            if graphed is not None:
                g = statistics.median(graph_times)
                row.update(graph_s=g, graph_speedup=s / g,
                           graph_max_diff=float((replayed - eager).abs().max()))
            rows.append(row)
    return rows


def _diffusers_run(scheduler_cls: str, config: Dict, steps: int, net, latents: torch.Tensor, train_config: Dict):
    import diffusers

    from benchmarks.equivalence import diffusers_loop

    sched = getattr(diffusers, scheduler_cls).from_config({**train_config, **config})
    return diffusers_loop(sched, lambda x, t: net(x, t.expand(x.shape[0]).float()), latents, steps)


DIFFUSERS_CASES = [
    ("DDIM", "DDIMScheduler", dict(set_alpha_to_one=True), "ddim", dict(spacing="leading")),
    ("PNDM (skip_prk)", "PNDMScheduler", dict(skip_prk_steps=True, set_alpha_to_one=True), "plms",
     dict(warmup="improved_euler", spacing="leading")),
    ("Euler", "EulerDiscreteScheduler", {}, "euler", dict(spacing="leading")),
    ("Heun", "HeunDiscreteScheduler", {}, "heun", dict(spacing="leading")),
    ("DPM-Solver++ 2M", "DPMSolverMultistepScheduler", dict(solver_order=2), "dpm_solver",
     dict(order=2, spacing="linspace")),
]


def diffusers_table(steps: int = 20, repeats: int = 5, device: torch.device = torch.device("cpu")) -> List[Dict]:
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    train_config = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                        clip_sample=False)
    rows = []
    for label, (model, batch) in _models(device).items():
        if not label.startswith("digits"):
            continue
        latents = _noise(model, batch, device)
        for case, cls, config, ours, options in DIFFUSERS_CASES:
            spec = solvers.get(ours)
            nfe = spec.count(steps, True, options)
            with torch.inference_mode():
                t_ours = median_time(lambda: solvers.sample(ours, model, latents, nfe=nfe, **options), repeats, device)
                t_theirs = median_time(lambda: _diffusers_run(cls, config, steps, model.net, latents, train_config),
                                       repeats, device)
            rows.append(dict(model=label, scheduler=case, sampler=ours, steps=steps, nfe=nfe, ours_s=t_ours,
                             diffusers_s=t_theirs, ratio=t_ours / t_theirs))
    return rows


def rk45_table(tol: float = 1e-5, n: int = 256, repeats: int = 3) -> List[Dict]:
    """rk45 three ways on the same PF-ODE (toy2d-moons MLP, scaled space, sigma~ from t_max to
    t_min) and tolerance: nfebench's sampler, torchdiffeq.odeint called directly, and
    scipy.integrate.solve_ivp(RK45) on the flattened state; NFE counted by the model."""
    from scipy.integrate import solve_ivp
    from torchdiffeq import odeint

    from score_models.fields import ScaledProbabilityFlowODE

    model = zoo.load("toy2d-moons")
    sched = model.schedule
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model.net.double()
    span = torch.tensor([float(sched.sigma_tilde(sched.t_max)), float(sched.sigma_tilde(sched.t_min))],
                        dtype=torch.float64)
    x0 = noise / float(sched.alpha(sched.t_max))
    field = ScaledProbabilityFlowODE(model)

    def ours():
        return solvers.sample("rk45", model, noise, nfe=None, rtol=tol, atol=tol, to_zero=False)

    def direct():
        return odeint(field, x0, span, rtol=tol, atol=tol, method="dopri5", options={"step_t": span})[-1]

    def scipy_rk45():
        def f(s, y):
            with torch.inference_mode():
                return field(torch.tensor(s, dtype=torch.float64), torch.from_numpy(y).reshape(x0.shape)).numpy().ravel()
        sol = solve_ivp(f, (float(span[0]), float(span[1])), x0.numpy().ravel(), method="RK45", rtol=tol, atol=tol)
        return torch.from_numpy(sol.y[:, -1]).reshape(x0.shape)

    rows = []
    with torch.inference_mode():
        reference = ours()
        for label, fn in (("nfebench rk45", ours), ("torchdiffeq.odeint", direct), ("scipy solve_ivp RK45", scipy_rk45)):
            model.reset_nfe()
            out = fn()
            nfe = model.nfe
            seconds = median_time(fn, repeats)
            alpha_end = float(sched.alpha(sched.t_min))
            endpoint = out if label == "nfebench rk45" else alpha_end * out
            rows.append(dict(solver=label, tol=tol, nfe=nfe, seconds=seconds,
                             max_diff_vs_nfebench=float((endpoint - reference).abs().max())))
    model.net.float()
    return rows


def options_table(nfe: int = 20, repeats: int = 5) -> List[Dict]:
    """Measured effect of the loop options on the MLP (where the loop's cost shows): autograd
    mode (enabled / no_grad / inference_mode) and the time-input cache (DiffusionModel.cache_times)."""
    model = zoo.load("toy2d-moons")
    noise = torch.randn(4096, 2, generator=torch.Generator().manual_seed(0))
    rows = []
    for mode_label, mode in (("grad enabled", torch.enable_grad), ("no_grad", torch.no_grad),
                             ("inference_mode", torch.inference_mode)):
        for cache in (False, True):
            model.cache_times = cache
            with mode():
                seconds = median_time(lambda: solvers.sample("dpm_solver", model, noise, nfe=nfe), repeats)
            rows.append(dict(mode=mode_label, cache_times=cache, nfe=nfe, seconds=seconds))
    model.cache_times = True
    base = rows[0]["seconds"]
    for r in rows:
        r["speedup"] = base / r["seconds"]
    return rows


def compile_table(nfe: int = 20, repeats: int = 5, device: torch.device = torch.device("cpu")) -> List[Dict]:
    """torch.compile of the network (inductor, static shapes) against eager, dpm_solver at ``nfe``
    on both shipped architectures: steady-state sampling time, the one-off compile time and the
    largest difference of the samples."""

    rows = []
    for name, batch in (("toy2d-moons", 4096), ("digits-unet", 256)):
        model = zoo.load(name).to(device)
        noise = _noise(model, batch, device)
        run = lambda: solvers.sample("dpm_solver", model, noise, nfe=nfe)
        with torch.inference_mode():
            eager_out = run()
            eager_s = median_time(run, repeats, device)
            model.net = torch.compile(model.net, dynamic=False)
            start = time.perf_counter()
            compiled_out = run()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            first_s = time.perf_counter() - start
            compiled_s = median_time(run, repeats, device)
        rows.append(dict(model=name, batch=batch, nfe=nfe, eager_s=eager_s, compiled_s=compiled_s,
                         speedup=eager_s / compiled_s, compile_s=first_s - compiled_s,
                         max_diff=float((compiled_out - eager_out).abs().max())))
    return rows


def _markdown(rows: List[Dict], columns: Sequence[str]) -> str:
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nfe", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (the rk45 and loop-option tables stay on the CPU)")
    parser.add_argument("--out", help="also write overhead.md there")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    over = overhead_table(args.nfe, args.repeats, device=device)
    columns = ["model", "sampler", "nfe", "sample_s", "forwards_s", "ratio", "wall_over_event"]
    if device.type == "cuda":
        columns += ["graph_s", "graph_speedup", "graph_max_diff"]
        for row in over:
            row.setdefault("graph_s", "eager only")
            row.setdefault("graph_speedup", "")
            row.setdefault("graph_max_diff", "")
    text = [f"Device: {_device_name(device)}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}", "",
            "## Loop overhead: sampling time / (NFE x one forward)", "",
            _markdown(over, columns), "",
            "## Against diffusers' scheduler loops (same network, same NFE)", "",
            _markdown(diffusers_table(args.nfe, args.repeats, device),
                      ["model", "scheduler", "sampler", "nfe", "ours_s", "diffusers_s", "ratio"]), "",
            "## rk45: nfebench vs torchdiffeq.odeint direct vs scipy solve_ivp (same ODE and tolerance, CPU)", "",
            _markdown(rk45_table(), ["solver", "tol", "nfe", "seconds", "max_diff_vs_nfebench"]), "",
            "## Loop options on the toy2d MLP (dpm_solver, batch 4096, CPU)", "",
            _markdown(options_table(args.nfe, args.repeats), ["mode", "cache_times", "nfe", "seconds", "speedup"]), "",
            "## torch.compile of the network (dpm_solver)", "",
            _markdown(compile_table(args.nfe, args.repeats, device),
                      ["model", "batch", "nfe", "eager_s", "compiled_s", "speedup", "compile_s", "max_diff"])]
    report = "\n".join(text) + "\n"
    print(report)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "overhead.md").write_text(report)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


if __name__ == "__main__":
    main()
