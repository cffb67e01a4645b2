"""HF transformers backends: `HFLanguageModel` (draft/target) and `HFRewardModel` (PRM).

The reference implementation the vLLM backend is checked against, and the one
that runs where vLLM does not. Everything shared with vLLM (prompt format,
tokenisation, stop rule, step cutting, seeds, PRM inputs) is in `common`.

Generation is a plain sampling loop with a KV cache (not ``model.generate``),
so that stop strings, seeds and log-probs are explicit:

- prompts are left-padded with explicit ``attention_mask`` and
  ``position_ids`` (``cumsum(mask) - 1``), so padding changes no logits;
- sample j of state i draws from its own ``torch.Generator`` seeded with
  ``s_i + j``, ``s_i`` the state's seed (`common.state_seeds`): a result
  depends only on (s_i, j), not on the other rows of the batch;
- each token is drawn from ``softmax(logits / temperature)`` (nucleus
  filtered by ``top_p``; argmax when temperature is 0), and the recorded
  log-prob is the *raw* ``log_softmax(logits)`` of the drawn token (vLLM's
  default ``logprobs_mode="raw_logprobs"``);
- after each token: an end token (tokenizer EOS or a generation-config
  ``eos_token_id``) finishes with "eos"; else the stop strings are looked for
  in the generated text only (`common.find_stop`) and finish with "stop"
  (the step keeps the stop string's tokens: `base.Step`); else
  ``max_tokens`` (or the model's maximum length) finishes with "length".

Scoring reads each shared context once (``prefix_cache=True``, the default):
`HFLanguageModel.score` runs every distinct prompt once with a KV cache and
then all of its distinct candidate steps in one batch against that cache;
`HFRewardModel.rewards` does the same with the parent of each state (its
question and ``steps[:-1]``) and the last step segments. The results are
those of re-reading every full context (``prefix_cache=False``) up to
floating-point rounding.
"""

from __future__ import annotations

import copy
import os
from typing import Sequence

import torch

from .base import BackendError, State, Step
from .common import (
    ChatPromptMixin,
    PRMInputMixin,
    PRM_CONVENTIONS,
    check_prompt_length,
    check_sampling,
    encode,
    find_stop,
    make_step,
    rewards_from_logits,
    state_seeds,
    step_tag_id,
    stop_string_at,
)

__all__ = ["HFLanguageModel", "HFRewardModel"]


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}[
        dtype
    ]


def _max_length(config, tokenizer, max_length: int | None) -> int:
    if max_length is not None:
        return int(max_length)
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 10**9]
    if not limits:
        raise BackendError(f"cannot tell the maximum length of {config.name_or_path!r}; pass max_length")
    return min(limits)


def _right_padded(seqs: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids.to(device), mask.to(device)


def _chunks(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _run_prefix(model, prefix: Sequence[int], **kwargs) -> tuple["DynamicCache", torch.Tensor]:
    """One forward pass of ``prefix`` (1 x P) that fills a fresh KV cache.

    Returns the cache and the model's ``logits``, (1, P, ·), or fewer rows
    when ``kwargs`` say so (``logits_to_keep=1``: the last row only). The
    cache is passed in and filled in place, so a model whose output does not
    return it (a token classifier) fills it too.
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    ids = torch.tensor([list(prefix)], dtype=torch.long, device=model.device)
    out = model(input_ids=ids, past_key_values=cache, use_cache=True, **kwargs)
    return cache, out.logits


def _run_continuations(model, cache: "DynamicCache", seqs: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """The ``logits`` (m, Lmax, ·) of m continuations of the prefix held in ``cache``, in one batch.

    ``seqs`` (m non-empty token lists) are right-padded to Lmax; row b reads
    the P prefix tokens (a copy of ``cache`` repeated to batch m: ``cache``
    itself is left as it is) and its own tokens at positions P..P+L_b-1, so
    ``logits[b, j]`` equals the logits at position P + j of the full
    sequence ``prefix + seqs[b]``; rows j >= L_b are padding.
    """
    prefix_len = cache.get_seq_length()
    ids, mask = _right_padded(seqs, pad_id, model.device)
    m, width = ids.shape
    batch_cache = copy.deepcopy(cache)
    batch_cache.batch_repeat_interleave(m)
    mask = torch.cat([torch.ones((m, prefix_len), dtype=mask.dtype, device=mask.device), mask], dim=1)
    positions = torch.arange(prefix_len, prefix_len + width, device=model.device).expand(m, width)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=batch_cache,
                use_cache=True)
    return out.logits


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Rows of ``probs`` (B, V) restricted to the smallest set of top tokens with mass >= top_p."""
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass strictly before each token
    sorted_p = torch.where(before < top_p, sorted_p, torch.zeros_like(sorted_p))
    return torch.zeros_like(probs).scatter(-1, order, sorted_p)


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One token per row of ``probs`` (B, V, unnormalised) for uniforms ``u`` (B,):
    the first token whose cumulative mass exceeds u * total. A zero-probability
    token repeats its predecessor's cumulative mass, so it is never picked."""
    cdf = probs.cumsum(-1)
    tok = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    last = probs.shape[-1] - 1 - torch.argmax((probs > 0).flip(-1).to(torch.int8), dim=-1)
    return torch.minimum(tok, last)


class HFLanguageModel(ChatPromptMixin):
    """A causal LM from a local directory (draft or target), via transformers;
    `from_model` wraps one already built in memory.

    Args:
      path: model directory (``AutoModelForCausalLM`` / ``AutoTokenizer``).
      device, dtype: where and in what precision to run (float32 on CPU).
      name: the model's name in traces and errors (default: the directory name).
      step_delimiter: text appended after each step in the prompt.
      max_length: token limit of prompt + generation (default: the config's
        ``max_position_embeddings``).
      max_batch_size: rows per forward pass when scoring.
      prefix_cache: score each distinct prompt once and its candidate steps
        against its KV cache (`score`); False re-reads every prompt + step.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        device: str = "cpu",
        dtype="float32",
        name: str | None = None,
        step_delimiter: str = "\n\n",
        max_length: int | None = None,
        max_batch_size: int = 64,
        prefix_cache: bool = True,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        path = str(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(dtype)).to(torch.device(device))
        try:
            eos = GenerationConfig.from_pretrained(path).eos_token_id
        except OSError:  # no generation_config.json
            eos = None
        self._attach(model, tokenizer, name or os.path.basename(os.path.normpath(path)), eos,
                     step_delimiter=step_delimiter, max_length=max_length, max_batch_size=max_batch_size,
                     prefix_cache=prefix_cache)

    @classmethod
    def from_model(cls, model, tokenizer, *, name: str, step_delimiter: str = "\n\n", max_length: int | None = None,
                   max_batch_size: int = 64, prefix_cache: bool = True) -> "HFLanguageModel":
        """Wrap a causal LM already built in memory (e.g. random weights from a
        config), used on its own device and in its own dtype, with its tokenizer.
        End tokens: the tokenizer's EOS and ``model.generation_config.eos_token_id``."""
        self = cls.__new__(cls)
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self._attach(model, tokenizer, name, eos, step_delimiter=step_delimiter, max_length=max_length,
                     max_batch_size=max_batch_size, prefix_cache=prefix_cache)
        return self

    def _attach(self, model, tokenizer, name: str, eos, *, step_delimiter: str, max_length: int | None,
                max_batch_size: int, prefix_cache: bool) -> None:
        self.name = name
        self.step_delimiter = step_delimiter
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.device = model.device
        self.max_length = _max_length(self.model.config, self.tokenizer, max_length)
        self.max_batch_size = int(max_batch_size)
        self.prefix_cache = bool(prefix_cache)
        end_ids = {self.tokenizer.eos_token_id}
        end_ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
        self.end_token_ids = frozenset(i for i in end_ids if i is not None)
        if not self.end_token_ids:
            raise BackendError(f"{self.name}: the tokenizer and generation config name no EOS token")
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else min(self.end_token_ids)

    def __repr__(self) -> str:
        return f"HFLanguageModel({self.name!r})"

    @torch.no_grad()
    def generate(
        self,
        states: Sequence[State],
        n: int,
        *,
        stop: Sequence[str],
        max_tokens: int,
        temperature: float,
        seed: int | Sequence[int],
        top_p: float = 1.0,
    ) -> list[list[Step]]:
        check_sampling(n, max_tokens, temperature, top_p)
        stop = [s for s in stop if s]
        prompts = [self.prompt_ids(s) for s in states]
        if not prompts:
            return []
        rows = [(i, j) for i in range(len(prompts)) for j in range(n)]
        seeds = state_seeds(seed, len(prompts))
        gens = [torch.Generator().manual_seed(seeds[i] + j) for i, j in rows]
        caps = [min(max_tokens, self.max_length - len(prompts[i])) for i, _ in rows]

        # Prefill: left padding, explicit positions.
        width = max(len(p) for p in prompts)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (i, _) in enumerate(rows):
            ids[r, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1].float()
        next_pos = positions[:, -1] + 1

        tokens = [[] for _ in rows]
        logps = [[] for _ in rows]
        texts = [""] * len(rows)
        results: list[Step | None] = [None] * len(rows)
        active = list(range(len(rows)))  # row index of each batch entry
        # Row r's sampling stream: uniforms from its own seeded generator, one
        # per token, turned into tokens by inverting the batched CDF.
        uniforms = [torch.rand(caps[r] + 1, generator=gens[r], dtype=torch.float64) for r in range(len(rows))]
        while active:
            raw = torch.log_softmax(logits, dim=-1)
            if temperature == 0.0:
                picked = torch.argmax(logits, dim=-1).tolist()
            else:
                probs = _nucleus(torch.softmax(logits.double() / temperature, dim=-1), top_p)
                u = torch.tensor([float(uniforms[r][len(tokens[r])]) for r in active], dtype=torch.float64)
                picked = _inverse_cdf(probs, u.to(probs.device)).tolist()
            chosen = []
            for b, r in enumerate(active):
                tok = picked[b]
                chosen.append(tok)
                tokens[r].append(tok)
                logps[r].append(float(raw[b, tok]))
                finish, text, end = None, texts[r], ""
                if tok in self.end_token_ids:
                    finish = "eos"
                else:
                    new = self.tokenizer.decode(tokens[r], skip_special_tokens=True)
                    cut = find_stop(new, len(new) - len(texts[r]), stop)
                    text = new if cut is None else new[:cut]
                    texts[r] = new
                    if cut is not None:
                        finish, end = "stop", stop_string_at(new, cut, stop)
                    elif len(tokens[r]) >= caps[r]:
                        finish = "length"
                if finish is not None:
                    results[r] = make_step(text, tokens[r], logps[r], finish, end)
            keep = [b for b, r in enumerate(active) if results[r] is None]
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=self.device)
                cache.reorder_cache(index)
                mask, next_pos = mask[index], next_pos[index]
                chosen = [chosen[b] for b in keep]
                active = [active[b] for b in keep]
            step_ids = torch.tensor(chosen, dtype=torch.long, device=self.device)[:, None]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = self.model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=next_pos[:, None],
                past_key_values=cache,
                use_cache=True,
            )
            cache, logits = out.past_key_values, out.logits[:, -1].float()
            next_pos = next_pos + 1
        return [[results[i * n + j] for j in range(n)] for i in range(len(prompts))]

    @torch.no_grad()
    def score(self, states: Sequence[State], steps: Sequence[str]) -> list[list[float]]:
        """``log_softmax(logits)`` (float32) of each step token after its prompt's tokens (nats).

        Prompt and step are tokenised separately and concatenated; an empty
        step gives []. With ``prefix_cache``, `_score_cached`; else every
        prompt + step is read in full (`_score_full`).
        """
        if len(states) != len(steps):
            raise ValueError(f"{self.name}: {len(states)} states but {len(steps)} steps")
        pairs = []
        for state, step in zip(states, steps):
            prompt_ids = encode(self.tokenizer, self.prompt(state))
            step_ids = encode(self.tokenizer, step)
            check_prompt_length(self.name, len(prompt_ids) + len(step_ids), self.max_length, "prompt + step")
            pairs.append((prompt_ids, step_ids))
        result: list[list[float]] = [[] for _ in pairs]
        todo = [k for k, (_, c) in enumerate(pairs) if c]
        (self._score_cached if self.prefix_cache else self._score_full)(pairs, todo, result)
        return result

    def _score_full(self, pairs: list[tuple[list[int], list[int]]], todo: list[int],
                    result: list[list[float]]) -> None:
        """``result[k]`` for k in ``todo``: rows of ``prompt + step`` (right-padded,
        ``max_batch_size`` per pass); step token t from the logits at P - 1 + t."""
        for chunk in _chunks(todo, self.max_batch_size):
            ids, mask = _right_padded([pairs[k][0] + pairs[k][1] for k in chunk], self.pad_token_id, self.device)
            logp = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            for b, k in enumerate(chunk):
                p, c = pairs[k]
                where = torch.arange(len(p) - 1, len(p) + len(c) - 1, device=self.device)
                target = torch.tensor(c, device=self.device)
                result[k] = logp[b, where, target].tolist()

    def _score_cached(self, pairs: list[tuple[list[int], list[int]]], todo: list[int],
                      result: list[list[float]]) -> None:
        """``result[k]`` for k in ``todo``, each distinct (prompt, step) computed once.

        Per distinct prompt (P tokens): one pass 1 x P fills a KV cache and its
        last logits give the first token of every step; then the distinct
        steps, less their last token (nothing reads the logits after it), run
        as continuations of the cache, ``max_batch_size`` per pass
        (`_run_continuations`): step token t >= 1 from continuation row t - 1.
        """
        groups: dict[tuple[int, ...], dict[tuple[int, ...], list[int]]] = {}
        for k in todo:
            prompt, step = pairs[k]
            groups.setdefault(tuple(prompt), {}).setdefault(tuple(step), []).append(k)
        for prompt, by_step in groups.items():
            cache, last = _run_prefix(self.model, prompt, logits_to_keep=1)
            first = torch.log_softmax(last[0, -1].float(), dim=-1)  # (V,)
            logps = {step: [float(first[step[0]])] for step in by_step}
            longer = [step for step in by_step if len(step) > 1]
            for chunk in _chunks(longer, self.max_batch_size):
                logits = _run_continuations(self.model, cache, [step[:-1] for step in chunk], self.pad_token_id)
                logp = torch.log_softmax(logits.float(), dim=-1)  # (m, Lmax, V)
                for b, step in enumerate(chunk):
                    where = torch.arange(len(step) - 1, device=self.device)
                    target = torch.tensor(step[1:], device=self.device)
                    logps[step] += logp[b, where, target].tolist()
            for step, ks in by_step.items():
                for k in ks:
                    result[k] = list(logps[step])


class HFRewardModel(PRMInputMixin):
    """A process reward model from a local directory, via transformers;
    `from_model` wraps one already built in memory.

    Args:
      path: a token-classification model directory
        (``AutoModelForTokenClassification``).
      convention: "value_head" (Skywork-o1-Open-PRM: reward = sigmoid of the
        head at the last token of ``step + delimiter``) or "step_tag"
        (Qwen2.5-Math-PRM: each step is followed by ``step_tag``; reward =
        softmax of the 2-label head, label 1, at that token). See
        `common.prm_input` for the exact input.
      step_delimiter: the text after each step ("value_head").
      step_tag: the separator token ("step_tag"); must be one token of the
        tokenizer (its id is looked up, never assumed).
      system: optional system message of the PRM's chat prompt.
      device, dtype, name, max_length, max_batch_size: as `HFLanguageModel`.
      prefix_cache: read the input of each state's parent (question and
        ``steps[:-1]``) once and the last step segments against its KV cache
        (`rewards`); False re-reads every input in full.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        convention: str = "value_head",
        step_delimiter: str = "\n\n",
        step_tag: str = "<extra_0>",
        system: str | None = None,
        device: str = "cpu",
        dtype="float32",
        name: str | None = None,
        max_length: int | None = None,
        max_batch_size: int = 64,
        prefix_cache: bool = True,
    ):
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        if convention not in PRM_CONVENTIONS:
            raise ValueError(f"convention must be one of {PRM_CONVENTIONS}, got {convention!r}")
        path = str(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForTokenClassification.from_pretrained(path, dtype=_dtype(dtype)).to(torch.device(device))
        self._attach(model, tokenizer, name or os.path.basename(os.path.normpath(path)),
                     convention=convention, step_delimiter=step_delimiter, step_tag=step_tag, system=system,
                     max_length=max_length, max_batch_size=max_batch_size, prefix_cache=prefix_cache)

    @classmethod
    def from_model(cls, model, tokenizer, *, name: str, convention: str = "value_head", step_delimiter: str = "\n\n",
                   step_tag: str = "<extra_0>", system: str | None = None, max_length: int | None = None,
                   max_batch_size: int = 64, prefix_cache: bool = True) -> "HFRewardModel":
        """Wrap a token classifier already built in memory (its ``logits`` are
        read; any head works), used on its own device and in its own dtype."""
        if convention not in PRM_CONVENTIONS:
            raise ValueError(f"convention must be one of {PRM_CONVENTIONS}, got {convention!r}")
        self = cls.__new__(cls)
        self._attach(model, tokenizer, name, convention=convention, step_delimiter=step_delimiter, step_tag=step_tag,
                     system=system, max_length=max_length, max_batch_size=max_batch_size, prefix_cache=prefix_cache)
        return self

    def _attach(self, model, tokenizer, name: str, *, convention: str, step_delimiter: str, step_tag: str,
                system: str | None, max_length: int | None, max_batch_size: int, prefix_cache: bool) -> None:
        self.name = name
        self.convention = convention
        self.step_delimiter = step_delimiter
        self.system = system
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.device = model.device
        self.max_length = _max_length(self.model.config, self.tokenizer, max_length)
        self.max_batch_size = int(max_batch_size)
        self.prefix_cache = bool(prefix_cache)
        self.step_tag_id = step_tag_id(self.tokenizer, step_tag, self.name) if convention == "step_tag" else None
        labels = self.model.config.num_labels
        if (convention == "value_head") != (labels == 1):
            raise BackendError(f"{self.name}: convention {convention!r} does not fit a head with {labels} labels")
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.tokenizer.eos_token_id

    def __repr__(self) -> str:
        return f"HFRewardModel({self.name!r}, convention={self.convention!r})"

    @torch.no_grad()
    def rewards(self, states: Sequence[State]) -> list[list[float]]:
        """Per-step rewards: `rewards_from_logits` of the head at each step's
        reward position of `common.prm_input`; a state with no steps gives [].
        With ``prefix_cache``, `_rewards_cached`; else `_rewards_full`."""
        inputs = [self.inputs(s) for s in states]
        result: list[list[float]] = [[] for _ in inputs]
        todo = [k for k, (_, pos) in enumerate(inputs) if pos]
        if self.prefix_cache:
            todo = self._rewards_cached(states, inputs, todo, result)
        self._rewards_full(inputs, todo, result)
        return result

    def _rewards_full(self, inputs: list[tuple[list[int], list[int]]], todo: list[int],
                      result: list[list[float]]) -> None:
        """``result[k]`` for k in ``todo``: whole inputs, right-padded, ``max_batch_size`` per pass."""
        for chunk in _chunks(todo, self.max_batch_size):
            ids, mask = _right_padded([inputs[k][0] for k in chunk], self.pad_token_id, self.device)
            logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            for b, k in enumerate(chunk):
                rows = logits[b, inputs[k][1]].double().cpu().tolist()
                result[k] = rewards_from_logits(rows, self.convention)

    def _rewards_cached(self, states: Sequence[State], inputs: list[tuple[list[int], list[int]]], todo: list[int],
                        result: list[list[float]]) -> list[int]:
        """``result[k]`` for the k in ``todo`` whose input extends its parent's; returns the others.

        The parent of a state is ``State(question, steps[:-1])``. Its input
        (P tokens, reward positions of the earlier steps) is read once, 1 x P,
        filling a KV cache and giving the earlier rewards; the children's
        last step segments (each distinct one once) run as continuations of
        the cache, ``max_batch_size`` per pass (`_run_continuations`), the
        last reward from the segment's last row. A child whose input does not
        start with its parent's (ids and positions), adds no token or has its
        last reward elsewhere than at its last token is returned, for
        `_rewards_full`.
        """
        groups: dict[State, list[int]] = {}
        for k in todo:
            groups.setdefault(State(states[k].question, states[k].steps[:-1]), []).append(k)
        rest = []
        for parent, ks in groups.items():
            prefix, positions = self.inputs(parent)
            by_segment: dict[tuple[int, ...], list[int]] = {}
            for k in ks:
                ids, pos = inputs[k]
                extends = ids[: len(prefix)] == prefix and pos[:-1] == positions
                if extends and len(ids) > len(prefix) and pos[-1] == len(ids) - 1:
                    by_segment.setdefault(tuple(ids[len(prefix) :]), []).append(k)
                else:
                    rest.append(k)
            if not by_segment:
                continue
            cache, head = _run_prefix(self.model, prefix)  # head: (1, P, num_labels)
            earlier = head[0, positions].double().cpu().tolist()
            segments = list(by_segment)
            for chunk in _chunks(segments, self.max_batch_size):
                logits = _run_continuations(self.model, cache, chunk, self.pad_token_id).float()
                for b, segment in enumerate(chunk):
                    last = logits[b, len(segment) - 1].double().cpu().tolist()
                    rewards = rewards_from_logits(earlier + [last], self.convention)
                    for k in by_segment[segment]:
                        result[k] = list(rewards)
        return sorted(rest)

