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
from prefix_cases import LM_PAIRS, PRM_STATES, Q, assert_close, same_search


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


# --------------------------------------------------------------------------- HFLanguageModel.score


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
    from specs_llm.search import Models

    draft = HFLanguageModel(model_path("draft"))
    same_search(lambda cache: Models(twin(draft, prefix_cache=cache), twin(target, prefix_cache=cache),
                                     twin(prm, prefix_cache=cache)))
