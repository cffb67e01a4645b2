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
