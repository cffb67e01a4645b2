"""Recipes: YAML files that say what to run, validated into frozen dataclasses.

A recipe names the problems, the models, the search methods (each a name and
`SearchConfig` overrides, optionally swept over values), the seeds and the
output. It only *overrides defaults*: every search setting left out keeps its
`SearchConfig` default, and the search settings themselves are validated by
`SearchConfig.from_dict`. Loading does no I/O beyond reading the file (no
model is built or downloaded here).

Schema (every key optional unless marked; unknown keys are errors that name
the key and the file)::

    name: tiny-compare                # default: the file name without .yaml
    description: free text
    datasets:                         # REQUIRED: a list of names or mappings
      - math500                       # a shipped dataset (math500, amc23, olympiadbench)
      - {name: amc23, limit: 10, ids: ["3", "7"]}
      - {name: path/to/local.jsonl, field_map: {problem: question, answer: final}}
      - {name: synthetic, limit: 100} # mdp backend only: numbered dummy problems
    limit: 6                          # first N problems of every dataset (a dataset's own limit wins)
    backend:                          # REQUIRED
      kind: hf                        # hf | vllm | openai_server | mdp
      options: {dtype: float32}       # keyword arguments for every model of this backend
      draft:  {path: tiny:draft}      # hf/vllm: path (local dir or hub id; "tiny:<role>", see below)
      target: {path: tiny:target, options: {max_length: 1024}}
      prm:    {path: tiny:prm, convention: value_head}     # or step_tag
      # openai_server: {url: http://host:8001/v1, model: <served name>} per role
      # mdp: mdp: {K: 4, H: 4, beta: 0.5, seed: 0, draft_noise: 1.0,
      #            reward_kind: uniform, sparse_p: 0.2, tokens_per_block: 32,
      #            prm_kind: q, cost_model: paper | null}
    defaults: {max_steps: 30}         # search settings shared by every method
    methods:                          # REQUIRED: a non-empty list
      - name: specs                   # REQUIRED, unique
        config: {strategy: specs, n: 4, threshold: 7}
        sweep: {threshold: [5, 7, 9], n: [4, 8]}   # cartesian product of the lists
    seeds: [0, 1, 2]                  # default [0]; SearchConfig.seed is set from these
    batch_size: 8                     # problems in flight per run_search call (default 8)
    cohorts: 1                        # they advance in this many pipelined cohorts (default 1: lockstep;
                                      #   2 overlaps one model's calls with another's, same results)
    output:
      dir: runs/tiny-compare          # default runs/<name> (relative to the working directory)
      summary_every: 1                # rewrite summary.json after this many batches
      grade_timeout: 5.0              # seconds per math-verify comparison
      save_text: true                 # keep the full response text in every record

A *setting* is one point of a method's sweep: ``defaults`` updated by the
method's ``config`` updated by the sweep values. It is identified by the hash
of its fully resolved `SearchConfig` without the seed (`Setting.key`), so two
spellings of the same configuration are the same setting, and a change of a
default is a new setting.

Model paths ``tiny:draft``, ``tiny:target`` and ``tiny:prm`` (hf and vllm)
name the tiny random models of `specs_llm.testing`, built on first use into
``$SPECS_CACHE/tiny-models`` (default ``~/.cache/specs/tiny-models``); see
`tiny_model_path`. ``testbed:draft``, ``testbed:target`` and ``testbed:prm``
name the trained testbed models (`specs_llm.testbed.model_path`);
``testbed-hard:<role>`` those of the harder testbed, once built.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .config import SearchConfig
from .testbed import TESTBEDS

__all__ = [
    "BACKENDS",
    "RecipeError",
    "DatasetSpec",
    "ModelSpec",
    "BackendSpec",
    "MethodSpec",
    "OutputSpec",
    "Setting",
    "Recipe",
    "load_recipe",
    "parse_recipe",
    "cache_dir",
    "tiny_model_path",
    "resolve_model_path",
]

BACKENDS = ("hf", "vllm", "openai_server", "mdp")
TINY_PREFIX = "tiny:"
TESTBED_NAMES = tuple(TESTBEDS)  # "testbed:<role>", "testbed-hard:<role>"
TINY_ROLES = ("draft", "target", "prm")
PRM_CONVENTIONS = ("value_head", "step_tag")
MDP_KEYS = {
    "K": 4, "H": 4, "beta": 0.5, "seed": 0, "draft_noise": 1.0, "reward_kind": "uniform",
    "sparse_p": 0.2, "tokens_per_block": 32, "prm_kind": "q", "cost_model": "paper",
}


class RecipeError(ValueError):
    """A recipe that cannot be run; the message names the file and the key."""


# ---------------------------------------------------------------------------
# the dataclasses


@dataclass(frozen=True)
class DatasetSpec:
    """Problems from one source: a shipped name, a local JSONL path, or "synthetic" (mdp)."""

    name: str
    limit: int | None = None
    ids: tuple[str, ...] | None = None
    field_map: Mapping[str, str | None] | None = None


@dataclass(frozen=True)
class ModelSpec:
    """One model: ``path`` (hf, vllm) or ``url`` + ``model`` (openai_server).

    ``convention`` is the PRM convention ("value_head" or "step_tag"; PRM only).
    ``options`` are keyword arguments of the backend's constructor.
    """

    path: str | None = None
    url: str | None = None
    model: str | None = None
    convention: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendSpec:
    kind: str
    draft: ModelSpec | None = None
    target: ModelSpec | None = None
    prm: ModelSpec | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    mdp: Mapping[str, Any] | None = None  # kind "mdp" only: the MDP and its cost model

    def identity(self) -> dict:
        """What makes results comparable: the backend and the models (not options like batch sizes)."""
        out: dict[str, Any] = {"kind": self.kind}
        for role in TINY_ROLES:
            spec = getattr(self, role)
            if spec is not None:
                out[role] = {k: v for k, v in (("path", spec.path), ("url", spec.url), ("model", spec.model),
                                                ("convention", spec.convention)) if v is not None}
        if self.mdp is not None:
            out["mdp"] = {k: v for k, v in self.mdp.items() if k != "cost_model"}
        return out


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config: Mapping[str, Any] = field(default_factory=dict)
    sweep: Mapping[str, tuple] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputSpec:
    dir: str | None = None
    summary_every: int = 1
    grade_timeout: float = 5.0
    save_text: bool = True


@dataclass(frozen=True)
class Setting:
    """One configuration a method runs with (seed excluded).

    ``values``: the merged overrides (defaults, method config, sweep point);
    ``swept``: the sweep point alone (used to label plots);
    ``key``: 12 hex digits of the SHA-256 of the resolved config without seed.
    """

    method: str
    values: Mapping[str, Any]
    swept: Mapping[str, Any]
    config: SearchConfig
    key: str

    def search_config(self, seed: int) -> SearchConfig:
        return self.config.replace(seed=int(seed))

    @property
    def label(self) -> str:
        if not self.swept:
            return self.method
        return self.method + " (" + ", ".join(f"{k}={v}" for k, v in self.swept.items()) + ")"


@dataclass(frozen=True)
class Recipe:
    name: str
    datasets: tuple[DatasetSpec, ...]
    backend: BackendSpec
    methods: tuple[MethodSpec, ...]
    description: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 8
    cohorts: int = 1
    output: OutputSpec = OutputSpec()
    limit: int | None = None
    source: str = "<string>"  # the file it was read from
    text: str = ""  # the YAML as written

    def settings(self) -> list[Setting]:
        """Every (method, sweep point), in recipe order."""
        out = []
        for m in self.methods:
            keys = list(m.sweep)
            for point in itertools.product(*(m.sweep[k] for k in keys)) if keys else [()]:
                swept = dict(zip(keys, point))
                values = {**self.defaults, **m.config, **swept}
                config = SearchConfig.from_dict(values)
                out.append(Setting(m.name, values, swept, config, config_key(config)))
        return out

    @property
    def step_delimiter(self) -> str:
        return self.settings()[0].config.step_delimiter


def config_key(config: SearchConfig) -> str:
    """12 hex digits identifying a resolved configuration, seed excluded."""
    d = dataclasses.asdict(config)
    d.pop("seed")
    blob = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------
# tiny models


def cache_dir() -> Path:
    """``$SPECS_CACHE`` if set, else ``~/.cache/specs``."""
    env = os.environ.get("SPECS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "specs"


def tiny_model_path(role: str, *, prm_kind: str = "value_head") -> str:
    """The directory of the tiny ``role`` model, built on first use.

    Built by `specs_llm.testing.build_tiny_models` into
    ``cache_dir() / "tiny-models"`` (idempotent: a second call reuses it).
    """
    if role not in TINY_ROLES:
        raise ValueError(f"tiny models are {TINY_ROLES}, got {role!r}")
    from .testing import build_tiny_models

    return build_tiny_models(cache_dir() / "tiny-models", prm_kind=prm_kind)[role]


def resolve_model_path(path: str, *, prm_kind: str = "value_head") -> str:
    """A recipe's model path as a directory: ``tiny:<role>`` and ``testbed:<role>``
    resolved, any other path returned as it is."""
    if path.startswith(TINY_PREFIX):
        return tiny_model_path(path[len(TINY_PREFIX):], prm_kind=prm_kind)
    testbed, _, role = path.partition(":")
    if role and testbed in TESTBED_NAMES:
        from .testbed import model_path

        return model_path(role, testbed)
    return path


# ---------------------------------------------------------------------------
# parsing


class _Ctx:
    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, message: str) -> RecipeError:
        return RecipeError(f"{self.source}: {where}: {message}")

    def mapping(self, value, where: str, known: set[str], required: set[str] = frozenset()) -> dict:
        if not isinstance(value, Mapping):
            raise self.fail(where, f"expected a mapping, got {type(value).__name__} {value!r}")
        unknown = sorted(set(value) - known)
        if unknown:
            raise self.fail(where, f"unknown key(s) {unknown}; known keys: {sorted(known)}")
        missing = sorted(required - set(value))
        if missing:
            raise self.fail(where, f"missing required key(s) {missing}")
        return dict(value)

    def positive_int(self, value, where: str, *, optional=False) -> int | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.fail(where, f"expected an integer >= 1, got {value!r}")
        return value

    def string(self, value, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, f"expected a non-empty string, got {value!r}")
        return value


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and validate the recipe at ``path`` (YAML, `yaml.safe_load`)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such recipe file: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    return parse_recipe(data, source=str(path), text=text, default_name=path.stem)


def parse_recipe(data, *, source: str = "<string>", text: str = "", default_name: str = "recipe") -> Recipe:
    """Validate a recipe given as a mapping (what `yaml.safe_load` returned)."""
    ctx = _Ctx(source)
    top = ctx.mapping(
        data, "recipe",
        {"name", "description", "datasets", "limit", "backend", "defaults", "methods", "seeds",
         "batch_size", "cohorts", "output"},
        {"datasets", "backend", "methods"},
    )
    name = ctx.string(top.get("name", default_name), "name")
    description = top.get("description", "") or ""
    if not isinstance(description, str):
        raise ctx.fail("description", f"expected a string, got {description!r}")
    limit = ctx.positive_int(top.get("limit"), "limit", optional=True)
    backend = _backend(ctx, top["backend"])
    datasets = _datasets(ctx, top["datasets"], backend.kind)
    defaults = top.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise ctx.fail("defaults", f"expected a mapping of search settings, got {defaults!r}")
    _check_search_keys(ctx, defaults, "defaults")
    methods = _methods(ctx, top["methods"])
    seeds = top.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if (not isinstance(seeds, list) or not seeds
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)):
        raise ctx.fail("seeds", f"expected a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ctx.fail("seeds", f"duplicate seeds in {seeds}")
    batch_size = ctx.positive_int(top.get("batch_size", 8), "batch_size")
    cohorts = ctx.positive_int(top.get("cohorts", 1), "cohorts")
    output = _output(ctx, top.get("output") or {})
    recipe = Recipe(
        name=name, datasets=datasets, backend=backend, methods=methods, description=description,
        defaults=dict(defaults), seeds=tuple(seeds), batch_size=batch_size, cohorts=cohorts, output=output, limit=limit,
        source=source, text=text,
    )
    _check_settings(ctx, recipe)
    return recipe


def _check_search_keys(ctx: _Ctx, values: Mapping, where: str) -> None:
    known = {f.name for f in dataclasses.fields(SearchConfig)} - {"seed"}
    if "seed" in values:
        raise ctx.fail(where, "'seed' is set by the recipe's top-level 'seeds' list, not per method")
    unknown = sorted(set(values) - known)
    if unknown:
        raise ctx.fail(where, f"unknown search setting(s) {unknown}; known: {sorted(known)}")


def _datasets(ctx: _Ctx, value, backend_kind: str) -> tuple[DatasetSpec, ...]:
    if isinstance(value, (str, Mapping)):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ctx.fail("datasets", f"expected a non-empty list, got {value!r}")
    out = []
    for i, item in enumerate(value):
        where = f"datasets[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        d = ctx.mapping(item, where, {"name", "limit", "ids", "field_map"}, {"name"})
        name = ctx.string(d["name"], f"{where}.name")
        ids = d.get("ids")
        if ids is not None:
            if not isinstance(ids, list) or not ids or not all(isinstance(x, (str, int)) for x in ids):
                raise ctx.fail(f"{where}.ids", f"expected a non-empty list of ids, got {ids!r}")
            ids = tuple(str(x) for x in ids)
        fm = d.get("field_map")
        if fm is not None and not isinstance(fm, Mapping):
            raise ctx.fail(f"{where}.field_map", f"expected a mapping, got {fm!r}")
        spec = DatasetSpec(name, ctx.positive_int(d.get("limit"), f"{where}.limit", optional=True), ids,
                           dict(fm) if fm is not None else None)
        if (name == "synthetic") != (backend_kind == "mdp"):
            raise ctx.fail(where, "the 'synthetic' dataset goes with (only) the mdp backend, "
                                  f"got dataset {name!r} with backend {backend_kind!r}")
        if name == "synthetic" and spec.limit is None:
            raise ctx.fail(f"{where}.limit", "the synthetic dataset needs a limit (its size)")
        out.append(spec)
    names = [(d.name, d.ids) for d in out]
    if len(set(names)) != len(names):
        raise ctx.fail("datasets", "a dataset is listed twice")
    return tuple(out)


def _model(ctx: _Ctx, value, where: str, kind: str, role: str) -> ModelSpec:
    if isinstance(value, str):
        value = {"url": value} if kind == "openai_server" else {"path": value}
    known = {"options"} | ({"url", "model"} if kind == "openai_server" else {"path"})
    if role == "prm":
        known.add("convention")
    required = {"url"} if kind == "openai_server" else {"path"}
    d = ctx.mapping(value, where, known, required)
    options = d.get("options") or {}
    if not isinstance(options, Mapping):
        raise ctx.fail(f"{where}.options", f"expected a mapping, got {options!r}")
    spec = ModelSpec(
        path=d.get("path"), url=d.get("url"), model=d.get("model"), convention=d.get("convention"),
        options=dict(options),
    )
    if spec.path is not None:
        ctx.string(spec.path, f"{where}.path")
        for prefix, what in ((TINY_PREFIX, "tiny"), *((f"{t}:", t) for t in TESTBED_NAMES)):
            if spec.path.startswith(prefix) and spec.path[len(prefix):] not in TINY_ROLES:
                raise ctx.fail(f"{where}.path", f"{what} models are {[prefix + r for r in TINY_ROLES]}, "
                                                f"got {spec.path!r}")
    if spec.url is not None:
        url = ctx.string(spec.url, f"{where}.url")
        if not url.startswith(("http://", "https://")):
            raise ctx.fail(f"{where}.url", f"expected an http(s):// URL, got {url!r}")
    if role == "prm":
        conv = spec.convention or "value_head"
        if conv not in PRM_CONVENTIONS:
            raise ctx.fail(f"{where}.convention", f"expected one of {PRM_CONVENTIONS}, got {conv!r}")
        spec = dataclasses.replace(spec, convention=conv)
    return spec


def _backend(ctx: _Ctx, value) -> BackendSpec:
    if not isinstance(value, Mapping):
        raise ctx.fail("backend", f"expected a mapping, got {value!r}")
    kind = value.get("kind")
    if kind not in BACKENDS:
        raise ctx.fail("backend.kind", f"expected one of {BACKENDS}, got {kind!r}")
    if kind == "mdp":
        d = ctx.mapping(value, "backend", {"kind", "mdp"})
        mdp = ctx.mapping(d.get("mdp") or {}, "backend.mdp", set(MDP_KEYS))
        merged = {**MDP_KEYS, **mdp}
        for key in ("K", "H", "tokens_per_block"):
            ctx.positive_int(merged[key], f"backend.mdp.{key}")
        if isinstance(merged["seed"], bool) or not isinstance(merged["seed"], int):
            raise ctx.fail("backend.mdp.seed", f"expected an integer, got {merged['seed']!r}")
        for key in ("beta", "draft_noise", "sparse_p"):
            v = merged[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ctx.fail(f"backend.mdp.{key}", f"expected a finite number >= 0, got {v!r}")
        if merged["beta"] <= 0:
            raise ctx.fail("backend.mdp.beta", f"must be > 0, got {merged['beta']!r}")
        if merged["reward_kind"] not in ("uniform", "sparse"):
            raise ctx.fail("backend.mdp.reward_kind", f"expected 'uniform' or 'sparse', got {merged['reward_kind']!r}")
        if merged["prm_kind"] not in ("q", "a", "hard"):
            raise ctx.fail("backend.mdp.prm_kind", f"expected 'q', 'a' or 'hard', got {merged['prm_kind']!r}")
        if merged["cost_model"] not in ("paper", None):
            raise ctx.fail("backend.mdp.cost_model", f"expected 'paper' or null, got {merged['cost_model']!r}")
        return BackendSpec("mdp", mdp=merged)
    d = ctx.mapping(value, "backend", {"kind", "options", "draft", "target", "prm"}, {"target", "prm"})
    options = d.get("options") or {}
    if not isinstance(options, Mapping):
        raise ctx.fail("backend.options", f"expected a mapping, got {options!r}")
    roles = {r: _model(ctx, d[r], f"backend.{r}", kind, r) if d.get(r) is not None else None for r in TINY_ROLES}
    return BackendSpec(kind, roles["draft"], roles["target"], roles["prm"], dict(options))


def _methods(ctx: _Ctx, value) -> tuple[MethodSpec, ...]:
    if not isinstance(value, list) or not value:
        raise ctx.fail("methods", f"expected a non-empty list, got {value!r}")
    out, seen = [], set()
    for i, item in enumerate(value):
        where = f"methods[{i}]"
        d = ctx.mapping(item, where, {"name", "config", "sweep"}, {"name"})
        name = ctx.string(d["name"], f"{where}.name")
        where = f"methods[{i}] ({name})"
        if name in seen:
            raise ctx.fail(where, f"duplicate method name {name!r}")
        seen.add(name)
        config = d.get("config") or {}
        if not isinstance(config, Mapping):
            raise ctx.fail(f"{where}.config", f"expected a mapping of search settings, got {config!r}")
        _check_search_keys(ctx, config, f"{where}.config")
        sweep = d.get("sweep") or {}
        if not isinstance(sweep, Mapping):
            raise ctx.fail(f"{where}.sweep", f"expected a mapping of setting: [values], got {sweep!r}")
        _check_search_keys(ctx, sweep, f"{where}.sweep")
        for k, v in sweep.items():
            if not isinstance(v, list) or not v:
                raise ctx.fail(f"{where}.sweep.{k}", f"expected a non-empty list of values, got {v!r}")
            if len({json.dumps(x, sort_keys=True) for x in v}) != len(v):
                raise ctx.fail(f"{where}.sweep.{k}", f"duplicate values in {v!r}")
        out.append(MethodSpec(name, dict(config), {k: tuple(v) for k, v in sweep.items()}))
    return tuple(out)


def _output(ctx: _Ctx, value) -> OutputSpec:
    d = ctx.mapping(value, "output", {"dir", "summary_every", "grade_timeout", "save_text"})
    out_dir = d.get("dir")
    if out_dir is not None:
        ctx.string(out_dir, "output.dir")
    every = ctx.positive_int(d.get("summary_every", 1), "output.summary_every")
    timeout = d.get("grade_timeout", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ctx.fail("output.grade_timeout", f"expected a number of seconds > 0, got {timeout!r}")
    save_text = d.get("save_text", True)
    if not isinstance(save_text, bool):
        raise ctx.fail("output.save_text", f"expected true or false, got {save_text!r}")
    return OutputSpec(out_dir, every, float(timeout), save_text)


def _check_settings(ctx: _Ctx, recipe: Recipe) -> None:
    """Every setting must build a SearchConfig; settings must be distinct and
    share one step delimiter (the models format prompts with it)."""
    for m in recipe.methods:
        keys = list(m.sweep)
        for point in itertools.product(*(m.sweep[k] for k in keys)) if keys else [()]:
            values = {**recipe.defaults, **m.config, **dict(zip(keys, point))}
            try:
                SearchConfig.from_dict(values)
            except (TypeError, ValueError) as err:
                raise ctx.fail(f"method {m.name!r}", f"bad search settings {values}: {err}") from None
    settings = recipe.settings()
    seen: dict[tuple[str, str], str] = {}
    for s in settings:
        if (s.method, s.key) in seen:
            raise ctx.fail(f"method {s.method!r}", f"two sweep points resolve to the same configuration ({s.label})")
        seen[(s.method, s.key)] = s.label
    delimiters = {s.config.step_delimiter for s in settings}
    if len(delimiters) > 1:
        raise ctx.fail("methods", f"all methods must share one step_delimiter (the backends format "
                                  f"prompts with it), got {sorted(map(repr, delimiters))}")
    if recipe.backend.kind == "mdp":
        bon = [s.label for s in settings if s.config.strategy == "bon"]
        if bon:
            raise ctx.fail("methods", f"best-of-n needs whole responses, which the mdp backend does not "
                                      f"generate (one block per call): {bon}")
    needs_draft = any("draft" in s.config.roles for s in settings)
    if recipe.backend.kind != "mdp" and needs_draft and recipe.backend.draft is None:
        raise ctx.fail("backend.draft", "a method needs the draft model but the backend names none")
