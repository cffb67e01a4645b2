"""What every model backend does identically: prompts, stop strings, steps, seeds, PRM inputs.

Pure Python (no torch, no vllm): the HF and vLLM backends call these so that
they format the same prompt, tokenise the same way, stop at the same place
and cut the same tokens from a step. ``tokenizer`` is anything with the HF
tokenizer surface (``apply_chat_template``, ``encode``, ``decode``,
``convert_tokens_to_ids``, ``eos_token_id``).

Tokenisation rule: texts are tokenised with ``add_special_tokens=False`` (the
chat template writes any BOS itself), and a prompt and its continuation are
tokenised *separately* and concatenated, so a step's tokens never merge with
the prompt's and every backend scores the same token sequence.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import sys
from typing import Sequence

from .base import BackendError, State, Step

__all__ = [
    "PRM_CONVENTIONS",
    "check_state",
    "chat_prompt",
    "encode",
    "check_prompt_length",
    "derive_seed",
    "state_seeds",
    "find_stop",
    "make_step",
    "stop_string_at",
    "prm_input",
    "rewards_from_logits",
    "check_sampling",
    "step_tag_id",
    "ChatPromptMixin",
    "PRMInputMixin",
]

# "value_head" (Skywork-o1-Open-PRM): one output per token; the reward of a
#   step is sigmoid(head) at the last token of ``step + delimiter``.
# "step_tag" (Qwen2.5-Math-PRM): each step is followed by a separator token;
#   the reward is softmax(head)[1] at the separator.
PRM_CONVENTIONS = ("value_head", "step_tag")


def check_state(state: State, model_name: str) -> None:
    """ValueError for a state no model can answer (an empty question)."""
    if not isinstance(state, State):
        raise TypeError(f"{model_name}: expected a State, got {type(state).__name__}")
    if not state.question or not state.question.strip():
        raise ValueError(f"{model_name}: the question is empty")


def chat_prompt(tokenizer, state: State, delimiter: str, *, system: str | None = None) -> str:
    """The prompt text of ``state``: the chat template applied once, then the steps.

    ``apply_chat_template([{"role": "user", "content": question}],
    add_generation_prompt=True) + "".join(step + delimiter for step in steps)``
    (with a system message first when ``system`` is given).
    """
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": state.question})
    head = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return head + "".join(step + delimiter for step in state.steps)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` (no special tokens added)."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def check_prompt_length(model_name: str, num_tokens: int, max_length: int, what: str = "prompt", *,
                        spare: int = 1) -> None:
    """BackendError when ``num_tokens`` plus ``spare`` positions (1 for a
    prompt that must be continued, 0 for an input that is only read) exceed
    ``max_length``."""
    if num_tokens + spare > max_length:
        room = " (need at least one position to spare)" if spare else ""
        raise BackendError(
            f"{model_name}: {what} has {num_tokens} tokens, the model's maximum length is {max_length}{room}"
        )


def check_sampling(n: int, max_tokens: int, temperature: float, top_p: float) -> None:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if not temperature >= 0.0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def derive_seed(seed: int, *path: int) -> int:
    """A seed in [0, 2**31) derived from ``seed`` and the integers ``path``.

    ``derive_seed(seed, i)`` seeds the ``i``-th state of a call seeded with
    ``seed``; the search loop seeds each state by where it is in the search
    (``derive_seed(seed, problem, beam, step, salt)``), so its samples do not
    depend on which other states share the call. Sample j of a state seeded
    ``s`` uses ``s + j`` (vLLM gives the j-th of n samples of a request
    ``seed + j``; HF does the same).
    """
    digest = hashlib.sha256("/".join(str(int(x)) for x in (seed, *path)).encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 2  # leaves room for + j


def state_seeds(seed: int | Sequence[int], count: int) -> list[int]:
    """The seed of each of a call's ``count`` states.

    ``seed``: one int for the call (state i gets ``derive_seed(seed, i)``), or
    a sequence of one seed per state, used as given.
    """
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return [derive_seed(seed, i) for i in range(count)]
    seeds = [int(s) for s in seed]
    if len(seeds) != count:
        raise ValueError(f"got {len(seeds)} seeds for {count} states")
    if any(not 0 <= s < 2**31 for s in seeds):
        raise ValueError("per-state seeds must be in [0, 2**31)")
    return seeds


def find_stop(text: str, new_char_count: int, stop: Sequence[str]) -> int | None:
    """Where ``text`` is cut after ``new_char_count`` new characters, or None.

    vLLM's rule (``include_stop_str_in_output=False``): look for each stop
    string where it could end within the new characters; the one that
    completes earliest wins (ties by list order); the text is cut at its
    start. Stop strings are only looked for in generated text.
    """
    if not new_char_count or not stop:
        return None
    best_start, best_end = None, sys.maxsize
    for s in stop:
        start = text.find(s, max(0, len(text) - new_char_count - len(s) + 1))
        if start != -1 and start + len(s) < best_end:
            best_start, best_end = start, start + len(s)
    return best_start


def make_step(text: str, token_ids: Sequence[int], logprobs: Sequence[float], finish_reason: str,
              end: str = "") -> Step:
    """A `Step` from a finished sample.

    ``token_ids``/``logprobs``: every token decoded (with the EOS or the
    tokens of the stop string ``end``). Kept in the Step: for "eos" all but
    the last (the end token); for "stop" and "length" all (the stop string's
    tokens belong to the step event: see `Step`). ``num_generated`` is the
    count of all decoded tokens.
    """
    ids, lps = list(token_ids), list(logprobs)
    keep = max(0, len(ids) - 1) if finish_reason == "eos" else len(ids)
    return Step(text, tuple(ids[:keep]), tuple(float(x) for x in lps[:keep]), finish_reason, len(ids),
                end if finish_reason == "stop" else "")


def stop_string_at(text: str, start: int, stop: Sequence[str]) -> str:
    """The stop string `find_stop` cut ``text`` for at ``start``: of those that
    begin there, the one that completes earliest (the shortest; ties by order)."""
    return min((s for s in stop if text.startswith(s, start)), key=len)


def prm_input(
    tokenizer,
    state: State,
    *,
    convention: str,
    delimiter: str,
    step_tag_id: int | None = None,
    system: str | None = None,
) -> tuple[list[int], list[int]]:
    """Token ids of the PRM input for ``state`` and the position of each step's reward.

    The text is the prompt format itself, ``chat_prompt(state without steps)``
    followed, per step, by ``step + delimiter`` ("value_head") or by
    ``step`` and the separator token ``step_tag_id`` ("step_tag"). Each step
    segment is tokenised on its own (as Skywork's reference code does), so
    the reward position, the segment's last token, is exact.
    """
    if convention not in PRM_CONVENTIONS:
        raise ValueError(f"convention must be one of {PRM_CONVENTIONS}, got {convention!r}")
    ids = encode(tokenizer, chat_prompt(tokenizer, State(state.question), delimiter, system=system))
    positions = []
    for step in state.steps:
        if convention == "value_head":
            ids += encode(tokenizer, step + delimiter)
        else:
            ids += encode(tokenizer, step) + [step_tag_id]
        positions.append(len(ids) - 1)
    return ids, positions


def step_tag_id(tokenizer, step_tag: str, model_name: str) -> int:
    """The id of the separator token ``step_tag``; BackendError unless it is one token."""
    ids = encode(tokenizer, step_tag)
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise BackendError(f"{model_name}: step tag {step_tag!r} is not one token of the tokenizer (got ids {ids})")
    return ids[0]


def rewards_from_logits(rows: Sequence[Sequence[float]], convention: str) -> list[float]:
    """Per-step rewards from the head's outputs at the reward positions.

    "value_head": ``sigmoid(row[0])``; "step_tag": ``softmax(row)[1]``.
    NaN outputs give NaN rewards (never a number in their place).
    """
    out = []
    for row in rows:
        row = [float(x) for x in row]
        if convention == "value_head":
            x = row[0]
            out.append(1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x)))
        elif convention == "step_tag":
            if len(row) < 2:
                raise BackendError(f"step_tag PRM needs >= 2 labels per token, got {len(row)}")
            m = max(row)
            if math.isnan(m):
                out.append(math.nan)
                continue
            z = [math.exp(x - m) for x in row]
            out.append(z[1] / sum(z))
        else:
            raise ValueError(f"convention must be one of {PRM_CONVENTIONS}, got {convention!r}")
    return out


class ChatPromptMixin:
    """``prompt`` and ``prompt_ids`` of a language-model backend.

    Needs ``self.tokenizer``, ``self.step_delimiter``, ``self.name`` and
    ``self.max_length`` (None: no client-side length check).
    """

    def prompt(self, state: State) -> str:
        check_state(state, self.name)
        return chat_prompt(self.tokenizer, state, self.step_delimiter)

    def prompt_ids(self, state: State) -> list[int]:
        ids = encode(self.tokenizer, self.prompt(state))
        if self.max_length is not None:
            check_prompt_length(self.name, len(ids), self.max_length)
        return ids


class PRMInputMixin:
    """``inputs`` of a PRM backend: its token ids for a state and the reward
    position of each step (`prm_input`).

    Needs ``self.tokenizer``, ``self.convention``, ``self.step_delimiter``,
    ``self.step_tag_id``, ``self.system``, ``self.name`` and ``self.max_length``.
    """

    def inputs(self, state: State) -> tuple[list[int], list[int]]:
        check_state(state, self.name)
        ids, positions = prm_input(
            self.tokenizer,
            state,
            convention=self.convention,
            delimiter=self.step_delimiter,
            step_tag_id=self.step_tag_id,
            system=self.system,
        )
        if self.max_length is not None:
            # a PRM only reads its input: the whole context may be used
            check_prompt_length(self.name, len(ids), self.max_length, "PRM input", spare=0)
        return ids, positions
