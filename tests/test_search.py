"""The LLM step loop on the MDP backend: exact theory, branches, failures."""

import numpy as np
import pytest

import specs_theory  # noqa: F401
from specs_llm.backends.base import BackendError, State
from specs_llm.backends.mdp import MDPLanguageModel, parse_blocks
from specs_llm.config import SearchConfig
from specs_llm.search import Models, run_search
from specs_llm.timing import Ledger
from specs_theory import exact
from specs_theory.gof import pooled_gof_pvalue

from mdp_search import law_counts, mdp_models, small_mdp  # tests/mdp_search.py

RUNS = 8000


@pytest.fixture(scope="module")
def mdp():
    return small_mdp()


@pytest.fixture(scope="module")
def models(mdp):
    return mdp_models(mdp, "q")


def ideal(mdp, **changes):
    """The idealised SPECS of THEORY.md 2.2 as a search configuration."""
    base = dict(
        strategy="specs", n=4, k=1, temperature=1.0, sampling_temperature=1.0, ratio_weight=1.0,
        reward_weight=1 / mdp.beta, threshold=None, threshold_on="reward", target_mode="soft",
        switch_back_threshold=None, first_step="draft", max_steps=10,
    )
    base.update(changes)
    return SearchConfig(**base)


@pytest.mark.parametrize("threshold,n", [(None, 4), (0.55, 4), (0.5, 8)])
def test_loop_reproduces_exact_specs_law(mdp, models, threshold, n):
    cfg = ideal(mdp, threshold=threshold, n=n, seed=11)
    results = run_search(["q"] * RUNS, models, cfg)
    assert all(r.error is None for r in results)
    pol = exact.specs_policy(mdp, n, threshold=threshold, target_mode="soft", score="q")
    p = np.asarray(exact.sequence_probs(mdp, pol.logp))
    assert pooled_gof_pvalue(law_counts(results, mdp.K, mdp.H), p) > 1e-4
    # deferrals per run: mean matches the exact expectation
    d = np.array([r.counts["deferrals"] for r in results])
    expected = float(exact.expected_deferrals(mdp, pol))
    assert abs(d.mean() - expected) <= 4 * max(d.std(), 1e-3) / np.sqrt(RUNS) + 1e-9
    if threshold is not None:
        assert d.sum() > 0  # the threshold was chosen so that deferral happens


def test_loop_beam_search_matches_exact_beam_policy(mdp, models):
    cfg = SearchConfig(strategy="beam", n=3, k=1, generator="target", sampling_temperature=1.0, seed=3)
    results = run_search(["q"] * RUNS, models, cfg)
    p = np.asarray(exact.sequence_probs(mdp, exact.beam_policy(mdp, 3, generator="target")))
    assert pooled_gof_pvalue(law_counts(results, mdp.K, mdp.H), p) > 1e-4


def test_forced_deferral_every_step(mdp, models):
    # Q* <= R = 1 < threshold: no draft ever passes, every step is deferred.
    cfg = ideal(mdp, threshold=2.0, switch_back_threshold=-1.0)
    ledger = Ledger()
    results = run_search(["q"] * 20, models, cfg, ledger=ledger)
    for r in results:
        assert [s.source for s in r.steps] == ["target"] * mdp.H
        assert all(s.deferred for s in r.steps)
        assert r.counts["deferrals"] == mdp.H
    by_phase = ledger.summary()["by_phase"]
    assert by_phase["draft_generation"]["calls"] == mdp.H
    assert by_phase["target_generation"]["calls"] == mdp.H


def test_no_deferral_below_all_scores(mdp, models):
    cfg = ideal(mdp, threshold=-1.0)
    results = run_search(["q"] * 20, models, cfg)
    for r in results:
        assert [s.source for s in r.steps] == ["draft"] * mdp.H
        assert not any(s.deferred for s in r.steps)


def test_switch_back_threshold_keeps_target_mode(mdp, models):
    # The first step is deferred; a switch-back threshold above every reward
    # keeps the search in target mode: no draft call after step 0.
    cfg = ideal(mdp, threshold=2.0, switch_back_threshold=5.0)
    ledger = Ledger()
    results = run_search(["q"] * 10, models, cfg, ledger=ledger)
    for r in results:
        assert [s.source for s in r.steps] == ["target"] * mdp.H
        assert [s.deferred for s in r.steps] == [True] + [False] * (mdp.H - 1)
    draft_calls = [c for c in ledger.calls if c.phase == "draft_generation"]
    assert [c.step for c in draft_calls] == [0]


def test_first_step_target_then_switch_back(mdp, models):
    cfg = ideal(mdp, first_step="target", threshold=-1.0, switch_back_threshold=-1.0)
    results = run_search(["q"] * 10, models, cfg)
    for r in results:
        assert [s.source for s in r.steps] == ["target"] + ["draft"] * (mdp.H - 1)
        assert not r.steps[0].deferred


class NaNPRM:
    """Wraps a PRM; every step spelled ``bad`` gets a NaN reward."""

    def __init__(self, prm, bad="b0"):
        self.prm, self.bad, self.name = prm, bad, "nan-prm"

    def rewards(self, states):
        out = self.prm.rewards(states)
        return [[float("nan") if s == self.bad else r for s, r in zip(st.steps, rs)] for st, rs in zip(states, out)]


def test_nan_reward_rejects_and_counts(mdp, models):
    m = Models(models.draft, models.target, NaNPRM(models.prm))
    results = run_search(["q"] * 200, m, ideal(mdp, n=4))
    assert sum(r.counts["nan_rewards"] for r in results) > 0
    for r in results:
        if r.error is None:
            assert "b0" not in [s.text for s in r.steps]
        else:
            assert "NaN reward" in r.error and r.answer is None


def test_all_nan_target_rewards_is_an_error_not_an_answer(mdp, models):
    class AllNaN:
        name = "all-nan"

        def rewards(self, states):
            return [[float("nan")] * len(s.steps) for s in states]

    results = run_search(["q"] * 3, Models(models.draft, models.target, AllNaN()), ideal(mdp))
    for r in results:
        assert r.error is not None and r.answer is None and r.text is None
        assert r.counts["deferrals"] == 1  # every draft rejected -> deferral -> target all NaN


def test_failed_model_call_is_recorded(mdp, models):
    class Broken(MDPLanguageModel):
        def score(self, states, steps):
            raise BackendError("target server down")

    m = Models(models.draft, Broken(mdp, "target"), models.prm)
    results = run_search(["q"] * 4, m, ideal(mdp))
    assert all("target server down" in r.error for r in results)
    assert all(r.answer is None and r.text is None for r in results)


@pytest.mark.parametrize(
    "cfg",
    [
        dict(strategy="beam", generator="draft", n=4, k=2),
        dict(strategy="beam", generator="target", n=4, k=1),
        dict(strategy="bon", n=4, aggregation="prm_last"),
        dict(strategy="bon", n=4, aggregation="vote"),
        dict(strategy="rsd", n=1, threshold=0.5),
        dict(strategy="specs", n=4, k=2, threshold=2.0, reward_weight=2.0, temperature=0.3),
        dict(strategy="specs", n=8, k=2, aggregation="prm_min", length_normalize=True),
    ],
)
def test_every_strategy_completes(mdp, models, cfg):
    ledger = Ledger()
    results = run_search(["q"] * 6, models, SearchConfig(sampling_temperature=1.0, **cfg), ledger=ledger)
    for r in results:
        assert r.error is None
        blocks = parse_blocks([s.text for s in r.steps], mdp.K)
        assert len(blocks) == (1 if cfg["strategy"] == "bon" else mdp.H) or cfg["strategy"] == "bon"
        assert r.finished and r.timing["seconds"] >= 0
    models_used = set(ledger.summary()["by_model"])
    if cfg.get("generator") == "draft":
        assert "target" not in models_used
    if cfg["strategy"] == "rsd":
        # RSD keeps a draft step iff its reward passes the threshold
        for r in results:
            for s in r.steps:
                assert (s.source == "draft") == (not s.deferred)
                if s.source == "draft":
                    assert s.reward > 0.5


@pytest.mark.parametrize("strategy", ["specs", "beam", "bon", "rsd", "smc"])
def test_text_is_the_kept_steps_as_generated(mdp, models, strategy):
    rsd = strategy == "rsd"
    cfg = SearchConfig(strategy=strategy, n=1 if rsd else 4, k=1, threshold=0.5 if rsd else 2.0,
                       sampling_temperature=1.0, seed=2)
    for r in run_search(["q"] * 6, models, cfg):
        assert r.error is None
        assert r.text == "".join(s.text + s.end for s in r.steps)
        # a block that stopped ends with the delimiter, though the MDP backend leaves Step.end empty
        assert [s.end for s in r.steps] == ["\n\n"] * (len(r.steps) - 1) + ["\n\n" if strategy == "bon" else ""]
        assert len(r.steps) == (1 if strategy == "bon" else mdp.H)


def test_seeded_runs_reproduce(mdp, models):
    cfg = ideal(mdp, threshold=0.55, seed=5)
    a = [r.to_dict()["steps"] for r in run_search(["q"] * 50, models, cfg)]
    b = [r.to_dict()["steps"] for r in run_search(["q"] * 50, models, cfg)]
    assert a == b
    c = [r.to_dict()["steps"] for r in run_search(["q"] * 50, models, cfg.replace(seed=6))]
    assert a != c


def test_timing_accounts_every_phase(mdp, models):
    ledger = Ledger()
    results = run_search(["q"] * 5, models, ideal(mdp, threshold=0.55), ledger=ledger)
    s = ledger.summary()
    assert {"draft_generation", "target_scoring", "prm_scoring", "selection"} <= set(s["by_phase"])
    assert s["by_model"]["draft"]["tokens"] == 5 * 4 * mdp.H
    assert s["loop_overhead_seconds"] >= 0
    t = results[0].timing
    assert t["by_model"]["draft"]["tokens"] == 4 * mdp.H
    assert t["seconds"] <= s["wall_seconds"] + 1e-9


def test_bad_input(mdp, models):
    with pytest.raises(ValueError, match="question 1 is empty"):
        run_search(["q", "  "], models, ideal(mdp))
    with pytest.raises(TypeError, match="sequence of strings"):
        run_search("q", models, ideal(mdp))
    with pytest.raises(ValueError, match="needs a draft model"):
        run_search(["q"], Models(None, models.target, models.prm), ideal(mdp))
    with pytest.raises(ValueError, match="n must be a multiple of k"):
        SearchConfig(n=4, k=3)
    with pytest.raises(ValueError, match="strategy must be one of"):
        SearchConfig(strategy="mcts")
    with pytest.raises(ValueError, match="unknown search setting"):
        SearchConfig.from_dict({"n": 4, "beam_width": 2})
    with pytest.raises(ValueError, match="not an MDP block"):
        models.target.score([State("q")], ["hello"])


def test_ledger_counts_concurrent_calls_once_and_leaves_out_compilation():
    costs = {"draft": 1.0, "target": 3.0, "prm": 2.0, "loop": 0.0}
    ledger = Ledger(cost_model=lambda model, phase, tokens: costs[model] * tokens)
    with ledger.record("draft", "draft_generation", 0, [0, 1]) as call:
        call.tokens.update({0: 2, 1: 1})
    group = ledger.new_group()  # target scoring and PRM side by side
    with ledger.record("target", "target_scoring", 0, [0, 1], group=group) as call:
        call.tokens.update({0: 1, 1: 1})
    with ledger.record("prm", "prm_scoring", 0, [0, 1], group=group) as call:
        call.tokens.update({0: 2, 1: 1})
    p0 = ledger.problem_summary(0)
    assert p0["seconds"] == 2.0 + max(3.0, 4.0)  # not 2 + 3 + 4
    assert p0["by_phase"]["target_scoring"]["seconds"] == 3.0  # breakdowns keep every call
    assert ledger.problem_summary(1)["seconds"] == 1.0 + 3.0
    clock = Ledger()
    with clock.record("loop", "selection", 0, [0]) as call:
        call.excluded = 0.0
    assert clock.calls[0].seconds >= 0 and clock.summary()["compile_seconds"] == 0.0
