"""GPU latency check at the paper's model shapes, random weights, HF backend.

The latency argument of SPECS: scoring n drafted steps under the target (one
prefill over all their tokens) costs less than the target generating them
(one forward pass per token), so drafting with a small model and verifying
with the large one beats the large one writing every step. This script puts
measured numbers on that at the real shapes, on a machine that has a CUDA
GPU, torch and transformers but no vLLM and no model weights:

- draft  Qwen2.5-Math-1.5B-Instruct, target Qwen2.5-Math-7B-Instruct and the
  PRM Qwen2.5-Math-PRM-7B (the 7B body with its two-layer score head
  ``Linear(h, h), ReLU, Linear(h, 2)`` read at the step separator
  ``<extra_0>``: the project's "step_tag" convention) are built from their
  configurations (`SHAPES`) with random weights, in bf16, directly on the
  device: nothing is downloaded or written to disk. Latency depends on the
  shapes, not on the weights.
- every measurement goes through the project's hf backend
  (`HFLanguageModel.from_model`, `HFRewardModel.from_model`) and, for the
  search, `specs_llm.search.run_search`, so it includes the backend's own
  per-token work (the sampling loop, the stop-string check).

What it measures (median seconds over ``--repeats`` after a warm-up):

1. ``decode``: per-token decode cost of draft and target at batch 1, n and
   problems * n rows: ``(t(T tokens) - t(1 token)) / (T - 1)`` (the prefill
   is subtracted); ratio target / draft.
2. ``scoring``: n candidate steps of L tokens after a prompt of P tokens:
   the target generating them, the draft generating them, the target scoring
   them (`LanguageModel.score`, one batched prefill) and the PRM scoring
   them; ratio target-generate / target-score (the paper's mechanism) and the
   step cost of a SPECS round against a target-beam round.
3. ``search``: `run_search` at n = 4, k = 1 on ``--problems`` prompts for
   ``--steps`` steps: SPECS (first step from the draft, no threshold, so
   every draft is accepted and the draft path is measured) against PRM-guided
   beam search with the target generating; wall seconds, the ratio, and the
   per-phase seconds of the run's `Ledger`.

Fixed step lengths. Random weights write no delimiter, so a logit mask on
draft and target (`StepRule`) makes every step exactly L tokens: L - 2 lower-
case letters then "\\n", "\\n" (the step delimiter), chosen by the position
of the predicted token. The mask is one elementwise add over the logits
(small next to the lm_head matmul and the backend's float32 log-softmax).
The tokenizer is the tests' byte-level one (`specs_llm.testing`, one token per
character, no merges), so texts re-encode to exactly the sampled tokens.

Run on a GPU (an estimate of 2-4 minutes on one H100/H200-class GPU at the
default settings, ~33 GB of GPU memory; not yet run on a GPU; ``--budget``
skips the measurements not started within its seconds):

    python benchmarks/gpu_check.py --out gpu_check.json

Without a CUDA GPU it exits with status 2 and says so. The script itself is
tested on CPU at reduced shapes (tests/test_gpu_check.py):

    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The selection step is tiny: keep JAX on the CPU (and away from its default
# preallocation of most of the GPU's memory, which the models need).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# The real configurations (config.json of the Hugging Face checkpoints
# Qwen/Qwen2.5-Math-1.5B-Instruct and Qwen/Qwen2.5-Math-7B-Instruct, as
# published; Qwen2.5-Math-PRM-7B is the 7B body plus the score head of its
# modeling code). Checked against public copies of those config.json files.
SHAPES = {
    "real": {
        "draft": dict(source="Qwen/Qwen2.5-Math-1.5B-Instruct", hidden_size=1536, intermediate_size=8960,
                      num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                      max_position_embeddings=4096, tie_word_embeddings=True),
        "target": dict(source="Qwen/Qwen2.5-Math-7B-Instruct", hidden_size=3584, intermediate_size=18944,
                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                       max_position_embeddings=4096, tie_word_embeddings=False),
        "prm": dict(source="Qwen/Qwen2.5-Math-PRM-7B (7B body, score head Linear(h,h)-ReLU-Linear(h,2))",
                    hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                    num_key_value_heads=4, vocab_size=152064, max_position_embeddings=4096,
                    tie_word_embeddings=False),
    },
    # The same structure, small enough for a CPU test (vocab > tokenizer, so
    # the logit mask is exercised; tied draft embeddings as the 1.5B).
    "tiny": {
        "draft": dict(source="tiny stand-in", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, vocab_size=128, max_position_embeddings=1024,
                      tie_word_embeddings=True),
        "target": dict(source="tiny stand-in", hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=128, max_position_embeddings=1024,
                       tie_word_embeddings=False),
        "prm": dict(source="tiny stand-in", hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, vocab_size=128, max_position_embeddings=1024,
                    tie_word_embeddings=False),
    },
}
COMMON_CONFIG = dict(rope_theta=10000.0, rms_norm_eps=1e-6, use_sliding_window=False, hidden_act="silu")

# Run settings: (real shapes, --tiny).
DEFAULTS = dict(
    n=(4, 4), problems=(4, 4), steps=(4, 2), step_tokens=(32, 8), question_tokens=(96, 24),
    context_steps=(4, 2), decode_tokens=(64, 12), repeats=(3, 2),
)
SAMPLING_TEMPERATURE = 0.7
NO_GPU = ("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); the default --device cuda builds "
          "the real 1.5B/7B/7B models (~33 GB of bf16 weights). To test this script on a CPU at reduced shapes, "
          "run: python benchmarks/gpu_check.py --device cpu --tiny")


class Progress:
    """Elapsed-time stamps on stderr and the ``--budget`` guard."""

    def __init__(self, budget: float):
        self.t0, self.budget = time.perf_counter(), budget

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def say(self, text: str) -> None:
        print(f"[gpu_check {self.elapsed:6.1f}s] {text}", file=sys.stderr, flush=True)

    def over(self) -> bool:
        return self.elapsed > self.budget


# ---------------------------------------------------------------------------
# models


def build_models(shapes: dict, tokenizer, device, dtype, progress: Progress) -> tuple[dict, dict]:
    """Random-weight draft, target (``Qwen2ForCausalLM``) and PRM
    (``Qwen2ForTokenClassification`` with the two-layer head), built on
    ``device`` in ``dtype``. Returns (models, {role: {params, seconds}})."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, Qwen2Config

    models, info = {}, {}
    for role, shape in shapes.items():
        t0 = time.perf_counter()
        cfg = {k: v for k, v in shape.items() if k != "source"}
        head = dict(num_labels=2, classifier_dropout=0.0) if role == "prm" else {}
        config = Qwen2Config(**cfg, **COMMON_CONFIG, **head, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        with torch.device(device):
            if role == "prm":
                model = AutoModelForTokenClassification.from_config(config, dtype=dtype)
                h = config.hidden_size
                model.score = torch.nn.Sequential(torch.nn.Linear(h, h), torch.nn.ReLU(),
                                                  torch.nn.Linear(h, 2)).to(device=device, dtype=dtype)
            else:
                model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        if {p.dtype for p in model.parameters()} != {dtype}:  # a transformers that ignored ``dtype``
            model.to(dtype)
        model.eval()
        _sync(device)
        params = sum(p.numel() for p in model.parameters())
        info[role] = dict(shape, params=params, seconds=time.perf_counter() - t0,
                          attn_implementation=getattr(model.config, "_attn_implementation", None))
        size = f"{params / 1e9:.2f}B" if params >= 1e8 else f"{params / 1e6:.2f}M"
        progress.say(f"built {role}: {size} parameters in {info[role]['seconds']:.1f} s")
        models[role] = model
    return models, info


class StepRule:
    """A logit mask that makes a random-weight LM write steps of exactly
    ``step_tokens`` tokens: the token predicted for position q is a lower-case
    letter, or "\\n" when ``(q - prompt_tokens) mod step_tokens`` is one of the
    last two offsets. Every prompt of the check has ``prompt_tokens`` tokens
    before its first step and whole steps after it, so each step is L - 2
    letters then the delimiter "\\n\\n". Masked logits get -1e4 (finite)."""

    def __init__(self, model, tokenizer, prompt_tokens: int, step_tokens: int):
        import torch

        like = dict(device=model.device, dtype=model.dtype)
        letters = [tokenizer.convert_tokens_to_ids(c) for c in "abcdefghijklmnopqrstuvwxyz"]
        (newline,) = tokenizer.encode("\n", add_special_tokens=False)
        self.letter_bias = torch.full((model.config.vocab_size,), -1e4, **like)
        self.letter_bias[letters] = 0.0
        self.newline_bias = torch.full((model.config.vocab_size,), -1e4, **like)
        self.newline_bias[newline] = 0.0
        self.prompt_tokens, self.step_tokens = prompt_tokens, step_tokens
        self.positions = None
        model.register_forward_pre_hook(self._positions, with_kwargs=True)
        model.get_output_embeddings().register_forward_hook(self._mask)

    def _positions(self, module, args, kwargs):
        import torch

        pos = kwargs.get("position_ids")
        if pos is None:  # scoring: right-padded rows, positions 0..T-1
            ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
            pos = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
        self.positions = pos

    def _mask(self, module, inputs, logits):
        import torch

        predicted = self.positions[:, -logits.shape[1]:] + 1
        offset = (predicted - self.prompt_tokens) % self.step_tokens
        newline = (offset >= self.step_tokens - 2)[..., None]
        return logits + torch.where(newline, self.newline_bias, self.letter_bias)


def questions(tokenizer, count: int, length: int) -> list[str]:
    """``count`` distinct questions of exactly ``length`` tokens (one per character)."""
    out = []
    for i in range(count):
        head = f"Problem {i}: "
        body = ("find the sum of the first integers " * (length // 20 + 2))[: length - len(head)]
        q = head + body
        if len(tokenizer.encode(q, add_special_tokens=False)) != length:
            raise RuntimeError("the check's tokenizer must give one token per character")
        out.append(q)
    return out


# ---------------------------------------------------------------------------
# timing


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device) -> dict:
    """Median (and all) wall seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    secs = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        secs.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(secs), "runs_s": secs}


def check_steps(steps, n: int, length: int, who: str) -> None:
    bad = [(s.num_tokens, s.finish_reason) for s in steps if s.num_tokens != length or s.finish_reason != "stop"]
    if len(steps) != n or bad:
        raise RuntimeError(f"{who}: expected {n} steps of {length} tokens ending in the delimiter, got {bad or steps}")


# ---------------------------------------------------------------------------
# the three measurements


def measure_decode(lms: dict, state, a, device, progress: Progress) -> dict:
    out = {}
    batches = sorted({1, a.n, a.problems * a.n})
    for role, lm in lms.items():
        out[role] = {}
        for b in batches:
            def gen(tokens, b=b, lm=lm):
                lm.generate([state], b, stop=(), max_tokens=tokens, temperature=SAMPLING_TEMPERATURE, seed=1)
            full = timed(lambda: gen(a.decode_tokens), a.repeats, device)
            one = timed(lambda: gen(1), a.repeats, device)
            per_token = (full["median_s"] - one["median_s"]) / (a.decode_tokens - 1)
            out[role][f"batch_{b}"] = dict(rows=b, tokens=a.decode_tokens, generate_s=full, first_token_s=one,
                                           per_token_s=per_token)
            progress.say(f"decode {role} batch {b}: {1e3 * per_token:.2f} ms/token")
    out["ratio_target_over_draft"] = {
        k: out["target"][k]["per_token_s"] / out["draft"][k]["per_token_s"] for k in out["target"]}
    return out


def measure_scoring(lms: dict, prm, state, a, device, progress: Progress) -> dict:
    stop = ("\n\n",)
    kw = dict(stop=stop, max_tokens=a.step_tokens, temperature=SAMPLING_TEMPERATURE, seed=2)
    cands = lms["draft"].generate([state], a.n, **kw)[0]
    check_steps(cands, a.n, a.step_tokens, "draft")
    check_steps(lms["target"].generate([state], a.n, **kw)[0], a.n, a.step_tokens, "target")
    texts = [s.scored_text for s in cands]
    extended = [state.extend(s.text) for s in cands]
    r = {
        "target_generate": timed(lambda: lms["target"].generate([state], a.n, **kw), a.repeats, device),
        "draft_generate": timed(lambda: lms["draft"].generate([state], a.n, **kw), a.repeats, device),
        "target_score": timed(lambda: lms["target"].score([state] * a.n, texts), a.repeats, device),
        "prm_score": timed(lambda: prm.rewards(extended), a.repeats, device),
    }
    m = {k: v["median_s"] for k, v in r.items()}
    prompt_tokens = len(lms["target"].prompt_ids(state))
    progress.say("scoring: " + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in m.items()))
    return dict(
        candidates=a.n, step_tokens=a.step_tokens, prompt_tokens=prompt_tokens,
        prm_input_tokens=len(prm.inputs(extended[0])[0]), **r,
        ratio_target_generate_over_target_score=m["target_generate"] / m["target_score"],
        ratio_target_generate_over_prm_score=m["target_generate"] / m["prm_score"],
        ratio_target_over_draft_generate=m["target_generate"] / m["draft_generate"],
        # one step of each method, models called one after the other
        specs_round_s=m["draft_generate"] + m["target_score"] + m["prm_score"],
        beam_round_s=m["target_generate"] + m["prm_score"],
        ratio_beam_round_over_specs_round=(m["target_generate"] + m["prm_score"])
        / (m["draft_generate"] + m["target_score"] + m["prm_score"]),
    )


def measure_search(models, qs: list[str], a, device, progress: Progress) -> dict:
    from specs_llm.config import SearchConfig
    from specs_llm.search import run_search
    from specs_llm.timing import Ledger

    base = dict(n=a.n, k=1, max_steps=a.steps, max_step_tokens=a.step_tokens,
                sampling_temperature=SAMPLING_TEMPERATURE, seed=0)
    configs = {
        "specs": SearchConfig(strategy="specs", threshold=None, first_step="draft", **base),
        "beam_target": SearchConfig(strategy="beam", generator="target", **base),
    }
    out = {}
    for name, cfg in configs.items():
        run_search(qs, models, cfg.replace(max_steps=1))  # warm-up: JIT of the selectors, device kernels
        runs = []
        for _ in range(a.repeats):
            ledger = Ledger()
            _sync(device)
            t0 = time.perf_counter()
            results = run_search(qs, models, cfg, ledger=ledger)
            _sync(device)
            runs.append((time.perf_counter() - t0, ledger.summary(), results))
        runs.sort(key=lambda x: x[0])
        wall, summary, results = runs[len(runs) // 2]
        errors = [r.error for r in results if r.error]
        if errors:
            raise RuntimeError(f"search {name} failed: {errors[0]}")
        lengths = sorted({s.num_tokens for r in results for s in r.steps})
        if lengths != [a.step_tokens] or any(len(r.steps) != a.steps for r in results):
            raise RuntimeError(f"search {name}: steps were not {a.steps} x {a.step_tokens} tokens ({lengths})")
        counts = {k: sum(r.counts[k] for r in results) for k in ("steps", "draft_steps", "target_steps", "deferrals")}
        out[name] = dict(
            wall_s=wall, runs_wall_s=sorted(x[0] for x in runs), counts=counts,
            by_phase_s={p: v["seconds"] for p, v in summary["by_phase"].items()},
            by_phase_tokens={p: v["tokens"] for p, v in summary["by_phase"].items()},
            loop_overhead_s=summary["loop_overhead_seconds"], compile_s=summary["compile_seconds"],
        )
        progress.say(f"search {name}: {wall:.2f} s ({counts})")
    out["ratio_beam_over_specs"] = out["beam_target"]["wall_s"] / out["specs"]["wall_s"]
    out["settings"] = dict(
        problems=len(qs), n=a.n, k=1, steps=a.steps, step_tokens=a.step_tokens,
        specs="strategy=specs, threshold=None (every valid draft accepted: the draft path is measured), "
              "first_step=draft, ratio_weight=1, reward_weight=10, selection temperature 0.2",
        beam_target="strategy=beam, generator=target, top-1 of n by PRM reward",
    )
    return out


# ---------------------------------------------------------------------------


def device_info(device) -> dict:
    import torch

    d = torch.device(device)
    info = {"type": d.type}
    if d.type == "cuda":
        p = torch.cuda.get_device_properties(d)
        info.update(name=p.name, memory_gib=p.total_memory / 2**30, cuda=torch.version.cuda,
                    capability=f"{p.major}.{p.minor}", count=torch.cuda.device_count())
    else:
        info.update(name="cpu", threads=torch.get_num_threads())
    return info


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="torch device (default cuda; cpu only with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="reduced shapes and settings (tests the script on a CPU)")
    ap.add_argument("--out", default="gpu_check.json", help="JSON results (default ./gpu_check.json)")
    ap.add_argument("--budget", type=float, default=420.0,
                    help="seconds; measurements not started by then are skipped (default 420)")
    for name in DEFAULTS:
        ap.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                        help=f"default {DEFAULTS[name][0]} ({DEFAULTS[name][1]} with --tiny)")
    a = ap.parse_args(argv)
    for name, (real, tiny) in DEFAULTS.items():
        if getattr(a, name) is None:
            setattr(a, name, tiny if a.tiny else real)
    if a.step_tokens < 3 or a.decode_tokens < 2:
        ap.error("--step-tokens must be >= 3 and --decode-tokens >= 2")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.device.startswith("cpu"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch
        import transformers
    except ImportError as err:
        print(f"gpu_check: torch and transformers are needed ({err}); pip install -e '.[llm]'", file=sys.stderr)
        return 2
    if torch.device(a.device).type == "cuda" and not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 2
    if torch.device(a.device).type != "cuda" and not a.tiny:
        print(f"gpu_check: --device {a.device} needs --tiny (the real shapes are ~33 GB of weights and hours of "
              "CPU time)", file=sys.stderr)
        return 2

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import describe  # benchmarks/machine.py

    from specs_llm.backends.base import State
    from specs_llm.backends.hf import HFLanguageModel, HFRewardModel
    from specs_llm.search import Models
    from specs_llm.testing import build_tiny_tokenizer

    progress = Progress(a.budget)
    shapes = SHAPES["tiny" if a.tiny else "real"]
    dtype = torch.float32 if a.tiny else torch.bfloat16
    progress.say(f"torch {torch.__version__}, transformers {transformers.__version__}, device {a.device}, "
                 f"{'tiny' if a.tiny else 'real'} shapes, {dtype}")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tiny_tokenizer(tmp)
    raw, built = build_models(shapes, tokenizer, a.device, dtype, progress)

    qs = questions(tokenizer, a.problems, a.question_tokens)
    lms = {role: HFLanguageModel.from_model(raw[role], tokenizer, name=f"{role} ({shapes[role]['source']})")
           for role in ("draft", "target")}
    prm = HFRewardModel.from_model(raw["prm"], tokenizer, name=f"prm ({shapes['prm']['source']})",
                                   convention="step_tag")
    prompt_tokens = len(lms["target"].prompt_ids(State(qs[0])))
    for role in ("draft", "target"):
        StepRule(raw[role], tokenizer, prompt_tokens, a.step_tokens)
    context = State(qs[0], tuple("abcdefghijklmnopqrstuvwxyz"[i % 26] * (a.step_tokens - 2)
                                 for i in range(a.context_steps)))

    result = {
        "check": "gpu_check", "date": dt.datetime.now().isoformat(timespec="seconds"), "argv": sys.argv[1:],
        "machine": describe(), "torch": torch.__version__, "transformers": transformers.__version__,
        "device": device_info(a.device), "dtype": str(dtype).replace("torch.", ""), "tiny": a.tiny,
        "shapes": built,
        "settings": dict(
            n=a.n, problems=a.problems, steps=a.steps, step_tokens=a.step_tokens,
            question_tokens=a.question_tokens, prompt_tokens=prompt_tokens, context_steps=a.context_steps,
            decode_tokens=a.decode_tokens, repeats=a.repeats, sampling_temperature=SAMPLING_TEMPERATURE,
            weights="random (initializer_range 0.02), built from the configurations on the device",
            tokenizer="specs_llm.testing byte-level tokenizer (101 tokens, one per character)",
            fixed_steps=StepRule.__doc__.split("\n\n")[0].replace("\n    ", " "),
            backend="specs_llm.backends.hf (HFLanguageModel / HFRewardModel.from_model), PRM convention step_tag",
        ),
        "skipped": [],
    }
    sections = [
        ("decode", lambda: measure_decode(lms, State(qs[0]), a, a.device, progress)),
        ("scoring", lambda: measure_scoring(lms, prm, context, a, a.device, progress)),
        ("search", lambda: measure_search(Models(lms["draft"], lms["target"], prm), qs, a, a.device, progress)),
    ]
    for name, run in sections:
        if progress.over():
            progress.say(f"budget of {a.budget:.0f} s spent: skipping {name}")
            result["skipped"].append(name)
            continue
        result[name] = run()
    if torch.device(a.device).type == "cuda":
        result["device"]["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    result["total_s"] = progress.elapsed

    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2, default=_jsonable) + "\n")
    print(summary(result))
    print(f"wrote {a.out}")
    return 0


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)


def summary(r: dict) -> str:
    """A few lines for the terminal."""
    dev = r["device"]
    lines = [f"gpu_check on {dev.get('name')} ({r['dtype']}, {'tiny' if r['tiny'] else 'real'} shapes), "
             f"{r['total_s']:.0f} s"]
    if "decode" in r:
        d = r["decode"]
        for k, ratio in d["ratio_target_over_draft"].items():
            lines.append(f"  decode {k}: draft {1e3 * d['draft'][k]['per_token_s']:.2f} ms/token, target "
                         f"{1e3 * d['target'][k]['per_token_s']:.2f} ms/token (target/draft {ratio:.2f}x)")
    if "scoring" in r:
        s = r["scoring"]
        lines.append(
            f"  {s['candidates']} candidates x {s['step_tokens']} tokens after {s['prompt_tokens']} prompt tokens: "
            f"target generates in {1e3 * s['target_generate']['median_s']:.1f} ms, scores in "
            f"{1e3 * s['target_score']['median_s']:.1f} ms (generate/score {s['ratio_target_generate_over_target_score']:.1f}x); "
            f"PRM scores in {1e3 * s['prm_score']['median_s']:.1f} ms; draft generates in "
            f"{1e3 * s['draft_generate']['median_s']:.1f} ms; beam round / SPECS round "
            f"{s['ratio_beam_round_over_specs_round']:.2f}x")
    if "search" in r:
        s = r["search"]
        st = s["settings"]
        lines.append(f"  search ({st['problems']} problems, n={st['n']}, {st['steps']} steps x {st['step_tokens']} "
                     f"tokens): SPECS {s['specs']['wall_s']:.2f} s, target beam {s['beam_target']['wall_s']:.2f} s "
                     f"(beam/SPECS {s['ratio_beam_over_specs']:.2f}x)")
    if r["skipped"]:
        lines.append(f"  skipped (budget): {', '.join(r['skipped'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
