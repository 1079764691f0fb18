"""Training of the shipped models: ``nfebench train <model>`` reproduces each checkpoint from a seed
on the CPU and writes a JSON card beside it (data, split, schedule, prediction, steps, seed, final
loss, quality figures, package versions).

Models: toy2d-{moons,swissroll,8gaussians,checkerboard} (MLP eps-networks, VP linear schedule),
digits-classifier (CNN; also the FID feature extractor), digits-noisy-classifier (time-conditioned,
for classifier guidance) and digits-unet (class-conditional UNet with label dropout, DDPM linear
schedule, 1000 steps). Train the classifier before the UNet: the UNet's card reports the
classifier's accuracy on its samples.
"""
from __future__ import annotations

import copy
import math
import platform
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from score_models import shipped
from score_models.data import DIGITS_SPLIT_SEED, DIGITS_TEST_FRACTION, TOY2D, digits, toy2d
from score_models.nets import NULL_CLASS, DigitsClassifier, DigitsUNet, TimeMLP
from score_models.schedules import DiscreteVP, VPLinear

__all__ = ["TRAINABLE", "train"]

def _versions() -> Dict[str, str]:
    import numpy
    import sklearn

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "scikit-learn": sklearn.__version__}


def _progress(total: int, desc: str, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=quiet, unit="step", mininterval=1.0)


def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.mul_(decay).add_(p, alpha=1 - decay)


def _cosine_lr(step: int, total: int, base: float, warmup: int = 200) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _fit_diffusion(net: nn.Module, batch_fn: Callable[[torch.Generator], tuple], loss_fn: Callable,
                   steps: int, lr: float, ema_decay: float, seed: int, desc: str, quiet: bool,
                   after_step: Optional[Callable[[int], None]] = None, ema_warmup: bool = False) -> tuple:
    """Adam with warm-up + cosine decay and an EMA copy; returns (ema net, final EMA loss).
    ``after_step(step)`` runs after each optimiser step (a consistency model's target update).
    ``ema_warmup``: decay min(ema_decay, (1 + k)/(10 + k)) at step k, so that a short fine-tune
    does not keep a sizeable share of its initial weights in the average (0.999^1000 = 37%)."""
    g = torch.Generator().manual_seed(seed)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    running = None
    bar = _progress(steps, desc, quiet)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _cosine_lr(step, steps, lr)
        loss = loss_fn(net, *batch_fn(g))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _ema_update(ema, net, min(ema_decay, (1 + step) / (10 + step)) if ema_warmup else ema_decay)
        if after_step is not None:
            after_step(step)
        value = float(loss.detach())
        running = value if running is None else 0.99 * running + 0.01 * value
        bar.update(1)
        if step % 100 == 0:
            bar.set_postfix(loss=f"{running:.4f}")
    bar.close()
    return ema, running


# --- toy2d --------------------------------------------------------------------------------------
def _train_toy2d(dataset: str, steps: int, seed: int, quiet: bool) -> tuple[nn.Module, Dict[str, Any]]:
    torch.manual_seed(seed)
    sched = VPLinear()
    net = TimeMLP()
    batch = 1024

    def batch_fn(g):
        x0 = toy2d(dataset, batch, g)
        t = sched.t_min + (1 - sched.t_min) * torch.rand(batch, generator=g, dtype=torch.float64)
        eps = torch.randn(batch, 2, generator=g)
        a, s = sched.alpha(t).float()[:, None], sched.sigma(t).float()[:, None]
        return a * x0 + s * eps, t.float(), eps

    loss_fn = lambda net, x, t, eps: (net(x, t) - eps).pow(2).mean()
    ema, loss = _fit_diffusion(net, batch_fn, loss_fn, steps, 2e-3, 0.999, seed, f"toy2d-{dataset}", quiet)
    settings = dict(batch_size=batch, lr=2e-3, ema=0.999, schedule="vp_linear", prediction="eps",
                    t_sampling="uniform in [t_min, 1]")
    return ema, {"final_loss": loss, "settings": settings}


def _toy2d_quality(name: str, weights: Optional[Path] = None) -> Dict[str, float]:
    import solvers
    from benchmarks.metrics import sliced_wasserstein
    from score_models import zoo

    model = zoo.load(name, weights_dir=weights)
    n = 4000
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        x = solvers.sample("dpm_solver", model, noise, nfe=50)
    data = model.sample_data(n, generator=torch.Generator().manual_seed(2))
    floor = model.sample_data(n, generator=torch.Generator().manual_seed(3))
    return {"sliced_w2_dpm_solver_2m_50nfe": sliced_wasserstein(x, data), "sliced_w2_data_vs_data": sliced_wasserstein(floor, data)}


# --- digits -------------------------------------------------------------------------------------
def _train_classifier(time_conditioned: bool, steps: int, seed: int, quiet: bool) -> tuple[nn.Module, Dict[str, Any]]:
    torch.manual_seed(seed)
    x_train, y_train = digits("train")
    sched = DiscreteVP.linear()
    net = DigitsClassifier(time_conditioned=time_conditioned)
    batch = 128

    def batch_fn(g):
        idx = torch.randint(0, len(x_train), (batch,), generator=g)
        x, y = x_train[idx], y_train[idx]
        # one-pixel random shifts: the 8x8 digits are tiny, this is the only augmentation
        shift = torch.randint(-1, 2, (2,), generator=g).tolist()
        x = torch.roll(x, shifts=shift, dims=(2, 3))
        if not time_conditioned:
            return x, None, y
        t = torch.randint(0, 1000, (batch,), generator=g).double()
        eps = torch.randn(x.shape, generator=g)
        a, s = sched.alpha(t).float()[:, None, None, None], sched.sigma(t).float()[:, None, None, None]
        return a * x + s * eps, t.float(), y

    loss_fn = lambda net, x, t, y: nn.functional.cross_entropy(net(x, t), y)
    ema, loss = _fit_diffusion(net, batch_fn, loss_fn, steps, 2e-3, 0.995, seed,
                               "digits-noisy-classifier" if time_conditioned else "digits-classifier", quiet)
    x_test, y_test = digits("test")
    with torch.no_grad():
        if time_conditioned:
            acc = {}
            for t in (0, 250, 500, 750):
                tt = torch.full((len(x_test),), float(t), dtype=torch.float64)
                xt = sched.alpha(tt).float()[:, None, None, None] * x_test + sched.sigma(tt).float()[:, None, None, None] * \
                    torch.randn(x_test.shape, generator=torch.Generator().manual_seed(t))
                acc[f"test_accuracy_t{t}"] = float((ema(xt, tt.float()).argmax(1) == y_test).float().mean())
            metrics = acc
        else:
            metrics = {"test_accuracy": float((ema(x_test).argmax(1) == y_test).float().mean())}
    settings = dict(batch_size=batch, lr=2e-3, ema=0.995, augmentation="random 1-pixel roll",
                    **({"schedule": "ddpm_linear 1000", "t_sampling": "uniform integer"} if time_conditioned else {}))
    return ema, {"final_loss": loss, "settings": settings, **metrics}


def _train_digits_unet(steps: int, seed: int, quiet: bool) -> tuple[nn.Module, Dict[str, Any]]:
    torch.manual_seed(seed)
    x_train, y_train = digits("train")
    sched = DiscreteVP.linear()
    net = DigitsUNet()
    batch, p_uncond = 128, 0.2

    def batch_fn(g):
        idx = torch.randint(0, len(x_train), (batch,), generator=g)
        x0, y = x_train[idx], y_train[idx].clone()
        y[torch.rand(batch, generator=g) < p_uncond] = NULL_CLASS  # label dropout for CFG
        t = torch.randint(0, 1000, (batch,), generator=g).double()
        eps = torch.randn(x0.shape, generator=g)
        a, s = sched.alpha(t).float()[:, None, None, None], sched.sigma(t).float()[:, None, None, None]
        return a * x0 + s * eps, t.float(), y, eps

    loss_fn = lambda net, x, t, y, eps: (net(x, t, class_labels=y) - eps).pow(2).mean()
    ema, loss = _fit_diffusion(net, batch_fn, loss_fn, steps, 1e-3, 0.999, seed, "digits-unet", quiet)
    settings = dict(batch_size=batch, lr=1e-3, ema=0.999, label_dropout=p_uncond, schedule="ddpm_linear 1000",
                    prediction="eps", t_sampling="uniform integer 0..999")
    return ema, {"final_loss": loss, "settings": settings}


def digits_unet_quality(n_per_class: int = 100, seed: int = 0, weights: Optional[Path] = None) -> Dict[str, float]:
    """The card's figures: classifier accuracy on class-conditional 1000-step DDPM samples, FD
    (digits-classifier features) of unconditional samples vs the test split, and the FD between
    the train and test splits."""
    import solvers
    from benchmarks.metrics import frechet_distance
    from score_models import zoo

    classifier = shipped.load_classifier("digits-classifier")
    model = zoo.load("digits-unet", weights_dir=weights)
    x_train, _ = digits("train")
    x_test, _ = digits("test")
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(n_per_class)
    with torch.inference_mode():
        cond = []
        for chunk in labels.split(500):
            noise = torch.randn((len(chunk), 1, 8, 8), generator=g)
            cond.append(solvers.sample("ddpm", model.with_condition(class_labels=chunk), noise, nfe=1000,
                                       spacing="leading", generator=g))
        cond = torch.cat(cond)
        accuracy = float((classifier(cond).argmax(1) == labels).float().mean())
        uncond = torch.cat([solvers.sample("ddpm", model, torch.randn((n, 1, 8, 8), generator=g), nfe=1000,
                                           spacing="leading", generator=g) for n in (500, 500, len(x_train) - 1000)])
        f = lambda x: classifier.features(x.clamp(-1, 1)).double()
        fd_samples = frechet_distance(f(uncond), f(x_test))
        fd_train_test = frechet_distance(f(x_train), f(x_test))
    return {"classifier_accuracy_on_conditional_samples": accuracy, "fd_unconditional_vs_test": fd_samples,
            "fd_train_vs_test": fd_train_test, "fd_ratio": fd_samples / fd_train_test,
            "protocol": f"DDPM ancestral, 1000 steps, fixed_small; {n_per_class} samples per class; "
                        f"{len(x_train)} unconditional samples vs the {len(x_test)}-image test split; "
                        f"features: digits-classifier penultimate layer"}


# --- few-step students ---------------------------------------------------------------------------
def _training_data(base: str) -> Callable[[torch.Generator, int], torch.Tensor]:
    """data_fn(generator, n) drawing the teacher's training data (digits: the train split)."""
    if base == "digits-unet":
        x_train, _ = digits("train")
        return lambda g, n: x_train[torch.randint(0, len(x_train), (n,), generator=g)]
    dataset = base[len("toy2d-"):]
    return lambda g, n: toy2d(dataset, n, g)


#: Per teacher family: batch size, learning rate and EMA of the students' training.
_STUDENT_SETTINGS = {"digits-unet": dict(batch_size=128, lr=3e-4, ema=0.999),
                     "toy2d-moons": dict(batch_size=1024, lr=3e-4, ema=0.999)}


def _teacher(name: str, weights: Path):
    """A teacher from the training output directory when it was trained there, else the shipped one."""
    from score_models import zoo

    return zoo.load(name, weights_dir=weights if (Path(weights) / f"{name}.pt").is_file() else None)


def _train_distilled(base: str, student_steps: int, steps: int, seed: int, quiet: bool,
                     weights: Path) -> tuple[nn.Module, Dict[str, Any]]:
    from benchmarks.distill import progressive_distillation

    teacher_name = base if student_steps == 16 else f"{base}-pd{2 * student_steps}"
    torch.manual_seed(seed)
    model, info = progressive_distillation(_teacher(teacher_name, weights), student_steps, _training_data(base),
                                           train_steps=steps, seed=seed, quiet=quiet, teacher_name=teacher_name,
                                           **_STUDENT_SETTINGS[base])
    return model.net, {"base": base, **info}


def _train_consistency(base: str, distill: bool, steps: int, seed: int, quiet: bool,
                       weights: Path) -> tuple[nn.Module, Dict[str, Any]]:
    from benchmarks.distill import consistency_distillation

    torch.manual_seed(seed)
    teacher = _teacher(base, weights)
    data_fn = _training_data(base)
    # sigma_data: the training data's standard deviation (EDM's c_skip/c_out constant).
    sigma_data = float(data_fn(torch.Generator().manual_seed(seed), 4096).std())
    # CD starts from the teacher's weights; CT (no teacher) from a fresh network of its architecture.
    net = copy.deepcopy(teacher.net) if distill else type(teacher.net)()
    model, info = consistency_distillation(net, teacher.schedule, data_fn, teacher=teacher if distill else None,
                                           sigma_data=sigma_data, train_steps=steps, seed=seed, quiet=quiet,
                                           teacher_name=base if distill else None, sample_shape=teacher.sample_shape,
                                           **_STUDENT_SETTINGS[base])
    return model.net, {"base": base, **info}


def student_quality(name: str, n: int = 2000, seed: int = 1, weights: Optional[Path] = None) -> Dict[str, Any]:
    """A card's quick figure: the student's samples at its own step count (consistency models at
    1, 2 and 4 NFE) against the reference data: sliced W2 (toy2d) or FD on digits-classifier
    features vs the test split (digits). The tables of ``nfebench run`` compare with the teacher."""
    import solvers
    from benchmarks.metrics import frechet_distance, sliced_wasserstein
    from score_models import zoo

    model = zoo.load(name, weights_dir=weights)
    kind = zoo.student_kind(name)
    budgets = [model.steps] if kind == "distilled" else [1, 2, 4]
    digits_model = name.startswith("digits")
    classifier = shipped.load_classifier("digits-classifier") if digits_model else None
    reference = model.sample_data(n, generator=torch.Generator().manual_seed(seed + 1))
    out: Dict[str, Any] = {}
    with torch.inference_mode():
        for nfe in budgets:
            g = torch.Generator().manual_seed(seed)
            x = solvers.sample(kind, model, torch.randn((n,) + model.sample_shape, generator=g), nfe=nfe, generator=g)
            if digits_model:
                f = lambda v: classifier.features(v.clamp(-1, 1)).double()
                out[f"fd_vs_test_{nfe}nfe"] = frechet_distance(f(x), f(reference))
            else:
                out[f"sliced_w2_{nfe}nfe"] = sliced_wasserstein(x, reference)
    out["protocol"] = f"{kind} sampler, {n} samples, seed {seed}" + (
        "; features: digits-classifier penultimate layer, vs the 360-image test split" if digits_model else "")
    return out


# --- registry -----------------------------------------------------------------------------------
TRAINABLE: Dict[str, Dict[str, Any]] = {
    **{f"toy2d-{d}": {"steps": 6000, "fn": (lambda d: lambda steps, seed, quiet, weights: _train_toy2d(d, steps, seed, quiet))(d),
                      "data": f"toy2d:{d} (generated, seeded; score_models.data)", "kind": "diffusion"} for d in TOY2D},
    "digits-classifier": {"steps": 3000, "fn": lambda steps, seed, quiet, weights: _train_classifier(False, steps, seed, quiet),
                          "data": "sklearn digits", "kind": "classifier"},
    "digits-noisy-classifier": {"steps": 6000, "fn": lambda steps, seed, quiet, weights: _train_classifier(True, steps, seed, quiet),
                                "data": "sklearn digits", "kind": "classifier"},
    "digits-unet": {"steps": 12000, "fn": lambda steps, seed, quiet, weights: _train_digits_unet(steps, seed, quiet), "data": "sklearn digits", "kind": "diffusion"},
    # Students, in dependency order (each -pd<N> is distilled from -pd<2N>, -pd16 from the teacher
    # sampled with DDIM at 32 steps).
    **{f"{base}-pd{n}": {"steps": steps, "data": data, "kind": "student",
                         "fn": (lambda base, n: lambda steps, seed, quiet, weights: _train_distilled(base, n, steps, seed, quiet,
                                                                                       weights))(base, n)}
       for base, steps, data in (("digits-unet", 3000, "sklearn digits"),
                                 ("toy2d-moons", 2000, "toy2d:moons (generated, seeded; score_models.data)"))
       for n in (16, 8, 4, 2, 1)},
    "digits-unet-cd": {"steps": 4000, "data": "sklearn digits", "kind": "student",
                       "fn": lambda steps, seed, quiet, weights: _train_consistency("digits-unet", True, steps, seed, quiet, weights)},
    "toy2d-moons-cd": {"steps": 4000, "data": "toy2d:moons (generated, seeded; score_models.data)", "kind": "student",
                       "fn": lambda steps, seed, quiet, weights: _train_consistency("toy2d-moons", True, steps, seed, quiet, weights)},
    "toy2d-moons-ct": {"steps": 8000, "data": "toy2d:moons (generated, seeded; score_models.data)", "kind": "student",
                       "fn": lambda steps, seed, quiet, weights: _train_consistency("toy2d-moons", False, steps, seed, quiet, weights)},
}


#: Where ``nfebench train`` writes when no directory is given (relative to the working directory).
DEFAULT_OUT = Path("trained")


def train(name: str, steps: Optional[int] = None, seed: int = 0, out_dir: Optional[Path] = None,
          quiet: bool = False, evaluate: bool = True, overwrite_shipped: bool = False) -> Dict[str, Any]:
    """Train a shipped model, write ``<name>.pt`` (state dict) and ``<name>.json`` (its card) into
    ``out_dir`` (default ``trained/``). Writing into the package's shipped/ directory, which
    replaces a shipped checkpoint, needs ``overwrite_shipped=True``. A student's teacher is read
    from ``out_dir`` when it was trained there, else from the package."""
    if name not in TRAINABLE:
        raise ValueError(f"unknown trainable model {name!r}; valid: {', '.join(TRAINABLE)}")
    spec = TRAINABLE[name]
    steps = spec["steps"] if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if overwrite_shipped:
        if out_dir is not None and Path(out_dir).resolve() != shipped.DIRECTORY:
            raise ValueError(f"give --out or --overwrite-shipped, not both (--out {str(out_dir)!r})")
        out_dir = shipped.DIRECTORY
    out_dir = Path(out_dir) if out_dir is not None else DEFAULT_OUT
    if out_dir.resolve() == shipped.DIRECTORY and not overwrite_shipped:
        raise ValueError(f"{str(out_dir)!r} is the package's shipped/ directory; pass --overwrite-shipped to replace "
                         f"a shipped checkpoint")
    ensure_writable_directory(out_dir)
    start = time.perf_counter()
    net, info = spec["fn"](steps, seed, quiet, out_dir)
    seconds = time.perf_counter() - start
    card = {"name": name, "data": spec["data"], "seed": seed, "steps": steps, "train_seconds": round(seconds, 1),
            "torch_threads": torch.get_num_threads(), "versions": _versions(),
            "parameters": sum(p.numel() for p in net.parameters()), **info}
    if name.startswith("digits"):
        card["split"] = {"method": "sklearn train_test_split, stratified", "test_size": DIGITS_TEST_FRACTION,
                         "random_state": DIGITS_SPLIT_SEED, "train": len(digits("train")[1]),
                         "test": len(digits("test")[1])}
    shipped.save(net, card, out_dir)
    if evaluate:
        if name.startswith("toy2d") and spec["kind"] == "diffusion":
            card["quality"] = _toy2d_quality(name, out_dir)
        elif name == "digits-unet":
            card["quality"] = digits_unet_quality(weights=out_dir)
        elif spec["kind"] == "student":
            card["quality"] = student_quality(name, weights=out_dir)
        shipped.save(net, card, out_dir)
    return card


def ensure_writable_directory(directory: Path) -> None:
    """Create ``directory`` if needed and check that files can be written there, before any
    expensive work; ValueError naming it otherwise."""
    import tempfile

    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-"):
            pass
    except OSError as e:
        raise ValueError(f"cannot write to {str(directory)!r}: {e.strerror or e}") from None
