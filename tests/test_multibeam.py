"""Multi-beam SPECS (k > 1, docs/multibeam.md): the exact law by enumeration
(experiments.multibeam_exact) reduces to Theorem A at k = 1 and matches
simulate_specs at k = 2, for both the uniformly chosen and the best-reward
final beam."""

import jax
import numpy as np
import pytest

from specs_theory import exact, simulate
from specs_theory import experiments as E
from specs_theory.gof import pooled_gof_pvalue
from specs_theory.mdp import sequence_logp


@pytest.fixture(scope="module")
def tiny():
    return E.default_mdp(0, K=3, H=2)


@pytest.mark.parametrize("n", [1, 3, 6])
def test_k1_is_theorem_a(tiny, n):
    uniform, best = E.multibeam_exact(tiny, n, 1)
    law = np.exp(np.asarray(sequence_logp(exact.specs_policy(tiny, n).logp)))
    assert np.max(np.abs(uniform - law)) <= 1e-12
    assert np.max(np.abs(best - law)) <= 1e-12


@pytest.mark.parametrize("n", [2, 6])
def test_k2_exact_matches_monte_carlo(tiny, n):
    uniform, best = E.multibeam_exact(tiny, n, 2)
    assert uniform.sum() == pytest.approx(1.0, abs=1e-12) and best.sum() == pytest.approx(1.0, abs=1e-12)
    R = 100_000
    samples, info = simulate.simulate_specs(jax.random.key(10 + n), tiny, n, R, k=2)
    beams = np.asarray(info.beams)
    slot = np.random.default_rng(n).integers(0, 2, R)  # one uniformly chosen beam per run
    assert pooled_gof_pvalue(np.bincount(beams[np.arange(R), slot], minlength=9), uniform) > 1e-4
    assert pooled_gof_pvalue(np.bincount(np.asarray(samples), minlength=9), best) > 1e-4
    # the best-reward answer is not the uniform beam (it favours reward)
    r = np.asarray(tiny.reward)
    assert best @ r > uniform @ r


def test_rejects_too_large(tiny):
    with pytest.raises(ValueError, match="too large"):
        E.multibeam_exact(tiny, 64, 4, max_terms=1000)


def test_limit_uniform_beam_is_pi_star_best_beam_is_not(tiny):
    """n -> inf at fixed k: the uniformly chosen beam has law pi* exactly; the
    best-reward beam keeps a positive objective gap, and the exact finite-n
    laws approach the limit."""
    from specs_theory import metrics

    star = sequence_logp(exact.optimal_policy(tiny))
    for k in (2, 4):
        uniform, best = E.multibeam_limit(tiny, k)
        assert np.max(np.abs(uniform - np.exp(np.asarray(star)))) <= 1e-12
        assert float(metrics.objective_gap(tiny, np.log(best))) > 0.05
    _, best_inf = E.multibeam_limit(tiny, 2)
    tv = [0.5 * np.abs(E.multibeam_exact(tiny, n, 2)[1] - best_inf).sum() for n in (4, 8, 16)]
    assert tv[0] > tv[1] > tv[2]


@pytest.mark.parametrize("k", [2, 3])
def test_one_draft_per_beam_is_k_draft_chains(tiny, k):
    """n = k: every candidate is kept, so the beams are k independent pi_d
    chains: uniform beam pi_d,seq, best-reward beam best-of-k of pi_d,seq
    (the exact laws `experiments.multibeam` records instead of simulating)."""
    uniform, best = E.multibeam_exact(tiny, k, k)
    assert np.max(np.abs(uniform - np.exp(np.asarray(sequence_logp(tiny.draft_logp))))) <= 1e-12
    assert np.max(np.abs(best - np.exp(np.asarray(exact.best_of_n_policy(tiny, k, generator="draft"))))) <= 1e-12


def test_multibeam_records_exact_laws_where_they_are_cheap(tiny):
    from specs_theory import metrics

    recs, facts = E.multibeam(tiny, ks=(2,), ns=(2, 4), budgets=(), budget_ks=(), num_runs=20_000, beam=False,
                              k1_monte_carlo=False, limit_ks=(2,))
    by = {(r["method"], r["n"], r["k"]): r for r in recs}
    assert ("specs_best", 1, 1) not in by  # no k = 1 Monte Carlo
    uniform2, best2 = E.multibeam_exact(tiny, 2, 2)
    star = sequence_logp(exact.optimal_policy(tiny))
    for method, law in (("specs_uniform", uniform2), ("specs_best", best2)):
        r = by[(method, 2, 2)]
        assert r["exact"] and r["kl_forward"] == pytest.approx(float(metrics.kl(star, np.log(law))), abs=1e-12)
    assert "exact" not in by[("specs_uniform", 4, 2)]  # n = 4: simulated
    uniform_inf, best_inf = E.multibeam_limit(tiny, 2)
    assert by[("specs_uniform_limit", None, 2)]["kl_forward"] == pytest.approx(0.0, abs=1e-12)
    assert by[("specs_best_limit", None, 2)]["objective_gap"] == pytest.approx(
        float(metrics.objective_gap(tiny, np.log(best_inf))), abs=1e-12)
    assert [lim["method"] for lim in facts["limits"]] == ["specs_uniform_limit", "specs_best_limit"]
