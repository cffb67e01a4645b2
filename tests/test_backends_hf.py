"""HF transformers backends and the tiny models they run on (specs_llm.testing).

Every check is against an independent computation: a direct forward pass
(``model(ids).logits.log_softmax``), the chat template called here, the
sigmoid/softmax of the head at positions found here.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from specs_llm.backends.base import BackendError, LanguageModel, RewardModel, State
from specs_llm.backends.common import derive_seed, find_stop
from specs_llm.testing import STEP_TAG, build_tiny_model, build_tiny_models

STATES = [
    State("What is 1+1?"),
    State("Compute 2*3 and explain.", ("First, 2*3 = 6.",)),
    State("Solve x + 2 = 5.", ("Subtract 2.", "x = 3")),
]
STOP = ["\n\n"]


def direct_logprobs(lm, prompt: str, continuation: str) -> list[float]:
    """log p(continuation | prompt) per token, by one forward pass of the bare model."""
    p = lm.tokenizer.encode(prompt, add_special_tokens=False)
    c = lm.tokenizer.encode(continuation, add_special_tokens=False)
    with torch.no_grad():
        logits = lm.model(torch.tensor([p + c])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    return [float(logp[len(p) - 1 + t, tok]) for t, tok in enumerate(c)]


def flat(steps):
    return [s for row in steps for s in row]


# --------------------------------------------------------------------------- tiny models


def test_tiny_models_build_is_idempotent(tiny_model_dir, tiny_models):
    marker = os.path.join(tiny_models["draft"], "specs_tiny_spec.json")
    before = os.stat(marker).st_mtime_ns
    again = build_tiny_models(tiny_model_dir)
    assert again["draft"] == tiny_models["draft"] and again["prm"] == tiny_models["prm"]
    assert os.stat(marker).st_mtime_ns == before
    assert json.load(open(marker))["hash"]


def test_tiny_tokenizer_is_ascii_bytes(hf_draft, hf_target, hf_prm_step_tag):
    tok = hf_draft.tokenizer
    assert len(tok) == 101 == hf_draft.model.config.vocab_size == hf_target.model.config.vocab_size
    text = "".join(chr(c) for c in range(32, 127)) + "\n\t\n\n"
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert hf_target.tokenizer.encode(text, add_special_tokens=False) == ids
    assert tok.eos_token == "<|im_end|>" and hf_draft.end_token_ids == {tok.eos_token_id}
    assert len(tok.encode(STEP_TAG, add_special_tokens=False)) == 1
    assert hf_prm_step_tag.model.config.num_labels == 2


def test_tiny_models_sample_varied_text(hf_draft, hf_target):
    """Temperature 1 gives varied steps, some ended by "\\n\\n", some by EOS or the length cap."""
    for lm in (hf_draft, hf_target):
        steps = lm.generate([STATES[0]], 48, stop=STOP, max_tokens=32, temperature=1.0, seed=0)[0]
        reasons = {s.finish_reason for s in steps}
        assert "stop" in reasons and len(reasons) >= 2, reasons
        assert len({s.text for s in steps}) > 30
        assert any(" " in s.text for s in steps)
        assert sum(s.num_tokens for s in steps) / len(steps) < 32


# --------------------------------------------------------------------------- language model


def test_protocols(hf_draft, hf_prm, hf_prm_step_tag):
    assert isinstance(hf_draft, LanguageModel)
    assert isinstance(hf_prm, RewardModel) and isinstance(hf_prm_step_tag, RewardModel)
    assert hf_draft.name == "draft"


def test_prompt_is_chat_template_plus_steps(hf_draft):
    state = STATES[2]
    head = hf_draft.tokenizer.apply_chat_template(
        [{"role": "user", "content": state.question}], add_generation_prompt=True, tokenize=False
    )
    assert hf_draft.prompt(state) == head + "Subtract 2.\n\nx = 3\n\n"
    assert head.endswith("<|im_start|>assistant\n")


def test_generate_honours_stop_strings(hf_draft):
    out = hf_draft.generate(STATES, 16, stop=STOP, max_tokens=24, temperature=1.0, seed=1)
    assert [len(row) for row in out] == [16] * len(STATES)
    tok = hf_draft.tokenizer
    for step in flat(out):
        assert "\n\n" not in step.text
        assert tok.decode(step.token_ids) == step.scored_text
        assert len(step.logprobs) == step.num_tokens and all(lp <= 0 for lp in step.logprobs)
        if step.finish_reason == "stop":  # the two "\n" tokens belong to the step event
            assert step.end == "\n\n" and step.scored_text == step.text + "\n\n"
            assert step.num_generated == step.num_tokens
        elif step.finish_reason == "eos":  # the EOS token was decoded, not kept
            assert step.num_generated == step.num_tokens + 1
        else:
            assert step.num_generated == step.num_tokens == 24


def test_stop_is_not_matched_across_the_prompt_boundary(hf_draft):
    """The prompt of a state with steps ends in "\\n\\n"; a first generated "\\n"
    must not complete the stop string (HF ``stop_strings`` would)."""
    state = STATES[1]
    assert hf_draft.prompt(state).endswith("\n\n")
    steps = hf_draft.generate([state], 32, stop=["\n\n"], max_tokens=16, temperature=1.0, seed=2)[0]
    assert any(s.text.startswith("\n") for s in steps)  # the case the rule is about did occur
    assert all(s.num_generated == s.num_tokens and s.end == "\n\n" for s in steps if s.finish_reason == "stop")
    # a stop string that is a suffix of the prompt only: never matched at once
    steps = hf_draft.generate([state], 8, stop=["assistant\n"], max_tokens=4, temperature=1.0, seed=2)[0]
    assert all(s.finish_reason != "stop" for s in steps)


@pytest.mark.parametrize("stop", [["\n"], [" ", "\n\n"], ["e\n", "\n\n"]])
def test_stop_rule_on_generated_text(hf_draft, stop):
    """The returned text is the generated text cut at the earliest completed stop string."""
    for step in flat(hf_draft.generate(STATES[:2], 8, stop=stop, max_tokens=24, temperature=1.0, seed=3)):
        assert not any(s in step.text for s in stop)
        if step.finish_reason == "stop":
            assert step.end in stop and hf_draft.tokenizer.decode(step.token_ids) == step.scored_text


def test_find_stop_follows_vllm():
    assert find_stop("ab\n\n", 1, ["\n\n"]) == 2
    assert find_stop("ab\n\n", 0, ["\n\n"]) is None
    assert find_stop("\n\nab", 1, ["\n\n"]) is None  # already searched
    assert find_stop("xay", 1, ["y", "ay"]) == 2  # both end at once: list order
    assert find_stop("xay", 2, ["ay", "a"]) == 1  # "a" completes first
    assert find_stop("abc", 3, []) is None


def test_generation_logprobs_are_raw_model_logprobs(hf_target):
    """Per-token log-probs of sampled steps equal a direct forward pass (temperature 0.7)."""
    out = hf_target.generate(STATES[:2], 4, stop=STOP, max_tokens=16, temperature=0.7, seed=4)
    for state, row in zip(STATES, out):
        for step in row:
            ref = direct_logprobs(hf_target, hf_target.prompt(state), step.scored_text)
            assert len(ref) == step.num_tokens
            assert max((abs(a - b) for a, b in zip(ref, step.logprobs)), default=0.0) < 1e-4


def test_score_matches_direct_forward_and_generation(hf_draft):
    out = hf_draft.generate(STATES, 4, stop=STOP, max_tokens=16, temperature=1.0, seed=5)
    states = [s for s, row in zip(STATES, out) for _ in row]
    steps = flat(out)
    scores = hf_draft.score(states, [s.scored_text for s in steps])
    for state, step, score in zip(states, steps, scores):
        ref = direct_logprobs(hf_draft, hf_draft.prompt(state), step.scored_text)
        assert len(score) == len(ref) == step.num_tokens
        assert max((abs(a - b) for a, b in zip(score, ref)), default=0.0) < 1e-4
        assert max((abs(a - b) for a, b in zip(score, step.logprobs)), default=0.0) < 1e-4
    assert hf_draft.score([STATES[0]], [""]) == [[]]
    assert hf_draft.score([], []) == []


def test_score_batches_like_single_calls(hf_target):
    texts = ["x = 3", "Let us add.", "\n"]
    together = hf_target.score(STATES, texts)
    for state, text, row in zip(STATES, texts, together):
        (alone,) = hf_target.score([state], [text])
        assert max(abs(a - b) for a, b in zip(alone, row)) < 1e-5


def test_seeded_generation_reproduces(hf_draft):
    kw = dict(stop=STOP, max_tokens=16, temperature=1.0)
    a = hf_draft.generate(STATES, 4, seed=7, **kw)
    assert hf_draft.generate(STATES, 4, seed=7, **kw) == a
    assert hf_draft.generate(STATES, 4, seed=8, **kw) != a
    # sample j of state i depends on (seed, i, j) only, not on the rest of the batch
    # (the tokens exactly; log-probs up to the float noise of another padding)
    alone = hf_draft.generate(STATES[:1], 2, seed=7, **kw)[0]
    for x, y in zip(alone, a[0][:2]):
        assert (x.text, x.token_ids, x.finish_reason, x.num_generated) == (y.text, y.token_ids, y.finish_reason, y.num_generated)
        assert max(abs(p - q) for p, q in zip(x.logprobs, y.logprobs)) < 1e-5
    assert len({s.text for s in a[0]}) > 1  # samples of one state differ
    assert derive_seed(7, 0) != derive_seed(7, 1) and derive_seed(7, 0) == derive_seed(7, 0)


def test_temperature_zero_is_greedy(hf_target):
    steps = hf_target.generate(STATES[:1], 3, stop=STOP, max_tokens=12, temperature=0.0, seed=0)[0]
    assert len({(s.text, s.token_ids) for s in steps}) == 1
    ids = hf_target.tokenizer.encode(hf_target.prompt(STATES[0]), add_special_tokens=False)
    with torch.no_grad():
        for tok in steps[0].token_ids:
            nxt = int(hf_target.model(torch.tensor([ids])).logits[0, -1].argmax())
            assert nxt == tok
            ids.append(tok)


def test_top_p_keeps_the_nucleus(hf_draft):
    """With a tiny top_p only the most likely token can be drawn: same as greedy."""
    greedy = hf_draft.generate(STATES[:1], 1, stop=STOP, max_tokens=10, temperature=0.0, seed=0)[0][0]
    nucleus = hf_draft.generate(STATES[:1], 3, stop=STOP, max_tokens=10, temperature=1.0, seed=0, top_p=1e-6)[0]
    assert all(s.token_ids == greedy.token_ids for s in nucleus)


def test_max_tokens(hf_draft):
    for step in hf_draft.generate(STATES[:1], 8, stop=[], max_tokens=3, temperature=1.0, seed=0)[0]:
        assert step.num_generated <= 3
        assert step.finish_reason in ("length", "eos")


# --------------------------------------------------------------------------- reward models


def _head_at(prm, text: str, positions_of) -> torch.Tensor:
    ids = prm.tokenizer.encode(text, add_special_tokens=False)
    with torch.no_grad():
        logits = prm.model(torch.tensor([ids])).logits[0].double()
    return logits[positions_of(ids)]


def test_value_head_reward_is_sigmoid_at_each_step_end(hf_prm):
    state = STATES[2].extend("so the answer is 3")
    head = hf_prm.tokenizer.apply_chat_template(
        [{"role": "user", "content": state.question}], add_generation_prompt=True, tokenize=False
    )
    text = head + "".join(s + "\n\n" for s in state.steps)
    ends, n = [], len(hf_prm.tokenizer.encode(head, add_special_tokens=False))
    for s in state.steps:
        n += len(hf_prm.tokenizer.encode(s + "\n\n", add_special_tokens=False))
        ends.append(n - 1)
    expected = torch.sigmoid(_head_at(hf_prm, text, lambda ids: ends)[:, 0]).tolist()
    (got,) = hf_prm.rewards([state])
    assert len(got) == 3
    assert max(abs(a - b) for a, b in zip(got, expected)) < 1e-6
    assert all(0.0 < r < 1.0 for r in got)


def test_step_tag_reward_is_softmax_at_each_tag(hf_prm_step_tag):
    prm = hf_prm_step_tag
    state = STATES[2]
    head = prm.tokenizer.apply_chat_template(
        [{"role": "user", "content": state.question}], add_generation_prompt=True, tokenize=False
    )
    text = head + "".join(s + STEP_TAG for s in state.steps)
    tag = prm.tokenizer.convert_tokens_to_ids(STEP_TAG)
    rows = _head_at(prm, text, lambda ids: [i for i, t in enumerate(ids) if t == tag])
    expected = torch.softmax(rows, -1)[:, 1].tolist()
    (got,) = prm.rewards([state])
    assert len(got) == 2 and prm.step_tag_id == tag
    assert max(abs(a - b) for a, b in zip(got, expected)) < 1e-6


def test_rewards_batch_and_empty(hf_prm):
    states = [STATES[0], STATES[1], STATES[2]]
    got = hf_prm.rewards(states)
    assert [len(r) for r in got] == [0, 1, 2]
    assert hf_prm.rewards([STATES[2]]) == [pytest.approx(got[2], abs=1e-6)]
    assert hf_prm.rewards([]) == []


def test_rewards_depend_on_the_steps(hf_prm, hf_prm_step_tag):
    for prm in (hf_prm, hf_prm_step_tag):
        states = [STATES[0].extend(t) for t in ("a", "1 + 1 = 2", "zzz", "The answer is 2.")]
        values = [r[0] for r in prm.rewards(states)]
        assert max(values) - min(values) > 0.05


# --------------------------------------------------------------------------- errors


def test_empty_question_is_rejected(hf_draft, hf_prm):
    bad = State("  ")
    with pytest.raises(ValueError, match="question is empty"):
        hf_draft.prompt(bad)
    with pytest.raises(ValueError, match="question is empty"):
        hf_draft.generate([bad], 1, stop=STOP, max_tokens=4, temperature=1.0, seed=0)
    with pytest.raises(ValueError, match="question is empty"):
        hf_draft.score([bad], ["x"])
    with pytest.raises(ValueError, match="question is empty"):
        hf_prm.rewards([bad.extend("x")])


def test_overlong_prompt_names_model_and_lengths(hf_draft, hf_prm):
    long = State("x" * 2000)
    with pytest.raises(BackendError, match=r"draft: prompt has 20\d\d tokens, the model's maximum length is 1024"):
        hf_draft.generate([long], 1, stop=STOP, max_tokens=4, temperature=1.0, seed=0)
    with pytest.raises(BackendError, match=r"draft: prompt \+ step has \d+ tokens"):
        hf_draft.score([State("q")], ["y" * 1100])
    with pytest.raises(BackendError, match=r"prm_value_head: PRM input has \d+ tokens.*1024"):
        hf_prm.rewards([long.extend("a")])


def test_generation_stops_at_the_model_length(tiny_models):
    from specs_llm.backends.hf import HFLanguageModel

    lm = HFLanguageModel(tiny_models["draft"], max_length=40, name="short")
    n_prompt = len(lm.tokenizer.encode(lm.prompt(STATES[0]), add_special_tokens=False))
    for step in lm.generate(STATES[:1], 4, stop=[], max_tokens=100, temperature=1.0, seed=0)[0]:
        assert step.num_generated <= 40 - n_prompt


def test_bad_arguments(hf_draft, tiny_models):
    from specs_llm.backends.hf import HFRewardModel

    with pytest.raises(ValueError, match="2 states but 1 steps"):
        hf_draft.score(STATES[:2], ["a"])
    with pytest.raises(ValueError, match="n must be"):
        hf_draft.generate(STATES[:1], 0, stop=STOP, max_tokens=4, temperature=1.0, seed=0)
    with pytest.raises(ValueError, match="temperature"):
        hf_draft.generate(STATES[:1], 1, stop=STOP, max_tokens=4, temperature=-1.0, seed=0)
    with pytest.raises(ValueError, match="convention"):
        HFRewardModel(tiny_models["prm"], convention="outcome")
    with pytest.raises(BackendError, match="does not fit a head with 1 labels"):
        HFRewardModel(tiny_models["prm"], convention="step_tag")
    with pytest.raises(BackendError, match="is not one token"):
        HFRewardModel(tiny_models["prm_step_tag"], convention="step_tag", step_tag="<tag>")


def test_different_tokenizers_compose_through_text(tiny_model_dir, hf_target):
    """A draft whose tokenizer merges "\\n\\n", "th", ... proposes steps; the target
    scores their *text* with its own tokenizer. This works (text-level scoring);
    the two token counts differ whenever a merge applies."""
    from specs_llm.backends.hf import HFLanguageModel

    other = HFLanguageModel(build_tiny_model(tiny_model_dir, "draft_merges"))
    assert len(other.tokenizer) == 106 != len(hf_target.tokenizer)
    steps = other.generate(STATES, 8, stop=STOP, max_tokens=24, temperature=1.0, seed=0)
    states = [s for s, row in zip(STATES, steps) for _ in row]
    texts = [s.text for s in flat(steps)]
    target_scores = hf_target.score(states, texts)
    draft_scores = other.score(states, texts)
    for step, t, d in zip(flat(steps), target_scores, draft_scores):
        assert "\n\n" not in step.text
        assert len(t) == len(hf_target.tokenizer.encode(step.text, add_special_tokens=False))
        # the draft re-tokenises the text too: a sampled token sequence need not be
        # the canonical one (e.g. "t","h" vs "th"), so only lengths of encode() hold
        assert len(d) == len(other.tokenizer.encode(step.text, add_special_tokens=False))
        assert all(math.isfinite(x) for x in t + d)
    prompt = other.prompt(STATES[1])
    assert len(other.tokenizer.encode(prompt, add_special_tokens=False)) < len(
        hf_target.tokenizer.encode(prompt, add_special_tokens=False)
    )


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_first_token_law_is_the_tempered_nucleus_softmax(hf_draft, temperature, top_p):
    """Many one-token samples follow softmax(logits / T) restricted to the top-p nucleus."""
    from specs_llm.backends.hf import _nucleus
    from specs_theory.gof import pooled_gof_pvalue

    state = State("What is 1+1?")
    ids = torch.tensor([hf_draft.prompt_ids(state)])
    with torch.no_grad():
        logits = hf_draft.model(input_ids=ids).logits[0, -1].double()
    p = _nucleus(torch.softmax(logits / temperature, dim=-1)[None], top_p)[0]
    p = (p / p.sum()).numpy()
    (steps,) = hf_draft.generate([state], 3000, stop=[], max_tokens=1, temperature=temperature, seed=7, top_p=top_p)
    counts = [0] * len(p)
    for s in steps:
        counts[(s.token_ids or (hf_draft.tokenizer.eos_token_id,))[0]] += 1
    assert pooled_gof_pvalue(counts, p) > 1e-4
