"""Token-boundary checks of step-level search on the testbed's merged BPE, for any backend.

The testbed tokenizer (`specs_llm.testbed.tokenizer`) merges the end of a
step with the delimiter (".\\n\\n" is one token) and "\\n" runs with each
other, as real tokenizers do. Each check below takes backend objects (hf,
vllm or openai_server) and an HF reference model for direct forward passes;
tests/test_token_boundaries.py runs them on all three backends.
"""

from __future__ import annotations

import torch

from specs_llm.backends.base import State
from specs_llm.backends.common import encode

QUESTION = "Compute 23 + 58 - 17 + 9."
STATES = [State(QUESTION), State(QUESTION, ("23 + 58 = 81.",)),
          State("A jar holds 40 coins. Then 7 are taken out. How many coins are in the jar?")]
STOP = ["\n\n"]


def flat(rows):
    return [x for row in rows for x in row]


def direct_logprobs(hf_lm, prompt_ids: list[int], ids: list[int]) -> list[float]:
    """Per-token log-probs of ``ids`` after ``prompt_ids`` by one forward pass of the HF model."""
    with torch.no_grad():
        logp = torch.log_softmax(hf_lm.model(torch.tensor([prompt_ids + ids])).logits[0].float(), -1)
    return [float(logp[len(prompt_ids) - 1 + t, tok]) for t, tok in enumerate(ids)]


def max_diff(a, b) -> float:
    assert len(a) == len(b), (a, b)
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


def merged_id(tok) -> int:
    (i,) = encode(tok, ".\n\n")
    return i


def sampled_steps(lm, n: int = 8, seed: int = 0):
    """(state, step) pairs sampled by ``lm`` at temperature 1, stopping at "\\n\\n"."""
    out = lm.generate(STATES, n, stop=STOP, max_tokens=32, temperature=1.0, seed=seed)
    return [(s, step) for s, row in zip(STATES, out) for step in row]


def check_step_keeps_the_merged_delimiter(lm) -> None:
    """A sampled step that ends ".\\n\\n" was generated as one token straddling the
    step's last character and the delimiter: the step keeps it (text without the
    delimiter, ``end`` = "\\n\\n"), its tokens are the canonical encoding of
    ``text + end``, and the next prompt continues from exactly those tokens."""
    tok, dot = lm.tokenizer, merged_id(lm.tokenizer)
    pairs = sampled_steps(lm)
    merged = [(s, x) for s, x in pairs if x.finish_reason == "stop" and x.token_ids[-1] == dot]
    assert len(merged) >= len(pairs) // 2, [x.scored_text for _, x in pairs]  # the trained models do end so
    for state, x in merged:
        assert x.text.endswith(".") and not x.text.endswith("\n") and x.end == "\n\n"
        assert tok.decode(list(x.token_ids)) == x.scored_text
        assert list(x.token_ids) == encode(tok, x.scored_text)
        assert encode(tok, x.text)[-1] != dot  # the text alone ends in a "." token of its own
        assert x.num_generated == x.num_tokens
        assert lm.prompt_ids(state.extend(x.text)) == lm.prompt_ids(state) + list(x.token_ids)


def check_self_scoring(lm) -> None:
    """Scoring its own samples' ``scored_text`` gives back the generation log-probs."""
    pairs = [(s, x) for s, x in sampled_steps(lm, n=4, seed=1) if x.finish_reason != "length"]
    scores = lm.score([s for s, _ in pairs], [x.scored_text for _, x in pairs])
    for (_, x), lp in zip(pairs, scores):
        assert len(lp) == x.num_tokens
        assert max_diff(lp, x.logprobs) < 1e-4


def check_draft_step_under_the_target(draft, target, hf_target) -> None:
    """A draft step scored under the target in context: the target reads the same
    tokens the draft wrote (one tokenizer), equal to a direct forward pass."""
    pairs = [(s, x) for s, x in sampled_steps(draft, seed=2) if x.finish_reason == "stop"]
    scores = target.score([s for s, _ in pairs], [x.scored_text for _, x in pairs])
    for (state, x), lp in zip(pairs, scores):
        assert len(lp) == x.num_tokens
        ref = direct_logprobs(hf_target, encode(hf_target.tokenizer, target.prompt(state)), list(x.token_ids))
        assert max_diff(lp, ref) < 1e-4


def check_the_delimiter_belongs_to_the_step(target) -> None:
    """Why the step is scored with its delimiter: the trained target ends a result
    with ".\\n\\n" (probability near 1); the text without it would end in a "."
    token the target never writes there."""
    state, step = STATES[0], "23 + 58 = 81."
    with_end, alone = target.score([state, state], [step + "\n\n", step])
    assert with_end[-1] > -0.5  # log P(".\n\n")
    assert alone[-1] < -5.0  # log P(".") alone
    assert max_diff(with_end[:-1], alone[:-1]) < 1e-4  # the same tokens before it


def check_prefix_boundary(lm, hf_lm) -> None:
    """A step whose first character would merge with the prompt's end if the two
    were encoded together (the chat prompt's "assistant\\n" + "\\n23 ...": one
    "\\n\\n" token) is scored on the separate encodings."""
    state = STATES[0]
    prompt = lm.prompt(state)
    assert prompt.endswith("assistant\n")
    step = "\n23 + 58 = 81.\n\n"
    p, c = encode(lm.tokenizer, prompt), encode(lm.tokenizer, step)
    assert encode(lm.tokenizer, prompt + step) != p + c  # jointly, the newlines merge across the boundary
    (lp,) = lm.score([state], [step])
    assert max_diff(lp, direct_logprobs(hf_lm, p, c)) < 1e-4


def check_prm_reads_the_merged_token(prm, hf_prm) -> None:
    """The value-head PRM's reward of each step is read at its ".\\n\\n" token."""
    dot = merged_id(hf_prm.tokenizer)
    states = [State(QUESTION, ("23 + 58 = 81.", "81 - 17 = 64.")), State(QUESTION, ("23 + 58 = 80.",))]
    for state, rewards in zip(states, prm.rewards(states)):
        ids, positions = hf_prm.inputs(state)
        assert [ids[i] for i in positions] == [dot] * len(state.steps)
        with torch.no_grad():
            head = hf_prm.model(torch.tensor([ids])).logits[0, positions, 0].double()
        assert max_diff(rewards, torch.sigmoid(head).tolist()) < 1e-4
