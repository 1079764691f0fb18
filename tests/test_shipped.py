"""Shipped models, their training code, the digits feature extractor and guidance."""
import json
import math

import pytest
import torch

import solvers
from benchmarks.cli import main
from benchmarks.metrics import frechet_distance, make_extractor, to_uint8_images
from benchmarks.training import TRAINABLE, train
from score_models import DiffusionModel, DiscreteVP, shipped, zoo
from score_models.data import TOY2D, digits, toy2d
from score_models.guidance import ClassifierFreeGuidance, ClassifierGuidance, cycle_labels
from score_models.nets import NULL_CLASS, DigitsClassifier, DigitsUNet


# --- data ---------------------------------------------------------------------------------------
def test_digits_split_is_fixed_stratified_and_scaled():
    x_tr, y_tr = digits("train")
    x_te, y_te = digits("test")
    assert x_tr.shape == (1437, 1, 8, 8) and x_te.shape == (360, 1, 8, 8)
    assert float(x_tr.min()) == -1.0 and float(x_tr.max()) == 1.0
    assert torch.equal(digits("test")[0], x_te)  # the same split every time
    counts = torch.bincount(y_te, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37  # stratified: ~36 per class
    with pytest.raises(ValueError, match="unknown split 'val'; valid: train, test, all"):
        digits("val")


@pytest.mark.parametrize("name", list(TOY2D))
def test_toy2d_datasets(name):
    a = toy2d(name, 5000, torch.Generator().manual_seed(0))
    assert a.shape == (5000, 2) and a.dtype == torch.float32 and float(a.abs().max()) < 3.0
    assert torch.equal(a, toy2d(name, 5000, torch.Generator().manual_seed(0)))
    assert float(a.std(0).min()) > 0.3


# --- training code (a few steps each, into a temporary directory) -------------------------------
@pytest.mark.parametrize("name", list(TRAINABLE))
def test_every_model_trains_and_round_trips(tmp_path, monkeypatch, name):
    from benchmarks.training import flows

    for base, settings in flows.FLOW_SETTINGS.items():  # a few loose reflow pairs keep the rf2 runs short
        monkeypatch.setitem(flows.FLOW_SETTINGS, base, {**settings, "reflow_pairs": 32, "reflow_tol": 1e-2})
    card = train(name, steps=3, seed=1, out_dir=tmp_path, quiet=True, evaluate=False)
    assert card["steps"] == 3 and card["seed"] == 1 and math.isfinite(card["final_loss"])
    assert "versions" in card and card["name"] == name
    on_disk = json.loads((tmp_path / f"{name}.json").read_text())
    assert on_disk["final_loss"] == card["final_loss"]
    state = shipped.load_state(name, tmp_path)  # weights_only=True
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    again = train(name, steps=3, seed=1, out_dir=tmp_path / "again", quiet=True, evaluate=False)
    assert again["final_loss"] == card["final_loss"]  # reproducible from the seed


def test_train_cli_rejects_unknown_models(capsys):
    assert main(["train", "cifar-unet"]) == 2
    assert "unknown trainable model 'cifar-unet'; valid: toy2d-moons" in capsys.readouterr().err


# --- the shipped checkpoints ----------------------------------------------------------------------
def test_shipped_checkpoints_are_small_and_carded():
    for name in TRAINABLE:
        size = (shipped.DIRECTORY / f"{name}.pt").stat().st_size
        assert size <= 5 * 2**20, (name, size)
        card = shipped.card(name)
        assert card["steps"] == TRAINABLE[name].steps and card["seed"] == 0


def test_digits_classifier_accuracy_on_the_held_out_split():
    classifier = shipped.load_classifier("digits-classifier")
    x, y = digits("test")
    with torch.no_grad():
        accuracy = float((classifier(x).argmax(1) == y).float().mean())
    assert accuracy >= 0.95


def test_noisy_classifier_is_informative_on_noised_digits():
    classifier = shipped.load_classifier("digits-noisy-classifier")
    sched = DiscreteVP.linear()
    x, y = digits("test")
    t = torch.full((len(x),), 250.0, dtype=torch.float64)
    noised = sched.alpha(t).float()[:, None, None, None] * x + sched.sigma(t).float()[:, None, None, None] * \
        torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float((classifier(noised, t.float()).argmax(1) == y).float().mean()) > 0.5  # chance: 0.1


@pytest.mark.parametrize("name", [n for n in zoo.SHIPPED if n.startswith("toy2d")])
def test_toy2d_models_sample_their_distribution(name):
    from benchmarks.metrics import sliced_wasserstein

    model = zoo.load(name)
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        x = solvers.sample("dpm_solver", model, noise, nfe=30)
    data = model.sample_data(2000, generator=torch.Generator().manual_seed(1))
    floor = sliced_wasserstein(model.sample_data(2000, generator=torch.Generator().manual_seed(2)), data)
    assert sliced_wasserstein(x, data) < max(4 * floor, 0.08)


def test_digits_unet_conditional_samples_are_recognisable():
    """A quick version of the card's gate: 100-step DDIM on 200 class-conditional samples."""
    model = zoo.load("digits-unet-cond")
    classifier = shipped.load_classifier("digits-classifier")
    noise = torch.randn(200, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        x = solvers.sample("ddim", model, noise, nfe=100, spacing="leading")
        accuracy = float((classifier(x).argmax(1) == torch.arange(200) % 10).float().mean())
    assert accuracy >= 0.85


@pytest.mark.slow
def test_digits_unet_card_figures_reproduce():
    """The card's gates recomputed: 1000-step DDPM, accuracy >= 90%, FD within 2x of train/test FD."""
    from benchmarks.training import digits_unet_quality

    q = digits_unet_quality()
    assert q["classifier_accuracy_on_conditional_samples"] >= 0.90 and q["fd_ratio"] <= 2.0


# --- the digits feature extractor -----------------------------------------------------------------
def test_digits_extractor_is_the_classifiers_penultimate_layer():
    name, layer, extractor = make_extractor({"extractor": "digits-classifier"}, torch.device("cpu"))
    assert (name, layer) == ("digits-classifier", "penultimate")
    x, _ = digits("test")
    feats = extractor(to_uint8_images(x))[0]
    classifier = shipped.load_classifier("digits-classifier")
    with torch.no_grad():
        direct = classifier.features(to_uint8_images(x)[:, :1].float() / 127.5 - 1)
    assert feats.shape == (360, 128) and torch.allclose(feats, direct)
    x_tr, _ = digits("train")
    assert frechet_distance(extractor(to_uint8_images(x_tr))[0], feats) > 0


# --- guidance -------------------------------------------------------------------------------------
def _tiny_conditional_model(dtype=torch.float32):
    torch.manual_seed(0)
    net = DigitsUNet(channels=8).eval().to(dtype)
    return DiffusionModel(net, DiscreteVP.linear(), prediction="eps", sample_shape=(1, 8, 8))


def test_cfg_counts_two_passes_per_evaluation_and_batching_changes_nothing():
    # float64 throughout: in float32 an untrained net drives |x| to ~1e2, where one batched and two
    # separate passes (different convolution kernels per batch size) part at ~1e-4.
    base = _tiny_conditional_model(torch.float64)
    labels = cycle_labels()
    batched = ClassifierFreeGuidance(base, 2.0, labels, null_label=NULL_CLASS)
    separate = ClassifierFreeGuidance(base, 2.0, labels, null_label=NULL_CLASS, batched=False)
    noise = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.inference_mode():
        a = solvers.sample("heun", batched, noise, nfe=9, spacing="trailing")
        b = solvers.sample("heun", separate, noise, nfe=9, spacing="trailing")
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)
    assert batched.nfe == 9 and batched.network_passes == 18 and separate.network_passes == 18
    # the guidance formula: (1 + w) eps(x, y) - w eps(x, null)
    x, t = torch.randn(6, 1, 8, 8, dtype=torch.float64), 500.0
    y = labels(6, x.device)
    with torch.no_grad():
        cond = base.eps(x, t, class_labels=y)
        null = base.eps(x, t, class_labels=torch.full_like(y, NULL_CLASS))
        assert torch.allclose(batched.eps(x, t), 3 * cond - 2 * null, rtol=1e-9, atol=1e-9)
        assert torch.allclose(ClassifierFreeGuidance(base, 0.0, labels).eps(x, t), cond, atol=1e-9)
    with pytest.raises(ValueError, match="guidance scale must be >= 0"):
        ClassifierFreeGuidance(base, -1.0, labels)


def test_classifier_guidance_works_inside_inference_mode():
    base = _tiny_conditional_model()
    classifier = DigitsClassifier(time_conditioned=True).eval()
    guided = ClassifierGuidance(base, classifier, 3.0, cycle_labels())
    x, t = torch.randn(4, 1, 8, 8), 400.0
    with torch.inference_mode():
        eps = guided.eps(x, t)
        plain = base.eps(x, t)
    assert not torch.allclose(eps, plain)
    assert guided.nfe == 1 and guided.classifier_passes == 1
    zero = ClassifierGuidance(base, classifier, 0.0, cycle_labels())
    with torch.inference_mode():
        assert torch.allclose(zero.eps(x, t), plain, atol=1e-6)


def test_guided_shipped_models_load():
    cfg = zoo.load("digits-unet-cfg=2")
    assert isinstance(cfg, ClassifierFreeGuidance) and cfg.scale == 2.0 and cfg.sample_shape == (1, 8, 8)
    assert zoo.load("digits-unet-cg").scale == 1.0
    with pytest.raises(ValueError, match="takes no '=scale'"):
        zoo.load("digits-unet=2")
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        zoo.load("digits-unet-cfg=big")
