"""Few-step students: progressive distillation, consistency models, their samplers, the
benchmark's pairing of students with their samplers, and the shipped students."""
import copy
import math

import pytest
import torch

import solvers
from benchmarks.config import parse_config
from benchmarks.training import (consistency_distillation, consistency_sigmas, ct_schedule, distillation_target,
                                progressive_distillation)
from benchmarks.metrics import frechet_distance, sliced_wasserstein
from benchmarks.sweep import expand_cells, runs_on
from score_models import VE, DiffusionModel, DiscreteVP, VPLinear, shipped, zoo
from score_models.data import toy2d
from score_models.distilled import ConsistencyModel, DistilledModel, consistency_scalings
from solvers.samplers.ddim import ddim
from solvers.grids import nested_times

TEACHER_SERIES = [("euler", {"grid": "edm"}), ("ddim", {"grid": "quadratic"}), ("ddim", {"grid": "uniform"}),
                  ("ipndm", {"grid": "edm"}), ("plms", {"grid": "quadratic"}), ("dpm_solver", {"grid": "logsnr"}),
                  ("dpm_solver", {"grid": "logsnr", "order": 3}), ("heun", {"grid": "edm"})]


def best_teacher(model, nfe, score, noise):
    """The best score of the teacher's deterministic samplers at this NFE (those that fit it)."""
    values = []
    with torch.inference_mode():
        for name, options in TEACHER_SERIES:
            try:
                values.append(score(solvers.sample(name, model, noise, nfe=nfe, **options)))
            except ValueError:  # this sampler needs more NFE
                continue
    return min(values)


def moons_scores(sampler, student, teacher, nfe):
    """(student's sliced W2 at nfe, best teacher sampler's at nfe) on toy2d-moons, same noise."""
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(3))
    reference = toy2d("moons", 2000, torch.Generator().manual_seed(4))
    score = lambda x: sliced_wasserstein(x, reference)
    with torch.inference_mode():
        mine = score(solvers.sample(sampler, student, noise, nfe=nfe, generator=torch.Generator().manual_seed(5)))
    return mine, best_teacher(teacher, nfe, score, noise)


# --- the nested grid ------------------------------------------------------------------------------
@pytest.mark.parametrize("grid", ["uniform", "quadratic"])
@pytest.mark.parametrize("schedule", [VPLinear(), DiscreteVP.linear(1000, 1e-4, 0.02)], ids=lambda s: s.name)
def test_the_teachers_grid_refines_the_students(grid, schedule):
    for n in (1, 2, 4, 8):
        coarse, fine = nested_times(schedule, n, grid), nested_times(schedule, 2 * n, grid)
        assert coarse.numel() == n + 1 and coarse[0] == schedule.t_max and coarse[-1] == schedule.t_data
        torch.testing.assert_close(fine[::2], coarse, rtol=0, atol=1e-9)


def test_nested_grid_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match="never reaches sigma = 0"):
        nested_times(VE(), 4)
    with pytest.raises(ValueError, match="unknown distillation grid 'edm'; valid: uniform, quadratic"):
        nested_times(VPLinear(), 4, "edm")
    with pytest.raises(ValueError, match="quadratic distillation grid of 64 steps is not valid on discrete_vp"):
        nested_times(DiscreteVP.linear(1000, 1e-4, 0.02), 64, "quadratic")


# --- progressive distillation ---------------------------------------------------------------------
def test_distillation_target_makes_one_student_step_equal_two_teacher_steps():
    """Salimans & Ho 2022, Algorithm 2: a student predicting the target x lands, in one DDIM
    step, where the teacher lands in two (exact teacher: the ring mixture, float64)."""
    teacher = zoo.load("gmm:ring8", schedule="vp_linear")
    sched = teacher.schedule
    coarse, fine = nested_times(sched, 4), nested_times(sched, 8)
    z = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for i in range(4):  # the last one lands on sigma = 0
        t, t_mid, t_next = (torch.full((256,), float(v), dtype=torch.float64) for v in (coarse[i], fine[2 * i + 1], coarse[i + 1]))
        target = distillation_target(teacher, z, t, t_mid, t_next)
        a_t, s_t = float(sched.alpha(coarse[i])), float(sched.sigma(coarse[i]))
        a_n, s_n = float(sched.alpha(coarse[i + 1])), float(sched.sigma(coarse[i + 1]))
        student_step = a_n * target + s_n * (z - a_t * target) / s_t
        two_teacher_steps = ddim(teacher, z, torch.stack([coarse[i], fine[2 * i + 1], coarse[i + 1]]))
        torch.testing.assert_close(student_step, two_teacher_steps, rtol=1e-9, atol=1e-9)


def test_distilled_sampler_is_ddim_on_the_students_grid_and_checks_its_budget():
    gmm = zoo.load("gmm:ring8", schedule="vp_linear")
    student = DistilledModel(gmm.net, gmm.schedule, steps=4, prediction=gmm.prediction, sample_shape=(2,))
    student.net_time_dtype = torch.float64
    noise = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    stats = {}
    out = solvers.sample("distilled", student, noise, nfe=4, stats=stats)
    torch.testing.assert_close(out, ddim(gmm, noise, nested_times(gmm.schedule, 4)), rtol=0, atol=1e-12)
    assert stats["nfe"] == 4
    with pytest.raises(ValueError, match="distilled for 4 steps \\(nfe=4\\); got nfe=2"):
        solvers.sample("distilled", student, noise, nfe=2)
    with pytest.raises(ValueError, match="distilled runs only on models that name it as a native sampler"):
        solvers.sample("distilled", gmm, noise, nfe=4)
    with pytest.raises(ValueError, match="unknown option\\(s\\) \\['grid'\\]"):
        solvers.sample("distilled", student, noise, nfe=4, grid="edm")


def test_a_short_distillation_round_beats_the_teachers_samplers_at_its_nfe():
    """Small-scale version of the shipped chain: toy2d-moons' teacher on the 4-step grid ->
    a 2-step student after 400 updates, scored against the teacher's samplers at 2 NFE."""
    teacher = zoo.load("toy2d-moons")
    data = lambda g, n: toy2d("moons", n, g)
    student, info = progressive_distillation(teacher, 2, data, train_steps=400, batch_size=512, lr=1e-3, seed=0)
    assert info["steps_teacher"] == 4 and student.steps == 2 and student.prediction == "v"
    mine, teachers = moons_scores("distilled", student, teacher, 2)
    assert mine < 0.7 * teachers
    with pytest.raises(ValueError, match="a 2-step student needs a 4-step teacher on the uniform grid"):
        progressive_distillation(student, 2, data, train_steps=1)


# --- consistency models ---------------------------------------------------------------------------
def test_consistency_scalings_enforce_the_boundary_and_match_v_prediction():
    sched = VPLinear()
    sigma_min = float(sched.sigma_tilde(sched.t_min))
    wild = lambda x, t: 1e3 * torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(0))
    cm = ConsistencyModel(wild, sched, sigma_min=sigma_min, sigma_data=0.5, sample_shape=(2,))
    x = torch.randn(16, 2, dtype=torch.float64)
    assert torch.equal(cm.x0(x, sched.t_min), x / float(sched.alpha(sched.t_min)))  # f(x~, sigma_min) = x~
    # With sigma_min = 0 and sigma_data = 1 the scalings are v-prediction's: x0 = c_skip x~ + c_out (-v).
    v_net = lambda x, t: torch.sin(3 * x) + t[:, None]
    v_model = DiffusionModel(v_net, sched, prediction="v")
    for t in (0.05, 0.5, 1.0):
        a, sig = float(sched.alpha(t)), float(sched.sigma_tilde(t))
        c_skip, c_out = consistency_scalings(sig, 0.0, 1.0)
        t_in = torch.full((16,), t, dtype=torch.float64)
        torch.testing.assert_close(c_skip * (x / a) - c_out * v_net(x, t_in), v_model.x0(x, t), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="need sigma_min > 0 and sigma_data > 0"):
        ConsistencyModel(wild, sched, sigma_min=0.0, sigma_data=0.5)


class ExactConsistencyNet:
    """F such that c_skip x~ + c_out F is the exact consistency function of a Gaussian mixture:
    the end at sigma~_min of its PF-ODE trajectory (scipy DOP853)."""

    def __init__(self, gmm, sigma_min, sigma_data):
        self.gmm, self.sigma_min, self.sigma_data = gmm, sigma_min, sigma_data

    def __call__(self, x, t_net):
        sched, t = self.gmm.schedule, float(t_net[0])
        x_tilde = x / float(sched.alpha(t))
        end = self.gmm.exact_ode_solution(x, t_start=t, t_end=sched.t_min) / float(sched.alpha(sched.t_min))
        c_skip, c_out = consistency_scalings(float(sched.sigma_tilde(t)), self.sigma_min, self.sigma_data)
        return (end - c_skip * x_tilde) / c_out


def test_consistency_sampling_with_the_exact_consistency_function():
    """Algorithm 1 with the exact f: one step is the exact ODE solution from the same noise, and
    multistep re-noising keeps the samples distributed as the data (at sigma~_min)."""
    gmm = zoo.load("gmm:ring8", schedule="vp_linear")
    sched = gmm.schedule
    sigma_min = float(sched.sigma_tilde(sched.t_min))
    cm = ConsistencyModel(ExactConsistencyNet(gmm, sigma_min, 0.5), sched, sigma_min, 0.5, sample_shape=(2,))
    cm.net_time_dtype = torch.float64
    noise = torch.randn(2000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    stats = {}
    one = solvers.sample("consistency", cm, noise, nfe=1, stats=stats)
    exact = gmm.exact_ode_solution(noise, t_end=sched.t_min) / float(sched.alpha(sched.t_min))
    torch.testing.assert_close(one, exact, rtol=1e-9, atol=1e-9)
    assert stats["nfe"] == 1
    three = solvers.sample("consistency", cm, noise, nfe=3, generator=torch.Generator().manual_seed(6), stats=stats)
    assert stats["nfe"] == 3 and not torch.allclose(three, one)
    data = gmm.sample_data(2000, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    floor = sliced_wasserstein(gmm.sample_data(2000, generator=torch.Generator().manual_seed(8), dtype=torch.float64), data)
    assert sliced_wasserstein(three, data) < 2 * floor + 0.02
    # Sweeps run the consistency sampler only on models that name it (it is exclusive); on any
    # other model it is the same re-noising chain on that model's x0-prediction.
    assert not runs_on("consistency", gmm) and runs_on("consistency", cm)


def test_consistency_schedules_follow_the_paper():
    assert ct_schedule(0, 1000) == (2, pytest.approx(0.9))  # N(0) = s0, mu(0) = mu0
    n_end, mu_end = ct_schedule(1000, 1000)
    assert n_end == 151 and mu_end == pytest.approx(math.exp(2 * math.log(0.9) / 151))
    sched = DiscreteVP.linear(1000, 1e-4, 0.02)
    sig = consistency_sigmas(sched, 18)
    assert sig.numel() == 18 and bool((sig[1:] > sig[:-1]).all())
    torch.testing.assert_close(sig[[0, -1]], sched.sigma_tilde(torch.tensor([0.0, 999.0], dtype=torch.float64)))


def test_short_consistency_distillation_beats_the_teacher_at_one_step_and_training_runs():
    teacher = zoo.load("toy2d-moons")
    data = lambda g, n: toy2d("moons", n, g)
    cm, info = consistency_distillation(copy.deepcopy(teacher.net), teacher.schedule, data, teacher=teacher,
                                        sigma_data=0.8, train_steps=400, batch_size=512, lr=1e-3, sample_shape=(2,))
    assert info["kind"] == "consistency_distillation" and cm.training == "distillation"
    mine, teachers = moons_scores("consistency", cm, teacher, 1)
    assert mine < 0.5 * teachers
    ct, info = consistency_distillation(type(teacher.net)(), teacher.schedule, data, teacher=None, sigma_data=0.8,
                                        train_steps=30, batch_size=256, sample_shape=(2,))
    assert info["kind"] == "consistency_training" and math.isfinite(info["final_loss"])


# --- the benchmark pairs students with their samplers ---------------------------------------------
def test_students_get_their_own_sampler_and_teachers_keep_theirs():
    config = parse_config({
        "run": {"nfe": [1, 2], "n_samples": 8, "batch_size": 8, "metrics": ["sliced_wasserstein"]},
        "models": [{"name": "gmm:ring8"}, {"name": "toy2d-moons-pd2", "nfe": [2]}, {"name": "toy2d-moons-cd"}],
        "samplers": [{"sampler": "euler"}, {"sampler": "distilled"}, {"sampler": "consistency"}],
    })
    cells, _ = expand_cells(config)
    pairs = sorted({(c.model.name, c.series.sampler, c.nfe_budget) for c in cells})
    assert pairs == [("gmm:ring8", "euler", 1), ("gmm:ring8", "euler", 2), ("toy2d-moons-cd", "consistency", 1),
                     ("toy2d-moons-cd", "consistency", 2), ("toy2d-moons-pd2", "distilled", 2)]


# --- the shipped students -------------------------------------------------------------------------
@pytest.mark.parametrize("name", zoo.STUDENTS)
def test_shipped_students_load_as_what_their_cards_say(name):
    model = zoo.load(name)
    card = shipped.card(name)
    kind = model.native_samplers[0]
    assert isinstance(model, DistilledModel if card["kind"] == "progressive_distillation" else ConsistencyModel)
    assert kind == ("distilled" if isinstance(model, DistilledModel) else "consistency")
    assert model.teacher == card["teacher"]
    nfe = model.steps if kind == "distilled" else 2
    stats = {}
    with torch.inference_mode():
        out = solvers.sample(kind, model, torch.randn((16,) + model.sample_shape), nfe=nfe,
                             generator=torch.Generator().manual_seed(0), stats=stats)
    assert stats["nfe"] == nfe and bool(torch.isfinite(out).all())
    with pytest.raises(ValueError, match="brings its own schedule"):
        zoo.load(name, schedule="vp_linear")


def test_shipped_digits_students_beat_the_teachers_samplers_at_1_2_4_nfe():
    """The shipped checkpoints' headline: FD (digits-classifier features, 360 samples
    vs the test split) of each student below the best teacher sampler at the same NFE."""
    classifier = shipped.load_classifier("digits-classifier")
    teacher = zoo.load("digits-unet")
    reference = teacher.sample_data(360)
    feats = lambda x: classifier.features(x.clamp(-1, 1)).double()
    score = lambda x: frechet_distance(feats(x), feats(reference))
    noise = torch.randn(360, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for nfe in (1, 2, 4):
        teacher_best = best_teacher(teacher, nfe, score, noise)
        with torch.inference_mode():
            pd = score(solvers.sample("distilled", zoo.load(f"digits-unet-pd{nfe}"), noise, nfe=nfe))
            cd = score(solvers.sample("consistency", zoo.load("digits-unet-cd"), noise, nfe=nfe,
                                      generator=torch.Generator().manual_seed(1)))
        assert pd < teacher_best and cd < teacher_best, (nfe, pd, cd, teacher_best)
