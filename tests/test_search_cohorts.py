"""Cohorts (`run_search(..., cohorts=C)`): the same results as one lockstep
loop, every call for one cohort, the cohorts staggered, the models working at once."""

import time

import jax
import pytest

from specs_llm.backends.base import BackendError
from specs_llm.backends.common import derive_seed, state_seeds
from specs_llm.backends.mdp import MDPRewardModel
from specs_llm.config import SearchConfig
from specs_llm.search import Models, run_search
from specs_llm.timing import Ledger
from specs_theory.mdp import random_mdp

from mdp_search import mdp_models  # tests/mdp_search.py

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
    models = mdp_models(mdp, "q")
    config = SearchConfig(sampling_temperature=1.0, reward_weight=4.0, seed=3, **cfg)
    lockstep = _outcomes(run_search(["q"] * 12, models, config))
    assert len({str(o["steps"]) for o in lockstep}) > 3  # the problems went different ways
    for cohorts in (2, 5, 12, 20):
        ledger = Ledger()
        assert _outcomes(run_search(["q"] * 12, models, config, cohorts=cohorts, ledger=ledger)) == lockstep
        groups = {frozenset(c.tokens) for c in ledger.calls}
        # every call served one cohort (contiguous problems), never two; best-of-n runs as one cohort
        size = 12 if cfg["strategy"] == "bon" else -(-12 // min(cohorts, 12))
        assert all(max(g) - min(g) < size for g in groups)


def test_a_problem_samples_the_same_whatever_shares_its_call(mdp):
    """Lockstep runs of different sizes agree on their common problems."""
    models = mdp_models(mdp, "q")
    config = SearchConfig(strategy="specs", n=4, k=2, sampling_temperature=1.0, seed=1)
    assert _outcomes(run_search(["q"] * 3, models, config)) == _outcomes(run_search(["q"] * 9, models, config))[:3]


class _Watched:
    """A model whose calls last ``delay`` seconds and are logged: (model,
    questions, start, end)."""

    def __init__(self, inner, log, delay=0.02):
        self.inner, self.log, self.delay, self.name = inner, log, delay, inner.name

    def __getattr__(self, name):
        fn = getattr(self.inner, name)

        def call(states, *args, **kwargs):
            t0 = time.perf_counter()
            time.sleep(self.delay)
            try:
                return fn(states, *args, **kwargs)
            finally:
                self.log.append((self.name, {s.question for s in states}, t0, time.perf_counter()))

        return call if name in ("generate", "score", "rewards") else fn


def _overlapped(log) -> bool:
    """Did two different models ever work at the same time?"""
    return any(a[0] != b[0] and a[2] < b[3] and b[2] < a[3] for a in log for b in log)


def test_cohorts_overlap_the_models(mdp):
    inner = mdp_models(mdp, "q")
    config = SearchConfig(strategy="beam", generator="target", n=4, k=2, sampling_temperature=1.0, max_steps=3)
    questions = [f"q{i}" for i in range(8)]
    expected = _outcomes(run_search(questions, inner, config))
    log = []
    models = Models(None, _Watched(inner.target, log), _Watched(inner.prm, log))
    assert _outcomes(run_search(questions, models, config)) == expected
    assert not _overlapped(log)  # lockstep: the models work in turn
    log.clear()
    assert _outcomes(run_search(questions, models, config, cohorts=2)) == expected
    first, second = ({f"q{i}" for i in range(4)}, {f"q{i}" for i in range(4, 8)})
    assert all(qs <= first or qs <= second for _, qs, _, _ in log)  # a call serves one cohort
    # the second cohort starts when the first has made its first proposal ...
    start = min(t0 for _, qs, t0, _ in log if qs <= second)
    assert start >= min(t1 for m, qs, _, t1 in log if qs <= first and m == inner.target.name)
    # ... so the PRM scores one cohort while the target generates for the other
    assert _overlapped(log)


def test_best_of_n_runs_as_one_cohort(mdp):
    """One step, nothing to pipeline: two cohorts would generate one after the other."""
    ledger = Ledger()
    run_search(["q"] * 6, mdp_models(mdp, "q"), SearchConfig(strategy="bon", n=4), cohorts=3, ledger=ledger)
    (generation,) = [c for c in ledger.calls if c.phase == "target_generation"]
    assert sorted(generation.tokens) == list(range(6))


def test_a_failed_call_ends_only_its_cohort(mdp):
    inner = mdp_models(mdp, "q")

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
            run_search(["q"], mdp_models(mdp, "q"), SearchConfig(), cohorts=bad)
