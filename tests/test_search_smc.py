"""Sequential Monte Carlo in the LLM step loop, checked against specs_theory on the MDP backend.

With the idealised PRM A* and the draft proposing, the incremental weight
exp(log pi_t/pi_d + A*/beta) is the exponentiated score of THEORY.md 4, so
the loop's output law must be the law of `specs_theory.simulate.simulate_smc`
with the same particles, resampling scheme and ESS threshold (exactly the
sequence-level SIR when it never resamples, pi_d when N = 1), and its
normalising-constant estimate must be unbiased.
"""

import dataclasses

import jax
import numpy as np
import pytest

from specs_llm.backends.mdp import MDPLanguageModel, MDPRewardModel, parse_blocks
from specs_llm.config import SearchConfig
from specs_llm.search import Models, run_search
from specs_theory import exact, simulate
from specs_theory.gof import pooled_gof_pvalue
from specs_theory.mdp import sequence_logp

from mdp_search import law_counts, mdp_models, small_mdp  # tests/mdp_search.py

RUNS = 8000


@pytest.fixture(scope="module")
def mdp():
    return small_mdp()


@pytest.fixture(scope="module")
def models(mdp):
    return mdp_models(mdp, "a")


def smc(mdp, **changes):
    """SMC with the exponentiated score as a search configuration."""
    base = dict(strategy="smc", n=4, generator="draft", ratio_weight=1.0, reward_weight=1 / mdp.beta,
                sampling_temperature=1.0, aggregation="sample", max_steps=10, seed=7)
    return SearchConfig(**{**base, **changes})


def z_hats(results):
    return np.exp([r.smc[-1]["log_Z"] for r in results])


@pytest.mark.parametrize("resampling,ess_threshold", [
    ("multinomial", 1.0), ("stratified", 1.0), ("systematic", 0.5), ("residual", 1.0),
])
def test_loop_smc_law_matches_simulated_smc(mdp, models, resampling, ess_threshold):
    cfg = smc(mdp, resampling=resampling, ess_threshold=ess_threshold)
    results = run_search(["q"] * RUNS, models, cfg)
    assert all(r.error is None for r in results)
    samples, info = simulate.simulate_smc(jax.random.key(1), mdp, cfg.n, 400_000, resampling=resampling,
                                          ess_threshold=ess_threshold)
    reference = np.bincount(np.asarray(samples), minlength=mdp.K**mdp.H) / samples.shape[0]
    assert pooled_gof_pvalue(law_counts(results, mdp.K, mdp.H), reference) > 1e-4
    # Z = 1 under the perfect twist (THEORY.md 4, F2): unbiased within 4 SE
    z = z_hats(results)
    assert abs(z.mean() - 1.0) <= 4 * z.std() / np.sqrt(RUNS)
    # resampling happens as often as in the simulator
    events = np.array([r.counts["resamplings"] for r in results])
    expected = np.asarray(info.resampled).sum(axis=1)
    assert abs(events.mean() - expected.mean()) <= 4 * np.hypot(events.std() / np.sqrt(RUNS),
                                                                expected.std() / np.sqrt(expected.size)) + 1e-12
    if ess_threshold >= 1:
        assert np.all(events == mdp.H - 1)  # after every step but the last


@pytest.mark.parametrize("n", [1, 4])
def test_loop_smc_without_resampling_is_the_exact_sequence_sir(mdp, models, n):
    # never resampling: N independent importance-weighted sequences, one drawn
    # by its weight, i.e. SIR_N[pi_d,seq, pi*_seq/pi_d,seq]; N = 1 is pi_d,seq
    results = run_search(["q"] * RUNS, models, smc(mdp, n=n, ess_threshold=0.0, resampling="systematic"))
    p = np.asarray(exact.sequence_sir_law(mdp, n))
    if n == 1:
        np.testing.assert_allclose(p, np.exp(sequence_logp(mdp.draft_logp)), atol=1e-12)
    assert pooled_gof_pvalue(law_counts(results, mdp.K, mdp.H), p) > 1e-4
    assert all(r.counts["resamplings"] == 0 for r in results)


def test_loop_smc_normalising_constant_is_unbiased_away_from_one(mdp):
    # PRM Q* instead of A*: the weights are no longer a perfect twist and
    # Z = sum_y pi_t,seq(y) exp(sum_h Q*(s_h-1, y_h) / beta) != 1.
    m = mdp_models(mdp, "q")
    q_sum = sequence_logp(list(exact.q_values(mdp)))  # sums the per-block tables along each sequence
    Z = float(np.exp(np.logaddexp.reduce(np.asarray(sequence_logp(mdp.target_logp) + q_sum / mdp.beta))))
    assert Z > 1.5
    z = z_hats(run_search(["q"] * RUNS, m, smc(mdp, resampling="residual", seed=3)))
    assert abs(z.mean() - Z) <= 4 * z.std() / np.sqrt(RUNS)


def test_trace_records_ess_resampling_and_log_z(mdp, models):
    (r,) = run_search(["q"], models, smc(mdp, n=8, ess_threshold=0.5))
    assert [t["step"] for t in r.smc] == list(range(mdp.H))
    for t in r.smc:
        assert 1.0 - 1e-9 <= t["ess"] <= 8 + 1e-9 and t["active"] == 8
        assert t["resampled"] == (t["ess"] < 4 and t["step"] < mdp.H - 1)
    assert r.counts["resamplings"] == sum(t["resampled"] for t in r.smc)
    assert len(r.finished) == 8 and r.to_dict()["smc"] == r.smc
    # the output particle's weight is one of the final weights
    assert all(np.isfinite(b.log_weight) for b in r.finished)


class EarlyEnd(MDPLanguageModel):
    """Block 0 as the first step ends the response (finish "eos") at depth 1."""

    def generate(self, states, n, **kw):
        out = super().generate(states, n, **kw)
        return [[dataclasses.replace(s, finish_reason="eos") if s.text == "b0" and not st.steps else s for s in row]
                for st, row in zip(states, out)]


def test_finished_particles_are_absorbed_not_revived(mdp):
    m = Models(EarlyEnd(mdp, "draft"), MDPLanguageModel(mdp, "target"), MDPRewardModel(mdp, "a"))
    results = run_search(["q"] * 200, m, smc(mdp, n=6, seed=2))
    early = 0
    for r in results:
        assert r.error is None and len(r.finished) == 6
        for b in r.finished:
            blocks = parse_blocks(b.state.steps, mdp.K)
            # a particle that ended at b0 was never extended after it
            assert (len(blocks) == 1) == (blocks[0] == 0)
            assert b.finish == "eos"
            early += len(blocks) == 1
        # the trace counts moving particles only: fewer once some have ended
        assert r.smc[0]["active"] == 6 and all(t["active"] <= 6 for t in r.smc)
    assert early > 0


def test_all_zero_weights_is_an_error_not_an_answer(mdp, models):
    class AllNaN(MDPRewardModel):
        def rewards(self, states):
            return [[float("nan")] * len(s.steps) for s in states]

    results = run_search(["q"] * 3, Models(models.draft, models.target, AllNaN(mdp, "a")), smc(mdp))
    for r in results:
        assert "weight zero" in r.error and r.answer is None
        assert r.counts["nan_rewards"] == 4


def test_target_proposer_and_prm_weights_need_no_draft(mdp, models):
    # ratio weight 0: PRM-weighted particle filtering; the target proposes
    cfg = smc(mdp, generator="target", ratio_weight=0.0, aggregation="vote", resampling="stratified")
    assert cfg.roles == {"target", "prm"}
    results = run_search(["q"] * 5, Models(None, models.target, models.prm), cfg)
    assert all(r.error is None and len(r.steps) == mdp.H for r in results)
    assert all(s.source == "target" for r in results for s in r.steps)
    with pytest.raises(ValueError, match="needs a draft model"):
        run_search(["q"], Models(None, models.target, models.prm), smc(mdp))


def test_seeded_smc_reproduces(mdp, models):
    a = [r.to_dict() for r in run_search(["q"] * 20, models, smc(mdp, ess_threshold=0.7))]
    b = [r.to_dict() for r in run_search(["q"] * 20, models, smc(mdp, ess_threshold=0.7))]
    strip = [{k: v for k, v in d.items() if k != "timing"} for d in a]
    assert strip == [{k: v for k, v in d.items() if k != "timing"} for d in b]
    c = [r.to_dict()["steps"] for r in run_search(["q"] * 20, models, smc(mdp, ess_threshold=0.7, seed=8))]
    assert [d["steps"] for d in a] != c


def test_bad_smc_settings():
    with pytest.raises(ValueError, match="resampling must be one of"):
        SearchConfig(strategy="smc", resampling="optimal")
    with pytest.raises(ValueError, match="ess_threshold must be >= 0"):
        SearchConfig(strategy="smc", ess_threshold=-0.5)


def test_specs_run_smc_on_the_mdp_backend(tmp_path):
    import json

    import yaml

    from specs_llm.runner import run_recipe

    recipe = tmp_path / "smc.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "smc-mdp", "datasets": [{"name": "synthetic", "limit": 6}],
        "backend": {"kind": "mdp", "mdp": {"K": 3, "H": 3, "beta": 0.5, "tokens_per_block": 4, "prm_kind": "a"}},
        "defaults": {"sampling_temperature": 1.0, "n": 4},
        "methods": [{"name": "smc", "config": {"strategy": "smc", "generator": "draft", "reward_weight": 2.0,
                                               "aggregation": "sample"},
                     "sweep": {"resampling": ["systematic", "residual"]}}],
        "seeds": [0], "batch_size": 3,
    }))
    out = run_recipe(recipe, tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 12 and all(r["status"] == "ok" for r in records)
    for r in records:
        assert r["strategy"] == "smc" and len(r["smc"]) == 3 and r["steps"] == 3
        assert all(t["resampled"] == (t["step"] < 2) for t in r["smc"])
        assert "target_scoring" in r["phases"] and "draft_generation" in r["phases"]
