"""Hostile files and paths: every place nfebench reads weights refuses a pickle that would run
code, training never overwrites the package's checkpoints by default, and run names and labels
cannot lead out of the run directory."""
import json
import pathlib
import shutil

import pytest
import torch

from benchmarks.cli import main
from benchmarks.metrics import make_extractor
from benchmarks.training import train
from score_models import shipped, zoo
from score_models.weights import load_tensors


class _Payload:
    """Unpickling this creates a marker file: a stand-in for arbitrary code."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture
def payload(tmp_path):
    """(a write_payload(path) function, the marker its files create when fully unpickled)."""
    marker = tmp_path / "PWNED"

    def write_payload(path: pathlib.Path) -> pathlib.Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"weight": torch.zeros(2), "evil": _Payload(marker)}, path)
        return path

    # The payload is live: full unpickling runs it (so the refusals below are real refusals).
    probe = write_payload(tmp_path / "probe.pt")
    torch.load(probe, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return write_payload, marker


def _refused(error: pytest.ExceptionInfo, path) -> None:
    message = str(error.value)
    assert "refused to load" in message and str(path) in message
    assert "weights_only" not in message  # never the advice to retry with full unpickling


def test_load_tensors_refuses_code(payload, tmp_path):
    write_payload, marker = payload
    path = write_payload(tmp_path / "w.pt")
    with pytest.raises(ValueError) as e:
        load_tensors(path)
    _refused(e, path)
    assert not marker.exists()
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt' is not a readable PyTorch checkpoint"):
        load_tensors(tmp_path / "garbage.pt")
    with pytest.raises(ValueError, match="does not exist"):
        load_tensors(tmp_path / "missing.pt")


@pytest.mark.parametrize("extractor", ["inception-v3-compat", "digits-classifier"])
def test_extractor_weights_are_read_as_tensors_only(payload, tmp_path, monkeypatch, extractor):
    write_payload, marker = payload
    path = write_payload(tmp_path / "extractor.pth")
    with pytest.raises(ValueError) as e:
        make_extractor({"extractor": extractor, "weights": str(path)}, torch.device("cpu"))
    _refused(e, path)
    if extractor.startswith("inception"):
        monkeypatch.setenv("NFEBENCH_INCEPTION_WEIGHTS", str(path))
        with pytest.raises(ValueError) as e:
            make_extractor({"extractor": extractor}, torch.device("cpu"))
        _refused(e, path)
    assert not marker.exists()


def test_extractors_that_would_unpickle_weights_are_refused():
    with pytest.raises(ValueError, match="would load its weights with full unpickling; nfebench supports"):
        make_extractor({"extractor": "vgg16"}, torch.device("cpu"))


def test_a_sweep_with_hostile_extractor_weights_runs_no_code(payload, tmp_path):
    write_payload, marker = payload
    path = write_payload(tmp_path / "inception.pth")
    config = tmp_path / "cfg.toml"
    config.write_text(f"""
[run]
nfe = [2]
n_samples = 8
metrics = ["fid"]
reference = {{ extractor = "inception-v3-compat", weights = "{path}" }}
[[models]]
name = "gmm:image3x8x8"
[[samplers]]
sampler = "euler"
""")
    main(["run", str(config), "--out", str(tmp_path / "run"), "--quiet"])
    assert not marker.exists()


@pytest.mark.parametrize("name", ["toy2d-moons", "digits-unet", "toy2d-moons-pd4", "digits-unet-cd"])
def test_checkpoints_and_student_checkpoints_refuse_code(payload, tmp_path, name):
    write_payload, marker = payload
    weights = tmp_path / "weights"
    write_payload(weights / f"{name}.pt")
    shutil.copy(shipped.DIRECTORY / f"{name}.json", weights / f"{name}.json")
    with pytest.raises(ValueError) as e:
        zoo.load(name, weights_dir=weights)
    _refused(e, weights / f"{name}.pt")
    with pytest.raises(ValueError) as e:
        shipped.load_state(name, weights)
    _refused(e, weights / f"{name}.pt")
    assert not marker.exists()


def test_trained_outputs_load_back_and_refuse_code(payload, tmp_path):
    write_payload, marker = payload
    out = tmp_path / "out"
    train("toy2d-moons", steps=2, seed=0, out_dir=out, quiet=True, evaluate=False)
    loaded = zoo.load("toy2d-moons", weights_dir=out).net.state_dict()
    saved = shipped.load_state("toy2d-moons", out)
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
    write_payload(out / "toy2d-moons.pt")
    with pytest.raises(ValueError) as e:
        zoo.load("toy2d-moons", weights_dir=out)
    _refused(e, out / "toy2d-moons.pt")
    assert not marker.exists()


diffusers = pytest.importorskip("diffusers")


@pytest.fixture
def pipeline(tmp_path):
    from benchmarks.equivalence import make_tiny_pipeline

    return make_tiny_pipeline(tmp_path / "pipe")


def test_diffusers_bin_and_safetensors_load_the_same_weights(pipeline):
    unet = pipeline / "unet"
    from_safetensors = zoo.load(f"diffusers:{pipeline}")
    state = load_tensors(unet / "diffusion_pytorch_model.safetensors")
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(state, unet / "diffusion_pytorch_model.bin")
    from_bin = zoo.load(f"diffusers:{pipeline}")
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(from_safetensors.eps(x, 300.0), from_bin.eps(x, 300.0))


def test_diffusers_directories_refuse_code(payload, pipeline):
    write_payload, marker = payload
    unet = pipeline / "unet"
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    write_payload(unet / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError) as e:
        zoo.load(f"diffusers:{pipeline}")
    _refused(e, unet / "diffusion_pytorch_model.bin")
    assert not marker.exists()
    (unet / "diffusion_pytorch_model.bin").unlink()
    (unet / "diffusion_pytorch_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        zoo.load(f"diffusers:{pipeline}")
    (unet / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "../../elsewhere.safetensors"}}))
    with pytest.raises(ValueError, match="names a shard outside its directory"):
        zoo.load(f"diffusers:{pipeline}")


# --- training never overwrites shipped weights by default ----------------------------------------
def test_train_defaults_to_a_user_directory_and_guards_shipped(tmp_path, monkeypatch, capsys):
    before = (shipped.DIRECTORY / "toy2d-moons.pt").read_bytes()
    with pytest.raises(ValueError, match="pass --overwrite-shipped"):
        train("toy2d-moons", steps=1, out_dir=shipped.DIRECTORY, quiet=True, evaluate=False)
    assert main(["train", "toy2d-moons", "--steps", "1", "--out", str(shipped.DIRECTORY), "--no-eval", "--quiet"]) == 2
    assert "--overwrite-shipped" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert main(["train", "toy2d-moons", "--steps", "1", "--no-eval", "--quiet"]) == 0
    assert (tmp_path / "trained" / "toy2d-moons.pt").is_file()
    assert (shipped.DIRECTORY / "toy2d-moons.pt").read_bytes() == before


# --- run names and labels stay inside the run directory -------------------------------------------
BASE = """
[run]
{run}
nfe = [2]
n_samples = 8
[[models]]
name = "gmm:ring8"
{model}
[[samplers]]
sampler = "euler"
{series}
"""


@pytest.mark.parametrize("run,model,series,message", [
    ('name = "../escape"', "", "", "[run] name '../escape' may not contain"),
    ('name = "/tmp/abs"', "", "", "[run] name '/tmp/abs' may not contain"),
    ('name = ""', "", "", "[run] name must be a non-empty string"),
    ("", 'label = "a/b"', "", "[[models]] #1 label 'a/b' may not contain"),
    ("", "", 'label = ".."', "label '..' may not contain"),
    ("", "", f'label = "{"x" * 101}"', "characters long; at most 100"),
])
def test_names_and_labels_cannot_escape(tmp_path, monkeypatch, capsys, run, model, series, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.toml").write_text(BASE.format(run=run, model=model, series=series))
    assert main(["run", "cfg.toml", "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "escape").exists()
