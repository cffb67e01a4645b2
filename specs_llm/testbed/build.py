"""`specs testbed build`: the tokenizer, the target, the draft and the PRM, from nothing, deterministically.

The pipeline (`build`), every part seeded by ``BuildSpec.seed``:

1. draw the held-out split (`task.make_split`) and train the tokenizer on
   training problems only (`tokenizer.train_tokenizer`);
2. train the target, then the draft, from scratch on (question -> solution)
   pairs streamed from `task.training_problems` (disjoint from the held-out
   split); the draft is the same recipe on a smaller model, stopped early:
   every ``draft_check_every`` steps (from ``draft_check_from``) its sampled
   accuracy on ``draft_check_problems`` validation problems (a split of its
   own) is measured, and training stops at the first check at or above
   ``draft_stop_accuracy``. Small models learn this task in a sudden jump
   (at 128x2, held-out accuracy went 22% -> 75% between 1000 and 1050
   steps), so a fixed step count cannot place the draft in the issue's
   25-55% band; a measured stop can, and it is as deterministic as the rest;
3. sample solutions to fresh training problems from the draft and the target
   with the project's own HF backend (whole responses, sampling temperature
   ``prm_temperature``), label every step with `task.check_steps`
   (``correct``: the step is right given the steps before it, the issue's
   step-correctness; the PRM then ranks the candidate steps of one prefix);
4. train the PRM, the target's body with a one-label value head (the
   Skywork-o1-Open-PRM convention), on those labels.

Each model is saved as a directory that HF transformers and vLLM load as it
is: ``config.json``, ``model.safetensors`` (float16, ``BuildSpec.dtype``),
the tokenizer files and, for the language models, ``generation_config.json``.
``build.json`` records the spec, the time of every stage, the losses and the
SHA-256 of every weight file; ``heldout.jsonl`` the held-out problems.

Determinism: the same spec on the same machine (same torch build, same
threads) writes byte-identical weights; training uses ``torch.manual_seed``
and seeded data streams only. Other CPUs may round differently and end
elsewhere; CPUs without native bfloat16 train in float32 (`train.fast_bfloat16`,
recorded in build.json), so they end elsewhere too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .task import Difficulty, check_steps, make_split, response_steps, training_problems, write_jsonl
from .train import Schedule, Shape

__all__ = ["BuildSpec", "build", "MODEL_ROLES"]

MODEL_ROLES = ("draft", "target", "prm")


@dataclass(frozen=True)
class BuildSpec:
    """Everything a build depends on (its hash names the build).

    The defaults are the shipped testbed (`specs_llm.testbed.weights`),
    measured in docs/testbed.md: about 12 minutes on a 2-core machine (727 s for the shipped build).
    """

    seed: int = 0
    difficulty: Difficulty = Difficulty(digits=1, start_digits=2)
    heldout_size: int = 500
    vocab_size: int = 512
    tokenizer_problems: int = 4000
    target: Shape = Shape(256, 4, 4, 1, 512)
    target_schedule: Schedule = Schedule(steps=600, lr=2e-3)
    draft: Shape = Shape(128, 2, 2, 1, 256)
    draft_schedule: Schedule = Schedule(steps=1200, lr=3e-3)
    draft_stop_accuracy: float = 0.35  # sampled at temperature 0.7
    draft_check_from: int = 600
    draft_check_every: int = 10
    draft_check_problems: int = 256
    prm_problems: int = 1024  # training problems whose sampled solutions label the PRM
    prm_samples: tuple[int, int] = (2, 1)  # samples per problem from (draft, target)
    prm_temperature: float = 1.0
    prm_schedule: Schedule = Schedule(steps=300, lr=1e-3, warmup=20)
    prm_extra_layers: int = 0  # new layers on the PRM's body (`train.prm_from_lm`)
    max_new_tokens: int = 120
    dtype: str = "float16"

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def hard(cls, seed: int = 0) -> "BuildSpec":
        """The "testbed-hard" build (issue 17), for the paper's regime: 6-10 steps
        with two-digit operands (carries and borrows), an 8-layer target against a
        1-layer draft (on vLLM CPU, 8 x 256 is the smallest shape measured at
        3x the draft's decode cost: 8 x 128 and 8 x 192 gave 2.6x and 2.2x).
        Provisional: the task and budgets are being tuned against the issue's
        quality targets (docs/testbed.md)."""
        return cls(seed=seed, difficulty=Difficulty(min_ops=5, max_ops=9, digits=2, start_digits=2),
                   target=Shape(256, 8, 4, 1, 512), target_schedule=Schedule(steps=1500, batch_size=32, lr=3e-3),
                   draft=Shape(128, 1, 2, 1, 256), draft_schedule=Schedule(steps=1500, batch_size=32, lr=3e-3),
                   draft_stop_accuracy=0.30, draft_check_from=300, draft_check_every=50,
                   prm_schedule=Schedule(steps=1000, lr=1e-3, warmup=20), prm_extra_layers=1, max_new_tokens=260)

    @classmethod
    def named(cls, name: str, seed: int = 0) -> "BuildSpec":
        """The build of the testbed ``name`` ("testbed" or "testbed-hard")."""
        from . import TESTBEDS

        if name not in TESTBEDS:
            raise ValueError(f"testbeds are {sorted(TESTBEDS)}, got {name!r}")
        return cls(seed=seed) if name == "testbed" else cls.hard(seed)

    @classmethod
    def miniature(cls, seed: int = 0) -> "BuildSpec":
        """A build of a few seconds with the same code path (tests)."""
        tiny = Shape(64, 1, 1, 1, 128)
        return cls(seed=seed, heldout_size=20, vocab_size=300, tokenizer_problems=200,
                   target=tiny, target_schedule=Schedule(steps=8, batch_size=8, warmup=2),
                   draft=tiny, draft_schedule=Schedule(steps=4, batch_size=8, warmup=2),
                   draft_check_from=1, draft_check_every=2, draft_check_problems=4,
                   prm_problems=8, prm_samples=(1, 1), prm_schedule=Schedule(steps=4, batch_size=8, warmup=2),
                   max_new_tokens=40)


@dataclass
class _Log:
    """Stage timings and losses, and the progress bars on stderr."""

    progress: bool
    stages: dict = field(default_factory=dict)
    losses: dict = field(default_factory=dict)
    draft_checks: list = field(default_factory=list)

    def bar(self, total: int, desc: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, file=sys.stderr, disable=not self.progress, dynamic_ncols=True,
                    mininterval=1.0)

    def train(self, name: str, fn, schedule: Schedule, *args, stop=None, **kwargs) -> None:
        """Run ``fn`` (`train_lm`, `train_prm`) with a progress bar; ``stop(step)``,
        if given, ends training early when it returns True."""
        t0 = time.perf_counter()
        with self.bar(schedule.steps, f"train {name}") as bar:
            def on_step(step, loss):
                bar.update(1)
                if step % 10 == 0 or step == schedule.steps - 1:
                    bar.set_postfix_str(f"loss {loss:.4f}")
                return stop is not None and stop(step)

            losses = fn(*args, schedule, on_step=on_step, **kwargs)
        self.stages[f"train_{name}"] = time.perf_counter() - t0
        self.losses[name] = {"first": losses[0], "last": losses[-1],
                             "last_10_mean": sum(losses[-10:]) / len(losses[-10:]), "every_10": losses[::10]}
        if self.progress:
            print(f"[testbed] {name}: loss {losses[0]:.4f} -> {losses[-1]:.4f} in "
                  f"{self.stages[f'train_{name}']:.0f} s", file=sys.stderr)


def build(out_dir: str | os.PathLike, spec: BuildSpec = BuildSpec(), *, progress: bool = True) -> Path:
    """Build the testbed into ``out_dir`` (created; an existing build there is replaced
    only once the new one is complete). Returns the directory."""
    import torch

    from .tokenizer import corpus, train_tokenizer
    from .train import fast_bfloat16, lm_example, new_lm, prm_example, prm_from_lm, train_lm, train_prm

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".testbed-build.", dir=out.parent))
    log = _Log(progress)
    t_start = time.perf_counter()
    try:
        with torch.random.fork_rng():
            torch.manual_seed(spec.seed)
            # 1. data and tokenizer
            t0 = time.perf_counter()
            d = spec.difficulty
            heldout = make_split(spec.seed, spec.heldout_size, d)
            write_jsonl(heldout, tmp / "heldout.jsonl")
            problems = itertools.islice(training_problems(spec.seed + 1, d, exclude=heldout), spec.tokenizer_problems)
            tok = train_tokenizer(corpus(problems), spec.vocab_size)
            log.stages["tokenizer"] = time.perf_counter() - t0

            # 2. target and draft
            def examples(stream_seed):
                for p in training_problems(stream_seed, d, exclude=heldout):
                    yield lm_example(tok, p.question, p.solution)

            target = new_lm(spec.target, tok, spec.seed * 1000 + 1)
            log.train("target", train_lm, spec.target_schedule, target, tok, examples(spec.seed * 1000 + 1))
            _save(target, tok, tmp / "target", spec.dtype, lm=True)
            draft = new_lm(spec.draft, tok, spec.seed * 1000 + 2)
            check = _DraftCheck(spec, draft, tok, make_split(spec.seed * 1000 + 5, spec.draft_check_problems, d))
            log.train("draft", train_lm, spec.draft_schedule, draft, tok, examples(spec.seed * 1000 + 2),
                      stop=check)
            log.draft_checks = check.checks
            _save(draft, tok, tmp / "draft", spec.dtype, lm=True)
            del draft

            # 3. sampled, labelled solutions for the PRM
            t0 = time.perf_counter()
            problems = list(itertools.islice(training_problems(spec.seed * 1000 + 3, d, exclude=heldout),
                                             spec.prm_problems))
            labelled, stats = _labelled_samples(tmp, problems, spec, log)
            log.stages["sample_prm_data"] = time.perf_counter() - t0
            data = [prm_example(tok, q, steps, labels) for q, steps, labels in labelled]

            # 4. the PRM: the target's body, a value head
            prm = prm_from_lm(target, tok, extra_layers=spec.prm_extra_layers, seed=spec.seed * 1000 + 6)
            del target
            log.train("prm", train_prm, spec.prm_schedule, prm, tok, data, seed=spec.seed * 1000 + 4)
            _save(prm, tok, tmp / "prm", spec.dtype, lm=False)

        meta = {
            "spec": spec.to_json(), "spec_hash": spec.hash(), "seconds": time.perf_counter() - t_start,
            "stages": log.stages, "losses": log.losses, "draft_checks": log.draft_checks, "prm_data": stats, "vocab_size": len(tok),
            "params": {r: _params(tmp / r) for r in MODEL_ROLES},
            "files": {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.glob("*/*.safetensors"))},
            "torch": torch.__version__, "threads": torch.get_num_threads(), "bfloat16_autocast": fast_bfloat16(),
        }
        (tmp / "build.json").write_text(json.dumps(meta, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    if progress:
        print(f"[testbed] built {out} in {meta['seconds']:.0f} s", file=sys.stderr)
    return out


@dataclass
class _DraftCheck:
    """The draft's stopping rule: sampled accuracy on the validation problems
    every ``draft_check_every`` steps; stop at ``draft_stop_accuracy``."""

    spec: BuildSpec
    model: object
    tok: object
    problems: list
    checks: list = field(default_factory=list)

    def __call__(self, step: int) -> bool:
        from .train import sample_accuracy

        spec, done = self.spec, step + 1
        if done < spec.draft_check_from or done % spec.draft_check_every:
            return False
        accuracy = sample_accuracy(self.model, self.tok, self.problems, temperature=0.7,
                                   seed=spec.seed * 1000 + done, max_new_tokens=spec.max_new_tokens)
        self.checks.append({"step": done, "accuracy": accuracy})
        return accuracy >= spec.draft_stop_accuracy


def _labelled_samples(directory: Path, problems, spec: BuildSpec, log: _Log):
    """Whole solutions sampled by the saved draft and target (HF backend),
    each step labelled `StepCheck.correct`; the reference solutions are added
    as all-correct examples."""
    from ..backends.base import State
    from ..backends.hf import HFLanguageModel

    out = [(p.question, list(p.steps), [True] * len(p.steps)) for p in problems]
    stats = {"reference": len(problems)}
    states = [State(p.question) for p in problems]
    for role, n in zip(("draft", "target"), spec.prm_samples):
        lm = HFLanguageModel(directory / role, max_batch_size=256)
        solved = steps_total = steps_ok = 0
        chunk = 128
        with log.bar(len(problems) * n, f"sample {role}") as bar:
            for start in range(0, len(states), chunk):
                rows = lm.generate(states[start:start + chunk], n, stop=[], max_tokens=spec.max_new_tokens,
                                   temperature=spec.prm_temperature, seed=spec.seed * 7919 + start)
                for p, samples in zip(problems[start:start + chunk], rows):
                    for s in samples:
                        steps = response_steps(s.text)
                        if not steps:
                            continue
                        check = check_steps(p, steps)
                        out.append((p.question, steps, list(check.correct)))
                        solved += check.solved
                        steps_total += len(steps)
                        steps_ok += sum(check.correct)
                bar.update(len(rows) * n)
        stats[role] = {"samples": len(problems) * n, "solved": solved, "steps": steps_total,
                       "steps_correct": steps_ok}
        del lm
    random.Random(spec.seed).shuffle(out)
    return out, stats


def _save(model, tok, directory: Path, dtype: str, *, lm: bool) -> None:
    """Save a ``dtype`` copy of ``model`` (the config keeps float32 as the
    compute dtype: the weights are stored small, loaded and run in float32)."""
    import copy

    import torch
    from transformers import GenerationConfig

    copy.deepcopy(model).to(getattr(torch, dtype)).save_pretrained(str(directory))
    config = json.loads((directory / "config.json").read_text())
    config["dtype"] = "float32"
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tok.save_pretrained(str(directory))
    if lm:
        GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         do_sample=True).save_pretrained(str(directory))


def _params(directory: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in directory.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                n = 1
                for x in st.get_slice(k).get_shape():
                    n *= int(x)
                total += n
    return total


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
