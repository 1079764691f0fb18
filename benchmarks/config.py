"""Sweep configurations: TOML (stdlib tomllib), validated completely before anything runs.

A config names models, sampler series (a sampler with options; the same sampler may appear
several times), NFE budgets, seeds and the measurement protocol. Every unknown key, sampler,
option, model, schedule or metric is a ConfigError naming it and the valid choices.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

import solvers
from score_models import zoo

from .grid_spec import check_optimizer_settings, check_special_grids, options_without_special_grid

__all__ = ["ConfigError", "ModelSpec", "SeriesSpec", "SweepConfig", "load_config", "parse_config", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = "default.toml"


class ConfigError(ValueError):
    """A config that cannot run; the message names the bad value and the valid choices."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    schedule: Optional[str] = None  # gmm: and python: models; None = vp_linear there, own schedule elsewhere
    label: str = ""
    series: Optional[Tuple[str, ...]] = None  # run only these sampler series (keys/labels) on it
    n_samples: Optional[int] = None  # overrides [run] n_samples for this model
    reference: Tuple[Tuple[str, Any], ...] = ()  # overrides of [run.reference] for this model
    nfe: Optional[Tuple[int, ...]] = None  # overrides [run] nfe for this model (a series' own nfe wins)

    @property
    def key(self) -> str:
        if self.label:
            return self.label
        if self.name.startswith(("gmm:", "python:")):
            return f"{self.name}@{self.schedule or 'vp_linear'}"
        return self.name


@dataclass(frozen=True)
class SeriesSpec:
    sampler: str
    options: Dict[str, Any] = field(default_factory=dict)
    nfe: Optional[List[int]] = None
    label: str = ""

    @property
    def key(self) -> str:
        if self.label:
            return self.label
        if not self.options:
            return self.sampler
        return self.sampler + "(" + ",".join(f"{k}={v}" for k, v in sorted(self.options.items())) + ")"


@dataclass(frozen=True)
class SweepConfig:
    name: str
    models: List[ModelSpec]
    samplers: List[SeriesSpec]
    nfe: List[int]
    seeds: List[int] = field(default_factory=lambda: [0])
    n_samples: int = 256
    batch_size: int = 256
    device: str = "auto"
    dtype: str = "float32"
    metrics: List[str] = field(default_factory=lambda: ["solver_error"])
    reference: Dict[str, Any] = field(default_factory=dict)
    save_samples: bool = False
    #: torch.compile each model's network (static shapes, compiled at the untimed forward probe)
    compile: bool = False
    #: replay fixed-step deterministic samplers as one CUDA graph per cell and batch shape
    #: (captured untimed; other samplers, and any run off CUDA, sample eagerly: solvers/cuda_graph.py)
    cuda_graph: bool = False
    #: settings of the grid optimisers for grid = "optimized:<method>" (benchmarks/grid_spec.py)
    grid_optimizer: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


_RUN_KEYS = {"grid_optimizer", "name", "nfe", "seeds", "n_samples", "batch_size", "device", "dtype", "metrics", "reference",
             "save_samples", "compile", "cuda_graph"}
_TOP_KEYS = {"run", "models", "samplers"}
_MODEL_KEYS = {"name", "schedule", "label", "series", "n_samples", "reference", "nfe"}
_SERIES_KEYS = {"sampler", "options", "nfe", "label", "grids"}
_DEVICES = ("auto", "cpu", "cuda")
_DTYPES = ("float32", "float64")
_REFERENCE_KEYS = {"rtol", "n_data", "extractor", "weights", "cache_dir", "divergence", "n_probes", "data_range"}


def _check_keys(table: Any, valid: set, where: str) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table (key = value pairs), got {table!r}")
    unknown = sorted(set(table) - valid)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid: {', '.join(sorted(valid))}")


#: Longest run name or label: each becomes part of a file name (plots, samples, runs/<name>).
MAX_NAME_LENGTH = 100


def check_name(value: Any, where: str) -> str:
    """A run name or label usable inside a file name: non-empty text of at most MAX_NAME_LENGTH
    printable characters, with no path separator and no '..' (it must not lead out of the run
    directory)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be a non-empty string, got {value!r}")
    if len(value) > MAX_NAME_LENGTH:
        raise ConfigError(f"{where} is {len(value)} characters long; at most {MAX_NAME_LENGTH}")
    if "/" in value or "\\" in value or ".." in value or not value.isprintable():
        raise ConfigError(f"{where} {value!r} may not contain '/', '\\', '..' or control characters")
    return value


def _table_list(data: Dict[str, Any], key: str, source: str) -> List[Dict[str, Any]]:
    """An array of tables ([[models]], [[samplers]]), each checked to be a table by its reader."""
    value = data.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(f"{source}: {key} must be an array of tables ([[{key}]] sections), got {value!r}")
    return value


def _check_reference(reference: Any, where: str) -> None:
    """[run.reference] (or a model's reference): known keys, a known extractor, an existing weights
    file, a positive rtol and n_data."""
    from .metrics.features import usable_extractors

    _check_keys(reference, _REFERENCE_KEYS, where)
    if "extractor" in reference and reference["extractor"] not in usable_extractors():
        raise ConfigError(f"{where}: unknown feature extractor {reference['extractor']!r}; "
                          f"valid: {', '.join(usable_extractors())}")
    if "weights" in reference and not (isinstance(reference["weights"], str) and Path(reference["weights"]).is_file()):
        raise ConfigError(f"{where}: feature extractor weights {reference['weights']!r} do not exist")
    for key, kind in (("rtol", float), ("n_data", int), ("n_probes", int)):
        value = reference.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int)
                                  or not value > 0):
            raise ConfigError(f"{where}: {key} must be a positive {'number' if kind is float else 'integer'}, "
                              f"got {value!r}")
    _check_likelihood_reference(reference, where)
    for key in ("cache_dir",):
        if key in reference and not isinstance(reference[key], str):
            raise ConfigError(f"{where}: {key} must be a path string, got {reference[key]!r}")


#: how the nll metric computes the divergence: "auto" (exact up to the metric's EXACT_MAX_DIM
#: dimensions, Hutchinson above), or always one of the two
DIVERGENCES = ("auto", "exact", "hutchinson")


def _check_likelihood_reference(reference: Dict[str, Any], where: str) -> None:
    """The nll metric's keys: a known divergence and an image data range (low, high), high > low."""
    if "divergence" in reference and reference["divergence"] not in DIVERGENCES:
        raise ConfigError(f"{where}: divergence {reference['divergence']!r} is not known; valid: {', '.join(DIVERGENCES)}")
    if "data_range" in reference:
        value = reference["data_range"]
        if not (isinstance(value, list) and len(value) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
                and value[1] > value[0]):
            raise ConfigError(f"{where}: data_range must be [low, high] with finite high > low, got {value!r}")


def _int_list(value: Any, where: str, minimum: int, maximum: Optional[int] = None) -> List[int]:
    if isinstance(value, int):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{where} must be a non-empty list of integers, got {value!r}")
    if min(value) < minimum:
        raise ConfigError(f"{where} must be >= {minimum}, got {min(value)}")
    if maximum is not None and max(value) > maximum:
        raise ConfigError(f"{where} must be <= {maximum}, got {max(value)}")
    return sorted(set(value))


def parse_config(data: Dict[str, Any], source: str = "<config>") -> SweepConfig:
    """Validate a config dict (as read from TOML) and build a :class:`SweepConfig`."""
    from .metrics import METRICS  # metrics register themselves

    _check_keys(data, _TOP_KEYS, source)
    run = data.get("run", {})
    _check_keys(run, _RUN_KEYS, f"{source} [run]")
    nfe = _int_list(run.get("nfe", [10]), "[run] nfe", 1, solvers.MAX_NFE)
    seeds = _int_list(run.get("seeds", [0]), "[run] seeds", 0)
    n_samples = run.get("n_samples", 256)
    batch_size = run.get("batch_size", min(n_samples, 256) if isinstance(n_samples, int) else 256)
    for key, value in (("n_samples", n_samples), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"[run] {key} must be a positive integer, got {value!r}")
    device, dtype = run.get("device", "auto"), run.get("dtype", "float32")
    if device not in _DEVICES:
        raise ConfigError(f"unknown device {device!r}; valid: {', '.join(_DEVICES)}")
    if dtype not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; valid: {', '.join(_DTYPES)}")
    metrics = run.get("metrics", ["solver_error"])
    if not isinstance(metrics, list):
        raise ConfigError(f"[run] metrics must be a list, got {metrics!r}")
    for m in metrics:
        if m not in METRICS:
            raise ConfigError(f"unknown metric {m!r}; valid: {', '.join(sorted(METRICS))}")
    reference = run.get("reference", {})
    _check_reference(reference, f"{source} [run.reference]")

    models = []
    for i, m in enumerate(_table_list(data, "models", source)):
        _check_keys(m, _MODEL_KEYS, f"{source} [[models]] #{i + 1}")
        if "name" not in m:
            raise ConfigError(f"[[models]] #{i + 1} needs a name; valid: {', '.join(zoo.available())}")
        n_model = m.get("n_samples")
        if n_model is not None and (not isinstance(n_model, int) or n_model < 1):
            raise ConfigError(f"[[models]] #{i + 1} n_samples must be a positive integer, got {n_model!r}")
        series_subset = m.get("series")
        if series_subset is not None and (not isinstance(series_subset, list) or not series_subset):
            raise ConfigError(f"[[models]] #{i + 1} series must be a non-empty list of sampler series")
        model_reference = m.get("reference", {})
        _check_reference(model_reference, f"{source} [[models]] #{i + 1} reference")
        if "label" in m:
            check_name(m["label"], f"[[models]] #{i + 1} label")
        spec = ModelSpec(m["name"], m.get("schedule"), m.get("label", ""),
                         tuple(series_subset) if series_subset else None, n_model,
                         tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in model_reference.items())),
                         tuple(_int_list(m["nfe"], f"[[models]] #{i + 1} nfe", 1, solvers.MAX_NFE)) if "nfe" in m else None)
        try:
            zoo.load(spec.name, schedule=spec.schedule)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        models.append(spec)
    if not models:
        raise ConfigError(f"{source} has no [[models]]; valid names: {', '.join(zoo.available())}")

    series = []
    for i, s in enumerate(_table_list(data, "samplers", source)):
        where = f"{source} [[samplers]] #{i + 1}"
        _check_keys(s, _SERIES_KEYS, where)
        if "sampler" not in s:
            raise ConfigError(f"{where} needs sampler=; valid: {', '.join(solvers.available())}")
        try:
            spec = solvers.get(s["sampler"])
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if not isinstance(s.get("options", {}), dict):
            raise ConfigError(f"{where} options must be a table, e.g. options = {{ eta = 1.0 }}; got {s['options']!r}")
        options = dict(s.get("options", {}))
        grids = s.get("grids")
        if grids is not None:
            # one series per named grid: the sampler x grid x NFE sweep in one entry
            if not isinstance(grids, list) or not grids or "grid" in options:
                raise ConfigError(f"{where} grids must be a non-empty list of grid names, without options.grid; "
                                  f"got grids={grids!r}")
        if "label" in s:
            check_name(s["label"], f"{where} label")
        nfe_override = _int_list(s["nfe"], f"{where} nfe", 1, solvers.MAX_NFE) if "nfe" in s else None
        for grid in grids or [None]:
            these = options if grid is None else {**options, "grid": grid}
            try:
                spec.check_options(options_without_special_grid(these), tensor_grid_allowed=False)
            except ValueError as e:
                raise ConfigError(f"{where}: {e}") from None
            label = s.get("label", "")
            if label and grid is not None:
                label = check_name(f"{label}[{grid}]", f"{where} label")
            series.append(SeriesSpec(spec.name, these, nfe_override, label))
    if not series:
        raise ConfigError(f"{source} has no [[samplers]]; valid: {', '.join(solvers.available())}")
    keys = [s.key for s in series]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ConfigError(f"sampler series {dupes} appear twice; give them distinct label= or options")
    for m in models:
        unknown = sorted(set(m.series or ()) - set(keys))
        if unknown:
            raise ConfigError(f"model {m.key!r} names unknown series {unknown}; valid: {', '.join(keys)}")

    for flag in ("save_samples", "compile", "cuda_graph"):
        if not isinstance(run.get(flag, False), bool):
            raise ConfigError(f"[run] {flag} must be true or false, got {run[flag]!r}")
    name = check_name(run["name"], "[run] name") if "name" in run else Path(source).stem
    try:
        grid_optimizer = check_optimizer_settings(run.get("grid_optimizer", {}))
        check_special_grids(models, series, nfe)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return SweepConfig(name=name, models=models, samplers=series, nfe=nfe, grid_optimizer=grid_optimizer,
                       seeds=seeds, n_samples=n_samples, batch_size=batch_size, device=device, dtype=dtype,
                       metrics=list(metrics), reference=dict(reference),
                       save_samples=run.get("save_samples", False), compile=run.get("compile", False),
                       cuda_graph=run.get("cuda_graph", False))


def load_config(path: Optional[str | Path] = None) -> SweepConfig:
    """Read and validate a TOML config; None loads the embedded default."""
    if path is None:
        text = resources.files("benchmarks.configs").joinpath(DEFAULT_CONFIG).read_text()
        source = DEFAULT_CONFIG
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        text, source = p.read_text(), str(p)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source} is not valid TOML: {e}") from None
    return parse_config(data, source)
