"""Cohorts (`run_search(..., cohorts=C)`): the same results as one lockstep
loop, one call per model at a time, and the models working at once."""

import threading
import time

import jax
import pytest

from specs_llm.backends.base import BackendError
from specs_llm.backends.common import derive_seed, state_seeds
from specs_llm.backends.mdp import MDPLanguageModel, MDPRewardModel
from specs_llm.config import SearchConfig
from specs_llm.search import Models, run_search
from specs_llm.timing import Ledger
from specs_theory.mdp import random_mdp

SEARCHES = [
    dict(strategy="specs", n=4, k=2, threshold=6.0, temperature=0.5),
    dict(strategy="specs", n=4, k=1, threshold=None, first_step="draft", target_mode="soft"),
    dict(strategy="beam", generator="target", n=4, k=2),
    dict(strategy="bon", n=4, aggregation="sample"),
    dict(strategy="rsd", n=1, threshold=0.3),
    dict(strategy="smc", n=4, generator="draft", ess_threshold=0.5, aggregation="sample"),
]


@pytest.fixture(scope="module")
def mdp():
    # large enough (4**5 sequences) that problems rarely share a path
    return random_mdp(jax.random.key(3), K=4, H=5, beta=0.5, draft_noise=1.5)


def _models(mdp):
    return Models(MDPLanguageModel(mdp, "draft"), MDPLanguageModel(mdp, "target"), MDPRewardModel(mdp, "q"))


def _outcomes(results):
    return [{k: v for k, v in r.to_dict().items() if k != "timing"} for r in results]


def test_state_seeds():
    assert state_seeds(7, 3) == [derive_seed(7, i) for i in range(3)]
    assert state_seeds([5, 9], 2) == [5, 9]
    assert derive_seed(1, 2, 3) != derive_seed(1, 3, 2) and 0 <= derive_seed(1, 2, 3) < 2**31
    with pytest.raises(ValueError, match="got 1 seeds for 2 states"):
        state_seeds([5], 2)
    with pytest.raises(ValueError, match=r"in \[0, 2\*\*31\)"):
        state_seeds([-1], 1)


@pytest.mark.parametrize("cfg", SEARCHES, ids=[f"{c['strategy']}-{i}" for i, c in enumerate(SEARCHES)])
def test_cohorts_reproduce_the_lockstep_loop(mdp, cfg):
    models = _models(mdp)
    config = SearchConfig(sampling_temperature=1.0, reward_weight=4.0, seed=3, **cfg)
    lockstep = _outcomes(run_search(["q"] * 12, models, config))
    assert len({str(o["steps"]) for o in lockstep}) > 3  # the problems went different ways
    for cohorts in (2, 5, 12, 20):
        ledger = Ledger()
        assert _outcomes(run_search(["q"] * 12, models, config, cohorts=cohorts, ledger=ledger)) == lockstep
        groups = {frozenset(c.tokens) for c in ledger.calls}
        # every call served one cohort (contiguous problems), never two
        assert all(max(g) - min(g) < -(-12 // min(cohorts, 12)) for g in groups)


def test_a_problem_samples_the_same_whatever_shares_its_call(mdp):
    """Lockstep runs of different sizes agree on their common problems."""
    models = _models(mdp)
    config = SearchConfig(strategy="specs", n=4, k=2, sampling_temperature=1.0, seed=1)
    assert _outcomes(run_search(["q"] * 3, models, config)) == _outcomes(run_search(["q"] * 9, models, config))[:3]


class _Watched:
    """A model whose calls last ``delay`` seconds and are watched: how many run
    at once per model, and whether two models ever ran at once."""

    def __init__(self, inner, watch, delay=0.02):
        self.inner, self.watch, self.delay, self.name = inner, watch, delay, inner.name

    def __getattr__(self, name):
        fn = getattr(self.inner, name)

        def call(*args, **kwargs):
            self.watch.enter(self)
            try:
                time.sleep(self.delay)
                return fn(*args, **kwargs)
            finally:
                self.watch.leave(self)

        return call if name in ("generate", "score", "rewards") else fn


class _Watch:
    def __init__(self):
        self.lock, self.busy, self.most, self.overlapped = threading.Lock(), {}, 0, False

    def enter(self, model):
        with self.lock:
            self.busy[id(model)] = self.busy.get(id(model), 0) + 1
            self.most = max(self.most, self.busy[id(model)])
            self.overlapped |= sum(v > 0 for v in self.busy.values()) > 1

    def leave(self, model):
        with self.lock:
            self.busy[id(model)] -= 1


def test_cohorts_pipeline_the_models_one_call_each_at_a_time(mdp):
    inner = _models(mdp)
    config = SearchConfig(strategy="beam", generator="target", n=4, k=2, sampling_temperature=1.0, max_steps=3)
    expected = _outcomes(run_search(["q"] * 8, inner, config))
    watch = _Watch()
    models = Models(None, _Watched(inner.target, watch), _Watched(inner.prm, watch))
    assert _outcomes(run_search(["q"] * 8, models, config)) == expected
    assert watch.most == 1 and not watch.overlapped  # lockstep: the models work in turn
    ledger = Ledger()
    assert _outcomes(run_search(["q"] * 8, models, config, cohorts=2, ledger=ledger)) == expected
    assert watch.most == 1  # a model serves one cohort at a time
    assert watch.overlapped  # the PRM scored one cohort while the target generated for the other
    s = ledger.summary()
    assert s["queued_seconds"] > 0  # the cohorts waited for their model's turn
    # both cohorts' calls add up to more than the run's wall time: they overlapped
    assert sum(c.seconds - c.queued for c in ledger.calls) > s["wall_seconds"]


def test_a_failed_call_ends_only_its_cohort(mdp):
    inner = _models(mdp)

    class Flaky(MDPRewardModel):
        def rewards(self, states):
            if any(s.question == "bad" for s in states):
                raise BackendError("PRM server down")
            return super().rewards(states)

    models = Models(inner.draft, inner.target, Flaky(mdp, "q"))
    results = run_search(["q", "q", "bad", "q"], models, SearchConfig(strategy="specs", n=4, k=2), cohorts=2)
    assert [r.error is None for r in results] == [True, True, False, False]
    assert all("PRM server down" in r.error for r in results[2:])


def test_bad_cohorts(mdp):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="cohorts must be an integer >= 1"):
            run_search(["q"], _models(mdp), SearchConfig(), cohorts=bad)
