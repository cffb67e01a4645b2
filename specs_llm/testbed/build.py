"""`specs testbed build`: the tokenizer, the target, the draft and the PRM, from nothing, deterministically.

The pipeline (`build`), every part seeded by ``BuildSpec.seed``:

1. draw the held-out split (`task.make_split`) and train the tokenizer on
   training problems only (`tokenizer.train_tokenizer`);
2. train the target, then the draft, from scratch on (question -> solution)
   pairs streamed from `task.training_problems` (disjoint from the held-out
   split); the draft is the same recipe on a smaller model, stopped early by
   a `Stop` rule: every ``every`` steps (from ``start``) its sampled accuracy
   on validation problems (a split of its own) is measured, and training
   stops at the first check at or above ``accuracy``. Small models learn
   this task in a sudden jump (at 128x2, held-out accuracy went 22% -> 75%
   between 1000 and 1050 steps), so a fixed step count cannot place the
   draft in the issue's 25-55% band; a measured stop can, and it is as
   deterministic as the rest. The target may have a `Stop` rule too, and
   either model a first stage on easier problems (``pretrain``; the target
   then trained shallow and grown to its depth, `train.grow_lm`);
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

__all__ = ["BuildSpec", "Stop", "build", "MODEL_ROLES"]

MODEL_ROLES = ("draft", "target", "prm")


@dataclass(frozen=True)
class Stop:
    """A stopping rule on measured quality: every ``every`` steps from step
    ``start``, the model's sampled accuracy (temperature 0.7) on ``problems``
    validation problems of the build's task (a split of their own); training
    stops at the first check at or above ``accuracy``."""

    accuracy: float
    start: int
    every: int
    problems: int = 256


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
    draft_stop: Stop = Stop(accuracy=0.35, start=600, every=10)
    target_stop: Stop | None = None  # None: the target trains all of target_schedule
    # A first stage on short problems (curriculum): each model with a schedule
    # here is trained on ``pretrain`` problems first; the target at
    # ``target_pretrain_layers`` depth, then grown to ``target.layers``
    # (`train.grow_lm`). None: both train on the task from scratch.
    pretrain: Difficulty | None = None
    target_pretrain: Schedule | None = None
    target_pretrain_layers: int = 0
    draft_pretrain: Schedule | None = None
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
        """The "testbed-hard" build (issue 17), for the paper's regime: 2-5
        operations on two-digit operands (3-6 steps, carries and borrows), a
        10-layer target against a 2-layer draft (on vLLM CPU, 10 x 256 costs
        3.1-3.3x a 2 x 128 draft per decoded token; 8 x 256 2.7-2.9x).

        Both models first learn the shipped testbed's task (one-digit
        operands), where small models learn to find the next operation in a
        few hundred steps; trained from scratch on two-digit operands, a
        4 x 256 model and an 8 x 256 one had not learnt it in 300 steps
        (every first mistake a copy error). The target learns it at 4 layers,
        is grown to 10 (`train.grow_lm`) and trained on the task until its
        sampled accuracy reaches 0.62 (measured: 0.22 / 0.44 / 0.59 at
        400 / 500 / 600 steps, docs/testbed.md). The 2 x 128 draft learns the
        two-digit arithmetic late and suddenly (cosine over 4000 steps:
        0.03 / 0.10 / 0.28 / 0.30 / 0.49 at 2000 / 2250 / 2500 / 2750 / 3000,
        0.69 at 4000, in an experiment); its stop at 0.30 is meant to place it
        in the draft band. The first end-to-end build did not reproduce
        either experiment (target 0.039 at 900 steps, draft 0.06 at 4000;
        docs/testbed.md, cause not yet found)."""
        return cls(seed=seed, difficulty=Difficulty(min_ops=2, max_ops=5, digits=2, start_digits=2),
                   pretrain=Difficulty(digits=1, start_digits=2),
                   target=Shape(256, 10, 4, 1, 512), target_pretrain_layers=4,
                   target_pretrain=Schedule(steps=600, lr=2e-3),
                   target_schedule=Schedule(steps=900, batch_size=32, lr=1e-3),
                   target_stop=Stop(accuracy=0.62, start=400, every=50),
                   draft=Shape(128, 2, 2, 1, 256), draft_pretrain=Schedule(steps=1200, lr=3e-3),
                   draft_schedule=Schedule(steps=4000, batch_size=32, lr=2e-3),
                   draft_stop=Stop(accuracy=0.30, start=2000, every=50),
                   prm_schedule=Schedule(steps=300, lr=1e-3, warmup=20), max_new_tokens=160)

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
                   draft_stop=Stop(accuracy=0.35, start=1, every=2, problems=4),
                   prm_problems=8, prm_samples=(1, 1), prm_schedule=Schedule(steps=4, batch_size=8, warmup=2),
                   max_new_tokens=40)


@dataclass
class _Log:
    """Stage timings and losses, and the progress bars on stderr."""

    progress: bool
    stages: dict = field(default_factory=dict)
    losses: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)

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
    from .train import fast_bfloat16, grow_lm, lm_example, new_lm, prm_example, prm_from_lm, train_lm, train_prm

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
            problems = list(itertools.islice(training_problems(spec.seed + 1, d, exclude=heldout),
                                             spec.tokenizer_problems))
            if spec.pretrain is not None:  # half the texts from each task
                easy = training_problems(spec.seed + 2, spec.pretrain, exclude=heldout)
                problems = problems[: len(problems) // 2] + list(itertools.islice(easy, len(problems) // 2))
            tok = train_tokenizer(corpus(problems), spec.vocab_size)
            log.stages["tokenizer"] = time.perf_counter() - t0

            # 2. target and draft
            def examples(stream_seed, difficulty=d):
                for p in training_problems(stream_seed, difficulty, exclude=heldout):
                    yield lm_example(tok, p.question, p.solution)

            def train(role, shape, schedule, pretrain, seed, stop, split_seed, pretrain_layers=0):
                """A model of ``shape`` trained on the task, after its first stage on
                the pretrain problems if it has one (at ``pretrain_layers`` depth,
                then grown, if that is set)."""
                shallow = pretrain is not None and pretrain_layers
                model = new_lm(dataclasses.replace(shape, layers=pretrain_layers) if shallow else shape, tok, seed)
                if pretrain is not None:
                    log.train(f"{role}_pretrain", train_lm, pretrain, model, tok, examples(seed + 10, spec.pretrain))
                if shallow:
                    model = grow_lm(model, shape.layers, tok, seed + 20)
                check = None if stop is None else _Stop(stop, spec, model, tok, make_split(split_seed, stop.problems, d))
                log.train(role, train_lm, schedule, model, tok, examples(seed), stop=check)
                log.checks[role] = [] if check is None else check.checks
                _save(model, tok, tmp / role, spec.dtype, lm=True)
                return model

            target = train("target", spec.target, spec.target_schedule, spec.target_pretrain, spec.seed * 1000 + 1,
                           spec.target_stop, spec.seed * 1000 + 7, spec.target_pretrain_layers)
            train("draft", spec.draft, spec.draft_schedule, spec.draft_pretrain, spec.seed * 1000 + 2,
                  spec.draft_stop, spec.seed * 1000 + 5)

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
            "stages": log.stages, "losses": log.losses, "draft_checks": log.checks["draft"],
            "target_checks": log.checks["target"], "prm_data": stats, "vocab_size": len(tok),
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
class _Stop:
    """A `Stop` rule at work: sampled accuracy on the validation problems
    every ``rule.every`` steps from ``rule.start``; True (stop) at ``rule.accuracy``."""

    rule: Stop
    spec: BuildSpec
    model: object
    tok: object
    problems: list
    checks: list = field(default_factory=list)

    def __call__(self, step: int) -> bool:
        from .train import sample_accuracy

        rule, done = self.rule, step + 1
        if done < rule.start or done % rule.every:
            return False
        accuracy = sample_accuracy(self.model, self.tok, self.problems, temperature=0.7,
                                   seed=self.spec.seed * 1000 + done, max_new_tokens=self.spec.max_new_tokens)
        self.checks.append({"step": done, "accuracy": accuracy})
        return accuracy >= rule.accuracy


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
