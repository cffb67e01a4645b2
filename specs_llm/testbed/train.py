"""Training the testbed's models from scratch on the CPU: a causal LM on (question -> solution), a value-head PRM.

Both loops are plain PyTorch over HF ``Qwen2ForCausalLM`` /
``Qwen2ForTokenClassification`` (so the saved models load in transformers and
vLLM as they are), deterministic for a given seed on a given machine:

- examples are the chat prompt of a question followed by its solution and
  the EOS token (`lm_example`); the loss is the mean next-token cross-entropy
  over the solution and EOS tokens only;
- batches are right-padded without an attention mask: under causal attention
  no real token sees the padding after it, and padded positions carry no
  loss, so the fast causal kernel applies;
- AdamW, linear warm-up then cosine decay to ``min_lr_ratio`` of the peak,
  gradient clipping at 1, bfloat16 autocast on CPUs with native bfloat16
  kernels (`fast_bfloat16`: about twice float32's speed on AVX-512 machines;
  the weights and optimiser stay float32), float32 elsewhere (on an AVX2-only
  EPYC, bfloat16 autocast made an 8 x 256 training step 11x slower: 63 s vs
  5.5 s);
- the PRM is the LM's body with a one-label head (`prm_from_lm`), trained
  with binary cross-entropy at each step's reward position
  (`specs_llm.backends.common.prm_input`, the same positions the backends
  read) against the step's label.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from ..backends.base import State
from ..backends.common import chat_prompt, encode, prm_input

__all__ = [
    "Shape",
    "Schedule",
    "qwen2_config",
    "new_lm",
    "prm_from_lm",
    "grow_lm",
    "lm_example",
    "train_lm",
    "sample_accuracy",
    "prm_example",
    "train_prm",
    "fast_bfloat16",
]


@dataclass(frozen=True)
class Shape:
    """A Qwen2 model's size (head_dim = hidden // heads; vLLM's CPU attention wants 64)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int

    def __post_init__(self):
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"hidden must divide by heads and heads by kv_heads: {self}")


@dataclass(frozen=True)
class Schedule:
    """An optimisation run: ``steps`` updates of ``batch_size`` examples."""

    steps: int
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01

    def lr_factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / max(self.warmup, 1))
        cos = 0.5 * (1 + math.cos(math.pi * min(step / max(self.steps, 1), 1.0)))
        return warm * (self.min_lr_ratio + (1 - self.min_lr_ratio) * cos)


def fast_bfloat16() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (oneDNN's check:
    AVX-512 or AMX); training autocasts to bfloat16 only then."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast_bfloat16())


def qwen2_config(shape: Shape, tokenizer, *, kind: str = "lm", max_positions: int = 512):
    """The ``Qwen2Config`` of a testbed model (``kind`` "lm" or "prm": one-label token classifier)."""
    from transformers import Qwen2Config

    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    extra = (dict(architectures=["Qwen2ForCausalLM"]) if kind == "lm" else
             dict(architectures=["Qwen2ForTokenClassification"], num_labels=1, classifier_dropout=0.0))
    return Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        head_dim=shape.hidden // shape.heads, max_position_embeddings=max_positions, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, use_sliding_window=False,
        dtype="float32", **extra,
    )


def new_lm(shape: Shape, tokenizer, seed: int):
    """A freshly initialised ``Qwen2ForCausalLM`` (weights from ``seed``; the global RNG is restored)."""
    from transformers import Qwen2ForCausalLM

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(qwen2_config(shape, tokenizer))


def prm_from_lm(lm, tokenizer, *, extra_layers: int = 0, seed: int = 0):
    """A one-label ``Qwen2ForTokenClassification``: ``lm``'s body, then
    ``extra_layers`` new layers that start as the identity (their output
    projections are zero), and a zero head (reward 0.5 everywhere).

    The extra layers give the PRM room to compare what the body predicted at
    one position with the token that follows, which a body whose last layers
    make the next-token prediction has no layer left for."""
    from transformers import Qwen2ForTokenClassification

    c = lm.config
    shape = Shape(c.hidden_size, c.num_hidden_layers + extra_layers, c.num_attention_heads,
                  c.num_key_value_heads, c.intermediate_size)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        prm = Qwen2ForTokenClassification(qwen2_config(shape, tokenizer, kind="prm",
                                                       max_positions=c.max_position_embeddings))
    body = lm.model.state_dict()
    missing, unexpected = prm.model.load_state_dict(body, strict=False)
    fresh = {f"layers.{i}." for i in range(c.num_hidden_layers, shape.layers)}
    if unexpected or any(not any(k.startswith(f) for f in fresh) for k in missing):
        raise RuntimeError(f"PRM body does not match the LM: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        for layer in prm.model.layers[c.num_hidden_layers:]:
            _as_identity(layer)
        prm.score.weight.zero_()
        if prm.score.bias is not None:
            prm.score.bias.zero_()
    return prm


@torch.no_grad()
def grow_lm(lm, layers: int, tokenizer, seed: int):
    """A deeper copy of the causal LM ``lm`` (same width): its layers at evenly
    spread depths of ``layers``, new layers between them that start as the
    identity (zero output projections), so the grown model computes what
    ``lm`` computes until it is trained further.

    Small models learn the testbed's lookup of the next operation in a few
    hundred steps; an 8-layer model trained from scratch had not learnt it in
    1200 (docs/testbed.md). Growing a trained shallow model keeps what it
    learnt and buys the depth that sets the decode cost."""
    c = lm.config
    if layers < c.num_hidden_layers:
        raise ValueError(f"cannot grow {c.num_hidden_layers} layers to {layers}")
    big = new_lm(Shape(c.hidden_size, layers, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size),
                 tokenizer, seed)
    old = c.num_hidden_layers
    where = {round(i * (layers - 1) / max(old - 1, 1)): i for i in range(old)}
    big.model.embed_tokens.load_state_dict(lm.model.embed_tokens.state_dict())
    big.model.norm.load_state_dict(lm.model.norm.state_dict())
    for j, layer in enumerate(big.model.layers):
        if j in where:
            layer.load_state_dict(lm.model.layers[where[j]].state_dict())
        else:
            _as_identity(layer)
    return big


def _as_identity(layer) -> None:
    """Zero a decoder layer's output projections: it adds nothing to the residual stream."""
    layer.self_attn.o_proj.weight.zero_()
    layer.mlp.down_proj.weight.zero_()


# ---------------------------------------------------------------------------
# data


def lm_example(tokenizer, question: str, solution: str) -> tuple[list[int], int]:
    """Token ids of ``chat prompt + solution + EOS`` and where the solution starts.

    Prompt and solution are tokenised separately, as the backends do."""
    prompt = encode(tokenizer, chat_prompt(tokenizer, State(question), "\n\n"))
    return prompt + encode(tokenizer, solution) + [tokenizer.eos_token_id], len(prompt)


def _batch(examples: Sequence[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and next-token labels (-100 outside the solution)."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for i, (seq, start) in enumerate(examples):
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, start: len(seq)] = torch.tensor(seq[start:])
    return ids, labels


def _optimizer(model, schedule: Schedule):
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": schedule.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=schedule.lr, betas=(0.9, 0.98))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule.lr_factor)


def _update(model, opt, sched, loss) -> None:
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    sched.step()


def train_lm(model, tokenizer, examples: Iterator[tuple[list[int], int]], schedule: Schedule, *,
             on_step: Callable[[int, float], bool | None] | None = None) -> list[float]:
    """Train ``model`` in place on ``examples`` (`lm_example` outputs, drawn in order);
    returns the loss of every step. ``on_step(step, loss)`` is called after
    each; training stops early when it returns True."""
    model.train()
    opt, sched = _optimizer(model, schedule)
    losses = []
    for step in range(schedule.steps):
        ids, labels = _batch([next(examples) for _ in range(schedule.batch_size)], tokenizer.pad_token_id)
        with _autocast():
            logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten())
        _update(model, opt, sched, loss)
        losses.append(loss.item())
        if on_step is not None and on_step(step, losses[-1]):
            break
    model.eval()
    return losses


@torch.no_grad()
def sample_accuracy(model, tokenizer, problems, *, temperature: float, seed: int, max_new_tokens: int = 120,
                    batch_size: int = 256) -> float:
    """Fraction of ``problems`` (`task.Problem`) whose single sampled solution
    from the in-memory ``model`` the checker marks solved (a fast check used
    while training; the testbed's reported accuracies come from the runner)."""
    from .task import check_steps

    was_training = model.training
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    torch.manual_seed(seed)
    solved = 0
    try:
        for start in range(0, len(problems), batch_size):
            chunk = problems[start:start + batch_size]
            enc = tokenizer([chat_prompt(tokenizer, State(p.question), "\n\n") for p in chunk],
                            return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                                 top_p=1.0, top_k=0, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
            for p, ids in zip(chunk, out[:, enc.input_ids.shape[1]:]):
                solved += check_steps(p, tokenizer.decode(ids, skip_special_tokens=True).split("\n\n")).solved
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return solved / len(problems)


def prm_example(tokenizer, question: str, steps: Sequence[str], labels: Sequence[bool]) -> tuple[list[int], list[int], list[float]]:
    """PRM input ids of a solution, its reward positions, and the step labels (value-head convention)."""
    ids, positions = prm_input(tokenizer, State(question, tuple(steps)), convention="value_head", delimiter="\n\n")
    return ids, positions, [float(x) for x in labels]


def train_prm(model, tokenizer, examples: Sequence[tuple[list[int], list[int], list[float]]], schedule: Schedule,
              *, seed: int, on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Train a one-label token classifier in place: BCE of the head's logit at
    each reward position against the step's label; batches drawn from
    ``examples`` in a seeded shuffled order. Returns the loss of every step."""
    model.train()
    opt, sched = _optimizer(model, schedule)
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    losses = []
    for step in range(schedule.steps):
        batch = []
        for _ in range(schedule.batch_size):
            if not order:
                order = torch.randperm(len(examples), generator=g).tolist()
            batch.append(examples[order.pop()])
        width = max(len(ids) for ids, _, _ in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        rows, cols, target = [], [], []
        for i, (seq, pos, lab) in enumerate(batch):
            ids[i, : len(seq)] = torch.tensor(seq)
            rows += [i] * len(pos)
            cols += pos
            target += lab
        with _autocast():
            logits = model(input_ids=ids).logits[..., 0]
        picked = logits[torch.tensor(rows), torch.tensor(cols)].float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(picked, torch.tensor(target))
        _update(model, opt, sched, loss)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return losses


def timed(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), seconds)``."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0
