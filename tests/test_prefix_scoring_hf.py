"""Cached-prefix scoring of the HF backend on the shipped testbed models.

`HFLanguageModel.score` and `HFRewardModel.rewards` with ``prefix_cache=True``
(each shared context read once, the candidates against its KV cache) are
checked against the same models with ``prefix_cache=False`` (every full
context re-read), which computes the definition directly: float32 on CPU,
equal to 1e-5 (absolute); and a seeded SPECS search gives the same result
with either.
"""

from __future__ import annotations

import pytest

from specs_llm.backends.base import State
from specs_llm.backends.hf import HFLanguageModel, HFRewardModel
from specs_llm.testbed import model_path

TOL = 1e-5
Q = "Compute 47 + 8 - 5 + 9."
Q2 = "Compute 77 + 3 + 8 + 9."
LONG = State("Compute 12 + 5 - 3 + 8 - 4 + 6 + 1.",
             ("12 + 5 = 17.", "17 - 3 = 14.", "14 + 8 = 22.", "22 - 4 = 18.", "18 + 6 = 24."))


def step(text: str) -> str:
    """A scored step text: the step and its delimiter (`Step.scored_text`)."""
    return text + "\n\n"


@pytest.fixture(scope="module")
def target():
    return HFLanguageModel(model_path("target"))


@pytest.fixture(scope="module")
def prm():
    return HFRewardModel(model_path("prm"), convention="value_head")


def twin(model, **options):
    """The same weights and tokenizer, wrapped with other options."""
    if isinstance(model, HFLanguageModel):
        return HFLanguageModel.from_model(model.model, model.tokenizer, name=model.name, **options)
    return HFRewardModel.from_model(model.model, model.tokenizer, name=model.name, convention=model.convention,
                                    **options)


def assert_close(got: list[list[float]], want: list[list[float]]) -> None:
    assert [len(row) for row in got] == [len(row) for row in want]
    for row_got, row_want in zip(got, want):
        assert row_got == pytest.approx(row_want, abs=TOL, rel=0)


# --------------------------------------------------------------------------- HFLanguageModel.score


LM_PAIRS = [
    # first step: the prefix is the chat prompt only
    (State(Q), step("47 + 8 = 55.")),
    (State(Q), step("47 + 8 = 56.")),
    (State(Q), step("47 + 8 = 55.")),  # a duplicate
    (State(Q), step("47 + 8 = 55. So the sum of the first two numbers is 55.")),  # longer
    (State(Q), "4"),  # one token
    # one earlier step
    (State(Q, ("47 + 8 = 55.",)), step("55 - 5 = 50.")),
    (State(Q, ("47 + 8 = 55.",)), ""),  # an empty step
    (State(Q, ("47 + 8 = 55.",)), step("55 - 5 = 49.")),
    (State(Q, ("47 + 8 = 56.",)), step("56 - 5 = 51.")),
    # another question, and a long prefix
    (State(Q2), step("77 + 3 = 80.")),
    (LONG, step("24 + 1 = 25.")),
    (LONG, step("The answer is \\boxed{25}.")),
    (LONG, step("24 + 1 = 25.")),
]


@pytest.mark.parametrize("batch", [64, 2], ids=["one-pass", "chunked"])
def test_cached_score_equals_full_recompute(target, batch):
    states, steps = zip(*LM_PAIRS)
    cached = twin(target, max_batch_size=batch)
    full = twin(target, max_batch_size=batch, prefix_cache=False)
    assert cached.prefix_cache and not full.prefix_cache
    got, want = cached.score(states, steps), full.score(states, steps)
    assert_close(got, want)
    assert got[6] == [] and len(got[4]) == 1
    assert got[0] == got[2] and got[10] == got[12]  # a duplicate pair is computed once


@pytest.mark.parametrize("pair", LM_PAIRS[:1] + LM_PAIRS[4:7] + LM_PAIRS[10:11],
                         ids=["first-step", "one-token", "after-one-step", "empty", "long-prefix"])
def test_cached_score_of_one_pair(target, pair):
    state, text = pair
    assert_close(target.score([state], [text]), twin(target, prefix_cache=False).score([state], [text]))


def test_score_default_is_cached(target):
    assert target.prefix_cache is True
    assert target.score([], []) == []


# --------------------------------------------------------------------------- HFRewardModel.rewards


PRM_STATES = [
    State(Q),  # no steps: []
    State(Q, ("47 + 8 = 55.",)),  # one step: the parent is the chat prompt
    State(Q, ("47 + 8 = 56.",)),
    State(Q, ("47 + 8 = 55.", "55 - 5 = 50.")),  # children of one parent
    State(Q, ("47 + 8 = 55.", "55 - 5 = 51.")),
    State(Q, ("47 + 8 = 55.", "55 - 5 = 50. Then 50 + 9 = 59, so the answer is 59.")),
    State(Q, ("47 + 8 = 55.", "55 - 5 = 50.")),  # a duplicate
    State(Q, ("47 + 8 = 56.", "56 - 5 = 51.")),  # another parent
    State(Q2, ("77 + 3 = 80.",)),  # another question
    LONG.extend("24 + 1 = 25."),  # a long prefix
    LONG.extend("The answer is \\boxed{25}."),
]


@pytest.mark.parametrize("batch", [64, 2], ids=["one-pass", "chunked"])
def test_cached_rewards_equal_full_recompute(prm, batch):
    cached = twin(prm, max_batch_size=batch)
    full = twin(prm, max_batch_size=batch, prefix_cache=False)
    assert cached.prefix_cache and not full.prefix_cache
    got, want = cached.rewards(PRM_STATES), full.rewards(PRM_STATES)
    assert_close(got, want)
    assert got[0] == [] and [len(r) for r in got[1:]] == [len(s.steps) for s in PRM_STATES[1:]]
    assert got[3] == got[6]
    assert got[3][0] == got[4][0] == got[5][0]  # the parent's reward, read once


def test_rewards_of_a_child_that_adds_no_token_fall_back_to_full(prm):
    # no delimiter: an empty last step adds no token, so it cannot continue the cache
    states = [State(Q, ("47 + 8 = 55.", "")), State(Q, ("47 + 8 = 55.", "55 - 5 = 50."))]
    cached, full = twin(prm, step_delimiter=""), twin(prm, step_delimiter="", prefix_cache=False)
    assert_close(cached.rewards(states), full.rewards(states))


def test_rewards_default_is_cached(prm):
    assert prm.prefix_cache is True
    assert prm.rewards([]) == []


# --------------------------------------------------------------------------- the search, end to end


def test_specs_search_is_the_same_with_and_without_the_cache(target, prm):
    from specs_llm.config import SearchConfig
    from specs_llm.data import load_problems
    from specs_llm.search import Models, run_search

    draft = HFLanguageModel(model_path("draft"))
    problems = load_problems("testbed", limit=3)
    config = SearchConfig(strategy="specs", n=4, k=2, max_steps=8, max_step_tokens=32, seed=3)
    runs = []
    for cache in (True, False):
        models = Models(twin(draft, prefix_cache=cache), twin(target, prefix_cache=cache),
                        twin(prm, prefix_cache=cache))
        runs.append(run_search([p.problem for p in problems], models, config))
    for a, b in zip(*runs):
        assert a.error is None and b.error is None
        assert (a.text, a.answer, a.counts) == (b.text, b.answer, b.counts)
        assert [(s.text, s.source, s.deferred, s.num_tokens) for s in a.steps] == \
               [(s.text, s.source, s.deferred, s.num_tokens) for s in b.steps]
        for x, y in zip(a.steps, b.steps):
            assert (x.score, x.reward) == pytest.approx((y.score, y.reward), abs=TOL)
            for u, v in ((x.logp_draft, y.logp_draft), (x.logp_target, y.logp_target)):
                assert (u is None) == (v is None) and (u is None or u == pytest.approx(v, abs=TOL))
    assert any(s.source == "draft" for r in runs[0] for s in r.steps)  # the target scored drafts
