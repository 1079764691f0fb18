"""Bad input, interruption and concurrent runs: every case exits 2 with one line naming the bad
value (130 for Ctrl-C), writes nothing half-done, and resume keeps exactly one row per cell."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import solvers
from benchmarks.cli import main
from benchmarks.rundir import RunDirectory
from score_models import zoo

HERE = Path(__file__).resolve().parent
HEADER = "model,series,nfe_budget,seed,status,error,nfe,wall_s,s_per_sample"
ROOT = HERE.parent

CONFIG = """
[run]
{run}
nfe = [2, 4]
n_samples = 8
[[models]]
name = "{model}"
schedule = "edm"
[[samplers]]
sampler = "{sampler}"
{series}
"""


def write_config(tmp_path, run="", model="gmm:ring8", sampler="euler", series="", name="cfg.toml"):
    path = tmp_path / name
    path.write_text(CONFIG.format(run=run, model=model, sampler=sampler, series=series))
    return path


def run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- option values are checked before anything runs --------------------------------------------
@pytest.mark.parametrize("sampler,series,message", [
    ("ddim", 'options = { eta = "abc" }', "option eta='abc' of sampler 'ddim' must be a number; valid: >= 0"),
    ("ddim", 'options = { rho = "seven" }', "option rho='seven' of sampler 'ddim' must be a number; valid: > 0"),
    ("dpm_solver", "options = { order = 7 }", "option order=7 of sampler 'dpm_solver' is not valid; valid: 1, 2, 3"),
    ("ddim", 'options = { grid = "bogus" }', "option grid='bogus' of sampler 'ddim' is not valid; valid: 'uniform'"),
    ("heun", "options = { s_churn = -1 }", "option s_churn=-1 of sampler 'heun' is not valid; valid: >= 0"),
    ("pc", 'options = { predictor = "none", corrector = "none" }', "predictor='none' needs a corrector"),
    ("ddim", "options = 5", "options must be a table"),
    ("euler", "nfe = [1000000000]", "nfe must be <= 100000, got 1000000000"),
])
def test_bad_option_values_exit_2_before_anything_runs(tmp_path, capsys, sampler, series, message):
    out = tmp_path / "run"
    code, err = run_cli(["run", str(write_config(tmp_path, sampler=sampler, series=series)), "--out", str(out)], capsys)
    assert code == 2 and message in one_line(err)
    assert not out.exists()


@pytest.mark.parametrize("run,message", [
    ('reference = { extractor = "incepton" }', "unknown feature extractor 'incepton'; valid:"),
    ('reference = { weights = "/nonexistent.pth" }', "weights '/nonexistent.pth' do not exist"),
    ("reference = 5", "[run.reference] must be a table"),
    ('reference = { rtol = "tight" }', "rtol must be a positive number"),
])
def test_bad_run_settings_exit_2(tmp_path, capsys, run, message):
    out = tmp_path / "run"
    code, err = run_cli(["run", str(write_config(tmp_path, run=run)), "--out", str(out)], capsys)
    assert code == 2 and message in one_line(err)
    assert not out.exists()


def test_top_level_tables_of_the_wrong_type_exit_2(tmp_path, capsys):
    for text, message in (("run = 5\n", "[run] must be a table"),
                          ('models = 5\n[run]\nnfe = [2]\n', "models must be an array of tables"),
                          ('samplers = [5]\n[[models]]\nname = "gmm:ring8"\n', "must be a table")):
        path = tmp_path / "bad.toml"
        path.write_text(text)
        code, err = run_cli(["run", str(path), "--out", str(tmp_path / "run")], capsys)
        assert code == 2 and message in one_line(err), (text, err)


# --- the API refuses what it cannot honour ------------------------------------------------------
def test_api_refuses_bad_budgets_and_noise():
    model = zoo.load("gmm:ring8", schedule="edm")
    cases = [(dict(nfe=2.7), "nfe must be a whole number, got 2.7"), (dict(nfe=True), "nfe must be a whole number"),
             (dict(nfe=10**9), "nfe must lie in 1..100000"),
             (dict(noise=torch.full((2, 2), float("nan"))), "noise holds NaN or Inf"),
             (dict(noise=torch.randn(2, 3)), r"noise has shape \(2, 3\); this model's samples are \[batch, 2\]"),
             (dict(noise=torch.ones(2, 2, dtype=torch.int64)), "noise must be a floating-point tensor"),
             (dict(eta="abc"), "option eta='abc' of sampler 'euler'|unknown option")]
    for kwargs, message in cases:
        call = {"nfe": 4, "noise": torch.randn(2, 2), **kwargs}
        model.reset_nfe()
        with pytest.raises(ValueError, match=message):
            solvers.sample("euler", model, call.pop("noise"), **call)
        assert model.nfe == 0  # refused before any network evaluation


# --- one-line errors instead of tracebacks -------------------------------------------------------
def test_unwritable_out_and_out_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, err = run_cli(["run", str(write_config(tmp_path)), "--out", str(blocker / "run")], capsys)
    assert code == 2 and "cannot write to" in one_line(err) and str(blocker) in err
    code, err = run_cli(["run", str(write_config(tmp_path)), "--out", str(blocker)], capsys)
    assert code == 2 and "exists and is not a directory" in one_line(err)
    code, err = run_cli(["train", "toy2d-moons", "--steps", "1", "--out", str(blocker / "out"), "--quiet"], capsys)
    assert code == 2 and "cannot write to" in one_line(err)


@pytest.mark.parametrize("source,message", [
    ("def broken(:\n", "cannot load model factory 'python:{module}:make' (SyntaxError"),
    ("raise RuntimeError('import failed on purpose')\n", "(RuntimeError: import failed on purpose)"),
    ("def make(schedule):\n    raise KeyError('no weights')\n", "model factory 'python:{module}:make' raised KeyError"),
])
def test_python_model_errors_are_one_line(tmp_path, capsys, monkeypatch, source, message):
    module = f"user_model_{abs(hash(source)) % 10**8}"
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    code, err = run_cli(["run", str(write_config(tmp_path, model=f"python:{module}:make")), "--out",
                         str(tmp_path / "run")], capsys)
    assert code == 2 and message.format(module=module) in one_line(err)


def test_plot_and_compare_on_tables_that_are_not_ours(tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    code, err = run_cli(["compare", str(empty), str(empty)], capsys)
    assert code == 2 and "is not a results table" in one_line(err)
    bad = tmp_path / "bad.csv"
    bad.write_text(f"{HEADER},solver_error\nm,s,4,0,ok,,4,0.1,0.01,abc\n")
    code, err = run_cli(["plot", str(bad)], capsys)
    assert code == 2 and "column 'solver_error' holds a non-numeric value 'abc'" in one_line(err)


def test_resume_onto_a_foreign_results_csv_is_refused_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.csv").write_text("name,score\na,1\n")
    (out / "metadata.json").write_text('{"mine": true}')
    code, err = run_cli(["run", str(write_config(tmp_path)), "--out", str(out), "--resume"], capsys)
    assert code == 2 and "is not an nfebench results table" in one_line(err)
    assert json.loads((out / "metadata.json").read_text()) == {"mine": True}


# --- resume, configs and concurrency --------------------------------------------------------------
@pytest.mark.parametrize("label", ["5", "NA", "1e-3", "nan"])
def test_resume_keeps_labels_that_look_like_numbers(tmp_path, capsys, label):
    config = write_config(tmp_path, series=f'label = "{label}"')
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 0
    first = pd.read_csv(out / "results.csv", dtype=str, keep_default_na=False)
    assert main(["run", str(config), "--out", str(out), "--resume", "--quiet"]) == 0
    again = pd.read_csv(out / "results.csv", dtype=str, keep_default_na=False)
    assert len(again) == len(first) == 2 and set(again["series"]) == {label}


def test_resume_with_another_config_needs_extend(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(write_config(tmp_path)), "--out", str(out), "--quiet"]) == 0
    other = write_config(tmp_path, sampler="heun", name="other.toml")
    code, err = run_cli(["run", str(other), "--out", str(out), "--resume", "--quiet"], capsys)
    assert code == 2 and "written by another config; pass --extend" in one_line(err)
    assert len(pd.read_csv(out / "results.csv")) == 2
    assert main(["run", str(other), "--out", str(out), "--extend", "--quiet"]) == 0
    assert sorted(pd.read_csv(out / "results.csv")["sampler"]) == ["euler", "euler", "heun", "heun"]


def test_a_second_sweep_into_a_held_directory_exits_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    with RunDirectory(out).open({}, resume=False):
        code, err = run_cli(["run", str(write_config(tmp_path)), "--out", str(out), "--quiet"], capsys)
    assert code == 2 and f"is in use by process {os.getpid()}" in one_line(err)
    assert not (out / "results.csv").exists()
    assert main(["run", str(write_config(tmp_path)), "--out", str(out), "--quiet"]) == 0  # released


def test_written_files_get_the_umask_mode(tmp_path):
    out = tmp_path / "run"
    assert main(["run", str(write_config(tmp_path)), "--out", str(out), "--quiet"]) == 0
    umask = os.umask(0)
    os.umask(umask)
    for name in ("results.csv", "results.md", "metadata.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_ctrl_c_keeps_finished_rows_and_reports_them(tmp_path):
    config = tmp_path / "slow.toml"
    config.write_text(CONFIG.format(run="", model="python:engine_models:slow_ring8", sampler="euler", series="")
                      .replace("nfe = [2, 4]", "nfe = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 100, 200, 400]")
                      .replace("n_samples = 8", "n_samples = 64\nbatch_size = 16"))
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.cli", "run", str(config), "--out", str(out), "--quiet"],
                            env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "results.csv").exists() and len(pd.read_csv(out / "results.csv")) >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    rows = pd.read_csv(out / "results.csv")
    assert 2 <= len(rows) < 15 and (out / "results.md").is_file()
    assert "(interrupted)" in (out / "results.md").read_text()


def test_literal_nan_in_a_numeric_column_is_a_missing_value(tmp_path, capsys):
    table = tmp_path / "nan.csv"
    table.write_text(f"{HEADER},solver_error\nm,s,4,0,ok,,4,0.1,0.01,NaN\nm,s,8,0,ok,,8,0.2,0.02,0.5\n")
    code, err = run_cli(["compare", str(table), str(table)], capsys)
    assert code == 0, err


def test_extend_keeps_the_columns_of_the_rows_already_there(tmp_path):
    out = tmp_path / "run"
    first = write_config(tmp_path, run='metrics = ["solver_error"]')
    assert main(["run", str(first), "--out", str(out), "--quiet"]) == 0
    other = write_config(tmp_path, run='metrics = ["sliced_wasserstein"]', sampler="heun", name="other.toml")
    assert main(["run", str(other), "--out", str(out), "--extend", "--quiet"]) == 0
    table = pd.read_csv(out / "results.csv")
    assert {"solver_error", "sliced_wasserstein"} <= set(table.columns)
    assert table.loc[table["sampler"] == "euler", "solver_error"].notna().all()


def test_exclusive_samplers_refuse_models_that_do_not_name_them():
    with pytest.raises(ValueError, match="consistency runs only on models that name it as a native sampler"):
        solvers.sample("consistency", zoo.load("gmm:ring8", schedule="edm"), torch.randn(2, 2), nfe=2)


def test_error_text_never_carries_the_advice_to_unpickle_in_full():
    from score_models.weights import one_line_error

    advice = RuntimeError("Weights only load failed.\nRe-running `torch.load` with `weights_only` set to `False` will "
                          "likely succeed, but it can result in arbitrary code execution.")
    assert "weights_only" not in one_line_error(advice) and one_line_error(advice) == "RuntimeError"
