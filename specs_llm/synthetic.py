"""Synthetic experiments on a block MDP: the objective-latency Pareto curve and Figure 2(b).

Both run the real search loop (`specs_llm.search.run_search`) on the MDP
backend (`specs_llm.backends.mdp`), so what they measure is what the LLM
runner does; only the clock is replaced by a latency cost model.

The latency cost model is `specs_llm.timing.CostModel.paper` (the paper's
model sizes; derivation in `specs_llm.timing`).

An MDP block stands for a reasoning step of ``tokens_per_block`` tokens.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .backends.base import State
from .config import SearchConfig
from .report import front_points, matched_latency_ratio
from .timing import CostModel

__all__ = ["synthetic_pareto", "fig2b", "rollout"]

# ---------------------------------------------------------------------------
# Pareto curve


def _methods(grid: dict, beta: float, q_quantile) -> list[tuple[str, dict, SearchConfig]]:
    """(method, swept values, config) of every point of the sweep.

    "SPECS" is the paper's setting (the `SearchConfig` defaults: score
    ``(log pi_t - log pi_d) + 10 r``, selection temperature 0.2, threshold on
    the score, greedy target mode, switch-back 0.7, first step from the
    target), swept over n and the threshold. "SPECS (idealised)" is THEORY.md
    2.2 (weights ``pi_t/pi_d exp(Q*/beta)``, temperature 1, threshold on Q*,
    first step from the draft, no switch-back), whose exact law is known, so
    its J is exact. Every model samples at temperature 1 (its own policy).
    """
    common = dict(k=1, sampling_temperature=1.0, max_steps=64, seed=0)
    out = []
    for n in grid["beam_n"]:
        out.append(("target beam search", {"n": n}, SearchConfig(strategy="beam", generator="target", n=n, **common)))
        out.append(("draft beam search", {"n": n}, SearchConfig(strategy="beam", generator="draft", n=n, **common)))
    for n in grid["specs_n"]:
        for tau in grid["specs_threshold"]:
            out.append(("SPECS", {"n": n, "threshold": tau}, SearchConfig(strategy="specs", n=n, threshold=tau, **common)))
    for n in grid["ideal_n"]:
        for a in grid["ideal_quantile"]:
            tau = None if a is None else q_quantile(a)
            cfg = SearchConfig(strategy="specs", n=n, temperature=1.0, ratio_weight=1.0, reward_weight=1.0 / beta,
                               threshold=tau, threshold_on="reward", target_mode="greedy",
                               switch_back_threshold=None, first_step="draft", **common)
            out.append(("SPECS (idealised)", {"n": n, "threshold": tau}, cfg))
    for n in grid["rsd_n"]:
        for a in grid["rsd_quantile"]:
            cfg = SearchConfig(strategy="rsd", n=n, threshold=q_quantile(a), target_mode="greedy",
                               switch_back_threshold=None, **common)
            out.append(("RSD", {"n": n, "threshold": q_quantile(a)}, cfg))
    return out


GRIDS = {
    "full": {"beam_n": (1, 2, 4, 8, 16), "specs_n": (2, 4, 8, 16), "specs_threshold": (6.0, 7.0, 8.0, 9.0),
             "ideal_n": (4,), "ideal_quantile": (None, 0.75, 0.9), "rsd_n": (1,),
             "rsd_quantile": (0.25, 0.5, 0.75, 0.9)},
    "quick": {"beam_n": (1, 4), "specs_n": (4,), "specs_threshold": (6.0, 8.0), "ideal_n": (4,),
              "ideal_quantile": (None,), "rsd_n": (1,), "rsd_quantile": (0.5,)},
}


def _exact(mdp, method: str, config: SearchConfig):
    """(mean reward, J) of the exact law of a method's policy, or (None, None) where none exists."""
    from specs_theory import exact, metrics

    if method == "SPECS (idealised)":
        pol = exact.specs_policy(mdp, config.n, threshold=config.threshold, target_mode="greedy", score="q")
        seq = exact.sequence_logprobs(mdp, pol.logp)
    elif method in ("target beam search", "draft beam search"):
        # exact.beam_policy, depth by depth: BoN_n[pi_gen(.|s), Q*(s,.)]. (Called per depth because the
        # whole-MDP jitted exact.beam_policy returned NaN rows on K=6, H=5 when this was written.)
        gen = mdp.target_logp if config.generator == "target" else mdp.draft_logp
        Q = exact.q_values(mdp)
        policy = tuple(exact.best_of_n_logprobs(gen[h], Q[h], config.n) for h in range(mdp.H))
        seq = exact.sequence_logprobs(mdp, policy)
    else:
        return None, None
    p = np.exp(np.asarray(seq))
    mean, J = float(p @ np.asarray(mdp.reward)), float(metrics.objective(mdp, seq))
    if not (math.isfinite(mean) and math.isfinite(J)):
        raise FloatingPointError(f"the exact law of {method} (n={config.n}) is not finite")
    return mean, J


def synthetic_pareto(
    out_dir: str | Path,
    quick: bool = False,
    *,
    seed: int = 0,
    K: int = 6,
    H: int = 5,
    beta: float = 0.2,
    draft_noise: float = 1.0,
    tokens_per_block: int = 32,
    problems: int | None = None,
) -> dict:
    """Objective-latency Pareto curves of SPECS, target/draft beam search and RSD on a random MDP.

    Each point runs ``problems`` searches (512; 64 when ``quick``) of one
    configuration on ``random_mdp(key(seed), K, H, beta, draft_noise)`` with
    the idealised PRM (Q*), and records the mean terminal reward (simulated,
    and exact where `specs_theory.exact` has the policy: idealised SPECS and
    beam search), the KL-regularised objective J (exact only) and the mean
    latency per problem under `CostModel.paper` (and under its
    ``parallel_decode`` variant). Sweeps (`GRIDS`, see `_methods`): n for
    every method; the score threshold for SPECS (paper setting); the Q*
    threshold (quantiles of Q* over all steps, or none) for idealised SPECS
    and RSD. The objective of a point is its exact mean reward when known,
    else the simulated one.

    Writes ``pareto.png``, ``pareto.json`` and ``pareto.csv`` into ``out_dir``;
    returns the JSON content, whose ``matched`` entry gives, for each target
    beam search point, the latency SPECS needs to reach its objective
    (on SPECS's Pareto front) relative to it.
    """
    import jax

    from specs_theory import exact
    from specs_theory.mdp import random_mdp

    from .backends.mdp import MDPLanguageModel, MDPRewardModel, parse_blocks, sequence_index
    from .search import Models, run_search
    from .timing import Ledger

    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    P = problems or (64 if quick else 512)
    mdp = random_mdp(jax.random.key(seed), K=K, H=H, beta=beta, draft_noise=draft_noise)
    models = Models(MDPLanguageModel(mdp, "draft", tokens_per_block=tokens_per_block),
                    MDPLanguageModel(mdp, "target", tokens_per_block=tokens_per_block), MDPRewardModel(mdp, "q"))
    q_all = np.concatenate([np.asarray(q).ravel() for q in exact.q_values(mdp)])
    grid = GRIDS["quick" if quick else "full"]
    costs = {"throughput": CostModel.paper(tokens_per_block=tokens_per_block),
             "parallel": CostModel.paper(parallel_decode=True, tokens_per_block=tokens_per_block)}
    rows = []
    R = float(mdp.reward_range)
    for method, swept, config in _methods(grid, beta, lambda a: round(float(np.quantile(q_all, a)), 4)):
        ledger = Ledger()
        results = run_search(["synthetic"] * P, models, config, ledger=ledger)
        errors = [r.error for r in results if r.error is not None]
        if errors:
            raise RuntimeError(f"{method} {swept}: {len(errors)} failed searches, e.g. {errors[0]}")
        rewards = np.array([float(mdp.reward[sequence_index(parse_blocks([s.text for s in r.steps], mdp.K), mdp.K)])
                            for r in results]) / R
        latency = {}
        for name, cm in costs.items():
            ledger.cost_model = cm
            latency[name] = float(np.mean([ledger.problem_summary(i)["seconds"] for i in range(P)]))
        exact_reward, J = _exact(mdp, method, config)
        steps = sum(r.counts["steps"] for r in results)
        rows.append({
            "method": method,
            "n": config.n,
            "threshold": swept.get("threshold"),
            "reward_sim": float(rewards.mean()),
            "reward_sim_se": float(rewards.std(ddof=1) / math.sqrt(P)),
            "reward_exact": None if exact_reward is None else exact_reward / R,
            "objective": exact_reward / R if exact_reward is not None else float(rewards.mean()),
            "J_exact": J,
            "latency_s": latency["throughput"],
            "latency_parallel_s": latency["parallel"],
            "deferral_rate": sum(r.counts["deferrals"] for r in results) / steps,
        })
    result = {
        "mdp": {"K": K, "H": H, "beta": beta, "draft_noise": draft_noise, "seed": seed, "reward": "uniform",
                "prm": "Q* (idealised)", "tokens_per_block": tokens_per_block, "reward_range": R},
        "problems_per_point": P,
        "cost_model": costs["throughput"].describe(),
        "cost_model_parallel": costs["parallel"].describe(),
        "objective": "mean terminal reward / R (exact where the exact policy is known, else simulated)",
        "rows": rows,
    }
    result["matched"] = {name: _matched(rows, key) for name, key in
                         (("throughput", "latency_s"), ("parallel", "latency_parallel_s"))}
    result["seconds"] = time.perf_counter() - t_start
    _write_pareto(out, result)
    result["seconds"] = time.perf_counter() - t_start
    (out / "pareto.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def _matched(rows: list[dict], latency_key: str) -> dict:
    """SPECS's latency at matched objective relative to each target beam search point."""
    specs_front = front_points([(r[latency_key], r["objective"]) for r in rows if r["method"] == "SPECS"])
    per_n = []
    for r in sorted((r for r in rows if r["method"] == "target beam search"), key=lambda r: r["n"]):
        ratio = matched_latency_ratio(specs_front, r[latency_key], r["objective"])
        per_n.append({"beam_n": r["n"], "objective": r["objective"], "beam_latency_s": r[latency_key],
                      "specs_latency_ratio": ratio})
    reached = [x["specs_latency_ratio"] for x in per_n if x["specs_latency_ratio"] is not None]
    return {"per_beam_n": per_n, "best_ratio": min(reached) if reached else None,
            "median_ratio": float(np.median(reached)) if reached else None}


def _write_rows(path: Path, rows: list[dict]) -> None:
    """The rows as CSV (None written as an empty cell)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if v is None else v for k, v in r.items()})


def _write_pareto(out: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    _write_rows(out / "pareto.csv", rows)
    styles = {"SPECS": ("tab:blue", "o"), "SPECS (idealised)": ("tab:cyan", "P"), "target beam search": ("tab:red", "s"),
              "draft beam search": ("tab:green", "^"), "RSD": ("tab:purple", "D")}
    panels = [("latency_s", "objective", "mean terminal reward / R", "every token charged"),
              ("latency_parallel_s", "objective", "mean terminal reward / R", "candidates decoded in parallel"),
              ("latency_s", "J_exact", "J = E[r] - beta KL(pi || pi_t) (exact)", "every token charged")]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.2))
    for ax, (xk, yk, ylabel, regime) in zip(axes, panels):
        for method, (color, marker) in styles.items():
            pts = [r for r in rows if r["method"] == method and r[yk] is not None]
            if not pts:
                continue
            ax.scatter([r[xk] for r in pts], [r[yk] for r in pts], color=color, marker=marker, s=22, alpha=0.45)
            front = front_points([(r[xk], r[yk]) for r in pts])
            ax.plot([p[0] for p in front], [p[1] for p in front], color=color, marker=marker, lw=1.6, ms=6,
                    label=f"{method} (Pareto front)")
        ax.set_xscale("log")
        ax.set_xlabel("mean latency per problem (s, cost model; log scale)")
        ax.set_ylabel(ylabel)
        ax.set_title(regime)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower right")
    m = result["mdp"]
    match = result["matched"]["throughput"]
    ratio = match["median_ratio"]
    fig.suptitle(
        f"Random MDP K={m['K']}, H={m['H']}, beta={m['beta']}, {result['problems_per_point']} problems per point; "
        f"cost: target 14 ms/token, draft 3 ms/token, scoring 1.4 ms/token; "
        f"SPECS latency at matched objective / target beam search (median over n): "
        + (f"{ratio:.2f}" if ratio is not None else "not reached"), fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------
# Figure 2(b)


def rollout(model, states: Sequence[State], *, max_steps: int, stop: Sequence[str], max_tokens: int,
            temperature: float, seed: int) -> tuple[list[State], list[bool]]:
    """Sample up to ``max_steps`` further steps of each state from ``model`` (one
    sample per state per call, all states in one call). Returns the states and
    whether each ended (EOS or the step token limit)."""
    states = list(states)
    done = [False] * len(states)
    for step in range(max_steps):
        active = [i for i, d in enumerate(done) if not d]
        if not active:
            break
        out = model.generate([states[i] for i in active], 1, stop=stop, max_tokens=max_tokens,
                             temperature=temperature, seed=(seed * 1_000_003 + step * 7919) % 2**31)
        for i, (s,) in zip(active, out):
            states[i] = states[i].extend(s.text)
            if s.finish_reason in ("eos", "length"):
                done[i] = True
    return states, done


def fig2b(
    out_dir: str | Path,
    recipe: str | Path | None = None,
    *,
    quick: bool = False,
    prefix_steps: int | None = None,
    samples: int | None = None,
    buckets: int = 5,
    limit: int | None = None,
    seed: int = 0,
) -> dict:
    """The paper's Figure 2(b): complete target-started partial traces with the draft vs the target.

    For each problem, ``samples`` partial traces of ``prefix_steps`` steps are
    sampled from the target; the PRM scores each (reward of its last step);
    each is then completed once by the draft and once by the target (one
    sample per step, the recipe's sampling temperature). Traces are bucketed
    by PRM score into ``buckets`` equal-count bins; per bucket the outcome of
    the draft's and the target's completions is averaged (graded accuracy on
    LLMs, terminal reward / R on the MDP). Traces that ended within the prefix
    are dropped (counted).

    ``recipe`` None: a random MDP (K=3, H=6, sparse 0/1 rewards, p=0.3; PRM
    = Q^{pi_t}, the probability that the target completes correctly; prefix 4
    blocks). Otherwise the recipe's backend and first dataset (its limit, or
    ``limit``) with its first method's step delimiter, step token limit,
    sampling temperature and step limit (``max_steps``).

    Writes ``fig2b.png``, ``fig2b.json``, ``fig2b.csv``; returns the JSON content.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if recipe is None:
        setup = _mdp_fig2b_setup(quick, seed, limit)
    else:
        setup = _recipe_fig2b_setup(recipe, quick, limit)
    prefix_steps = prefix_steps if prefix_steps is not None else setup["prefix_steps"]
    samples = samples if samples is not None else (setup["samples_quick"] if quick else setup["samples"])
    draft, target, prm = setup["models"]
    questions = setup["questions"]
    gen = dict(stop=(setup["delimiter"],), max_tokens=setup["max_tokens"], temperature=setup["temperature"])
    starts = [State(q) for q in questions for _ in range(samples)]
    owner = [i for i in range(len(questions)) for _ in range(samples)]
    prefixes, ended = rollout(target, starts, max_steps=prefix_steps, seed=seed, **gen)
    keep = [j for j, e in enumerate(ended) if not e and len(prefixes[j].steps) == prefix_steps]
    prefixes = [prefixes[j] for j in keep]
    owner = [owner[j] for j in keep]
    scores = [rs[-1] for rs in prm.rewards(prefixes)]
    rest = setup["max_steps"] - prefix_steps
    completions = {}
    for name, model, s in (("draft", draft, seed + 1), ("target", target, seed + 2)):
        states, _ = rollout(model, prefixes, max_steps=rest, seed=s, **gen)
        completions[name] = [setup["outcome"](owner[j], st) for j, st in enumerate(states)]
    setup["close"]()
    scores_arr = np.array(scores, dtype=float)
    finite = np.isfinite(scores_arr)
    # equal-count buckets; tied scores (a discrete PRM) can merge buckets, never split a tie
    edges = np.unique(np.quantile(scores_arr[finite], np.linspace(0, 1, buckets + 1))) if finite.any() else []
    if len(edges) < 2:
        edges = np.array([edges[0], edges[0]]) if len(edges) else np.array([0.0, 1.0])
    which = np.clip(np.searchsorted(edges, scores_arr, side="right") - 1, 0, len(edges) - 2)
    rows = []
    for b in range(len(edges) - 1):
        idx = [j for j in range(len(scores)) if finite[j] and which[j] == b]
        row = {"bucket": b, "score_lo": float(edges[b]), "score_hi": float(edges[b + 1]), "count": len(idx),
               "mean_prm_score": float(np.mean(scores_arr[idx])) if idx else None}
        for name in ("draft", "target"):
            v = np.array([completions[name][j] for j in idx], dtype=float)
            row[f"{name}_accuracy"] = float(v.mean()) if idx else None
            row[f"{name}_se"] = float(v.std(ddof=1) / math.sqrt(len(v))) if len(idx) > 1 else None
        rows.append(row)
    result = {
        "setup": setup["describe"],
        "prefix_steps": prefix_steps,
        "samples_per_problem": samples,
        "traces": len(prefixes),
        "dropped_ended_in_prefix": len(starts) - len(prefixes),
        "nan_prm_scores": int((~finite).sum()),
        "outcome": setup["outcome_label"],
        "rows": rows,
    }
    _write_fig2b(out, result)
    return result


def _mdp_fig2b_setup(quick: bool, seed: int, limit: int | None) -> dict:
    import jax

    from specs_theory.mdp import random_mdp

    from .backends.mdp import MDPLanguageModel, MDPRewardModel, parse_blocks, sequence_index

    K, H, p = 3, 6, 0.3
    mdp = random_mdp(jax.random.key(seed), K=K, H=H, beta=1.0, draft_noise=1.0, reward_kind="sparse", sparse_p=p)
    R = float(mdp.reward_range)

    def outcome(_, state):
        return float(mdp.reward[sequence_index(parse_blocks(state.steps, K), K)]) / R

    n = limit or (100 if quick else 400)
    return {
        "models": (MDPLanguageModel(mdp, "draft"), MDPLanguageModel(mdp, "target"), MDPRewardModel(mdp, "hard")),
        "questions": [f"synthetic problem {i}" for i in range(n)],
        "outcome": outcome,
        "outcome_label": "terminal reward / R (0 or 1: solved)",
        "delimiter": "\n\n", "max_tokens": 1, "temperature": 1.0, "max_steps": H,
        "prefix_steps": 4, "samples": 10, "samples_quick": 5,
        "close": lambda: None,
        "describe": {"backend": "mdp", "K": K, "H": H, "reward": f"sparse 0/1, p={p}", "draft_noise": 1.0,
                     "seed": seed, "prm": "Q^{pi_t} (probability the target completes correctly)", "problems": n},
    }


def _recipe_fig2b_setup(recipe_path, quick: bool, limit: int | None) -> dict:
    from .grading import Grader
    from .recipes import load_recipe
    from .runner import recipe_models, recipe_problems

    recipe = load_recipe(recipe_path)
    setting = recipe.settings()[0]
    spec = dataclasses.replace(setting, config=setting.config.replace(strategy="specs"))  # all three models
    draft, target, prm = recipe_models(recipe, spec)
    first = dataclasses.replace(recipe, datasets=recipe.datasets[:1])
    problems = recipe_problems(first, limit if limit is not None else (2 if quick else None), None)
    c = setting.config
    if recipe.backend.kind == "mdp":
        from .runner import recipe_mdp
        from .backends.mdp import parse_blocks, sequence_index

        mdp = recipe_mdp(recipe.backend)[0]
        outcome = lambda i, st: float(mdp.reward[sequence_index(parse_blocks(st.steps, mdp.K), mdp.K)]) / float(mdp.reward_range)  # noqa: E731
        label, close = "terminal reward / R", (lambda: None)
    else:
        grader = Grader(timeout=recipe.output.grade_timeout)

        def outcome(i, st):
            return 1.0 if grader.grade(c.step_delimiter.join(st.steps), problems[i].answer).correct else 0.0

        label, close = "graded accuracy (fraction correct)", grader.close
    return {
        "models": (draft, target, prm),
        "questions": [p.problem for p in problems],
        "outcome": outcome, "outcome_label": label,
        "delimiter": c.step_delimiter, "max_tokens": c.max_step_tokens, "temperature": c.sampling_temperature,
        "max_steps": c.max_steps, "prefix_steps": 1, "samples": 4, "samples_quick": 2, "close": close,
        "describe": {"backend": recipe.backend.kind, "recipe": str(recipe_path), "models": recipe.backend.identity(),
                     "dataset": first.datasets[0].name, "problems": len(problems)},
    }


def _write_fig2b(out: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    _write_rows(out / "fig2b.csv", rows)
    (out / "fig2b.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    fig, ax = plt.subplots(figsize=(8, 4.8))
    x = np.arange(len(rows))
    for off, name, color in ((-0.2, "draft", "tab:green"), (0.2, "target", "tab:red")):
        vals = [r[f"{name}_accuracy"] or 0.0 for r in rows]
        errs = [r[f"{name}_se"] or 0.0 for r in rows]
        ax.bar(x + off, vals, 0.4, yerr=errs, capsize=3, color=color, label=f"completed by the {name}")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{r['score_lo']:.2f}-{r['score_hi']:.2f}\n(n={r['count']})" for r in rows], fontsize=8)
    ax.set_xlabel(f"PRM score of the target's first {result['prefix_steps']} step(s) (equal-count buckets)")
    ax.set_ylabel(result["outcome"])
    ax.set_ylim(0, 1.05)
    ax.set_title("Completion of target-started partial traces: draft vs target (error bars: s.e.)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "fig2b.png", dpi=120)
    plt.close(fig)
