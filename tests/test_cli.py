import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.cli import main
from benchmarks.config import load_config

TINY = """
[run]
name = "tiny"
nfe = [1, 4, 9]
n_samples = 64
batch_size = 32
metrics = ["solver_error", "sliced_wasserstein", "mmd"]

[[models]]
name = "gmm:ring8"
schedule = "edm"

[[samplers]]
sampler = "euler"

[[samplers]]
sampler = "heun"
options = { to_zero = false }

[[samplers]]
sampler = "euler_maruyama"
options = { grid = "uniform" }
"""


def write(tmp_path, text, name="cfg.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_list_names_every_sampler(capsys):
    import solvers

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in solvers.available():
        assert name in out
    assert "gmm:ring8" in out and "solver_error" in out and "NFE = 2*N - 1 if to_zero else 2*N" in out


def test_run_writes_tables_metadata_and_plots(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(write(tmp_path, TINY)), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "solver_error" in printed and "| euler |" in printed
    df = pd.read_csv(out / "results.csv")
    # heun without the final zero needs >= 2 NFE: budget 1 is skipped, not faked
    assert len(df) == 3 + 2 + 3
    assert set(df["status"]) == {"ok"}
    assert (df["nfe"] <= df["nfe_budget"]).all()
    heun = df[df["sampler"] == "heun"].set_index("nfe_budget")
    assert heun.loc[9, "nfe"] == 8  # 4 steps x 2 evaluations, no final zero
    assert df[df["sampler"] == "euler_maruyama"]["solver_error"].isna().all()  # stochastic: no ODE error
    assert df[df["sampler"] == "euler"]["solver_error"].notna().all()
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["config"]["name"] == "tiny" and meta["protocol"]["n_samples"] == 64 and "torch" in meta["versions"]
    assert "heun(to_zero=False) @ nfe=1: heun needs nfe >= 2" in " ".join(meta["skipped"])
    assert "## gmm:ring8@edm" in (out / "results.md").read_text()
    pngs = [p for p in out.glob("*.png") if not p.name.startswith("samples_")]  # trade-off plots
    assert len(pngs) == 3 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert (out / "samples_gmm_ring8_edm.png").is_file() and (out / "report.html").is_file()
    # a second run into the same directory without --resume is refused (exit 2)
    assert main(["run", str(write(tmp_path, TINY)), "--out", str(out), "--quiet"]) == 2


@pytest.mark.parametrize("text,message", [
    (TINY.replace('name = "tiny"', 'name = "tiny"\nsamples = 3'), "unknown key(s) ['samples'] in"),
    (TINY.replace('sampler = "euler"\n', 'sampler = "eulr"\n'), "unknown sampler 'eulr'; valid:"),
    (TINY.replace("to_zero = false", "churn = 1"), "unknown option(s) ['churn'] for sampler 'heun'"),
    (TINY.replace('"mmd"]', '"fidd"]'), "unknown metric 'fidd'; valid:"),
    (TINY.replace('"gmm:ring8"', '"gmm:ring9"'), "unknown model 'gmm:ring9'; valid:"),
    (TINY.replace('schedule = "edm"', 'schedule = "karras"'), "unknown schedule 'karras'; valid:"),
    (TINY.replace("nfe = [1, 4, 9]", "nfe = [0, 4]"), "[run] nfe must be >= 1"),
    (TINY + '\n[[samplers]]\nsampler = "euler"\n', "appear twice"),
    ("[run\n", "is not valid TOML"),
])
def test_bad_configs_exit_2_and_write_nothing(tmp_path, capsys, text, message):
    out = tmp_path / "run"
    assert main(["run", str(write(tmp_path, text)), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_config_file_is_a_clear_error(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_default_config_is_valid():
    # Which samplers the default sweep shows is the config's choice: a new sampler needs no edit
    # here (tests/test_registry.py runs every registered sampler from a config of its own).
    import solvers

    cfg = load_config(None)
    assert {s.sampler for s in cfg.samplers} <= set(solvers.available()) | set(solvers.aliases())
    assert max(cfg.nfe) >= 100 and min(cfg.nfe) == 1


def test_compare_exit_codes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(write(tmp_path, TINY)), "--out", str(out), "--quiet"]) == 0
    base = out / "results.csv"
    assert main(["compare", str(base), str(base)]) == 0
    df = pd.read_csv(base)
    worse = df.copy()
    i = worse.index[(worse["sampler"] == "euler") & (worse["nfe_budget"] == 4)][0]
    worse.loc[i, "solver_error"] *= 1.5
    worse.to_csv(tmp_path / "worse.csv", index=False)
    capsys.readouterr()
    assert main(["compare", str(base), str(tmp_path / "worse.csv")]) == 1
    report = capsys.readouterr().out
    assert "REGRESSION gmm:ring8@edm | euler | nfe=4 | seed=0: solver_error" in report
    assert "1 regressed cell(s)" in report
    assert main(["compare", str(base), str(tmp_path / "worse.csv"), "--tolerance", "0.6"]) == 0
    slower = df.copy()
    slower["s_per_sample"] *= 10
    slower["wall_s"] *= 10
    assert main(["compare", str(base), str(base)]) == 0
    slower.to_csv(tmp_path / "slower.csv", index=False)
    # cells faster than --min-time in the baseline are not time-gated
    assert main(["compare", str(base), str(tmp_path / "slower.csv"), "--min-time", "1e9"]) == 0
    assert main(["compare", str(base), str(tmp_path / "slower.csv"), "--min-time", "0"]) == 1
    assert main(["compare", str(base), str(tmp_path / "missing.csv")]) == 2


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("nfebench")
    if not exe.exists():
        pytest.skip("nfebench console script not installed in this environment")
    res = subprocess.run([str(exe), "list"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "heun" in res.stdout
